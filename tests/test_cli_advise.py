"""`comfy-orch advise`, and the model family and VAE through `run` and `sweep`, against the simulated server."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from comfy_orchestrator.cli import main
from comfy_orchestrator.provenance import read_provenance

SDXL = "random-sdxl.safetensors"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """A picture at SDXL's native size, so no size warning interferes."""
    path = tmp_path / "photo.png"
    Image.new("RGB", (1024, 1024), (90, 120, 160)).save(path)
    return path


@pytest.fixture
def server(sim: Any) -> Any:
    (started,) = sim()
    return started


def test_run_reads_the_family_from_the_server_and_loads_the_vae(server, picture, tmp_path) -> None:
    result = invoke("run", "img2img", "--server", server.url, "--set", f"image={picture}", "--set",
                    f"checkpoint={SDXL}", "--set", "vae=random-vae.safetensors", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    record = read_provenance(Path(result.stdout.strip().splitlines()[-1]).read_bytes())
    assert record is not None and record["parameters"]["model_family"] == "sdxl"
    assert record["graph"]["17"] == {"class_type": "VAELoader", "inputs": {"vae_name": "random-vae.safetensors"}}
    assert server.counters.node_executions["VAELoader"] == 1


def test_run_says_when_the_family_is_a_guess_and_when_the_size_is_far_off(sim, sample_image, tmp_path) -> None:
    (server,) = sim(checkpoints=("mystery_xl.safetensors",))
    result = invoke("run", "img2img", "--server", server.url, "--set", f"image={sample_image}", "--set",
                    "checkpoint=mystery_xl.safetensors", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "model_family of 'mystery_xl.safetensors' guessed from its name: sdxl" in result.stderr
    assert "the picture is 96x64, far from SDXL's native 1024x1024" in result.stderr


def test_a_sweep_over_vae_files_runs(server, picture, tmp_path) -> None:
    out = tmp_path / "sweep"
    result = invoke("sweep", "img2img", "--server", server.url, "--set", f"image={picture}", "--set",
                    f"checkpoint={SDXL}", "--axis", "vae=random-vae.safetensors,sdxl_vae.safetensors",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "2 of 2 cells done" in result.stdout
    loaded = sorted(entry["prompt"][2]["17"]["inputs"]["vae_name"] for entry in server.history.values())
    assert loaded == ["random-vae.safetensors", "sdxl_vae.safetensors"]


def test_a_vae_the_server_lacks_is_refused_naming_the_parameter(server, picture, tmp_path) -> None:
    result = invoke("run", "img2img", "--server", server.url, "--set", f"image={picture}", "--set",
                    f"checkpoint={SDXL}", "--set", "vae=nowhere.safetensors", "--out", str(tmp_path))
    assert result.exit_code == 1, result.output  # a missing model file: another server may have it
    assert "parameter 'vae': Value not in list: vae_name: 'nowhere.safetensors' not in ['random-vae.safetensors'" \
        in " ".join(result.stderr.split())
    assert not server.history


@pytest.mark.parametrize("symptom", ["too-much-change", "not-enough-change", "artifacts", "out-of-memory"])
def test_advise_prints_remedies_and_a_sweep_that_runs(symptom, server, picture, tmp_path) -> None:
    out = tmp_path / "explore"
    result = invoke("advise", "img2img", f"--{symptom}", "--set", f"image={picture}", "--set", f"checkpoint={SDXL}",
                    "--set", "denoise=0.65", "--set", "cfg=9", "--server", server.url, "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{symptom.replace('-', ' ')} (") and "denoise 0.65, CFG 9" in lines[0]
    assert lines[-2] == "explore them:" and all(line.startswith("  - ") for line in lines[1:-2])
    words = shlex.split(lines[-1])
    assert words[:2] == ["comfy-orch", "sweep"] and "model_family=sdxl" in words
    swept = invoke(*words[1:])
    assert swept.exit_code == 0, swept.output
    done = [json.loads(row) for row in (out / "manifest.jsonl").read_text().splitlines()]
    assert done and all(row["status"] == "done" for row in done)


def test_advise_reads_the_job_from_a_saved_picture(server, picture, tmp_path) -> None:
    made = invoke("run", "style-transfer", "--server", server.url, "--set", f"image={picture}", "--set",
                  f"checkpoint={SDXL}", "--set", "seed=5", "--out", str(tmp_path / "out"))
    assert made.exit_code == 0, made.output
    saved = made.stdout.strip().splitlines()[-1]
    result = invoke("advise", "--too-much-change", "--from", saved, "--out", str(tmp_path / "explore"))
    assert result.exit_code == 0, result.output
    assert "style-transfer: denoise 0.6, CFG 9" in result.stdout
    command = result.stdout.strip().splitlines()[-1]
    assert command.startswith("comfy-orch sweep style-transfer ") and "seed=5" in command
    assert "--axis denoise=0.3,0.4,0.5 --axis cfg=6,7" in command and "sampler=ddim" in command


def test_advise_needs_a_symptom_and_a_job() -> None:
    result = invoke("advise", "img2img")
    assert result.exit_code == 2 and "--too-much-change" in result.stderr
    result = invoke("advise", "--artifacts")
    assert result.exit_code == 2 and "name a TEMPLATE" in result.stderr


def test_out_of_memory_says_what_to_try_in_numbers(server, picture, tmp_path) -> None:
    server.faults.oom_above(512 * 512)
    result = invoke("run", "img2img", "--server", server.url, "--set", f"image={picture}", "--set",
                    f"checkpoint={SDXL}", "--out", str(tmp_path))
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())
    assert "out of memory: encode and decode in tiles (VAEEncodeTiled): the 'tiled' template, tile_size 256, 512" \
        in message
    assert "scale the input down from 1024x1024: width 512, 768" in message
    assert "comfy-orch sweep tiled" in message


def test_a_sweep_warns_once_when_its_picture_is_far_from_the_native_size(server, sample_image, tmp_path) -> None:
    result = invoke("sweep", "img2img", "--server", server.url, "--set", f"image={sample_image}", "--set",
                    f"checkpoint={SDXL}", "--axis", "denoise=0.3,0.6", "--axis", "seed=1,2", "--out",
                    str(tmp_path / "sweep"))
    assert result.exit_code == 0, result.output
    assert " ".join(result.stderr.split()).count("the picture is 96x64, far from SDXL's native 1024x1024") == 1


def test_a_bad_sweep_says_only_what_is_wrong(server, sample_image, tmp_path) -> None:
    result = invoke("sweep", "img2img", "--server", server.url, "--set", f"image={sample_image}", "--set",
                    f"checkpoint={SDXL}", "--axis", "denoise=0.3,1.5", "--out", str(tmp_path / "sweep"))
    assert result.exit_code == 2, result.output
    assert "far from" not in result.stderr and "denoise=1.5" in result.stderr
