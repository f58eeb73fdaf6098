"""The farm over simulated servers on loopback: real HTTP, real websockets, real faults."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from comfy_orchestrator.cli import main
from comfy_orchestrator.dispatch import Dispatch, RoundRobin, SoonestFinish
from comfy_orchestrator.errors import NoServerAvailable, OutOfMemory
from comfy_orchestrator.farm import (
    DuplicateDiscarded,
    Farm,
    FarmEvent,
    JobFailed,
    JobOutcome,
    JobSubmitted,
    ServerDown,
    ServerUp,
)
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.limits import FARM_TIMEOUTS
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.servers import ServerConfig
from comfy_orchestrator.sim import Costs, SimServer
from comfy_orchestrator.templates import Templates

# A 96x64 picture costs 6144/262144 of a 512x512 step: about 6 ms a step, 60 ms a 10-step job.
COSTS = Costs(step_s=0.25, checkpoint_load_s=0.05, vae_s=0.05)
FAST_RETRIES = RetryPolicy(max_attempts=3, first_delay_s=0.1, max_delay_s=0.5)
CHECKPOINTS = ("a.safetensors", "b.safetensors")


@pytest.fixture
def cells(library: Templates, sample_image: Path) -> Callable[..., Iterator[Job]]:
    """Make img2img sweep cells lazily: `cells(30)`, or over checkpoints, or with a size."""
    template = library.get("img2img")
    schema = SimServer(checkpoints=CHECKPOINTS).schema

    def make(count: int, *, checkpoints: tuple[str, ...] = ("a.safetensors",), per_checkpoint: int = 1,
             width: int = 0) -> Iterator[Job]:
        for index in range(count):
            checkpoint = checkpoints[(index // per_checkpoint) % len(checkpoints)]
            params = template.params({"image": str(sample_image), "seed": index, "steps": 10,
                                      "checkpoint": checkpoint, "width": width})
            yield template.job(params, label=f"cell-{index:03d}", schema=schema)

    return make


def run_farm(farm: Farm, jobs: Iterator[Job], out_dir: Path, *,
             on_outcome: Callable[[int], None] = lambda count: None) -> tuple[list[JobOutcome], list[FarmEvent]]:
    events: list[FarmEvent] = []
    lock = threading.Lock()

    def record(event: FarmEvent) -> None:
        with lock:
            events.append(event)

    outcomes: list[JobOutcome] = []
    for outcome in farm.run(jobs, out_dir=out_dir, on_event=record):
        outcomes.append(outcome)
        on_outcome(len(outcomes))
    return outcomes, events


def ran_on(outcomes: list[JobOutcome]) -> Counter[str]:
    return Counter(outcome.server for outcome in outcomes if isinstance(outcome, JobResult))


def test_sweep_survives_a_killed_server_and_a_dropped_websocket(sim: Any, cells: Any, tmp_path: Path) -> None:
    steady, flaky, doomed = sim(3, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")
    flaky.faults.close_websocket_after(25)  # every socket of this one breaks after 25 messages
    farm = Farm([steady.url, flaky.url, doomed.url], policy=FAST_RETRIES)

    def kill_midway(count: int) -> None:
        if count == 10:
            doomed.crash()

    outcomes, events = run_farm(farm, cells(30), tmp_path / "out", on_outcome=kill_midway)

    assert doomed.crashed.is_set()
    assert all(isinstance(o, JobResult) for o in outcomes), [o for o in outcomes if isinstance(o, JobFailed)]
    labels = [o.job.label for o in outcomes]
    assert sorted(labels) == [f"cell-{i:03d}" for i in range(30)]  # every cell, each exactly once
    files = [path for o in outcomes if isinstance(o, JobResult) for path in o.files]
    assert len(files) == 30 and all(path.is_file() for path in files)
    assert sorted(tmp_path.joinpath("out").iterdir()) == sorted(files)  # no stray copies
    doomed_name = farm.servers[2].name
    assert any(isinstance(e, ServerDown) and e.server == doomed_name for e in events)
    spread = ran_on(outcomes)
    assert spread[farm.servers[0].name] > 0 and spread[farm.servers[1].name] > 0
    assert flaky.counters.prompts_finished >= spread[farm.servers[1].name]


def test_a_server_that_comes_back_rejoins(sim: Any, cells: Any, tmp_path: Path) -> None:
    first = sim(1, costs=COSTS.scaled(0.25), checkpoints=CHECKPOINTS, preview_method="none")[0]  # slow: the
    second = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]  # run outlasts the restart
    farm = Farm([first.url, second.url], policy=FAST_RETRIES)
    name = farm.servers[1].name
    events: list[FarmEvent] = []
    finished_before: list[int] = []

    def restart_once_down(event: FarmEvent) -> None:
        events.append(event)
        if isinstance(event, ServerDown) and event.server == name and not finished_before:
            finished_before.append(second.counters.prompts_finished)
            threading.Timer(0.2, second.restart).start()

    outcomes = []
    for outcome in farm.run(cells(40), out_dir=tmp_path / "out", on_event=restart_once_down):
        outcomes.append(outcome)
        if len(outcomes) == 4:
            second.crash()

    assert sorted(o.job.label for o in outcomes) == [f"cell-{i:03d}" for i in range(40)]
    assert all(isinstance(o, JobResult) for o in outcomes)
    kinds = [type(e).__name__ for e in events if isinstance(e, (ServerUp, ServerDown)) and e.server == name]
    assert kinds[:3] == ["ServerUp", "ServerDown", "ServerUp"]
    assert second.counters.prompts_finished > finished_before[0]  # it worked again after the restart


def test_a_faster_server_does_more_of_the_work(sim: Any, cells: Any, tmp_path: Path) -> None:
    fast = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]
    slow = sim(1, costs=COSTS.scaled(0.5), checkpoints=CHECKPOINTS, preview_method="none")[0]
    farm = Farm([slow.url, fast.url])

    outcomes, _ = run_farm(farm, cells(36), tmp_path / "out")

    spread = ran_on(outcomes)
    assert sum(spread.values()) == 36
    ratio = spread[farm.servers[1].name] / max(spread[farm.servers[0].name], 1)
    assert 1.4 <= ratio <= 3.5, spread  # twice as fast: about twice the cells


def test_affinity_loads_checkpoints_less_than_round_robin(sim: Any, cells: Any, tmp_path: Path) -> None:
    loads = {}
    dispatches: tuple[tuple[str, Dispatch], ...] = (("round-robin", RoundRobin()), ("farm", SoonestFinish()))
    for name, dispatch in dispatches:
        servers = sim(3, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")
        farm = Farm([s.url for s in servers], dispatch=dispatch)
        outcomes, _ = run_farm(farm, cells(24, checkpoints=CHECKPOINTS), tmp_path / name)
        assert len(outcomes) == 24 and all(isinstance(o, JobResult) for o in outcomes)
        loads[name] = sum(s.counters.checkpoint_loads for s in servers)
    assert loads["round-robin"] >= 12  # alternating checkpoints over 3 servers: nearly a load per job
    assert loads["farm"] <= loads["round-robin"] / 2, loads


def test_jobs_go_only_to_servers_that_have_their_checkpoint(sim: Any, cells: Any, tmp_path: Path) -> None:
    only_a = sim(1, costs=COSTS, checkpoints=["a.safetensors"], preview_method="none")[0]
    both = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]
    farm = Farm([only_a.url, both.url])

    outcomes, _ = run_farm(farm, cells(12, checkpoints=CHECKPOINTS), tmp_path / "out")

    assert all(isinstance(o, JobResult) for o in outcomes)
    for outcome in outcomes:
        if isinstance(outcome, JobResult) and outcome.job.params["checkpoint"] == "b.safetensors":
            assert outcome.server == farm.servers[1].name


def test_the_farms_servers_of_one_install_share_one_reading_of_object_info(sim: Any) -> None:
    twins = sim(2, checkpoints=CHECKPOINTS)
    only_a = sim(1, checkpoints=["a.safetensors"])[0]
    farm = Farm([*(server.url for server in twins), only_a.url])
    links = [farm.connect(config) for config in farm.servers]
    try:
        schemas = [link.probe() for link in links]
    finally:
        for link in links:
            link.close()
    assert schemas[0].raw["KSampler"] is schemas[1].raw["KSampler"]
    assert schemas[2].raw["KSampler"] is not schemas[0].raw["KSampler"]
    assert [schema.checkpoints for schema in schemas] == [tuple(CHECKPOINTS), tuple(CHECKPOINTS), ("a.safetensors",)]


def test_a_job_no_server_can_run_is_reported(sim: Any, cells: Any, tmp_path: Path) -> None:
    server = sim(1, costs=COSTS, checkpoints=["a.safetensors"], preview_method="none")[0]
    farm = Farm([server.url])

    outcomes, _ = run_farm(farm, cells(4, checkpoints=CHECKPOINTS), tmp_path / "out")

    failed = [o for o in outcomes if isinstance(o, JobFailed)]
    assert len(outcomes) == 4 and len(failed) == 2
    assert all(isinstance(o.error, NoServerAvailable) and "b.safetensors" in str(o.error) for o in failed)
    assert all(o.job.params["checkpoint"] == "b.safetensors" and o.attempts == 0 for o in failed)


def test_the_same_failure_on_two_servers_fails_the_job(sim: Any, cells: Any, tmp_path: Path) -> None:
    servers = sim(3, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")
    for server in servers:
        server.faults.oom_above(256 * 256)
    # No straggler copies: the test counts every prompt started, and an idle server may otherwise
    # copy a slow server's running job.
    farm = Farm([s.url for s in servers], policy=FAST_RETRIES, straggler_factor=None)
    jobs = [*cells(3), *cells(1, width=512)]  # the last one is too big for every GPU

    outcomes, _ = run_farm(farm, iter(jobs), tmp_path / "out")

    assert len(outcomes) == 4
    failed = [o for o in outcomes if isinstance(o, JobFailed)]
    assert len(failed) == 1
    assert isinstance(failed[0].error, OutOfMemory)
    assert failed[0].attempts == 2 and len(set(failed[0].servers)) == 2  # not the third server, not again
    assert sum(s.counters.prompts_started for s in servers) == 3 + 2


def test_a_lost_prompt_is_run_again(sim: Any, cells: Any, tmp_path: Path) -> None:
    server = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]
    server.faults.drop_prompts(2)  # accepted, then gone without a trace
    farm = Farm([server.url], policy=FAST_RETRIES)

    outcomes, events = run_farm(farm, cells(6), tmp_path / "out")

    assert sorted(o.job.label for o in outcomes) == [f"cell-{i:03d}" for i in range(6)]
    assert all(isinstance(o, JobResult) for o in outcomes)
    assert sum(type(e).__name__ == "JobRetrying" for e in events) == 2


def test_jobs_are_read_lazily(sim: Any, cells: Any, tmp_path: Path) -> None:
    server = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]
    farm = Farm([server.url], window=8)
    read = 0

    def counted() -> Iterator[Job]:
        nonlocal read
        for job in cells(10_000):
            read += 1
            yield job

    outcomes = farm.run(counted(), out_dir=tmp_path / "out")
    first = next(outcomes)
    assert isinstance(first, JobResult)
    assert read <= 8 + 3 + 2  # the window, one server's slots, and what the caller took
    outcomes.close()  # stopping early cancels what is queued
    assert server.wait_idle(timeout_s=10)


def test_closing_the_run_early_stops_every_prompt_it_started(sim: Any, cells: Any, tmp_path: Path) -> None:
    server = sim(1, costs=Costs(step_s=12.0), checkpoints=CHECKPOINTS, preview_method="none")[0]  # 0.3 s a step
    outcomes = Farm([server.url]).run(cells(6), out_dir=tmp_path / "out")
    first = next(outcomes)
    assert isinstance(first, JobResult)
    started = set(server.history)
    outcomes.close()
    assert server.wait_idle(timeout_s=5)
    snapshot = json.loads(requests.get(f"{server.url}/queue", timeout=5).text)
    assert snapshot == {"queue_running": [], "queue_pending": []}
    # the waiting prompts were deleted and the running one interrupted: had they run, 5 more would have succeeded
    stopped = [entry for prompt_id, entry in server.history.items() if prompt_id not in started]
    assert [entry["status"]["status_str"] for entry in stopped] == ["error"]  # the one that ran was interrupted
    assert server.counters.prompts_finished == 2  # the first, and the interrupted one; the rest never ran


def test_farm_status_reads_each_server(sim: Any) -> None:
    up = sim(1, checkpoints=CHECKPOINTS)[0]
    down = sim(1)[0]
    down.crash()
    farm = Farm([ServerConfig(url=up.url, name="up", tags=("gpu0",)), ServerConfig(url=down.url, name="down")])

    first, second = farm.status(timeout_s=10)

    assert (first.name, first.up, first.checkpoints, first.tags) == ("up", True, CHECKPOINTS, ("gpu0",))
    assert first.queue_running == 0 and first.queue_pending == 0
    assert first.devices and first.devices[0].vram_total > 0
    assert (second.name, second.up) == ("down", False)
    assert "cannot connect" in second.error



def test_cli_farm_status_shows_each_server(sim: Any, tmp_path: Path) -> None:
    up = sim(1, checkpoints=CHECKPOINTS)[0]
    down = sim(1)[0]
    down.crash()
    farm_file = tmp_path / "farm.toml"
    farm_file.write_text(f'[[server]]\nurl = "{up.url}"\nname = "gpu0-a"\ntags = ["gpu0"]\n')

    result = CliRunner().invoke(main, ["farm", "status", "--farm", str(farm_file), "--server", down.url],
                                env={"COLUMNS": "80"})

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "gpu0-a  up, 0 running, 0 waiting  [gpu0]" and lines[-1].endswith("  down")
    assert f"  checkpoints: {', '.join(CHECKPOINTS)}" in lines and max(map(len, lines)) <= 80
    assert "cannot connect" in result.stderr and "1 of 2 server(s) down" in result.stderr
    assert "Traceback" not in result.output

    result = CliRunner().invoke(main, ["farm", "status", "--farm", str(farm_file), "--json"])
    assert result.exit_code == 0
    (status,) = json.loads(result.stdout)
    assert (status["name"], status["up"], status["checkpoints"]) == ("gpu0-a", True, list(CHECKPOINTS))


def test_cli_farm_status_refuses_a_bad_farm_file(tmp_path: Path) -> None:
    farm_file = tmp_path / "farm.toml"
    farm_file.write_text('[[server]]\nurl = "http://127.0.0.1:1"\nwieght = 2\n')

    result = CliRunner().invoke(main, ["farm", "status", "--farm", str(farm_file)])

    assert result.exit_code == 2
    assert "wieght" in result.stderr and "Traceback" not in result.output


def test_a_job_that_finishes_twice_gives_one_result(sim: Any, cells: Any, tmp_path: Path) -> None:
    # 2.4 s a job: the jobs queued behind the running one are taken off long before it ends, even under load
    slow = sim(1, costs=COSTS.scaled(0.025), checkpoints=CHECKPOINTS, preview_method="none")[0]
    fast = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]
    # no straggler copies: an idle fast server copying the slow one's last job would add a prompt to the count
    farm = Farm([slow.url, fast.url], policy=FAST_RETRIES, health_interval_s=0.2, straggler_factor=None)
    events: list[FarmEvent] = []
    outcomes: list[JobOutcome] = []

    def heal_after_a_duplicate(event: FarmEvent) -> None:
        events.append(event)
        if isinstance(event, DuplicateDiscarded):
            slow.faults.clear()

    for outcome in farm.run(cells(20), out_dir=tmp_path / "out", on_event=heal_after_a_duplicate):
        outcomes.append(outcome)
        if len(outcomes) == 1:
            # Its health check fails while it keeps working: its jobs move to the fast server,
            # and the one it was running finishes there and here.
            slow.faults.fail_route("/system_stats", status=500)

    assert sorted(o.job.label for o in outcomes) == [f"cell-{i:03d}" for i in range(20)]
    assert all(isinstance(o, JobResult) for o in outcomes)
    assert sorted(tmp_path.joinpath("out").iterdir()) == sorted(p for o in outcomes if isinstance(o, JobResult)
                                                                for p in o.files)
    discarded = [e for e in events if isinstance(e, DuplicateDiscarded)]
    assert [e.server for e in discarded] == [farm.servers[0].name]
    assert slow.counters.prompts_finished + fast.counters.prompts_finished == 21  # one ran twice; the rest were cancelled


def test_jobs_only_a_down_server_can_run_are_reported_in_time(sim: Any, cells: Any, tmp_path: Path) -> None:
    only_a = sim(1, costs=COSTS, checkpoints=["a.safetensors"], preview_method="none")[0]
    both = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]
    both.crash()
    farm = Farm([only_a.url, both.url], policy=FAST_RETRIES, timeouts=replace(FARM_TIMEOUTS, no_server_s=1.0))

    outcomes, _ = run_farm(farm, cells(8, checkpoints=CHECKPOINTS), tmp_path / "out")

    assert len(outcomes) == 8
    done = [o for o in outcomes if isinstance(o, JobResult)]
    failed = [o for o in outcomes if isinstance(o, JobFailed)]
    assert {o.job.params["checkpoint"] for o in done} == {"a.safetensors"} and len(done) == 4
    assert all(isinstance(o.error, NoServerAvailable) and "down" in str(o.error) for o in failed)
    assert {o.job.params["checkpoint"] for o in failed} == {"b.safetensors"}


def test_jobs_queued_on_a_slow_server_move_to_an_idle_one(sim: Any, cells: Any, tmp_path: Path) -> None:
    slow = sim(1, costs=COSTS.scaled(0.1), checkpoints=CHECKPOINTS, preview_method="none")[0]  # 0.6 s a job
    fast = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]
    fast.faults.fail_route("/system_stats", status=503, times=1)  # so the slow one fills its queue alone
    farm = Farm([slow.url, fast.url], policy=FAST_RETRIES, straggler_factor=None)

    outcomes, _ = run_farm(farm, cells(6), tmp_path / "out")

    assert sorted(o.job.label for o in outcomes) == [f"cell-{i:03d}" for i in range(6)]
    spread = ran_on(outcomes)
    assert spread[farm.servers[0].name] == 1, spread  # only its running job of the 3 it had queued
    assert slow.counters.prompts_finished == spread[farm.servers[0].name]  # what moved did not also run there
    assert sorted(tmp_path.joinpath("out").iterdir()) == sorted(p for o in outcomes if isinstance(o, JobResult)
                                                                for p in o.files)


def test_a_failing_event_callback_stops_the_run_with_its_error(sim: Any, cells: Any, tmp_path: Path) -> None:
    server = sim(1, costs=COSTS, checkpoints=CHECKPOINTS, preview_method="none")[0]

    def broken(event: FarmEvent) -> None:
        if isinstance(event, JobSubmitted):
            raise OSError("journal disk full")

    with pytest.raises(OSError, match="journal disk full"):
        for _ in Farm([server.url]).run(cells(5), out_dir=tmp_path / "out", on_event=broken):
            pass
    assert server.wait_idle(timeout_s=10)  # what was queued was taken off the server


def test_events_print_as_one_short_line(sim: Any, cells: Any, tmp_path: Path) -> None:
    server = sim(1, checkpoints=CHECKPOINTS, preview_method="none")[0]
    seen: list[str] = []
    for _ in Farm([server.url]).run(cells(2), out_dir=tmp_path / "out", on_event=lambda e: seen.append(str(e))):
        pass
    assert any(line.startswith("JobProgress(job=Job('cell-000', template='img2img'") for line in seen)
    assert max(len(line) for line in seen) < 300  # the README's on_event=print, not a graph a step
