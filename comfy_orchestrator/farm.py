"""Farm: many servers, a thread each, driven through a ServerLink per server.

A farm runs a stream of jobs over several ComfyUI servers (several GPUs, or several
processes on one GPU) and keeps each one busy::

    from comfy_orchestrator.farm import Farm, JobFailed
    from comfy_orchestrator.servers import load_farm

    farm = Farm(load_farm("farm.toml"))            # or Farm(["http://a:8188", "http://b:8188"])
    for outcome in farm.run(jobs, out_dir=Path("out"), on_event=print):
        if isinstance(outcome, JobFailed):
            print(outcome.job.label, "failed on", outcome.servers, outcome.error)
        else:                                        # a JobResult
            print(outcome.job.label, "ran on", outcome.server, outcome.files)

`run` reads `jobs` lazily (a bounded window ahead of the servers) and yields one outcome
per job, in completion order, never two: a `JobResult` (`.server` names the server that
ran it: its `ServerConfig.name`, host:port unless the farm file names it) or a `JobFailed`
with the error, the number of attempts and the servers tried.
Progress arrives as `FarmEvent` values (ServerUp, ServerDown, JobSubmitted, JobRetrying,
JobDone, DuplicateDiscarded) through `on_event`, called from the farm's threads; keep it
quick. `Farm.status()` reads each server's health for `comfy-orch farm status`.

How jobs move (the policy is pure and lives in dispatch.py):
- Each server holds `1 + queue_ahead` jobs (default 2 ahead), so its GPU never waits.
- A free slot takes the waiting job that this server will finish soonest, judged from
  each server's observed job times, queue and loaded checkpoint (`SoonestFinish`);
  among those it prefers jobs sharing the checkpoint, input image and prompt text of
  its last job (affinity), and it only takes jobs whose checkpoint and node classes
  its object_info lists.
- A server with nothing to take moves a job queued behind another server's running
  one to itself when it would finish it sooner (the end of a sweep, a slow server).
- A busy server is asked /system_stats every `health_interval_s`. One that fails that
  or a job (connection, 5xx, timeout) is marked down; its jobs go back to the waiting
  list (the ones queued behind its running job are taken off it); it is probed with
  `RetryPolicy.delay()` backoff and rejoins when it answers. A job that fails the same
  deterministic way on two servers (PromptRejected, ExecutionFailed, OutOfMemory), that
  runs out of `RetryPolicy.max_attempts`, or that no server can run, is reported as
  `JobFailed`. If a moved job finishes twice, the first result is kept and the second
  discarded (`DuplicateDiscarded`).

This module is past 600 lines on purpose: the engine `_Run` is one idea (a run's waiting
list, its servers' threads and its outcomes, all under one lock) and its methods read
each other's state; the pure decisions it asks are dispatch.py's, and its servers are
reached only through `ServerLink`, so tests drive it with stub links.
"""

from __future__ import annotations

import logging
import math
import queue
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from comfy_orchestrator.client import Client
from comfy_orchestrator.dispatch import (
    Attempt,
    Capability,
    CompletionLedger,
    Dispatch,
    JobNeeds,
    JobTimes,
    QueuedJob,
    ServerView,
    SoonestFinish,
    WaitingJob,
    decide_retry,
    is_refusal,
    job_needs,
    worth_duplicating,
)
from comfy_orchestrator.errors import (
    AuthFailed,
    ComfyError,
    JobLost,
    MalformedMessage,
    NoServerAvailable,
    RequestTimedOut,
    ServerError,
)
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.limits import FARM_TIMEOUTS, Timeouts
from comfy_orchestrator.protocol import Progress, outcome_from_history, outputs_from_history
from comfy_orchestrator.retry import RetryPolicy, jitter
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.servers import ServerConfig, checked_servers

__all__ = [
    "ClientLink", "Device", "DuplicateDiscarded", "Farm", "FarmEvent", "JobDone", "JobFailed", "JobOutcome",
    "JobProgress", "JobRetrying", "JobSubmitted", "JobSubmitting", "NoServerUp", "RunningJob", "ServerDown",
    "ServerLink", "ServerStatus", "ServerUp",
]

logger = logging.getLogger(__name__)

DEFAULT_JOB_S = 1.0  # a guess for a server that has not finished a job yet
SCAN_AT_LEAST = 32  # waiting jobs a server looks over for its next one (SoonestFinish's lookahead)
# How often the engine's waits wake to look around; none of these is a limit on the work.
CHECK_EVERY_S = 0.5  # the caller's loop: is any server up at all?
IDLE_WAKE_S = 0.25  # a server with nothing to take: anything new?
PROBE_WAKE_S = 1.0  # a resting server: did the run stop?
THREAD_EXIT_S = 10.0  # at the end, how long each of the run's threads is given to finish
RECOVER_ATTEMPTS = 3  # reads of a prompt's record, after a fault cut off its wait, before it is run again
LINK_RETRY = RetryPolicy(max_attempts=2, first_delay_s=0.5, max_delay_s=2.0)  # fail over rather than retry long
NO_SERVER_NOTICE_S = 5.0  # while no server is up, how often the farm says what it waits for


# ---------------------------------------------------------------------------
# What the farm reports


@dataclass(frozen=True)
class JobFailed:
    """A job the farm gave up on: the last error, how often it was tried, and where."""

    job: Job
    error: ComfyError
    attempts: int
    servers: tuple[str, ...]


JobOutcome = JobResult | JobFailed


@dataclass(frozen=True)
class ServerUp:
    """A server answered its health probe and takes jobs (again)."""

    server: str


@dataclass(frozen=True)
class ServerDown:
    """A server failed; its jobs went back to the waiting list and it is probed with backoff."""

    server: str
    error: ComfyError
    retry_in_s: float
    moved: int = 0  # jobs it held that went back to the waiting list


@dataclass(frozen=True)
class NoServerUp:
    """No server of the farm is up: what the farm waits for, how long so far, and for how long at most."""

    waited_s: float
    limit_s: float
    reasons: str

    @property
    def message(self) -> str:
        return (f"waiting for a server to answer ({self.waited_s:.0f} of {self.limit_s:g} s): {self.reasons}")


@dataclass(frozen=True)
class JobSubmitting:
    """A job is about to be queued on a server as `prompt_id` (a journal records it before it is sent)."""

    job: Job
    server: str
    prompt_id: str
    attempt: int


@dataclass(frozen=True)
class JobSubmitted:
    """A job was queued on a server (`attempt` counts from 1)."""

    job: Job
    server: str
    attempt: int


@dataclass(frozen=True)
class JobRetrying:
    """A job failed on a server and waits for another try."""

    job: Job
    server: str
    error: ComfyError
    attempt: int


@dataclass(frozen=True)
class JobProgress:
    """A running job moved on: its overall progress and the current sampler's steps."""

    job: Job
    server: str
    progress: Progress


@dataclass(frozen=True)
class JobDone:
    """A job finished on a server; its outcome is next from `Farm.run`."""

    job: Job
    server: str
    seconds: float


@dataclass(frozen=True)
class DuplicateDiscarded:
    """A job that had been moved finished a second time; this copy was dropped."""

    job: Job
    server: str


FarmEvent = ServerUp | ServerDown | NoServerUp | JobSubmitting | JobSubmitted | JobProgress | JobRetrying | JobDone | DuplicateDiscarded


@dataclass(frozen=True)
class Device:
    """One GPU (or CPU) of a server, from /system_stats."""

    name: str
    vram_total: int
    vram_free: int


@dataclass(frozen=True)
class ServerStatus:
    """What `comfy-orch farm status` shows of one server."""

    name: str
    url: str
    up: bool
    error: str = ""
    queue_running: int = 0
    queue_pending: int = 0
    devices: tuple[Device, ...] = ()
    checkpoints: tuple[str, ...] = ()
    comfyui_version: str = ""
    tags: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# The network side, as the farm uses it


class RunningJob(Protocol):
    """A job queued on one server (the client's JobHandle)."""

    prompt_id: str

    def wait(self, timeout_s: float) -> JobResult:
        """Block until the job ends; return its result or raise the ComfyError that ended it."""

    def cancel(self) -> None:
        """Take the job off the server's queue, or interrupt it if it runs."""


class ServerLink(Protocol):
    """One server as the farm drives it: `ClientLink` over the real client, or anything alike."""

    def probe(self) -> Schema:
        """Check health (/system_stats) and read object_info afresh; raise ComfyError if unwell."""

    def check(self) -> None:
        """Ask /system_stats whether the server still answers; raise ComfyError if not."""

    def submit(self, job: Job, *, prompt_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> RunningJob:
        """Upload the job's inputs, check it against the server's object_info, and queue it (as `prompt_id`)."""

    def locate(self, prompt_id: str) -> tuple[str, Mapping[str, Any] | None]:
        """Where the server has a prompt: ("done", history entry), ("running"|"queued", None), ("unknown", None)."""

    def cancel(self, prompt_id: str) -> None:
        """Take a prompt off the server's waiting list, or interrupt it if it runs."""

    def save(self, result: JobResult, out_dir: Path) -> JobResult:
        """Download a finished job's outputs under `out_dir`."""

    def withdraw(self, job: RunningJob) -> bool:
        """Take a queued job off the server; True if it had not started (it will not run there)."""

    def status(self) -> ServerStatus:
        """Health, queue, devices and checkpoints, for `farm status`."""

    def close(self) -> None:
        """Release connections and threads."""


class ClientLink:
    """A ServerLink over `Client`, tuned to fail over fast rather than retry one server long."""

    def __init__(self, config: ServerConfig, *, timeouts: Timeouts = FARM_TIMEOUTS) -> None:
        self.config = config
        self.client = Client(config.url, headers=config.headers, token=config.token, timeouts=timeouts,
                             retry=LINK_RETRY, ca_cert=config.ca_cert, allow_plain_http=config.allow_plain_http)

    def probe(self) -> Schema:
        self.client.system_stats()
        return self.client.schema(refresh=True)

    def check(self) -> None:
        self.client.system_stats()

    def submit(self, job: Job, *, prompt_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> RunningJob:
        return self.client.submit(job, prompt_id=prompt_id, on_progress=on_progress, every_event=False)

    def locate(self, prompt_id: str) -> tuple[str, Mapping[str, Any] | None]:
        return self.client.locate(prompt_id)

    def cancel(self, prompt_id: str) -> None:
        self.client.delete([prompt_id])
        self.client.interrupt(prompt_id)

    def save(self, result: JobResult, out_dir: Path) -> JobResult:
        return self.client.save_outputs(result, out_dir)

    def withdraw(self, job: RunningJob) -> bool:
        self.client.delete([job.prompt_id])
        state, _ = self.client.locate(job.prompt_id)
        return state == "unknown"

    def status(self) -> ServerStatus:
        config = self.config
        stats = self.client.system_stats()
        listing = self.client.queue()
        schema = self.client.schema(refresh=True)
        devices = tuple(Device(name=str(d.get("name", "?")), vram_total=int(d.get("vram_total") or 0),
                               vram_free=int(d.get("vram_free") or 0))
                        for d in stats.get("devices") or () if isinstance(d, Mapping))
        checkpoints = schema.checkpoints if "CheckpointLoaderSimple" in schema else ()
        return ServerStatus(name=config.name, url=config.display_url, up=True,
                            queue_running=len(listing.get("queue_running") or ()),
                            queue_pending=len(listing.get("queue_pending") or ()), devices=devices,
                            checkpoints=checkpoints,
                            comfyui_version=str((stats.get("system") or {}).get("comfyui_version") or ""),
                            tags=config.tags)

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------
# The farm


@dataclass(eq=False)
class _Ticket:
    """One job of a run, while the farm holds it."""

    seq: int
    job: Job
    needs: JobNeeds
    attempts: list[Attempt] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)  # servers it was queued on, in order
    avoid_until: dict[str, float] = field(default_factory=dict)  # server -> monotonic time
    able: dict[tuple[str, int], bool] = field(default_factory=dict)  # (server, capability version) -> can run
    copies: int = 0  # servers holding a live copy
    settled: bool = False
    stranded_since: float | None = None  # since when no server that can run it is up


@dataclass(eq=False)
class _Flight:
    """A ticket queued on one server."""

    ticket: _Ticket
    queued_at: float
    handle: RunningJob | None = None
    cancelled: bool = False
    moving: bool = False  # being taken off this server for another


@dataclass(eq=False)
class _Server:
    """One server's state during a run; guarded by the run's lock."""

    config: ServerConfig
    order: int
    link: ServerLink
    up: bool = False
    capability: Capability | None = None
    capability_version: int = 0
    flights: list[_Flight] = field(default_factory=list)
    times: JobTimes = field(default_factory=JobTimes)
    last: JobNeeds | None = None  # the last job queued: what is loaded when the next one starts
    last_finished: JobNeeds | None = None
    last_finish_at: float | None = None
    failures: int = 0
    next_probe_at: float = 0.0
    last_error: ComfyError | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def slots(self) -> int:
        return 1 + self.config.queue_ahead


class _End:
    """Marks the end of a run's outcomes."""


def _ignore(event: FarmEvent) -> None:
    """The default event callback: nothing."""


class Farm:
    """Runs jobs over several ComfyUI servers, one thread each; see the module docstring."""

    def __init__(
        self,
        servers: Sequence[ServerConfig | str],
        *,
        policy: RetryPolicy = RetryPolicy(),
        dispatch: Dispatch = SoonestFinish(),
        connect: Callable[[ServerConfig], ServerLink] | None = None,
        timeouts: Timeouts = FARM_TIMEOUTS,
        health_interval_s: float = 1.0,
        window: int = 64,
        straggler_factor: float | None = 2.0,
    ) -> None:
        configs = [s if isinstance(s, ServerConfig) else ServerConfig(url=s) for s in servers]
        self.servers = checked_servers([c.model_dump() for c in configs], source="farm")
        self.policy = policy
        self.dispatch = dispatch
        self.timeouts = timeouts
        self.health_interval_s = health_interval_s  # how often a busy server is asked whether it answers
        self.window = window
        # an idle server copies a running job once nothing waits, if it would finish it this many times
        # sooner than the server running it (None: never); the first result is kept, the other cancelled
        self.straggler_factor = straggler_factor
        self._connect = connect or (lambda config: ClientLink(config, timeouts=timeouts))

    def connect(self, config: ServerConfig) -> ServerLink:
        """A link to one of the farm's servers, as its threads use; the caller closes it."""
        return self._connect(config)

    def run(
        self,
        jobs: Iterable[Job],
        *,
        out_dir: Path | str | None = None,
        on_event: Callable[[FarmEvent], None] = _ignore,
    ) -> Generator[JobOutcome, None, None]:
        """Run every job once over the farm; yield each one's JobResult or JobFailed as it settles.

        Outputs are downloaded into `out_dir` when given. Stopping the iteration early
        (break, close()) takes the jobs still queued off the servers.
        """
        folder = Path(out_dir) if out_dir is not None else None
        return _Run(self, iter(jobs), out_dir=folder, on_event=on_event).outcomes()

    def status(self, *, timeout_s: float | None = None) -> list[ServerStatus]:
        """Each server's health, queue, devices and checkpoints, read in parallel (within `Timeouts.status_s`)."""
        timeout_s = self.timeouts.status_s if timeout_s is None else timeout_s
        answers: dict[str, ServerStatus] = {}

        def read(config: ServerConfig) -> None:
            link = self._connect(config)
            try:
                answers[config.name] = link.status()
            except ComfyError as exc:
                answers[config.name] = ServerStatus(name=config.name, url=config.display_url, up=False, error=str(exc),
                                                    tags=config.tags)
            finally:
                link.close()

        threads = [threading.Thread(target=read, args=(config,), name=f"farm-status-{config.name}", daemon=True)
                   for config in self.servers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        return [answers.get(config.name) or ServerStatus(
            name=config.name, url=config.display_url, up=False, error=f"no answer within {timeout_s:g} s", tags=config.tags)
            for config in self.servers]


class _Run:
    """One `Farm.run`: the waiting list, one thread per server, and the outcomes."""

    def __init__(self, farm: Farm, source: Iterator[Job], *, out_dir: Path | None,
                 on_event: Callable[[FarmEvent], None]) -> None:
        self.farm = farm
        self.policy = farm.policy
        self.source: Iterator[Job] | None = source
        self.source_error: Exception | None = None
        self.thread_error: BaseException | None = None
        self.out_dir = out_dir
        self.on_event = on_event
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stop = threading.Event()
        self.waiting: list[_Ticket] = []  # in the order read, retries back in their place
        self.open_tickets = 0  # read and not yet settled
        self.next_seq = 0
        self.ledger = CompletionLedger()
        self.results: queue.Queue[JobOutcome | _End] = queue.Queue()
        self.unread = 0  # outcomes put and not yet taken by the caller
        self.no_server_since: float | None = None
        self.no_server_said_at = 0.0
        self.idle_with_nothing = False  # the last take() found no waiting job the server may run
        self.servers = [_Server(config=config, order=order, link=farm._connect(config))
                        for order, config in enumerate(farm.servers)]

    # -- the caller's side
    def outcomes(self) -> Generator[JobOutcome, None, None]:
        threads = [threading.Thread(target=self.work, args=(server,), name=f"farm-{server.name}", daemon=True)
                   for server in self.servers]
        threads.append(threading.Thread(target=self.watch, name="farm-health", daemon=True))
        try:
            with self.lock:
                self.refill()
                self.finish_if_done()
            for thread in threads:
                thread.start()
            while True:
                try:
                    item = self.results.get(timeout=CHECK_EVERY_S)
                except queue.Empty:
                    self.check_no_server()
                    continue
                if isinstance(item, _End):
                    break
                with self.lock:
                    self.unread -= 1
                    self.refill()
                yield item
            if self.thread_error is not None:
                raise self.thread_error
            if self.source_error is not None:
                raise self.source_error
        finally:
            self.shut_down(threads)

    def shut_down(self, threads: Sequence[threading.Thread]) -> None:
        """Stop the servers' threads; cancel what they still hold (copies, or all if the caller stopped)."""
        self.stop.set()
        with self.lock:
            self.changed.notify_all()
            leftover = [(server, flight) for server in self.servers for flight in server.flights
                        if flight.handle is not None and not flight.cancelled]
            for _, flight in leftover:
                flight.cancelled = True
        for server, flight in reversed(leftover):  # the newest first: a waiting job must not start meanwhile
            self.cancel(server, flight)
        for thread in threads:
            if thread.is_alive():
                thread.join(THREAD_EXIT_S)
        for server in self.servers:
            server.link.close()

    def progress_reporter(self, job: Job, server: _Server) -> Callable[[Progress], None]:
        """A callback that passes a job's progress on as JobProgress events."""
        return lambda progress: self.emit(JobProgress(job, server.name, progress))

    def emit(self, event: FarmEvent) -> None:
        """Tell the caller; if its callback raises, the run stops and `run` raises that error."""
        try:
            self.on_event(event)
        except Exception as exc:
            self.abort(exc)

    def abort(self, error: BaseException) -> None:
        """Stop the run from any thread; the caller's loop raises `error` (the first one)."""
        with self.lock:
            if self.thread_error is None:
                self.thread_error = error
            self.stop.set()
            self.changed.notify_all()
        self.results.put(_End())

    # -- the waiting list (with the lock held)
    def refill(self) -> None:
        """Read jobs until the window ahead of the servers is full (and the caller keeps up)."""
        limit = max(self.farm.window, 2 * sum(server.slots for server in self.servers))
        while self.source is not None and len(self.waiting) < limit and self.unread < limit:
            try:
                job = next(self.source)
            except StopIteration:
                self.source = None
                break
            except Exception as exc:  # raised to the caller once the jobs already read are settled
                self.source_error = exc
                self.source = None
                break
            self.waiting.append(_Ticket(seq=self.next_seq, job=job, needs=job_needs(job)))
            self.next_seq += 1
            self.open_tickets += 1
        self.changed.notify_all()

    def requeue(self, ticket: _Ticket) -> None:
        if ticket.settled or ticket.copies or ticket in self.waiting:
            return
        index = next((i for i, other in enumerate(self.waiting) if other.seq > ticket.seq), len(self.waiting))
        self.waiting.insert(index, ticket)
        self.changed.notify_all()

    def settle(self, ticket: _Ticket, outcome: JobOutcome, server: str) -> bool:
        """Hand the ticket's outcome to the caller unless it has one; False for a duplicate."""
        if ticket.settled or not self.ledger.settle(ticket.seq, server):
            return False
        ticket.settled = True
        if ticket in self.waiting:
            self.waiting.remove(ticket)
        self.open_tickets -= 1
        self.unread += 1
        self.results.put(outcome)
        self.forget_if_gone(ticket)
        self.changed.notify_all()
        self.finish_if_done()
        return True

    def forget_if_gone(self, ticket: _Ticket) -> None:
        """Drop a settled job from the ledger once no server holds a copy (memory stays flat)."""
        if ticket.settled and ticket.copies == 0:
            self.ledger.forget(ticket.seq)

    def give_up(self, ticket: _Ticket, error: ComfyError) -> None:
        self.settle(ticket, JobFailed(ticket.job, error, len(ticket.attempts), tuple(ticket.tried)), "")

    def finish_if_done(self) -> None:
        if self.source is None and self.open_tickets == 0 and not self.stop.is_set():
            self.results.put(_End())
            self.stop.set()
            self.changed.notify_all()

    def able(self, ticket: _Ticket, server: _Server) -> bool:
        if server.capability is None:
            return False
        key = (server.name, server.capability_version)
        if key not in ticket.able:
            ticket.able[key] = server.capability.can_run(ticket.needs)
        return ticket.able[key]

    def view(self, server: _Server) -> ServerView:
        typical_job_s, typical_switch_s = self.typical_s()
        job_s = server.times.job_s(typical_job_s / server.config.weight)
        switch_s = server.times.switch_s(job_s if typical_switch_s is None else typical_switch_s / server.config.weight)
        return ServerView(name=server.name, order=server.order, up=server.up,
                          free_slots=server.slots - len(server.flights), queued=len(server.flights),
                          job_s=job_s, switch_s=switch_s, last=server.last)

    def typical_s(self) -> tuple[float, float | None]:
        """Job and checkpoint-load seconds at weight 1, as the servers that timed them saw them.

        A server's first job includes loading the checkpoint; until some server has timed
        a warm job, that cold time stands for a job.
        """
        warm = [statistics.median(s.times.warm_s) * s.config.weight for s in self.servers if s.times.warm_s]
        cold = [statistics.median(s.times.cold_s) * s.config.weight for s in self.servers if s.times.cold_s]
        switch = [s.times.switch_s(0.0) * s.config.weight for s in self.servers if s.times.warm_s and s.times.cold_s]
        job_s = statistics.median(warm) if warm else statistics.median(cold) if cold else DEFAULT_JOB_S
        return job_s, statistics.median(switch) if switch else None

    def take(self, server: _Server) -> _Ticket | None:
        """The waiting ticket `server` should queue next, if any; fails tickets no server can run."""
        now = time.monotonic()
        up = [other for other in self.servers if other.up]
        candidates: list[WaitingJob] = []
        tickets: list[_Ticket] = []
        mine = 0
        for ticket in list(self.waiting[: self.farm.window]):
            if len(candidates) >= SCAN_AT_LEAST and mine:
                break  # the dispatch looks this far ahead; further only to find work this server can do
            able = [other for other in up if self.able(ticket, other)]
            if not able and (self.unable_anywhere(ticket) or self.stranded(ticket, now)):
                continue
            ticket.stranded_since = None if able else ticket.stranded_since
            eligible = frozenset(other.name for other in able if ticket.avoid_until.get(other.name, 0.0) <= now)
            mine += server.name in eligible
            candidates.append(WaitingJob(seq=ticket.seq, needs=ticket.needs, eligible=eligible))
            tickets.append(ticket)
        self.idle_with_nothing = not mine
        views = [self.view(other) for other in self.servers]
        index = self.farm.dispatch.pick(views[server.order], candidates, views) if candidates else None
        if index is None:
            return None
        ticket = tickets[index]
        self.waiting.remove(ticket)
        return ticket

    def board(self, server: _Server, ticket: _Ticket) -> _Flight:
        """Put a ticket in the server's queue (lock held); it is submitted next."""
        ticket.copies += 1
        ticket.tried.append(server.name)
        server.last = ticket.needs
        flight = _Flight(ticket=ticket, queued_at=time.monotonic())
        server.flights.append(flight)
        return flight

    def propose_move(self, server: _Server) -> tuple[_Server, _Flight] | None:
        """A job queued behind another server's running one that this server would finish sooner (lock held)."""
        now = time.monotonic()
        queued: list[tuple[QueuedJob, _Server, _Flight]] = []
        for other in self.servers:
            if other is server or not other.up:
                continue
            for position, flight in enumerate(other.flights[1:], start=1):
                ticket = flight.ticket
                if flight.handle is not None and not flight.cancelled and not flight.moving \
                        and not ticket.settled and self.able(ticket, server) \
                        and ticket.avoid_until.get(server.name, 0.0) <= now:
                    queued.append((QueuedJob(other.name, position, ticket.needs), other, flight))
        if not queued:
            return None
        views = [self.view(other) for other in self.servers]
        index = self.farm.dispatch.steal(views[server.order], [job for job, _, _ in queued], views)
        if index is None:
            return None
        _, holder, flight = queued[index]
        flight.moving = True
        return holder, flight

    def straggler(self, server: _Server) -> _Ticket | None:
        """A job another server runs far slower than idle `server` would, once nothing waits (lock held)."""
        factor = self.farm.straggler_factor
        if factor is None or server.flights or self.waiting or self.source is not None:
            return None
        now = time.monotonic()
        views = {other.name: self.view(other) for other in self.servers}
        for holder in self.servers:
            head = holder.flights[0] if holder.flights else None
            if holder is server or not holder.up or head is None or head.handle is None or head.cancelled \
                    or head.moving:
                continue
            ticket = head.ticket
            if ticket.settled or ticket.copies > 1 or not self.able(ticket, server) \
                    or ticket.avoid_until.get(server.name, 0.0) > now:
                continue
            running_for_s = now - max(head.queued_at, holder.last_finish_at or head.queued_at)
            if worth_duplicating(views[server.name], views[holder.name], ticket.needs,
                                 running_for_s=running_for_s, factor=factor):
                return ticket
        return None

    def move(self, server: _Server, holder: _Server, flight: _Flight) -> _Flight | None:
        """Take a queued job off `holder` and queue it here, if it had not started there yet."""
        assert flight.handle is not None
        try:
            withdrawn = holder.link.withdraw(flight.handle)
        except ComfyError as exc:
            logger.info("%s: could not take job %s off its queue: %s", holder.name, flight.ticket.seq, exc)
            withdrawn = False
        with self.lock:
            flight.moving = False
            ticket = flight.ticket
            if withdrawn:
                flight.cancelled = True
                self.drop(holder, flight)
                holder.last = holder.flights[-1].ticket.needs if holder.flights else holder.last_finished
            elif flight in holder.flights or ticket.settled:
                return None  # it started there: it stays
            if ticket.settled or ticket.copies or ticket in self.waiting:
                return None
            if not server.up or len(server.flights) >= server.slots:
                self.requeue(ticket)
                return None
            logger.info("job %s moves from %s's queue to %s", ticket.seq, holder.name, server.name)
            return self.board(server, ticket)

    def stranded(self, ticket: _Ticket, now: float) -> bool:
        """Fail a ticket that only down servers can run once they have been down `Timeouts.no_server_s`."""
        if any(server.up and self.able(ticket, server) for server in self.servers):
            ticket.stranded_since = None
            return False
        if ticket.stranded_since is None:
            ticket.stranded_since = now
        if now - ticket.stranded_since < self.farm.timeouts.no_server_s:
            return False
        down = "; ".join(f"{server.name}: {server.last_error}" for server in self.servers
                         if not server.up and (server.capability is None or self.able(ticket, server)))
        self.give_up(ticket, NoServerAvailable(
            f"no server that is up can run this job, and those that may have been down for "
            f"{self.farm.timeouts.no_server_s:g} s ({down})"))
        return True

    def unable_anywhere(self, ticket: _Ticket) -> bool:
        """Fail a ticket that no server will ever run: all were reached, none can or may."""
        if any(server.capability is None for server in self.servers):
            return False
        if any(self.able(ticket, server) and ticket.avoid_until.get(server.name, 0.0) != math.inf
               for server in self.servers):
            return False
        if ticket.attempts:
            self.give_up(ticket, ticket.attempts[-1].error)
            return True
        lacks = "; ".join(f"{server.name} lacks {', '.join(server.capability.lacks(ticket.needs)[:3])}"
                          for server in self.servers if server.capability is not None)
        self.give_up(ticket, NoServerAvailable(f"no server of the farm can run this job: {lacks}"))
        return True

    def check_no_server(self) -> None:
        """Say what the farm waits for while no server is up; fail what is left after `Timeouts.no_server_s`.

        A farm whose every server refused our credentials fails at once: waiting does not help.
        """
        notice: NoServerUp | None = None
        with self.lock:
            if any(server.up for server in self.servers):
                self.no_server_since = None
                return
            now = time.monotonic()
            if self.no_server_since is None:
                self.no_server_since = self.no_server_said_at = now
            waited_s, limit_s = now - self.no_server_since, self.farm.timeouts.no_server_s
            reasons = "; ".join(f"{s.name}: {s.last_error}" for s in self.servers if s.last_error is not None)
            refused = [s.last_error for s in self.servers if isinstance(s.last_error, AuthFailed)]
            error: ComfyError | None = None
            if len(refused) == len(self.servers):
                error = refused[0] if len(refused) == 1 else NoServerAvailable(
                    f"every server of the farm refused our credentials ({reasons})")
            elif waited_s >= limit_s:
                error = NoServerAvailable(f"no server of the farm answered for {limit_s:g} s"
                                          + (f" ({reasons})" if reasons else ""))
            elif reasons and now - self.no_server_said_at >= NO_SERVER_NOTICE_S:
                self.no_server_said_at = now
                notice = NoServerUp(waited_s, limit_s, reasons)
            if error is not None:
                for server in self.servers:
                    for flight in server.flights:
                        self.give_up(flight.ticket, error)
                self.give_up_waiting(error)
                return
        if notice is not None:
            logger.warning("%s", notice.message)
            self.emit(notice)

    def give_up_waiting(self, error: ComfyError) -> None:
        """Report every waiting job, and every job still to be read, as failed with `error`."""
        while True:
            for ticket in list(self.waiting):
                self.give_up(ticket, error)
            if self.source is None or self.unread >= self.farm.window:
                return
            self.refill()

    # -- a server's thread
    def work(self, server: _Server) -> None:
        try:
            self.serve(server)
        except BaseException as exc:  # a bug must reach the caller, not hang the run
            logger.exception("the farm's thread for %s failed", server.name)
            self.abort(exc)

    def serve(self, server: _Server) -> None:
        while not self.stop.is_set():
            if not server.up:
                self.probe(server)
                continue
            self.fill(server)
            with self.lock:
                head = server.flights[0] if server.flights else None
                if head is None and server.up and not self.stop.is_set():
                    self.changed.wait(IDLE_WAKE_S)
            if head is not None:
                self.await_job(server, head)

    def watch(self) -> None:
        """Every health_interval_s, ask each busy server whether it still answers; mark the silent down.

        A server's own thread is blocked waiting for its oldest job, and the client notices a dead
        server only when the socket has been silent a while; this notices it within a second or two.
        """
        try:
            while not self.stop.wait(self.farm.health_interval_s):
                with self.lock:
                    busy = [server for server in self.servers if server.up and server.flights]
                for server in busy:
                    try:
                        server.link.check()
                    except ComfyError as exc:
                        with self.lock:
                            events = self.mark_down(server, exc)
                        for event in events:
                            self.emit(event)
        except BaseException as exc:  # a bug must reach the caller, not hang the run
            logger.exception("the farm's health watch failed")
            self.abort(exc)

    def probe(self, server: _Server) -> None:
        """While down: rest (policy backoff), then ask /system_stats and object_info."""
        wait_s = server.next_probe_at - time.monotonic()
        if wait_s > 0:
            self.stop.wait(min(wait_s, PROBE_WAKE_S))
            return
        try:
            schema = server.link.probe()
        except ComfyError as exc:
            with self.lock:
                server.failures += 1
                server.last_error = exc
                server.next_probe_at = time.monotonic() + self.policy.delay(server.failures, jitter())
                # Every server refuses us (a certificate, credentials): no wait will change that, so say it now.
                refused = all(not s.up and s.last_error is not None and is_refusal(s.last_error)
                              for s in self.servers)
            logger.info("%s did not answer its probe: %s", server.name, exc)
            if refused:
                self.abort(exc)
            return
        with self.lock:
            server.up = True
            server.failures = 0
            server.capability = Capability(schema)
            server.capability_version += 1
            self.changed.notify_all()
        logger.info("%s is up", server.name)
        self.emit(ServerUp(server.name))

    def fill(self, server: _Server) -> None:
        """Queue jobs on the server until it holds 1 + queue_ahead; with nothing waiting, move one here."""
        while not self.stop.is_set():
            with self.lock:
                if not server.up or len(server.flights) >= server.slots:
                    return
                self.refill()
                ticket = self.take(server)
                proposal = self.propose_move(server) if ticket is None and self.idle_with_nothing else None
                if ticket is None and proposal is None:
                    ticket = self.straggler(server)
                    if ticket is None:
                        return
                    logger.info("%s runs a copy of job %s, far behind on %s", server.name, ticket.seq,
                                ticket.tried[-1])
                flight: _Flight | None = self.board(server, ticket) if ticket is not None else None
            if proposal is not None:
                flight = self.move(server, *proposal)
            if flight is None:
                return
            ticket = flight.ticket
            attempt = len(ticket.attempts) + 1
            prompt_id = str(uuid.uuid4())
            self.emit(JobSubmitting(ticket.job, server.name, prompt_id, attempt))
            try:
                handle = server.link.submit(ticket.job, prompt_id=prompt_id,
                                            on_progress=self.progress_reporter(ticket.job, server))
            except ComfyError as exc:
                self.failed(server, flight, exc)
                continue
            with self.lock:  # shut_down cancels the flights with a handle; one sent meanwhile is ours to stop
                flight.handle = handle
                stopped = self.stop.is_set() and not flight.cancelled
                flight.cancelled = flight.cancelled or stopped
            if stopped:
                self.cancel(server, flight)
                return
            self.emit(JobSubmitted(ticket.job, server.name, attempt))

    def await_job(self, server: _Server, flight: _Flight) -> None:
        """Wait for the server's oldest job (ComfyUI runs its queue in order) and settle it."""
        assert flight.handle is not None
        try:
            result = flight.handle.wait(self.farm.timeouts.job_s)
        except ComfyError as exc:
            found = self.recover(server, flight, exc)
            if found is None:
                self.failed(server, flight, exc)
                return
            result = found
        try:
            with self.lock:
                duplicate = flight.ticket.settled
            if self.out_dir is not None and not duplicate:
                result = self.save(server, flight, result)
        except ComfyError as exc:
            self.failed(server, flight, exc)
            return
        self.completed(server, flight, replace(result, server=server.name))

    def save(self, server: _Server, flight: _Flight, result: JobResult) -> JobResult:
        """Download a finished job's outputs; a download that fails is tried again, not the GPU work."""
        assert self.out_dir is not None
        try:
            return server.link.save(result, self.out_dir)
        except ComfyError as exc:
            if self.recover(server, flight, exc) is None:
                raise
            return server.link.save(result, self.out_dir)

    def recover(self, server: _Server, flight: _Flight, error: ComfyError) -> JobResult | None:
        """The job's result from the server's own record, when a transient fault cut off the wait.

        A 500 or a hang on /history after the prompt ran must not run it again: the record is
        asked a few times (with the link's backoff) first. None when the prompt did not finish
        well, or the server is gone (a refused connection, a lost prompt).
        """
        handle = flight.handle
        if handle is None or type(error) not in (ServerError, RequestTimedOut, MalformedMessage):
            return None
        for attempt in range(1, RECOVER_ATTEMPTS + 1):
            if self.stop.wait(LINK_RETRY.delay(attempt, jitter())):
                return None
            try:
                state, entry = server.link.locate(handle.prompt_id)
            except ComfyError as exc:
                logger.info("%s: prompt %s's record could not be read (%s); asking again", server.name,
                            handle.prompt_id, exc)
                continue
            if state != "done" or entry is None:
                return None
            outcome = outcome_from_history(entry, handle.prompt_id)
            if outcome.failure is not None or outcome.interruption is not None or outcome.status == "error":
                return None
            logger.info("%s: prompt %s had finished; its result is read from the history (%s)", server.name,
                        handle.prompt_id, error)
            return JobResult(job=flight.ticket.job, prompt_id=handle.prompt_id, server=server.name,
                             outputs=outputs_from_history(entry))
        return None

    def completed(self, server: _Server, flight: _Flight, result: JobResult) -> None:
        ticket = flight.ticket
        with self.lock:
            self.drop(server, flight)
            now = time.monotonic()
            seconds = now - max(flight.queued_at, server.last_finish_at or flight.queued_at)
            started, finished = result.timings.get("started"), result.timings.get("finished")
            if started is not None and finished is not None and finished >= started:
                seconds = finished - started
            loaded = server.last_finished is None or server.last_finished.checkpoint != ticket.needs.checkpoint
            server.times.add(seconds, loaded_checkpoint=loaded)
            server.last_finished = ticket.needs
            server.last_finish_at = now
            kept = self.settle(ticket, result, server.name)
            redundant = [(other, f) for other in self.servers for f in other.flights
                         if f.ticket is ticket and f.handle is not None and not f.cancelled]
            for _, other_flight in redundant:
                other_flight.cancelled = True
        for other, other_flight in redundant:
            self.cancel(other, other_flight)
        if kept:
            self.emit(JobDone(ticket.job, server.name, seconds))
            return
        for path in result.files:  # downloaded in a race with the winner: theirs are kept
            path.unlink(missing_ok=True)
        logger.info("%s finished job %s a second time; that copy was discarded", server.name, ticket.seq)
        self.emit(DuplicateDiscarded(ticket.job, server.name))

    def failed(self, server: _Server, flight: _Flight, error: ComfyError) -> None:
        ticket = flight.ticket
        events: list[FarmEvent] = []
        with self.lock:
            live = self.drop(server, flight)
            withdrawn = flight.moving and isinstance(error, JobLost)  # our own move took it off the queue
            if ticket.settled or flight.cancelled or withdrawn or not live:
                logger.info("%s: a moved, cancelled or finished copy of job %s ended with: %s", server.name,
                            ticket.seq, error)
                return
            untried = frozenset(other.name for other in self.servers if other is not server
                                and self.able(ticket, other) and other.name not in ticket.tried)
            decision = decide_retry(error, ticket.attempts, server=server.name, untried=untried, policy=self.policy)
            ticket.attempts.append(Attempt(server.name, error))
            if decision.server_down:
                events += self.mark_down(server, error)
            if decision.retry:
                ticket.avoid_until[server.name] = time.monotonic() + decision.avoid_s
                self.requeue(ticket)
                events.append(JobRetrying(ticket.job, server.name, error, len(ticket.attempts)))
            elif not ticket.copies:
                self.give_up(ticket, error)
        for event in events:
            self.emit(event)

    def mark_down(self, server: _Server, error: ComfyError) -> list[FarmEvent]:
        """Take the server out (lock held); the jobs it held go back to the waiting list."""
        if not server.up:
            return []
        server.up = False
        server.failures += 1
        server.last_error = error
        rest_s = self.policy.delay(server.failures, jitter())
        server.next_probe_at = time.monotonic() + rest_s
        displaced = list(server.flights)
        server.flights.clear()
        for flight in displaced:
            flight.ticket.copies -= 1
            self.requeue(flight.ticket)
        # The oldest may be running and may still finish first; the ones queued behind it would
        # only run twice, so take them off the server if it still listens (off this thread: it may not).
        queued_behind = [flight for flight in displaced[1:] if flight.handle is not None]
        for flight in queued_behind:
            flight.cancelled = True
        if queued_behind:
            threading.Thread(target=self.cancel_all, args=(server, queued_behind), daemon=True,
                             name=f"farm-cancel-{server.name}").start()
        server.last = server.last_finished = None
        logger.warning("%s is down (%s); %d job(s) moved; probing again in %.1f s", server.name, error,
                       len(displaced), rest_s)
        return [ServerDown(server.name, error, rest_s, moved=len(displaced))]

    def drop(self, server: _Server, flight: _Flight) -> bool:
        """Forget a flight that ended; False if it had already been moved off a down server."""
        self.changed.notify_all()
        if flight not in server.flights:
            return False
        server.flights.remove(flight)
        flight.ticket.copies -= 1
        self.forget_if_gone(flight.ticket)
        return True

    def cancel_all(self, server: _Server, flights: Sequence[_Flight]) -> None:
        for flight in flights:
            self.cancel(server, flight)

    def cancel(self, server: _Server, flight: _Flight) -> None:
        """Take a copy that is no longer wanted off its server (its own thread reaps the handle)."""
        assert flight.handle is not None
        try:
            flight.handle.cancel()
        except ComfyError as exc:
            logger.info("%s: could not cancel an unwanted copy of job %s: %s", server.name, flight.ticket.seq, exc)
