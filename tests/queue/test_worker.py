"""The worker process: a stop lets its running cells finish and leaves nothing of ours on the servers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.queue import CeleryQueue, QueueTimeouts
from comfy_orchestrator.sim.costs import Costs
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_run import run_sweep
from comfy_orchestrator.templates import Templates
from tests.queue.conftest import TEST_LEASE_S, wait_for


def test_sigterm_finishes_the_running_cells_then_another_worker_takes_the_rest(
        sim: Callable[..., list[Any]], start_worker: Callable[..., Any], broker_url: str, library: Templates,
        sample_image: Path, tmp_path: Path) -> None:
    (server,) = sim(1, costs=Costs(step_s=0.03), checkpoints=(DEFAULT_CHECKPOINT,))  # about 0.6 s a prompt
    queue = CeleryQueue(broker_url, timeouts=QueueTimeouts(lease_s=TEST_LEASE_S, audit_s=0.5))
    sweep = Sweep(library.get("img2img"), (parse_axis("cfg=3,4,5,6,7,8,9,10"),), {"image": str(sample_image)})
    assert run_sweep(sweep, tmp_path / "out", queue=queue, detach=True).waiting == 8
    first = start_worker(broker_url, [server.url], name="first")
    wait_for(lambda: server.counters.prompts_started >= 1, timeout_s=30.0, what="the first prompt to start")

    first.stop()  # SIGTERM: a warm shutdown

    assert first.process.returncode == 0, first.output()
    listing = requests.get(f"{server.url}/queue", timeout=10).json()
    assert listing["queue_running"] == [] and listing["queue_pending"] == []  # nothing of ours left on the server
    ran_by_first = server.counters.prompts_finished
    assert server.counters.prompts_started == ran_by_first  # what it had taken ran to the end before it left
    assert 1 <= ran_by_first < 8
    start_worker(broker_url, [server.url], name="second")
    report = run_sweep(sweep, tmp_path / "out", queue=queue)
    assert (report.done, report.failed) == (8, 0)
    assert server.counters.prompts_finished == 8  # the first worker's results were kept, nothing ran twice
