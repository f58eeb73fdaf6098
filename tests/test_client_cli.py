"""The client's commands (run, inspect, run --from, queue, interrupt, history) against the sim."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from comfy_orchestrator.cli import main
from comfy_orchestrator.errors import Interrupted
from comfy_orchestrator.provenance import read_provenance
from comfy_orchestrator.templates import Templates
from tests.conftest import start_command


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


@pytest.mark.parametrize("columns", [80, 200])
def test_queue_and_history_fit_the_terminal_and_never_cut_a_prompt_id(comfy: Any, client: Any, library: Templates,
                                                                       sample_image: Path, columns: int) -> None:
    template = library.get("variations")
    jobs = [template.job(template.params({"image": str(sample_image), "batch_size": 3, "steps": 2, "seed": seed,
                                          "filename_prefix": "a-long-prefix-for-variations"})) for seed in (1, 2)]
    comfy.faults.hold_queue()
    handles = [client.submit(job) for job in jobs]
    ids = [handle.prompt_id for handle in handles]
    queue = CliRunner().invoke(main, ["queue", "--server", comfy.url], env={"COLUMNS": str(columns)})
    assert queue.exit_code == 0, queue.output
    nodes = str(len(jobs[0].graph))
    assert [text.split() for text in queue.stdout.splitlines()] == [
        ["state", "number", "prompt", "id", "nodes"], ["waiting", "0", ids[0], nodes], ["waiting", "1", ids[1], nodes]]
    comfy.faults.release_queue()
    for handle in handles:
        handle.wait(timeout_s=30)
    history = CliRunner().invoke(main, ["history", "--server", comfy.url], env={"COLUMNS": str(columns)})
    assert history.exit_code == 0, history.output
    lines = history.stdout.splitlines()
    assert all(len(text) <= columns and text == text.rstrip() for text in lines + queue.stdout.splitlines())
    files = [f"a-long-prefix-for-variations_{number:05}_.png" for number in range(1, 7)]
    if columns == 80:  # the outputs of a prompt go under it, wrapped, each name whole
        assert lines[0].split() == [ids[0], "success", "3", "outputs:"] and lines[1].startswith("  " + files[0])
    else:
        assert lines[0].split() == [ids[0], "success", f"{files[0]},", f"{files[1]},", files[2]]
    assert re.findall(r"a-long-prefix-for-variations_\d{5}_\.png", history.stdout) == files


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


def _start_run(url: str, image: Path, tmp_path: Path, *sets: str) -> subprocess.Popen[str]:
    """`comfy-orch run img2img` on `url` as a process of its own, its output piped, for a test to stop."""
    return start_command("run", "img2img", "--server", url, "--set", f"image={image}",
                         *[part for value in sets for part in ("--set", value)], "--out", str(tmp_path / "out"))


def _running_and_pending(url: str) -> tuple[list[str], list[str]]:
    from comfy_orchestrator.client import Client

    with Client(url) as client:
        listing = client.queue()
    return ([item[1] for item in listing["queue_running"]], [item[1] for item in listing["queue_pending"]])


@pytest.mark.parametrize(("stop", "busy", "code"), [(signal.SIGINT, False, 130), (signal.SIGTERM, True, 143)])
def test_stopping_run_stops_its_prompt_on_the_server(sim: Any, sample_image: Path, tmp_path: Path,
                                                     stop: signal.Signals, busy: bool, code: int) -> None:
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT
    from comfy_orchestrator.sim.costs import Costs

    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,), costs=Costs(step_s=5.0))  # 0.1 s a step at this size
    other = None
    neighbour = Client(server.url)
    if busy:  # someone else's long prompt runs, so ours waits in the queue
        template = Templates.default().get("img2img")
        other = neighbour.submit(template.job(template.params({"image": str(sample_image), "steps": 400,
                                                               "seed": 5})))
    process = _start_run(server.url, sample_image, tmp_path, "steps=400")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running, pending = _running_and_pending(server.url)
            ours = pending if busy else [p for p in running if other is None or p != other.prompt_id]
            if ours and (not busy or server.counters.sampler_steps > 0):
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail(f"the prompt never reached the server: {running} {pending} {process.poll()}")
        (prompt_id,) = ours
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)
        assert process.returncode == code, err
        said = "taken off the queue" if busy else "interrupted"
        how = "terminated" if stop == signal.SIGTERM else "interrupted"
        assert err.strip().splitlines()[-1] == f"error: {how}: prompt {prompt_id} {said} on {server.url}"
        assert "Traceback" not in err and "Aborted" not in err
        running, pending = _running_and_pending(server.url)
        assert prompt_id not in running and prompt_id not in pending
        if busy:
            assert other is not None and running == [other.prompt_id]  # only our prompt was touched
            assert prompt_id not in server.history
        else:
            assert server.wait_idle(10)
            entry = server.history[prompt_id]
            assert entry["status"]["status_str"] == "error"
            assert any(message[0] == "execution_interrupted" for message in entry["status"]["messages"])
    finally:
        process.kill()
        process.communicate()
        if other is not None:
            other.cancel()
        neighbour.close()


def test_stopping_run_while_its_prompt_is_being_sent_names_the_prompt(sim: Any, sample_image: Path,
                                                                      tmp_path: Path) -> None:
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,))
    server.faults.hang_route("/prompt", times=1)  # the POST is taken in and never answered
    (sent,) = server.faults.routes.values()
    process = _start_run(server.url, sample_image, tmp_path, "seed=7")
    try:
        deadline = time.monotonic() + 60
        while sent.remaining and time.monotonic() < deadline and process.poll() is None:
            threading.Event().wait(0.05)
        assert sent.remaining == 0, f"the prompt was never sent: {process.poll()}"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert "Traceback" not in err and "Aborted" not in err
        said = re.fullmatch(rf"error: interrupted: prompt ([0-9a-f-]{{36}}) was not on {re.escape(server.url)} yet; "
                            rf"should it appear, stop it with: comfy-orch interrupt \1 --server {re.escape(server.url)}",
                            err.strip().splitlines()[-1])
        assert said is not None, err
    finally:
        process.kill()
        process.communicate()
        server.faults.clear()
    assert _running_and_pending(server.url) == ([], [])


def test_interrupt_of_a_waiting_prompt_takes_it_off_the_queue(sim: Any, sample_image: Path) -> None:
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT
    from comfy_orchestrator.sim.costs import Costs

    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,), costs=Costs(step_s=5.0))  # 0.1 s a step at this size
    template = Templates.default().get("img2img")
    with Client(server.url) as client:
        running = client.submit(template.job(template.params({"image": str(sample_image), "steps": 400})))
        waiting = client.submit(template.job(template.params({"image": str(sample_image), "seed": 9})))
        assert client.locate(waiting.prompt_id)[0] == "queued"
        done = invoke("interrupt", waiting.prompt_id, "--server", server.url)
        assert done.exit_code == 0 and done.stdout.strip() == (f"prompt {waiting.prompt_id} taken off the queue "
                                                               f"on {server.url}")
        assert client.locate(waiting.prompt_id)[0] == "unknown"
        assert client.locate(running.prompt_id)[0] == "running"
        done = invoke("interrupt", "--server", server.url)
        assert done.stdout.strip() == f"prompt {running.prompt_id} interrupted on {server.url}"
        with pytest.raises(Interrupted):
            running.wait()
        assert invoke("interrupt", "--server", server.url).stdout.strip() == f"nothing is running on {server.url}"
        unknown = invoke("interrupt", "no-such-prompt", "--server", server.url)
        assert unknown.exit_code == 2 and "has no prompt no-such-prompt" in unknown.stderr


@pytest.mark.parametrize("given", [(), ("--set", "seed=-1")])
def test_run_without_a_seed_draws_one_says_it_and_records_it(comfy: Any, sample_image: Path, tmp_path: Path,
                                                             given: tuple[str, ...]) -> None:
    seeds = set()
    for attempt in range(2):
        result = invoke("run", "img2img", "--server", comfy.url, "--set", f"image={sample_image}", *given,
                        "--out", str(tmp_path / f"out{attempt}"))
        assert result.exit_code == 0, result.output
        said = re.search(r"^seed (\d+) \(drawn at random; --set seed=\1 gives it again\)$", result.stderr, re.M)
        assert said is not None, result.stderr
        record = read_provenance(Path(result.stdout.strip().splitlines()[-1]).read_bytes())
        assert record is not None and record["parameters"]["seed"] == int(said[1]) == record["seeds"]["6"]
        seeds.add(int(said[1]))
    assert len(seeds) == 2  # not always 0


def test_a_sweep_with_seed_minus_one_draws_it_once_and_resumes(comfy: Any, sample_image: Path,
                                                               tmp_path: Path) -> None:
    args = ("sweep", "img2img", "--server", comfy.url, "--set", f"image={sample_image}", "--set", "seed=-1",
            "--axis", "cfg=6,8", "--out", str(tmp_path / "out"))
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text("utf-8").splitlines()]
    (seed,) = {row["params"]["seed"] for row in rows}
    assert seed >= 0
    again = invoke(*args)
    assert again.exit_code == 0 and "0 prompts run, 2 cells already done" in again.stdout
