"""Resuming sweeps without doing GPU work twice: validation first, kills, adoption, repair, one sweep a folder."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from comfy_orchestrator.farm import Farm
from comfy_orchestrator.journal import JOURNAL_NAME
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_run import run_sweep
from comfy_orchestrator.templates import Templates
from tests.conftest import done_cells


@pytest.fixture
def realistic_sim(sim: Callable[..., list[Any]]) -> Any:
    """A simulated server with the recorded GPU costs, five times faster: a 4x4 sweep takes a few seconds."""
    from comfy_orchestrator.sim.costs import profile

    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,), costs=profile("realistic").scaled(5.0))
    return server


def _command(url: str, out: Path, image: Path, *axes: str) -> list[str]:
    axes = axes or ("denoise=0.2:0.8:0.2", "cfg=4,6,8,10")
    return [sys.executable, "-m", "comfy_orchestrator.cli", "sweep", "img2img", "--server", url,
            *(part for axis in axes for part in ("--axis", axis)), "--set", f"image={image}", "--out", str(out)]


def _holds_its_folder(process: subprocess.Popen[str], out: Path) -> bool:
    """Whether the sweep has locked its folder (its first look at the journal, before asking a server, locks it too)."""
    lock = out / "journal.lock"
    return lock.exists() and f"process {process.pid} " in lock.read_text("utf-8")


def _prompt_ids(out: Path) -> set[str]:
    """The prompts the journal has seen submitted (by any run)."""
    path = out / JOURNAL_NAME
    if not path.exists():
        return set()
    db = sqlite3.connect(path, timeout=5.0)
    try:
        return {row[0] for row in db.execute("SELECT prompt_id FROM prompt")}
    except sqlite3.OperationalError:  # the table is not made yet
        return set()
    finally:
        db.close()


def _successes(server: Any) -> int:
    """Prompts the server ran to the end (interrupted ones are not)."""
    return sum(1 for entry in server.history.values() if entry["status"]["status_str"] == "success")


def test_an_invalid_cell_writes_nothing_and_the_corrected_command_runs(comfy: Any, sample_image: Path,
                                                                       tmp_path: Path) -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    out = tmp_path / "out"
    for bad in ("cfg=6,800", "cfg=6,inf", "cfg=6,nan", "cfgg=6,8"):
        result = CliRunner().invoke(main, _command(comfy.url, out, sample_image, bad)[3:])
        assert result.exit_code == 2, result.output
        assert not out.exists(), f"{bad} wrote {list(out.iterdir())}"
    result = CliRunner().invoke(main, _command(comfy.url, out, sample_image, "cfg=6,8")[3:])
    assert result.exit_code == 0, result.output
    assert "2 of 2 cells done" in result.output and comfy.counters.prompts_started == 2


def test_a_sweep_killed_five_times_runs_each_cell_once(realistic_sim: Any, sample_image: Path,
                                                        tmp_path: Path) -> None:
    out, cells = tmp_path / "out", 24
    command = _command(realistic_sim.url, out, sample_image, "denoise=0.2:0.8:0.2", "cfg=4,5,6,7,8,9")
    chooser = random.Random(20)
    pause = threading.Event()
    terms = 0
    for kill in range(5):
        how = (signal.SIGKILL, signal.SIGTERM)[kill % 2]
        before, submitted = done_cells(out), _prompt_ids(out)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # a random point once this run submits (SIGTERM is handled as Ctrl-C from before that, to the
        # end): after 0 to 2 more cells are done, and a little more
        more, extra_s = chooser.randint(0, 2), chooser.uniform(0.0, 0.3)
        deadline = time.monotonic() + 60
        while not (_holds_its_folder(process, out) and _prompt_ids(out) - submitted) and process.poll() is None \
                and time.monotonic() < deadline:
            pause.wait(0.01)
        while done_cells(out) < before + more and process.poll() is None and time.monotonic() < deadline:
            pause.wait(0.02)
        pause.wait(extra_s)
        process.send_signal(how)
        _, stderr = process.communicate(timeout=60)
        if how == signal.SIGTERM and (process.returncode == -signal.SIGTERM or stderr.endswith("error: terminated\n")):
            assert done_cells(out) == cells  # its work was done: only its report or its exit was left to stop
        elif how == signal.SIGTERM and process.returncode != 0:
            terms += 1
            assert process.returncode == 143 and "terminated; run the same command again" in stderr, stderr
            # handled as Ctrl-C is: what it had queued is off the queue, what ran is interrupted
            listing = requests.get(f"{realistic_sim.url}/queue", timeout=5).json()
            assert listing["queue_pending"] == []
            assert realistic_sim.wait_idle(5.0) and realistic_sim.queue_remaining == 0
            assert (out / "manifest.jsonl").exists()
    final = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert f"{cells} of {cells} cells done, 0 failed" in final.stdout
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == cells and all(row["status"] == "done" for row in rows)
    assert realistic_sim.wait_idle(10.0)
    # one finished prompt a cell in all; only a prompt a SIGTERM interrupted was ever started twice
    assert _successes(realistic_sim) == cells
    assert realistic_sim.counters.prompts_started <= cells + terms


def test_two_sweeps_into_one_folder_give_one_run_and_one_refusal(realistic_sim: Any, sample_image: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = _command(realistic_sim.url, out, sample_image, "cfg=4,6,8,10")
    realistic_sim.faults.hang_route("/history")  # the first sweep stays busy until the second has been refused
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pause, deadline = threading.Event(), time.monotonic() + 60
    while not _holds_its_folder(first, out):
        assert time.monotonic() < deadline and first.poll() is None
        pause.wait(0.02)
    second = subprocess.run(command, capture_output=True, text=True, timeout=60)
    realistic_sim.faults.clear()
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (f"error: {out} is in use by process {first.pid} on {__import__('socket').gethostname()}; "
                                     "wait for it to finish, or use another --out folder")
    assert "4 of 4 cells done" in stdout and realistic_sim.counters.prompts_started == 4


def _break(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "emptied":
        path.write_bytes(b"")
    else:  # a hostile /view that answered a web page
        path.write_bytes(b"<html><body>502 Bad Gateway</body></html>")


def test_broken_results_are_fetched_again_from_the_servers_history(comfy: Any, library: Templates,
                                                                   sample_image: Path, tmp_path: Path) -> None:
    sweep = Sweep(library.get("img2img"), (parse_axis("cfg=4,6,8,10"),), {"image": str(sample_image)})
    out = tmp_path / "out"
    run_sweep(sweep, out, Farm([comfy.url]))
    images = sorted((out / "images").iterdir())
    whole = images[3].read_bytes()
    for image, how in zip(images, ("deleted", "truncated", "emptied", "html")):
        _break(image, how)
    report = run_sweep(sweep, out, Farm([comfy.url]))
    assert (report.done, report.failed, report.ran, report.skipped) == (4, 0, 0, 0)  # none skipped: all broken
    assert comfy.counters.prompts_started == 4  # fetched from history, not run again
    for image in images:
        with Image.open(image) as picture:
            picture.load()
    assert images[3].read_bytes() == whole
    assert report.grids and report.page is not None


def test_broken_results_the_server_forgot_run_again(comfy: Any, library: Templates, sample_image: Path,
                                                    tmp_path: Path) -> None:
    sweep = Sweep(library.get("img2img"), (parse_axis("cfg=4,6"),), {"image": str(sample_image)})
    out = tmp_path / "out"
    run_sweep(sweep, out, Farm([comfy.url]))
    requests.post(f"{comfy.url}/history", json={"clear": True}, timeout=5).raise_for_status()
    images = sorted((out / "images").iterdir())
    _break(images[0], "truncated")
    report = run_sweep(sweep, out, Farm([comfy.url]))
    assert (report.done, report.failed, report.ran, report.skipped) == (2, 0, 1, 1)
    assert comfy.counters.prompts_started == 3
    with Image.open(images[0]) as picture:
        picture.load()


@pytest.mark.parametrize("fault", ["five 500s", "a hang"])
def test_a_history_fault_after_a_prompt_ran_does_not_run_it_again(comfy: Any, library: Templates,
                                                                  sample_image: Path, tmp_path: Path,
                                                                  fault: str) -> None:
    from comfy_orchestrator.limits import FARM_TIMEOUTS

    if fault == "five 500s":
        comfy.faults.fail_route("/history", status=500, times=5)
    else:
        comfy.faults.hang_route("/history", times=2)  # each answered by the read timeout, then served
    sweep = Sweep(library.get("img2img"), (parse_axis("cfg=4,6,8,10"),), {"image": str(sample_image)})
    farm = Farm([comfy.url], timeouts=dataclasses.replace(FARM_TIMEOUTS, read_s=1.0))
    report = run_sweep(sweep, tmp_path / "out", farm)
    comfy.faults.clear()
    assert (report.done, report.failed) == (4, 0)
    assert comfy.counters.prompts_started == 4  # each result was read again, not made again
