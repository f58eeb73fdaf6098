"""The farm's engine driven through stub ServerLinks: every step waits on what the engine did, never on a clock.

Each stub job ends only when the test releases it, so the engine's choices (what it
submits, when it refills, which copy it keeps) are checked in an order the test sets.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.engine import FarmRun, close_links
from comfy_orchestrator.errors import ComfyError, ConnectionFailed, Interrupted, ParameterError
from comfy_orchestrator.farm import (
    DuplicateDiscarded,
    Farm,
    FarmEvent,
    JobDone,
    JobOutcome,
    JobRetrying,
    JobSubmitting,
    RunningJob,
    ServerDown,
    ServerLink,
    ServerStatus,
)
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.protocol import Progress
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.servers import ServerConfig

SCHEMA = Schema.recorded()
QUICK = RetryPolicy(max_attempts=3, first_delay_s=0.01, max_delay_s=0.05)
PATIENCE_S = 10.0  # how long a step may take before the test calls the engine stuck


def jobs(count: int) -> Iterator[Job]:
    """Jobs that any server of the recorded schema can run, labelled job-0, job-1, ..."""
    for index in range(count):
        graph = Graph.from_api({"1": {"class_type": "EmptyLatentImage",
                                      "inputs": {"width": 64 + 8 * index, "height": 64, "batch_size": 1}}})
        yield Job(graph=graph, label=f"job-{index}")


class StubJob:
    """A job queued on a stub server; it ends when the test finishes or fails it."""

    def __init__(self, link: StubLink, job: Job, prompt_id: str) -> None:
        self.link = link
        self.job = job
        self.prompt_id = prompt_id
        self.cancelled = False
        self._ended = threading.Event()
        self._outcome: JobResult | ComfyError | None = None

    def finish(self) -> None:
        self._end(JobResult(job=self.job, prompt_id=self.prompt_id, server=self.link.name))

    def fail(self, error: ComfyError) -> None:
        self._end(error)

    def _end(self, outcome: JobResult | ComfyError) -> None:
        if not self._ended.is_set():
            self._outcome = outcome
            self._ended.set()

    def wait(self, timeout_s: float) -> JobResult:
        if not self._ended.wait(PATIENCE_S):
            raise AssertionError(f"{self.job.label} on {self.link.name} was never ended by the test")
        self.link.note("reaped", self)
        if isinstance(self._outcome, ComfyError):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def cancel(self) -> None:
        self.cancelled = True
        self.fail(Interrupted(self.prompt_id, server=self.link.name))


class StubLink:
    """A ServerLink whose server answers as the test says: up once `opened`, down while `unwell`."""

    def __init__(self, name: str, *, opened: bool = True, finish_at_once: bool = False) -> None:
        self.name = name
        self.opened = threading.Event()
        self.unwell = threading.Event()
        self.finish_at_once = finish_at_once
        self.queued: list[StubJob] = []
        self.log: list[tuple[str, str, int]] = []  # (what happened, job label, jobs held after it)
        self._held = 0
        self._changed = threading.Condition()
        if opened:
            self.opened.set()

    def note(self, what: str, job: StubJob) -> None:
        with self._changed:
            self._held += {"submitted": 1, "reaped": -1}[what]
            self.log.append((what, job.job.label, self._held))
            self._changed.notify_all()

    def wait_for(self, what: Callable[[StubLink], bool], doing: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: what(self), PATIENCE_S):
                raise AssertionError(f"{self.name} never {doing}; its log: {self.log}")

    def probe(self) -> Schema:
        if not self.opened.wait(0.2) or self.unwell.is_set():
            raise ConnectionFailed("not answering", server=self.name)
        return SCHEMA

    def check(self) -> None:
        if self.unwell.is_set():
            raise ConnectionFailed("not answering", server=self.name)

    def submit(self, job: Job, *, prompt_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> RunningJob:
        queued = StubJob(self, job, prompt_id or f"{self.name}-{len(self.queued)}")
        self.queued.append(queued)
        self.note("submitted", queued)
        if self.finish_at_once:
            queued.finish()
        return queued

    def locate(self, prompt_id: str) -> tuple[str, Mapping[str, Any] | None]:
        queued = next((q for q in self.queued if q.prompt_id == prompt_id), None)
        return ("unknown", None) if queued is None else ("running", None)

    def cancel(self, prompt_id: str) -> None:
        for queued in self.queued:
            if queued.prompt_id == prompt_id:
                queued.cancel()

    def save(self, result: JobResult, out_dir: Path) -> JobResult:
        return result

    def withdraw(self, job: RunningJob) -> bool:
        return False  # it had started: it stays where it is

    def status(self) -> ServerStatus:
        return ServerStatus(name=self.name, url=f"http://{self.name}", up=not self.unwell.is_set())

    def close(self) -> None:
        pass


class Recorder:
    """The events of a run, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[FarmEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: FarmEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, kind: type, server: str) -> FarmEvent:
        def found() -> FarmEvent | None:
            return next((e for e in self.events if isinstance(e, kind) and getattr(e, "server") == server), None)

        with self._changed:
            event = self._changed.wait_for(found, PATIENCE_S)
        assert event is not None, f"no {kind.__name__} from {server}; events: {self.events}"
        return event


class Run:
    """A farm's run consumed on its own thread (the engine starts at the first outcome asked for)."""

    def __init__(self, farm: Farm, count: int, events: Callable[[FarmEvent], None] = lambda event: None) -> None:
        self._outcomes: queue.Queue[JobOutcome | BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._consume, args=(farm, count, events), daemon=True)
        self._thread.start()

    def _consume(self, farm: Farm, count: int, events: Callable[[FarmEvent], None]) -> None:
        try:
            for outcome in farm.run(jobs(count), on_event=events):
                self._outcomes.put(outcome)
        except BaseException as exc:
            self._outcomes.put(exc)
        self._outcomes.put(None)

    def next(self) -> JobOutcome:
        item = self._outcomes.get(timeout=PATIENCE_S)
        if isinstance(item, BaseException):
            raise item
        assert item is not None, "the run ended early"
        return item

    def rest(self) -> list[JobOutcome]:
        """The outcomes still to come, once the run ends."""
        items: list[JobOutcome] = []
        while (item := self._outcomes.get(timeout=PATIENCE_S)) is not None:
            assert not isinstance(item, BaseException), item
            items.append(item)
        self._thread.join(PATIENCE_S)
        return items


def farm_of(*links: StubLink, queue_ahead: int = 0, health_interval_s: float = 3600.0,
            weights: Mapping[str, float] | None = None, straggler_factor: float | None = None) -> Farm:
    by_name = {link.name: link for link in links}
    configs = [ServerConfig(url=f"http://{link.name}", queue_ahead=queue_ahead,
                            weight=(weights or {}).get(link.name, 1.0)) for link in links]
    return Farm(configs, policy=QUICK, connect=lambda config: by_name[config.name],
                health_interval_s=health_interval_s, straggler_factor=straggler_factor)


def test_a_server_keeps_one_running_and_queue_ahead_waiting_refilled_as_each_ends() -> None:
    link = StubLink("a.test")
    run = Run(farm_of(link, queue_ahead=2), 6)
    outcomes: list[JobOutcome] = []
    for index in range(6):
        link.wait_for(lambda stub: len(stub.queued) >= min(index + 3, 6), f"held {min(index + 3, 6)} jobs")
        link.queued[index].finish()
        outcomes.append(run.next())
    assert run.rest() == []
    submitted = [(label, held) for what, label, held in link.log if what == "submitted"]
    # three at once, then each one that ends is replaced straight away: the server never holds more or less
    assert submitted == [("job-0", 1), ("job-1", 2), ("job-2", 3), ("job-3", 3), ("job-4", 3), ("job-5", 3)]
    assert [o.job.label for o in outcomes] == [f"job-{i}" for i in range(6)]
    assert all(isinstance(o, JobResult) and o.server == "a.test" for o in outcomes)


def test_the_jobs_of_a_server_lost_mid_job_run_again_on_another() -> None:
    lost, spare = StubLink("lost.test"), StubLink("spare.test", opened=False, finish_at_once=True)
    events = Recorder()
    run = Run(farm_of(lost, spare, queue_ahead=1), 2, events)
    lost.wait_for(lambda stub: len(stub.queued) == 2, "took both jobs")
    spare.opened.set()  # only now: both jobs must start on the server that will be lost
    lost.unwell.set()
    lost.queued[0].fail(ConnectionFailed("connection reset mid-job", server="lost.test"))
    outcomes = run.rest()
    assert sorted((o.job.label, o.server) for o in outcomes if isinstance(o, JobResult)) == [
        ("job-0", "spare.test"), ("job-1", "spare.test")]
    down = events.wait_for(ServerDown, "lost.test")
    assert isinstance(down, ServerDown) and down.moved == 1  # the job queued behind the one that failed
    retrying = events.wait_for(JobRetrying, "lost.test")
    assert isinstance(retrying, JobRetrying) and retrying.job.label == "job-0" and retrying.attempt == 1
    assert sorted(label for what, label, _ in spare.log if what == "submitted") == ["job-0", "job-1"]


def test_a_job_that_finishes_twice_keeps_the_first_result() -> None:
    slow, fast = StubLink("slow.test"), StubLink("fast.test", opened=False, finish_at_once=True)
    events = Recorder()
    run = Run(farm_of(slow, fast, health_interval_s=0.01), 1, events)
    slow.wait_for(lambda stub: len(stub.queued) == 1, "took the job")
    fast.opened.set()
    slow.unwell.set()  # the health watch marks it down; its job moves, but its copy runs on
    outcome = run.next()
    assert isinstance(outcome, JobResult) and outcome.server == "fast.test"
    events.wait_for(JobDone, "fast.test")
    slow.queued[0].finish()  # the first copy finishes after all
    discarded = events.wait_for(DuplicateDiscarded, "slow.test")
    assert isinstance(discarded, DuplicateDiscarded) and discarded.job.label == "job-0"
    assert run.rest() == []  # one outcome for the job, never two
    assert not slow.queued[0].cancelled  # it was running: nothing to take off
    assert sum(isinstance(e, JobDone) for e in events.events) == 1


@pytest.mark.parametrize("queue_ahead", [0, 1, 3])
def test_a_server_never_holds_more_than_one_plus_queue_ahead(queue_ahead: int) -> None:
    link = StubLink("a.test", finish_at_once=True)
    outcomes = list(farm_of(link, queue_ahead=queue_ahead).run(jobs(12)))
    assert len(outcomes) == 12 and all(isinstance(o, JobResult) for o in outcomes)
    assert max(held for what, _, held in link.log if what == "submitted") <= 1 + queue_ahead


def test_an_idle_server_copies_a_far_slower_straggler_and_the_first_result_is_kept() -> None:
    slow, fast = StubLink("slow.test"), StubLink("fast.test", opened=False, finish_at_once=True)
    events = Recorder()
    run = Run(farm_of(slow, fast, weights={"slow.test": 0.1}, straggler_factor=2.0), 1, events)
    slow.wait_for(lambda stub: len(stub.queued) == 1, "took the only job")
    fast.opened.set()  # up only now, with nothing left waiting: the job runs on a server ten times slower
    outcome = run.next()
    assert isinstance(outcome, JobResult) and outcome.server == "fast.test" and outcome.job.label == "job-0"
    assert run.rest() == []  # one outcome for the job, never two
    slow.wait_for(lambda stub: stub.queued[0].cancelled, "had its copy cancelled")
    assert sum(isinstance(e, JobDone) for e in events.events) == 1


def test_without_a_straggler_factor_no_job_is_copied() -> None:
    slow, idle = StubLink("slow.test"), StubLink("idle.test", opened=False)
    events = Recorder()
    run = Run(farm_of(slow, idle, weights={"slow.test": 0.1}, straggler_factor=None), 2, events)
    slow.wait_for(lambda stub: len(stub.queued) == 1, "took the first job")
    idle.opened.set()
    idle.wait_for(lambda stub: len(stub.queued) == 1, "took the second job")
    idle.queued[0].finish()  # idle again with nothing waiting, beside a server ten times slower
    assert isinstance(run.next(), JobResult)
    slow.queued[0].finish()
    assert [o.server for o in run.rest() if isinstance(o, JobResult)] == ["slow.test"]
    assert [label for what, label, _ in idle.log if what == "submitted"] == ["job-1"]


def test_a_server_slow_to_connect_holds_up_no_other() -> None:
    late, quick = StubLink("late.test"), StubLink("quick.test", finish_at_once=True)
    connected = threading.Event()

    def connect(config: ServerConfig) -> ServerLink:
        if config.name == "late.test":
            assert connected.wait(PATIENCE_S), "the test never let late.test connect"
            return late
        return quick

    farm = Farm([ServerConfig(url="http://late.test"), ServerConfig(url="http://quick.test")], policy=QUICK,
                connect=connect, health_interval_s=3600.0, straggler_factor=None)
    run = Run(farm, 3)
    outcomes = [run.next() for _ in range(3)]  # all while late.test is still connecting
    connected.set()
    assert run.rest() == []
    assert [o.server for o in outcomes if isinstance(o, JobResult)] == ["quick.test"] * 3
    assert late.log == []


def test_a_link_that_cannot_be_made_ends_the_run_with_its_error() -> None:
    def connect(config: ServerConfig) -> ServerLink:
        raise ParameterError(f"ca_cert: no file {config.name}.pem", parameter="ca_cert")

    farm = Farm([ServerConfig(url="http://a.test")], policy=QUICK, connect=connect, health_interval_s=3600.0)
    with pytest.raises(ParameterError, match="no file a.test.pem"):
        list(farm.run(jobs(2)))


class CancelNoted(StubJob):
    """A stub job that tells its server when it is cancelled, so the test sees the order."""

    link: HeldSubmits

    def cancel(self) -> None:
        self.link.cancel_order.append(self.job.label)
        super().cancel()


class HeldSubmits(StubLink):
    """A stub server whose first job ends at once and whose third submission waits for `let_through`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.submitting = threading.Event()
        self.let_through = threading.Event()
        self.cancel_order: list[str] = []

    def submit(self, job: Job, *, prompt_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> RunningJob:
        if job.label == "job-2":
            self.submitting.set()
            assert self.let_through.wait(PATIENCE_S), "the test never let job-2's submission through"
        queued = CancelNoted(self, job, prompt_id or f"{self.name}-{len(self.queued)}")
        self.queued.append(queued)
        self.note("submitted", queued)
        if job.label == "job-0":
            queued.finish()
        return queued


def test_stopping_while_a_job_is_being_submitted_cancels_it_first() -> None:
    link = HeldSubmits("a.test")
    outcomes = farm_of(link, queue_ahead=1).run(jobs(3))  # job-1 waits behind job-0, then runs; job-2 is next
    first = next(outcomes)
    assert isinstance(first, JobResult) and first.job.label == "job-0"
    assert link.submitting.wait(PATIENCE_S)
    closer = threading.Thread(target=outcomes.close)
    closer.start()
    link.let_through.set()
    closer.join(PATIENCE_S)
    assert not closer.is_alive()
    # the newest first: cancelled after job-1, job-2 could start on the server job-1's cancellation frees
    assert link.cancel_order == ["job-2", "job-1"]


class HeldProbe(StubLink):
    """A stub server whose first probe answers only once the test says `answer`."""

    def __init__(self, name: str) -> None:
        super().__init__(name, finish_at_once=True)
        self.answer = threading.Event()

    def probe(self) -> Schema:
        assert self.answer.wait(PATIENCE_S), f"the test never let {self.name} answer"
        return super().probe()


def test_while_a_server_is_still_probed_the_others_hold_one_job_each() -> None:
    first, late = StubLink("first.test"), HeldProbe("late.test")
    run = Run(farm_of(first, late, queue_ahead=2), 6)
    first.wait_for(lambda stub: len(stub.queued) == 1, "took the first job")
    first.queued[0].finish()
    first.wait_for(lambda stub: len(stub.queued) == 2, "took the next job")
    # one job at a time: the next is sent only once the last ended, none queued ahead for late.test to want
    assert first.log == [("submitted", "job-0", 1), ("reaped", "job-0", 0), ("submitted", "job-1", 1)]
    first.finish_at_once = True  # from here every job ends as it is sent
    late.answer.set()
    first.queued[1].finish()
    outcomes = run.rest()
    assert sorted(o.job.label for o in outcomes) == [f"job-{i}" for i in range(6)]


class HeldFirstSend(StubLink):
    """A stub server whose first submission waits for `let_through`; it queues a job as its submission ends."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.submitting = threading.Event()
        self.let_through = threading.Event()
        self.in_flight = 0
        self.most_at_once = 0
        self._count = threading.Lock()

    def submit(self, job: Job, *, prompt_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> RunningJob:
        with self._count:
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
        if job.label == "job-0":
            self.submitting.set()
            assert self.let_through.wait(PATIENCE_S), "the test never let job-0's submission through"
        with self._count:
            self.in_flight -= 1
        return super().submit(job, prompt_id=prompt_id, on_progress=on_progress)


def test_a_server_filled_from_another_thread_queues_its_jobs_in_the_order_sent() -> None:
    # A failover lets a server's oldest job finish and cancels the rest: were a later job to land
    # first, it would run there as well as elsewhere, and the oldest would be cancelled instead.
    first, late = HeldFirstSend("first.test"), HeldProbe("late.test")
    late.finish_at_once = False
    events = Recorder()
    run = Run(farm_of(first, late, queue_ahead=1), 6, events)
    assert first.submitting.wait(PATIENCE_S)  # its one job while late.test is still probed, being sent
    late.answer.set()  # the last probe: the farm now fills first.test ahead too, from late.test's thread
    late.wait_for(lambda stub: len(stub.queued) == 2, "took its two jobs")
    first.let_through.set()
    first.wait_for(lambda stub: len(stub.queued) == 2, "took a job beside its first")
    sent = [e.job.label for e in events.events if isinstance(e, JobSubmitting) and e.server == "first.test"]
    assert [queued.job.label for queued in first.queued] == sent and sent[0] == "job-0"
    assert first.most_at_once == 1
    first.finish_at_once = late.finish_at_once = True
    for stub in (first, late):
        for queued in list(stub.queued):
            queued.finish()
    assert sorted(o.job.label for o in run.rest()) == [f"job-{i}" for i in range(6)]


def test_a_settled_job_whose_last_copy_was_on_a_server_that_went_down_is_forgotten() -> None:
    run = FarmRun(farm_of(StubLink("a.test"), StubLink("b.test")), jobs(1), out_dir=None, on_event=None)
    first, second = run.servers
    with run.lock:  # as the engine calls them, no thread started
        for server in run.servers:
            server.came_up(SCHEMA)
        run.refill()
        ticket = run.take(first)
        assert ticket is not None
        won, copy = run.board(first, ticket), run.board(second, ticket)  # a straggler's copy
        run.drop(first, won)
        assert run.settle(ticket, JobResult(job=ticket.job, prompt_id="p-0", server="a.test"), "a.test")
        assert run.ledger.winner(ticket.seq) == "a.test"  # b.test still holds a copy that may report
        run.mark_down(second, ConnectionFailed("not answering", server="b.test"))
        assert not run.drop(second, copy)  # its thread, reaping the copy later, finds it already gone
    assert ticket.copies == 0 and run.ledger.winner(ticket.seq) is None  # memory stays flat


class HandshakeLink(StubLink):
    """A link whose close waits until every link of its farm is closing (a websocket's closing handshake):
    closed one after another, the first one's wait runs out and its close fails."""

    def __init__(self, name: str, closing: threading.Barrier, *, error: ComfyError | None = None) -> None:
        super().__init__(name, finish_at_once=True)
        self.closing, self.error, self.closed = closing, error, False

    def close(self) -> None:
        self.closing.wait()
        self.closed = True
        if self.error is not None:
            raise self.error


def test_the_end_of_a_run_closes_its_links_at_once() -> None:
    closing = threading.Barrier(3, timeout=PATIENCE_S)
    links = [HandshakeLink(f"{name}.test", closing) for name in "abc"]
    run = Run(farm_of(*links), 6)
    assert len([run.next() for _ in range(6)] + run.rest()) == 6
    assert all(link.closed for link in links)


def test_closing_links_at_once_raises_the_first_error_once_all_are_closed() -> None:
    closing = threading.Barrier(2, timeout=PATIENCE_S)
    broken = ConnectionFailed("close refused", server="b.test")
    links = [HandshakeLink("a.test", closing), HandshakeLink("b.test", closing, error=broken)]
    with pytest.raises(ConnectionFailed, match="close refused"):
        close_links(links)
    assert all(link.closed for link in links)
