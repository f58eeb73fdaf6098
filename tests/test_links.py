"""ClientLink, the farm's real ServerLink, against a simulated server over loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.errors import ConnectionFailed, Interrupted
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.links import ClientLink, ServerLink, ServerRecord
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.protocol import Progress
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.servers import ServerConfig
from comfy_orchestrator.sim import Costs

SLOW = Costs(step_s=12.0)  # 0.3 s a step of the 512x512 reference job: the first holds the queue
PATIENCE_S = 10.0


def until_running(link: ServerLink, prompt_id: str) -> bool:
    """Ask where the prompt is until the server runs it; False if it did not start within PATIENCE_S."""
    pause = threading.Event()
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if link.locate(prompt_id)[0] == "running":
            return True
        pause.wait(0.02)
    return False


def test_a_link_probes_submits_and_downloads(comfy: Any, img2img_job: Job, tmp_path: Path) -> None:
    link: ServerLink = ClientLink(ServerConfig(url=comfy.url, name="gpu0"))
    try:
        assert "KSampler" in link.probe()
        running = link.submit(img2img_job)
        result = running.wait(30.0)
        assert link.locate(running.prompt_id)[0] == "done"
        saved = link.save(result, tmp_path)
        assert saved.files and all(path.is_file() and tmp_path in path.parents for path in saved.files)
    finally:
        link.close()


def test_a_link_passes_a_job_s_steps_to_its_progress_callback(comfy: Any, img2img_job: Job) -> None:
    link = ClientLink(ServerConfig(url=comfy.url))  # it reads no steps of a job nobody follows
    seen: list[Progress] = []
    try:
        link.probe()
        link.submit(img2img_job, on_progress=seen.append).wait(30.0)
    finally:
        link.close()
    assert seen and max(progress.node_max for progress in seen) > 1  # the sampler's steps
    assert seen[-1].fraction == 1.0


def test_a_queued_job_is_withdrawn_and_a_running_one_is_not(sim: Any, img2img_job: Job) -> None:
    (server,) = sim(costs=SLOW, checkpoints=(DEFAULT_CHECKPOINT,), preview_method="none")
    link = ClientLink(ServerConfig(url=server.url))
    try:
        link.probe()
        first = link.submit(img2img_job)
        second = link.submit(img2img_job)
        assert link.locate(second.prompt_id)[0] == "queued"
        assert link.withdraw(second)  # it had not started: it will not run there
        assert link.locate(second.prompt_id)[0] == "unknown"
        assert until_running(link, first.prompt_id)
        assert not link.withdraw(first)  # it runs: it stays
        link.cancel(first.prompt_id)
        with pytest.raises(Interrupted):
            first.wait(30.0)
        assert link.locate(first.prompt_id)[0] == "done"  # interrupted, and its record says so
    finally:
        link.close()


def test_status_reads_health_queue_devices_and_checkpoints(comfy: Any) -> None:
    link = ClientLink(ServerConfig(url=comfy.url, name="gpu0", tags=("fast",)))
    try:
        status = link.status()
    finally:
        link.close()
    assert (status.name, status.up, status.tags) == ("gpu0", True, ("fast",))
    assert status.checkpoints == (DEFAULT_CHECKPOINT,) and status.devices
    assert (status.queue_running, status.queue_pending) == (0, 0)


def test_a_record_rests_a_failing_server_longer_each_time_and_forgets_once_it_answers() -> None:
    record = ServerRecord(ServerConfig(url="http://gpu0.test:8188", queue_ahead=2))
    assert (record.name, record.slots, record.up) == ("gpu0.test:8188", 3, False)
    policy = RetryPolicy(max_attempts=5, first_delay_s=1.0, max_delay_s=60.0)
    error = ConnectionFailed("connection refused", server=record.name)
    rests = [record.failed(error, policy, now=100.0) for _ in range(3)]
    assert all(0.8 * base_s <= rest_s <= 1.2 * base_s for rest_s, base_s in zip(rests, (1.0, 2.0, 4.0)))  # jittered
    assert record.failures == 3 and record.last_error is error and record.next_probe_at == 100.0 + rests[-1]
    record.came_up(Schema.recorded())
    assert record.up and record.failures == 0
    assert record.last_error is None
    assert record.capability is not None and "KSampler" in record.capability.schema
