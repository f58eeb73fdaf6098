"""The client's commands (run, inspect, run --from, queue, interrupt, history) against the sim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from comfy_orchestrator.cli import main
from comfy_orchestrator.provenance import read_provenance


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def saved(comfy: Any, sample_image: Path, tmp_path: Path) -> Path:
    """One image made by `comfy-orch run img2img`."""
    result = invoke("run", "img2img", "--server", comfy.url, "--set", f"image={sample_image}",
                    "--set", "denoise=0.5", "--set", "seed=42", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path / "out"
    return path


def test_run_prints_where_the_outputs_are(saved: Path) -> None:
    record = read_provenance(saved.read_bytes())
    assert record is not None and record["template"] == "img2img"
    assert record["parameters"]["denoise"] == 0.5 and record["seeds"] == {"6": 42}


def test_server_defaults_to_comfy_url(comfy: Any, sample_image: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_URL", comfy.url)
    result = invoke("run", "img2img", "--set", f"image={sample_image}", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert comfy.history


def test_inspect_reads_the_record_back(saved: Path) -> None:
    result = invoke("inspect", str(saved))
    assert result.exit_code == 0
    assert "img2img" in result.stdout and "denoise" in result.stdout and "0.8.0" in result.stdout
    assert "prompt" in result.stdout  # the server's own chunk is still there


def test_run_from_an_image_runs_the_same_job_again(comfy: Any, saved: Path, tmp_path: Path) -> None:
    result = invoke("run", "--from", str(saved), "--server", comfy.url, "--set", "seed=43",
                    "--out", str(tmp_path / "again"))
    assert result.exit_code == 0, result.output
    record = read_provenance(Path(result.stdout.strip().splitlines()[-1]).read_bytes())
    original = read_provenance(saved.read_bytes())
    assert record is not None and original is not None
    assert record["seeds"] == {"6": 43}
    assert {**original["parameters"], "seed": 43} == record["parameters"]


def test_inspect_of_a_foreign_image_is_bad_input(sample_image: Path) -> None:
    result = invoke("inspect", str(sample_image))
    assert result.exit_code == 2 and "no comfy_orchestrator record" in result.output


def test_queue_history_and_interrupt(comfy: Any, saved: Path) -> None:
    history = invoke("history", "--server", comfy.url)
    assert history.exit_code == 0 and saved.name in history.stdout and "success" in history.stdout
    assert invoke("queue", "--server", comfy.url).stdout.strip() == "the queue is empty"
    interrupt = invoke("interrupt", "--clear", "--server", comfy.url)
    assert interrupt.exit_code == 0 and "queue cleared" in interrupt.stdout


def test_unreachable_server_is_one_line_and_exit_1() -> None:
    result = invoke("queue", "--server", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "cannot connect" in result.output
    assert "Traceback" not in result.output


def test_missing_model_is_reported_with_the_parameter(comfy: Any, sample_image: Path) -> None:
    result = invoke("run", "img2img", "--server", comfy.url, "--set", f"image={sample_image}",
                    "--set", "checkpoint=absent.safetensors")
    assert result.exit_code == 1 and "parameter 'checkpoint'" in result.output


def test_run_from_works_in_any_folder_and_finds_the_input_by_content(comfy: Any, saved: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path("..") / saved.relative_to(tmp_path)
    result = invoke("run", "--from", str(relative), "--server", comfy.url, "--out", "again")
    assert result.exit_code == 0, result.output
    again = read_provenance((elsewhere / result.stdout.strip().splitlines()[-1]).read_bytes())
    original = read_provenance(saved.read_bytes())
    assert again is not None and original is not None
    assert again["parameters"] == original["parameters"] and again["inputs"] == original["inputs"]
    assert again["graph"] == original["graph"]  # the same upload, so the same prompt


def test_run_from_says_which_input_is_missing_and_where_it_looked(comfy: Any, saved: Path, sample_image: Path,
                                                                  tmp_path: Path) -> None:
    sample_image.rename(tmp_path / "moved.png")
    result = invoke("run", "--from", str(saved), "--server", comfy.url, "--out", str(tmp_path / "again"))
    assert result.exit_code == 2
    assert f"was made from {sample_image.name!r} (image), which is not in" in result.stderr
    assert str(tmp_path) in result.stderr and "--set image=PATH" in result.stderr
    other = Image.new("RGB", (8, 8), (0, 0, 0))
    other.save(sample_image)  # the same name, other pixels: not taken for the input
    result = invoke("run", "--from", str(saved), "--server", comfy.url, "--out", str(tmp_path / "again"))
    assert result.exit_code == 2 and "has other content" in result.stderr
    fixed = invoke("run", "--from", str(saved), "--server", comfy.url, "--set", f"image={tmp_path / 'moved.png'}",
                   "--out", str(tmp_path / "again"))
    assert fixed.exit_code == 0, fixed.output
