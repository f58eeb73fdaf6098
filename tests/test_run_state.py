"""A farm run's books without threads: each decision is called directly, as the engine calls it with the lock held.

No server is reached (the books never connect one) and nothing waits, so every answer here
follows from the state the test sets up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import pytest

from comfy_orchestrator.dispatch import VERDICTS_KEPT, Capability, Dispatch, SoonestFinish
from comfy_orchestrator.errors import ConnectionFailed, NoServerAvailable
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import FARM_TIMEOUTS, Timeouts
from comfy_orchestrator.links import JobFailed, ServerLink
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.run_state import DEFAULT_JOB_S, EndOfRun, RunServer, RunState
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.servers import ServerConfig

SCHEMA = Schema.recorded()


@dataclass(frozen=True)
class Settings:
    """The RunSettings a Farm would give."""

    servers: Sequence[ServerConfig]
    policy: RetryPolicy = RetryPolicy()
    dispatch: Dispatch = SoonestFinish()
    timeouts: Timeouts = FARM_TIMEOUTS
    health_interval_s: float = 1.0
    window: int = 64
    straggler_factor: float | None = None

    def connect(self, config: ServerConfig) -> ServerLink:
        raise AssertionError(f"the run's books connected to {config.name}: only the engine's threads do")


def job(index: int, class_type: str = "EmptyLatentImage") -> Job:
    graph = Graph.from_api({"1": {"class_type": class_type, "inputs": {"width": 64 + 8 * index, "height": 64,
                                                                       "batch_size": 1}}})
    return Job(graph=graph, label=f"job-{index}")


def books(*names: str, jobs: Iterator[Job] | None = None, window: int = 64, queue_ahead: int = 0,
          weights: Sequence[float] | None = None) -> RunState:
    configs = [ServerConfig(url=f"http://{name}", queue_ahead=queue_ahead, weight=(weights or [1.0] * len(names))[i])
               for i, name in enumerate(names)]
    return RunState(Settings(servers=configs, window=window), jobs if jobs is not None else iter(()))


def bring_up(server: RunServer, schema: Schema = SCHEMA) -> None:
    server.up = True
    server.capability = Capability(schema)


def read_and_bring_up(state: RunState) -> list[RunServer]:
    """The first jobs read and every server up and able to run them (lock held); the servers."""
    state.refill()
    for server in state.servers:
        bring_up(server)
    return state.servers


def test_jobs_are_read_a_window_ahead_and_numbered_in_order() -> None:
    state = books("a.test", jobs=(job(i) for i in range(100)), window=8, queue_ahead=2)
    with state.lock:  # as the engine calls them
        state.refill()
        # the window, or twice the slots of the farm if that is more: max(8, 2 * 3)
        assert [ticket.seq for ticket in state.waiting] == list(range(8))
        assert state.open_tickets == 8 and state.source is not None


def test_a_source_that_fails_stops_reading_and_keeps_its_error() -> None:
    def source() -> Iterator[Job]:
        yield job(0)
        raise ValueError("the third row of the sweep file is broken")

    state = books("a.test", jobs=source())
    with state.lock:  # as the engine calls them
        state.refill()
        assert [ticket.seq for ticket in state.waiting] == [0]
        assert state.source is None and isinstance(state.source_error, ValueError)


def test_a_server_takes_the_oldest_job_it_can_run_and_boards_it() -> None:
    state = books("a.test", "b.test", jobs=(job(i) for i in range(3)))
    with state.lock:  # as the engine calls them
        a, b = read_and_bring_up(state)
        ticket = state.take(a)
        assert ticket is not None and ticket.seq == 0 and [t.seq for t in state.waiting] == [1, 2]
        flight = state.board(a, ticket)
        assert a.flights == [flight] and ticket.tried == ["a.test"] and ticket.copies == 1
        assert a.last == ticket.needs


def test_a_server_resting_from_a_job_leaves_it_to_another() -> None:
    state = books("a.test", "b.test", jobs=iter([job(0)]))
    with state.lock:  # as the engine calls them
        a, b = read_and_bring_up(state)
        state.waiting[0].avoid_until["a.test"] = math.inf
        assert state.take(a) is None and state.idle_with_nothing
        taken = state.take(b)
        assert taken is not None and taken.seq == 0


def test_a_job_no_server_can_run_fails_at_once_naming_what_each_lacks() -> None:
    state = books("a.test", "b.test", jobs=iter([job(0, "NoSuchNode"), job(1)]))
    with state.lock:  # as the engine calls them
        read_and_bring_up(state)
        taken = state.take(state.servers[0])
        assert taken is not None and taken.seq == 1
        failed = state.results.get_nowait()
        assert isinstance(failed, JobFailed) and failed.job.label == "job-0"
        assert isinstance(failed.error, NoServerAvailable)
        assert "a.test lacks node class NoSuchNode" in str(failed.error)
        assert "b.test lacks node class NoSuchNode" in str(failed.error)


def test_a_new_object_info_is_asked_again_whether_a_job_can_run() -> None:
    state = books("a.test", jobs=iter([job(0)]))
    with state.lock:  # as the engine calls them
        state.refill()
        (server,) = state.servers
        (ticket,) = state.waiting
        bring_up(server, Schema({}))  # a server that lists no node class at all
        assert not state.able(ticket, server)
        bring_up(server)  # probed again: now it has the node
        assert state.able(ticket, server)


def test_a_job_is_settled_once_and_the_run_ends_after_the_last() -> None:
    state = books("a.test", jobs=iter([job(0)]))
    with state.lock:  # as the engine calls them
        state.refill()
        state.refill()  # the source is read to its end
        (ticket,) = state.waiting
        failure = JobFailed(ticket.job, NoServerAvailable("none"), 0, ())
        assert state.settle(ticket, failure, "a.test")
        assert not state.settle(ticket, failure, "b.test")  # a second outcome for the same job is a duplicate
        assert state.results.get_nowait() is failure
        assert isinstance(state.results.get_nowait(), EndOfRun) and state.stop.is_set()


@pytest.mark.parametrize(("weights", "expected_s"), [
    ((1.0, 1.0), (2.0, 2.0)),  # b has timed nothing: it is expected to take what a takes
    ((1.0, 2.0), (2.0, 1.0)),  # twice the weight: half the time
])
def test_a_server_that_timed_nothing_is_judged_by_the_others(weights: tuple[float, float],
                                                             expected_s: tuple[float, float]) -> None:
    state = books("a.test", "b.test", weights=weights)
    with state.lock:  # as the engine calls them
        a, b = state.servers
        for seconds in (2.0, 2.0, 2.0):
            a.times.add(seconds, loaded_checkpoint=False)
        views = state.views()
        assert (views[0].job_s, views[1].job_s) == expected_s
        assert [view.name for view in views] == ["a.test", "b.test"]


def test_before_any_job_is_timed_a_job_is_guessed_at_the_default() -> None:
    state = books("a.test")
    with state.lock:  # as the engine calls them
        assert state.views()[0].job_s == DEFAULT_JOB_S


def test_a_job_seen_before_a_failure_is_judged_afresh_after_it() -> None:
    state = books("a.test", "b.test", jobs=iter([job(0)]))
    with state.lock:  # as the engine calls them
        a, b = read_and_bring_up(state)
        seen = state.take(a)  # seen while both may run it
        assert seen is not None
        state.requeue(seen)  # back, as when its submission failed
        seen.avoid_until["a.test"] = math.inf  # it failed on a
        assert state.take(a) is None
        taken = state.take(b)
        assert taken is seen


def test_a_job_only_a_lost_server_can_run_starts_waiting_for_it() -> None:
    state = books("a.test", "b.test", jobs=iter([job(0, "KSamplerAdvanced")]))
    with state.lock:  # as the engine calls them
        state.refill()
        a, b = state.servers
        bring_up(a, Schema({}))  # a can run nothing
        bring_up(b)
        (ticket,) = state.waiting
        state.take(a)  # seen while b is up: b may run it
        assert ticket.stranded_since is None
        b.up = False
        assert state.take(a) is None
        assert ticket.stranded_since is not None  # only b can run it, and b is down: the clock runs


def test_a_capability_answers_alike_after_it_forgot_what_it_was_asked() -> None:
    capability = Capability(SCHEMA)
    runnable = books("a.test", jobs=iter([job(0)]))
    with runnable.lock:
        runnable.refill()
    needs = runnable.waiting[0].needs
    lacking = replace(needs, class_types=needs.class_types | {"NoSuchNode"})
    answers = [capability.can_run(replace(needs, texts=frozenset({f"prompt {i}"})))
               for i in range(VERDICTS_KEPT + 5)]
    assert all(answers) and not capability.can_run(lacking) and capability.can_run(needs)


def test_only_busy_servers_quiet_for_the_interval_are_asked_whether_they_answer() -> None:
    state = books("idle.test", "heard.test", "quiet.test", "down.test", jobs=(job(i) for i in range(3)))
    idle, heard, quiet, down = state.servers
    with state.lock:  # as the engine calls them
        read_and_bring_up(state)
        for server in (heard, quiet, down):
            ticket = state.take(server)
            assert ticket is not None
            state.board(server, ticket)
        down.up = False
        now = 1000.0
        heard.answered_at = now - 0.5  # within the 1 s interval: it answered a submit or a download
        quiet.answered_at = down.answered_at = idle.answered_at = now - 1.5
        assert state.quiet_servers(now) == [quiet]


def test_a_server_queues_ahead_only_once_every_other_has_answered_or_failed_its_first_probe() -> None:
    state = books("first.test", "late.test", queue_ahead=2, jobs=iter([job(0)]))
    first, late = state.servers
    with state.lock:  # as the engine calls them
        state.refill()
        bring_up(first)
        assert state.slots_now(first) == 1  # late.test may come up any moment: leave it the next jobs
        ticket = state.take(first)
        assert ticket is not None
        state.board(first, ticket)
        assert state.held_back(first) == []
        late.failed(ConnectionFailed("connection refused", server=late.name), RetryPolicy(), now=0.0)
        assert state.slots_now(first) == 3  # it failed once: it is down, not coming
        assert state.held_back(late) == [first]  # first.test's thread waits on its job: it is filled for it
        bring_up(late)
        assert state.slots_now(first) == state.slots_now(late) == 3
