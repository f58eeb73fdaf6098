"""A farm run's books: the jobs waiting, what each server holds, and the choices made over them.

`RunState` is what one `Farm.run` knows, guarded by one lock: the waiting list (tickets, in the
order read), each server's queue (flights), the completion ledger and the outcomes for the
caller. Its methods are the engine's decisions, each called with the lock held: read more jobs,
pick the job a server takes next (dispatch.py's policy, over views of every server), move a queued
job or copy a straggler's, settle a job once, fail one that no server can run. It starts no thread
and reaches no server; the engine (engine.py) does both, and holds these books as its base.
"""

from __future__ import annotations

import math
import queue
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from comfy_orchestrator.dispatch import (
    Attempt,
    Capability,
    CompletionLedger,
    Dispatch,
    JobNeeds,
    JobTimes,
    QueuedJob,
    ServerView,
    WaitingJob,
    job_needs,
    worth_duplicating,
)
from comfy_orchestrator.errors import ComfyError, NoServerAvailable
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.links import JobFailed, JobOutcome, RunningJob, ServerLink, ServerRecord
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.servers import ServerConfig

DEFAULT_JOB_S = 1.0  # a guess for a server that has not finished a job yet
SCAN_AT_LEAST = 32  # waiting jobs a server looks over for its next one (SoonestFinish's lookahead)


class RunSettings(Protocol):
    """What a run reads of its Farm: the servers, the policies and the limits."""

    @property
    def servers(self) -> Sequence[ServerConfig]: ...
    @property
    def policy(self) -> RetryPolicy: ...
    @property
    def dispatch(self) -> Dispatch: ...
    @property
    def timeouts(self) -> Timeouts: ...
    @property
    def health_interval_s(self) -> float: ...
    @property
    def window(self) -> int: ...
    @property
    def straggler_factor(self) -> float | None: ...

    def connect(self, config: ServerConfig) -> ServerLink: ...


# ---------------------------------------------------------------------------
# The farm


@dataclass(eq=False)
class Ticket:
    """One job of a run, while the farm holds it."""

    seq: int
    job: Job
    needs: JobNeeds
    attempts: list[Attempt] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)  # servers it was queued on, in order
    avoid_until: dict[str, float] = field(default_factory=dict)  # server -> monotonic time
    able: dict[Capability, bool] = field(default_factory=dict)  # a server's object_info, as read -> can run
    copies: int = 0  # servers holding a live copy
    settled: bool = False
    stranded_since: float | None = None  # since when no server that can run it is up
    # how the dispatch last saw it, and the servers up then (their Capability objects); reused while
    # those are the same and no server rests from it, since then it would be seen the same way again
    seen: tuple[tuple[Capability | None, ...], WaitingJob] | None = None


@dataclass(eq=False)
class Flight:
    """A ticket queued on one server."""

    ticket: Ticket
    queued_at: float
    handle: RunningJob | None = None
    cancelled: bool = False
    moving: bool = False  # being taken off this server for another


@dataclass(eq=False, kw_only=True)
class RunServer(ServerRecord):
    """One server during a run: its record, its queue of flights and its job times; guarded by the run's lock."""

    order: int
    connection: ServerLink | None = None  # made by the server's own thread as it starts (see `link`)
    answered_at: float = 0.0  # when it last answered a request of ours (monotonic): it was alive then
    flights: list[Flight] = field(default_factory=list)
    times: JobTimes = field(default_factory=JobTimes)
    last_finished: JobNeeds | None = None
    last_finish_at: float | None = None
    sending: bool = False  # a thread is boarding and submitting jobs to it (one at a time: see FarmRun.fill)
    fill_again: bool = False  # another thread wanted to fill it meanwhile: the sender fills once more

    @property
    def link(self) -> ServerLink:
        """The server's link; a server is reached only once its thread connected it (it is up, or probing)."""
        assert self.connection is not None, f"{self.name} is not connected yet"
        return self.connection


class EndOfRun:
    """Marks the end of a run's outcomes."""


class RunState:
    """One run's waiting list, servers and outcomes, and the decisions over them (each with the lock held)."""

    def __init__(self, farm: RunSettings, source: Iterator[Job]) -> None:
        self.farm = farm
        self.policy = farm.policy
        self.source: Iterator[Job] | None = source
        self.source_error: Exception | None = None
        self.thread_error: BaseException | None = None
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stop = threading.Event()
        self.waiting: list[Ticket] = []  # in the order read, retries back in their place
        self.open_tickets = 0  # read and not yet settled
        self.next_seq = 0
        self.ledger = CompletionLedger()
        self.results: queue.Queue[JobOutcome | EndOfRun] = queue.Queue()
        self.unread = 0  # outcomes put and not yet taken by the caller
        self.no_server_since: float | None = None
        self.no_server_said_at = 0.0
        self.idle_with_nothing = False  # the last take() found no waiting job the server may run
        self.servers = [RunServer(config=config, order=order) for order, config in enumerate(farm.servers)]

    # -- the waiting list (with the lock held)
    def refill(self) -> None:
        """Read jobs until the window ahead of the servers is full (and the caller keeps up)."""
        limit = max(self.farm.window, 2 * sum(server.slots for server in self.servers))
        read_from, reading = self.next_seq, self.source is not None
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
            self.waiting.append(Ticket(seq=self.next_seq, job=job, needs=job_needs(job)))
            self.next_seq += 1
            self.open_tickets += 1
        if self.next_seq != read_from or (reading and self.source is None):
            self.changed.notify_all()  # idle servers look again: new jobs, or the last was read

    def requeue(self, ticket: Ticket) -> None:
        if ticket.settled or ticket.copies or ticket in self.waiting:
            return
        index = next((i for i, other in enumerate(self.waiting) if other.seq > ticket.seq), len(self.waiting))
        self.waiting.insert(index, ticket)
        self.changed.notify_all()

    def settle(self, ticket: Ticket, outcome: JobOutcome, server: str) -> bool:
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

    def forget_if_gone(self, ticket: Ticket) -> None:
        """Drop a settled job from the ledger once no server holds a copy (memory stays flat)."""
        if ticket.settled and ticket.copies == 0:
            self.ledger.forget(ticket.seq)

    def give_up(self, ticket: Ticket, error: ComfyError) -> None:
        self.settle(ticket, JobFailed(ticket.job, error, len(ticket.attempts), tuple(ticket.tried)), "")

    def finish_if_done(self) -> None:
        if self.source is None and self.open_tickets == 0 and not self.stop.is_set():
            self.results.put(EndOfRun())
            self.stop.set()
            self.changed.notify_all()

    def able(self, ticket: Ticket, server: RunServer) -> bool:
        if server.capability is None:
            return False
        able = ticket.able.get(server.capability)
        if able is None:
            able = ticket.able[server.capability] = server.capability.can_run(ticket.needs)
        return able

    def views(self) -> list[ServerView]:
        """What the dispatch knows of each server now, in the farm's order."""
        typical_job_s, typical_switch_s = self.typical_s()
        views = []
        for server in self.servers:
            weight = server.config.weight
            job_s = server.times.job_s(typical_job_s / weight)
            switch_s = server.times.switch_s(job_s if typical_switch_s is None else typical_switch_s / weight)
            views.append(ServerView(name=server.name, order=server.order, up=server.up,
                                    free_slots=server.slots - len(server.flights), queued=len(server.flights),
                                    job_s=job_s, switch_s=switch_s, last=server.last))
        return views

    def typical_s(self) -> tuple[float, float | None]:
        """Job and checkpoint-load seconds at weight 1, as the servers that timed them saw them.

        A server's first job includes loading the checkpoint; until some server has timed
        a warm job, that cold time stands for a job.
        """
        warm: list[float] = []
        cold: list[float] = []
        switch: list[float] = []
        for server in self.servers:
            times, weight = server.times, server.config.weight
            warm_s, cold_s = times.warm_median_s(), times.cold_median_s()
            if warm_s is not None:
                warm.append(warm_s * weight)
            if cold_s is not None:
                cold.append(cold_s * weight)
            if warm_s is not None and cold_s is not None:
                switch.append(times.switch_s(0.0) * weight)
        job_s = statistics.median(warm) if warm else statistics.median(cold) if cold else DEFAULT_JOB_S
        return job_s, statistics.median(switch) if switch else None

    def take(self, server: RunServer) -> Ticket | None:
        """The waiting ticket `server` should queue next, if any; fails tickets no server can run."""
        now = time.monotonic()
        up = [other for other in self.servers if other.up]
        up_now = tuple(other.capability for other in up)  # which servers are up, with what they can run
        candidates: list[WaitingJob] = []
        tickets: list[Ticket] = []
        mine = 0
        for ticket in list(self.waiting[: self.farm.window]):
            if len(candidates) >= SCAN_AT_LEAST and mine:
                break  # the dispatch looks this far ahead; further only to find work this server can do
            seen = ticket.seen
            if seen is not None and seen[0] == up_now and not ticket.avoid_until:
                candidate = seen[1]  # nothing it depends on changed since the last look
            else:
                able = [other for other in up if self.able(ticket, other)]
                if not able and (self.unable_anywhere(ticket) or self.stranded(ticket, now)):
                    continue
                ticket.stranded_since = None if able else ticket.stranded_since
                eligible = frozenset(other.name for other in able if ticket.avoid_until.get(other.name, 0.0) <= now)
                candidate = WaitingJob(seq=ticket.seq, needs=ticket.needs, eligible=eligible)
                ticket.seen = (up_now, candidate) if able else None
            mine += server.name in candidate.eligible
            candidates.append(candidate)
            tickets.append(ticket)
        self.idle_with_nothing = not mine
        views = self.views()
        index = self.farm.dispatch.pick(views[server.order], candidates, views) if candidates else None
        if index is None:
            return None
        ticket = tickets[index]
        self.waiting.remove(ticket)
        return ticket

    def board(self, server: RunServer, ticket: Ticket) -> Flight:
        """Put a ticket in the server's queue (lock held); it is submitted next."""
        ticket.copies += 1
        ticket.tried.append(server.name)
        server.last = ticket.needs
        flight = Flight(ticket=ticket, queued_at=time.monotonic())
        server.flights.append(flight)
        return flight

    def propose_move(self, server: RunServer) -> tuple[RunServer, Flight] | None:
        """A job queued behind another server's running one that this server would finish sooner (lock held)."""
        now = time.monotonic()
        queued: list[tuple[QueuedJob, RunServer, Flight]] = []
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
        views = self.views()
        index = self.farm.dispatch.steal(views[server.order], [job for job, _, _ in queued], views)
        if index is None:
            return None
        _, holder, flight = queued[index]
        flight.moving = True
        return holder, flight

    def straggler(self, server: RunServer) -> Ticket | None:
        """A job another server runs far slower than idle `server` would, once nothing waits (lock held)."""
        factor = self.farm.straggler_factor
        if factor is None or server.flights or self.waiting or self.source is not None:
            return None
        now = time.monotonic()
        views = {view.name: view for view in self.views()}
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

    def stranded(self, ticket: Ticket, now: float) -> bool:
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

    def unable_anywhere(self, ticket: Ticket) -> bool:
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

    def give_up_waiting(self, error: ComfyError) -> None:
        """Report every waiting job, and every job still to be read, as failed with `error`."""
        while True:
            for ticket in list(self.waiting):
                self.give_up(ticket, error)
            if self.source is None or self.unread >= self.farm.window:
                return
            self.refill()

    def slots_now(self, server: RunServer) -> int:
        """How many jobs `server` may hold now: one while another server has not answered its first probe.

        The first servers up would otherwise queue ahead the jobs the others will want as they come
        up (a short sweep of long jobs piles up on whoever answered first); once every server
        answered or failed once, each holds 1 + queue_ahead.
        """
        return 1 if self.first_probes_pending() else server.slots

    def first_probes_pending(self) -> bool:
        """Whether some server has neither answered nor failed a probe yet."""
        return any(not server.up and server.failures == 0 for server in self.servers)

    def held_back(self, server: RunServer) -> list[RunServer]:
        """The servers that held one job while others were first probed, once `server` answered last."""
        if self.first_probes_pending():
            return []
        return [other for other in self.servers
                if other is not server and other.up and 0 < len(other.flights) < other.slots]

    def quiet_servers(self, now: float) -> list[RunServer]:
        """The busy servers that have not answered a request of ours for `health_interval_s`: to be asked."""
        quiet_since = now - self.farm.health_interval_s
        return [server for server in self.servers if server.up and server.flights and server.answered_at <= quiet_since]

    def drop(self, server: RunServer, flight: Flight) -> bool:
        """Forget a flight that ended; False if it had already been moved off a down server."""
        self.changed.notify_all()
        if flight not in server.flights:
            return False
        server.flights.remove(flight)
        flight.ticket.copies -= 1
        self.forget_if_gone(flight.ticket)
        return True
