"""Sweeps through the queue, end to end: a real redis-server, `comfy-orch worker` processes, simulated servers.

Every cell must end with exactly one outcome while a worker is killed, while the submitter is
killed and run again, and when a detached sweep is collected later; sweeps submitted together
progress side by side; a worker never takes cells it cannot run.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from comfy_orchestrator.cli import main
from comfy_orchestrator.errors import BrokerUnreachable
from comfy_orchestrator.jobs import content_name
from comfy_orchestrator.journal import JOURNAL_NAME
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.queue import CeleryQueue, QueueTimeouts
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_run import SweepProgress, run_sweep
from comfy_orchestrator.templates import Templates
from tests.conftest import done_cells
from tests.queue.conftest import TEST_LEASE_S, cli_environment, sim_costs, start_redis, wait_for

AXES_40 = ("denoise=0.1:0.8:0.1", "cfg=4,5,6,7,8")  # 8 x 5 cells
TIMEOUTS = QueueTimeouts(lease_s=TEST_LEASE_S, audit_s=0.5)


def _sweep(library: Templates, image: Path, axes: tuple[str, ...] = AXES_40, **fixed: Any) -> Sweep:
    return Sweep(library.get("img2img"), tuple(parse_axis(a) for a in axes), {"image": str(image), "seed": 7, **fixed})


def _manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text("utf-8").splitlines()]


def _assert_every_cell_once(out: Path, total: int) -> list[dict[str, Any]]:
    rows = _manifest(out)
    assert len(rows) == total and all(row["status"] == "done" for row in rows), \
        [row for row in rows if row["status"] != "done"][:3]
    files = sorted(name for row in rows for name in row["files"])
    assert len(files) == len(set(files)) == total  # one image a cell, none shared, none twice
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(f).name for f in files)
    return rows


def _prompts_run(servers: list[Any]) -> int:
    return sum(server.counters.prompts_finished for server in servers)


def test_a_40_cell_sweep_survives_a_worker_killed_mid_sweep(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, library: Templates,
        sample_image: Path, tmp_path: Path) -> None:
    one, two, three = sim(3, costs=sim_costs(), checkpoints=(DEFAULT_CHECKPOINT,))
    doomed = start_worker(broker_url, [one.url], name="doomed")
    start_worker(broker_url, [two.url, three.url], name="steady")
    notes: list[str] = []

    def watch(progress: SweepProgress) -> None:
        notes.append(progress.message)
        # mid-sweep, and while the doomed worker holds cells: they must come back through the queue
        if progress.done >= 8 and "doomed/" in " ".join(progress.running.values()) and doomed.process.poll() is None:
            doomed.kill()

    out = tmp_path / "out"
    report = run_sweep(_sweep(library, sample_image), out, queue=CeleryQueue(broker_url, timeouts=TIMEOUTS),
                       on_progress=watch)

    assert doomed.process.returncode == -signal.SIGKILL
    assert (report.total, report.done, report.failed, report.waiting) == (40, 40, 0, 0)
    rows = _assert_every_cell_once(out, 40)
    assert any("doomed stopped renewing its lease" in note for note in notes)  # its cells came back
    assert {row["server"].split("/")[0] for row in rows} <= {"doomed", "steady"}
    assert (out / "grid.jpg").exists() and (out / "index.html").exists()
    client = redis.Redis.from_url(broker_url)
    assert client.keys("comfy-orch:sweep:*") == [] and client.keys("celery-task-meta-*") == []  # all collected
    assert len(client.keys("comfy-orch:input:*")) == 1  # the one input image, stored once for 40 cells
    for server in (one, two, three):  # each server that ran cells holds the one upload, under its content name
        if server.counters.prompts_started:
            assert [path.name for path in server.input_dir.iterdir()] == [content_name(sample_image)]


def test_a_killed_submitter_run_again_collects_without_running_anything_twice(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, sample_image: Path,
        tmp_path: Path) -> None:
    servers = sim(3, costs=sim_costs(), checkpoints=(DEFAULT_CHECKPOINT,))
    start_worker(broker_url, [servers[0].url, servers[1].url], name="a")
    start_worker(broker_url, [servers[2].url], name="b")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "comfy_orchestrator.cli", "sweep", "img2img", "--broker", broker_url,
               "--set", f"image={sample_image}", "--set", "seed=7", "--out", str(out)]
    for axis in AXES_40:
        command += ["--axis", axis]
    submitter = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_environment())
    wait_for(lambda: done_cells(out) >= 8 or submitter.poll() is not None, timeout_s=60.0, what="8 cells done")
    submitter.send_signal(signal.SIGKILL)
    submitter.communicate(timeout=30)
    done_at_kill = done_cells(out)
    assert 8 <= done_at_kill < 40, "the submitter should be cut off midway"

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=cli_environment())

    assert again.returncode == 0, again.stderr
    assert "40 of 40 cells done, 0 failed" in again.stdout
    _assert_every_cell_once(out, 40)
    assert _prompts_run(servers) == 40  # the workers went on; the rerun collected, nothing ran twice


def test_a_detached_sweep_is_collected_by_a_later_command(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, sample_image: Path,
        tmp_path: Path) -> None:
    servers = sim(2, costs=sim_costs(), checkpoints=(DEFAULT_CHECKPOINT,))
    out = tmp_path / "out"
    arguments = ["sweep", "img2img", "--broker", broker_url, "--set", f"image={sample_image}", "--axis",
                 "denoise=0.2:0.8:0.2", "--axis", "cfg=5,7", "--out", str(out)]
    runner = CliRunner()

    detached = runner.invoke(main, [*arguments, "--detach"])
    assert detached.exit_code == 0, detached.output
    assert "0 of 8 cells done" in detached.output and "8 cells wait on the queue" in detached.output
    status = runner.invoke(main, ["queue", "status", "--broker", broker_url, "--json"])
    assert status.exit_code == 0, status.output
    (listed,) = json.loads(status.output)["sweeps"]
    assert (listed["total"], listed["collected"], listed["queued"]) == (8, 0, 8)
    assert listed["title"].startswith("img2img: denoise (4) × cfg (2)")

    start_worker(broker_url, [servers[0].url], name="late-a")
    start_worker(broker_url, [servers[1].url], name="late-b")
    wait_for(lambda: _prompts_run(servers) == 8, timeout_s=60.0, what="the workers to run the 8 cells")
    shown = runner.invoke(main, ["queue", "status", "--broker", broker_url])
    assert shown.exit_code == 0 and "late-a" in shown.output and "late-b" in shown.output, shown.output
    assert "0/8" in shown.output  # none collected yet
    collected = runner.invoke(main, arguments)

    assert collected.exit_code == 0, collected.output
    assert "8 of 8 cells done, 0 failed" in collected.output
    rows = _assert_every_cell_once(out, 8)
    assert _prompts_run(servers) == 8
    assert {row["server"].split("/")[0] for row in rows} <= {"late-a", "late-b"}
    journal = sqlite3.connect(out / JOURNAL_NAME)
    try:  # each cell's task id was recorded before it was sent
        assert journal.execute("SELECT COUNT(DISTINCT idx), COUNT(DISTINCT task_id) FROM queue_task").fetchone() == (8, 8)
    finally:
        journal.close()


def test_results_that_expired_before_collection_are_queued_again(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, library: Templates,
        sample_image: Path, tmp_path: Path) -> None:
    (server,) = sim(1, checkpoints=(DEFAULT_CHECKPOINT,))
    queue = CeleryQueue(broker_url, timeouts=TIMEOUTS)
    sweep = _sweep(library, sample_image, ("cfg=4,5,6,7",))
    assert run_sweep(sweep, tmp_path / "out", queue=queue, detach=True).waiting == 4
    start_worker(broker_url, [server.url], name="forgotten")
    client = redis.Redis.from_url(broker_url)
    wait_for(lambda: len(client.keys("celery-task-meta-*")) == 4, timeout_s=60.0, what="4 stored results")
    for key in client.keys("celery-task-meta-*")[:3]:
        client.delete(key)  # what the backend's expiry does to results nobody collected in time
    notes: list[str] = []

    report = run_sweep(sweep, tmp_path / "out", queue=queue, on_progress=lambda p: notes.append(p.message))

    assert (report.done, report.failed) == (4, 0)
    assert server.counters.prompts_finished == 7  # the 3 expired cells ran again, the kept one did not
    assert any("its result expired before it was collected" in note for note in notes)
    _assert_every_cell_once(tmp_path / "out", 4)


def test_a_message_lost_as_a_worker_took_it_is_queued_again(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, library: Templates,
        sample_image: Path, tmp_path: Path) -> None:
    (server,) = sim(1, checkpoints=(DEFAULT_CHECKPOINT,))
    queue = CeleryQueue(broker_url, timeouts=TIMEOUTS)
    sweep = _sweep(library, sample_image, ("cfg=4,5,6",))
    assert run_sweep(sweep, tmp_path / "out", queue=queue, detach=True).waiting == 3
    client = redis.Redis.from_url(broker_url)
    (listed,) = [key for key in client.keys("comfy-orch.*") if b"binding" not in key]
    client.delete(listed)  # as a worker killed between the transport's pop and its record of the delivery
    start_worker(broker_url, [server.url], name="after")
    notes: list[str] = []

    report = run_sweep(sweep, tmp_path / "out", queue=queue, on_progress=lambda p: notes.append(p.message))

    assert (report.done, report.failed) == (3, 0)
    assert server.counters.prompts_finished == 3
    assert any("its message was lost as a worker took it" in note for note in notes)


def test_a_cancelled_sweep_leaves_the_queue_and_a_rerun_queues_it_again(broker_url: str, sample_image: Path,
                                                                        tmp_path: Path) -> None:
    arguments = ["sweep", "img2img", "--broker", broker_url, "--set", f"image={sample_image}", "--axis", "cfg=5,7",
                 "--out", str(tmp_path / "out"), "--detach"]
    runner = CliRunner()
    assert runner.invoke(main, arguments).exit_code == 0
    (listed,) = json.loads(runner.invoke(main, ["queue", "status", "--broker", broker_url, "--json"]).output)["sweeps"]

    cancelled = runner.invoke(main, ["queue", "cancel", listed["sweep_id"], "--broker", broker_url])
    unknown = runner.invoke(main, ["queue", "cancel", "no-such-sweep", "--broker", broker_url])

    assert cancelled.exit_code == 0, cancelled.output
    assert unknown.exit_code == 2 and "no sweep 'no-such-sweep'" in unknown.output
    assert json.loads(runner.invoke(main, ["queue", "status", "--broker", broker_url, "--json"]).output)["sweeps"] == []
    client = redis.Redis.from_url(broker_url)
    assert not [key for key in client.keys("comfy-orch.*") if b"binding" not in key]  # no cell waits any more
    again = runner.invoke(main, arguments)
    assert again.exit_code == 0 and "2 cells wait on the queue" in again.output
    (requeued,) = json.loads(runner.invoke(main, ["queue", "status", "--broker", broker_url, "--json"]).output)["sweeps"]
    assert requeued["queued"] == 2


def test_two_sweeps_submitted_together_progress_side_by_side(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, library: Templates,
        sample_image: Path, tmp_path: Path) -> None:
    (server,) = sim(1, costs=sim_costs(), checkpoints=(DEFAULT_CHECKPOINT,))
    queue = CeleryQueue(broker_url, timeouts=TIMEOUTS)
    axes = ("denoise=0.1:0.5:0.1", "cfg=4,5,6,7")  # 20 cells each
    first = _sweep(library, sample_image, axes, positive="the first sweep")
    second = _sweep(library, sample_image, axes, positive="the second sweep")
    for sweep, folder in ((first, tmp_path / "first"), (second, tmp_path / "second")):
        assert run_sweep(sweep, folder, queue=queue, detach=True).waiting == 20

    start_worker(broker_url, [server.url], name="shared")
    reports = [run_sweep(sweep, folder, queue=queue) for sweep, folder in ((first, tmp_path / "first"),
                                                                         (second, tmp_path / "second"))]

    assert [r.done for r in reports] == [20, 20]
    order = _execution_order(server)
    assert len(order) == 40
    # the first 20 prompts the server ran mixed both sweeps: neither waited for the other to finish
    assert order[:20].count("the first sweep") >= 5 and order[:20].count("the second sweep") >= 5, order


def _execution_order(server: Any) -> list[str]:
    """The positive prompt of each prompt the server ran, in the order it started them."""
    import requests

    history = requests.get(f"{server.url}/history", timeout=10).json()

    def started(entry: dict[str, Any]) -> int:
        messages = entry["status"]["messages"]
        return int(next(data["timestamp"] for kind, data in messages if kind == "execution_start"))

    entries = sorted(history.values(), key=started)
    texts = []
    for entry in entries:
        graph = entry["prompt"][2]
        texts.append(next(node["inputs"]["text"] for node in graph.values() if node["class_type"] == "CLIPTextEncode"
                          and "sweep" in str(node["inputs"]["text"])))
    return texts


def test_a_worker_that_lacks_the_checkpoint_never_takes_its_cells(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, library: Templates,
        sample_image: Path, tmp_path: Path) -> None:
    (able,) = sim(1, costs=sim_costs(), checkpoints=(DEFAULT_CHECKPOINT,))
    (other,) = sim(1, costs=sim_costs(), checkpoints=("another-model.safetensors",))
    start_worker(broker_url, [other.url], name="lacking")
    start_worker(broker_url, [able.url], name="able")

    report = run_sweep(_sweep(library, sample_image, ("denoise=0.2:0.8:0.2", "cfg=5,7")), tmp_path / "out",
                       queue=CeleryQueue(broker_url, timeouts=TIMEOUTS))

    assert (report.done, report.failed) == (8, 0)
    assert {row["server"].split("/")[0] for row in _manifest(tmp_path / "out")} == {"able"}
    assert other.counters.prompts_started == 0


def test_a_sweep_no_worker_can_run_fails_clearly_instead_of_waiting(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, sample_image: Path,
        tmp_path: Path) -> None:
    (other,) = sim(1, checkpoints=("another-model.safetensors",))
    start_worker(broker_url, [other.url], name="lacking")

    result = CliRunner().invoke(main, ["sweep", "img2img", "--broker", broker_url, "--set", f"image={sample_image}",
                                       "--axis", "cfg=5,7", "--out", str(tmp_path / "out")])

    assert result.exit_code == 1, result.output
    assert "2 of 2 cells failed" in result.output
    assert "no worker can run this cell (worker lacking:" in result.output
    assert f"lacks CheckpointLoaderSimple.ckpt_name '{DEFAULT_CHECKPOINT}'" in result.output
    assert other.counters.prompts_started == 0


def test_a_broker_lost_mid_sweep_is_one_clear_error_and_the_journal_keeps_what_was_queued(
        library: Templates, sample_image: Path, tmp_path: Path) -> None:
    private = start_redis(tmp_path / "redis")
    queue = CeleryQueue(private.url(), timeouts=TIMEOUTS)

    def pull_the_plug(progress: SweepProgress) -> None:
        if "no worker is listening" in progress.message and private.process.poll() is None:
            private.stop()  # the cells are queued and the submitter waits for workers

    try:
        with pytest.raises(BrokerUnreachable) as caught:
            run_sweep(_sweep(library, sample_image, ("cfg=4,5",)), tmp_path / "out", queue=queue,
                      on_progress=pull_the_plug)
    finally:
        private.stop()
    assert str(caught.value).startswith(f"redis://127.0.0.1:{private.port}/0: lost the broker while queueing")
    assert "run the same command again" in str(caught.value)
    rows = _manifest(tmp_path / "out")  # written on the way out, as after Ctrl-C
    assert [row["status"] for row in rows] == ["running", "running"]


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:6379/0", "must start with redis://"),
    ("redis://127.0.0.1:6379/zero", "must be a database number"),
    ("redis://", "names no host"),
])
def test_a_bad_broker_url_is_one_line_and_exit_code_2(url: str, message: str, tmp_path: Path) -> None:
    for arguments in (["queue", "status", "--broker", url],
                      ["sweep", "img2img", "--broker", url, "--axis", "cfg=5,7", "--out", str(tmp_path / "o")],
                      ["worker", "--broker", url, "--server", "http://127.0.0.1:8188"]):
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1, result.output
        assert not (tmp_path / "o").exists()  # nothing started before the broker was checked
