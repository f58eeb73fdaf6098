"""The farm's engine: one `Farm.run`, a thread per server, each talking to its server through a ServerLink.

`FarmRun` runs the threads (one per server, a health watch, the caller's loop) and does the
talking: probe, submit, wait, download, cancel, withdraw. What it decides under its lock (which
job a server takes, what to move or copy, when a job is settled or failed) is its base
`RunState`'s (run_state.py), over dispatch.py's pure policy. Servers are reached only through
`ServerLink` (links.py), so tests drive the engine with stub links.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from comfy_orchestrator.dispatch import Attempt, decide_retry, is_refusal
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
from comfy_orchestrator.links import (
    LINK_RETRY,
    DuplicateDiscarded,
    FarmEvent,
    JobDone,
    JobOutcome,
    JobProgress,
    JobRetrying,
    JobSubmitted,
    JobSubmitting,
    NoServerUp,
    ServerDown,
    ServerLink,
    ServerUp,
)
from comfy_orchestrator.protocol import Progress, outcome_from_history, outputs_from_history
from comfy_orchestrator.retry import jitter
from comfy_orchestrator.run_state import EndOfRun, Flight, RunServer, RunSettings, RunState

logger = logging.getLogger("comfy_orchestrator.farm")  # the farm's log, as before the engine had its own room

# How often the engine's waits wake to look around; none of these is a limit on the work.
CHECK_EVERY_S = 0.5  # the caller's loop: is any server up at all?
IDLE_WAKE_S = 0.25  # a server with nothing to take: anything new?
PROBE_WAKE_S = 1.0  # a resting server: did the run stop?
THREAD_EXIT_S = 10.0  # at the end, how long each of the run's threads is given to finish
SUBMITS_SETTLE_S = 5.0  # at the end, how long a job being submitted is waited for, to be cancelled in order
RECOVER_ATTEMPTS = 3  # reads of a prompt's record, after a fault cut off its wait, before it is run again
NO_SERVER_NOTICE_S = 5.0  # while no server is up, how often the farm says what it waits for


def close_links(links: Sequence[ServerLink]) -> None:
    """Close `links` at once, each on its own thread (a link's close waits on its server: the websocket's
    closing handshake), and return when all are closed; the first error a close raised is raised then."""
    if len(links) <= 1:
        for link in links:
            link.close()
        return
    errors: list[BaseException] = []

    def close(link: ServerLink) -> None:
        try:
            link.close()
        except BaseException as exc:  # raised on the caller's thread, as a close there would have raised it
            errors.append(exc)

    threads = [threading.Thread(target=close, args=(link,), name="farm-close", daemon=True) for link in links]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class FarmRun(RunState):
    """One `Farm.run`: the waiting list, one thread per server, and the outcomes."""

    def __init__(self, farm: RunSettings, source: Iterator[Job], *, out_dir: Path | None,
                 on_event: Callable[[FarmEvent], None] | None) -> None:
        super().__init__(farm, source)
        self.out_dir = out_dir
        self.on_event = on_event
        self.links_closed = False  # shut_down closed the links: a thread that connects later closes its own
        # guards the links and links_closed alone, so a thread that has just connected goes on to its probe
        # while the caller holds `lock` to read the first jobs (a sweep prepares its cells then)
        self.links_lock = threading.Lock()
        self.cancelling = False  # shut_down has taken the flights it cancels

    def outcomes(self) -> Generator[JobOutcome, None, None]:
        threads = [threading.Thread(target=self.work, args=(server,), name=f"farm-{server.name}", daemon=True)
                   for server in self.servers]
        threads.append(threading.Thread(target=self.watch, name="farm-health", daemon=True))
        try:
            for thread in threads:  # first: the servers connect and are probed while the first jobs are read
                thread.start()
            with self.lock:
                self.refill()
                self.finish_if_done()
            while True:
                try:
                    item = self.results.get(timeout=CHECK_EVERY_S)
                except queue.Empty:
                    self.check_no_server()
                    continue
                if isinstance(item, EndOfRun):
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
        """Stop the servers' threads; cancel what they still hold (copies, or all if the caller stopped).

        A job being submitted right now is waited for (a little) and cancelled with the rest, the
        newest first: cancelled after the others, it could start running on a server they freed.
        """
        self.stop.set()
        with self.lock:
            self.changed.notify_all()
            self.changed.wait_for(lambda: not any(flight.handle is None for server in self.servers
                                                  for flight in server.flights), SUBMITS_SETTLE_S)
            self.cancelling = True  # from here, a submission that ends late is cancelled by its own thread
            leftover = [(server, flight) for server in self.servers for flight in server.flights
                        if flight.handle is not None and not flight.cancelled]
            for _, flight in leftover:
                flight.cancelled = True
        for server, flight in reversed(leftover):  # the newest first: a waiting job must not start meanwhile
            self.cancel(server, flight)
        for thread in threads:
            if thread.is_alive():
                thread.join(THREAD_EXIT_S)
        with self.links_lock:
            self.links_closed = True
            links = [server.connection for server in self.servers if server.connection is not None]
        close_links(links)

    def progress_reporter(self, job: Job, server: RunServer) -> Callable[[Progress], None] | None:
        """A callback that passes a job's progress on as JobProgress events; None when nobody listens."""
        if self.on_event is None:
            return None
        return lambda progress: self.emit(JobProgress(job, server.name, progress))

    def emit(self, event: FarmEvent) -> None:
        """Tell the caller; if its callback raises, the run stops and `run` raises that error."""
        if self.on_event is None:
            return
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
        self.results.put(EndOfRun())

    # -- moving a queued job, and a farm with no server up
    def move(self, server: RunServer, holder: RunServer, flight: Flight) -> Flight | None:
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
            if not server.up or len(server.flights) >= self.slots_now(server):
                self.requeue(ticket)
                return None
            logger.info("job %s moves from %s's queue to %s", ticket.seq, holder.name, server.name)
            return self.board(server, ticket)

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

    # -- a server's thread
    def work(self, server: RunServer) -> None:
        try:
            try:
                link = self.farm.connect(server.config)  # here, not in the caller's thread: servers connect at once
            except ComfyError as exc:  # a setting to fix (credentials over plain http, a CA file): `run` raises it
                self.abort(exc)
                return
            with self.links_lock:
                server.connection = link
                closed = self.links_closed
            if closed:
                link.close()
                return
            self.serve(server)
        except BaseException as exc:  # a bug must reach the caller, not hang the run
            logger.exception("the farm's thread for %s failed", server.name)
            self.abort(exc)

    def serve(self, server: RunServer) -> None:
        while not self.stop.is_set():
            if not server.up:
                self.probe(server)
                continue
            self.fill(server)
            with self.lock:
                head = server.flights[0] if server.flights else None
                if head is not None and head.handle is None:
                    head = None  # another thread is still sending it (fill_held_back): it says when it is sent
                    self.changed.wait(IDLE_WAKE_S)
                elif head is None and server.up and not self.stop.is_set():
                    self.changed.wait(IDLE_WAKE_S)
            if head is not None:
                self.await_job(server, head)

    def watch(self) -> None:
        """Every health_interval_s, ask each busy server that has not answered us since whether it still does.

        A server's own thread is blocked waiting for its oldest job, and the client notices a dead
        server only when the socket has been silent a while; this notices it within a second or two.
        A server that answered a request of ours (a submit, a result, a download) within the interval
        is not asked: it was alive then, and asking would cost as much as a job's own requests.
        """
        interval_s = self.farm.health_interval_s
        try:
            while not self.stop.wait(interval_s):
                with self.lock:
                    quiet = self.quiet_servers(time.monotonic())
                for server in quiet:
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

    def probe(self, server: RunServer) -> None:
        """While down: rest (policy backoff), then ask /system_stats and object_info."""
        wait_s = server.next_probe_at - time.monotonic()
        if wait_s > 0:
            self.stop.wait(min(wait_s, PROBE_WAKE_S))
            return
        try:
            schema = server.link.probe()
        except ComfyError as exc:
            with self.lock:
                first = server.failures == 0
                server.failed(exc, self.policy, time.monotonic())
                # Every server refuses us (a certificate, credentials): no wait will change that, so say it now.
                refused = all(not s.up and s.last_error is not None and is_refusal(s.last_error)
                              for s in self.servers)
                held_back = self.held_back(server) if first else []
            logger.info("%s did not answer its probe: %s", server.name, exc)
            if refused:
                self.abort(exc)
                return
            self.fill_held_back(held_back)
            return
        with self.lock:
            first = server.failures == 0
            server.came_up(schema)
            server.answered_at = time.monotonic()
            held_back = self.held_back(server) if first else []
            self.changed.notify_all()
        logger.info("%s is up", server.name)
        self.emit(ServerUp(server.name))
        self.fill_held_back(held_back)

    def fill_held_back(self, servers: Sequence[RunServer]) -> None:
        """Queue ahead on servers that held one job while others were first probed (their threads wait on it)."""
        for server in servers:
            self.fill(server)

    def fill(self, server: RunServer) -> None:
        """Queue jobs on the server until it holds 1 + queue_ahead; with nothing waiting, move one here.

        One thread sends to a server at a time, so the server queues its jobs in the order they were
        boarded: it runs them in the order they arrive, and the engine takes the oldest for the one
        running (the one a failover lets finish while it cancels the rest). A thread that finds
        another sending leaves the filling to that one, which fills once more before it lets go.
        """
        with self.lock:
            if server.sending:
                server.fill_again = True
                return
            server.sending = True
        try:
            while True:
                self.send_jobs(server)
                with self.lock:
                    if not server.fill_again:
                        server.sending = False
                        return
                    server.fill_again = False
        except BaseException:
            with self.lock:
                server.sending = server.fill_again = False
            raise

    def send_jobs(self, server: RunServer) -> None:
        """Board jobs on the server and submit them, one by one, while it has room (this thread alone sends)."""
        while not self.stop.is_set():
            with self.lock:
                if not server.up or len(server.flights) >= self.slots_now(server):
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
                flight: Flight | None = self.board(server, ticket) if ticket is not None else None
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
            # shut_down, mark_down and a settled copy take flights with a handle off the server; one
            # they took while it was being submitted (no handle yet) is ours to stop
            with self.lock:
                server.answered_at = time.monotonic()
                flight.handle = handle
                stopped = (self.cancelling or flight not in server.flights) and not flight.cancelled
                flight.cancelled = flight.cancelled or stopped
                self.changed.notify_all()  # shut_down may be waiting for this submission
            if stopped:
                self.cancel(server, flight)
                return
            self.emit(JobSubmitted(ticket.job, server.name, attempt))

    def await_job(self, server: RunServer, flight: Flight) -> None:
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
                server.answered_at = time.monotonic()  # the result was read from it
                duplicate = flight.ticket.settled
            if self.out_dir is not None and not duplicate:
                result = self.save(server, flight, result)
        except ComfyError as exc:
            self.failed(server, flight, exc)
            return
        self.completed(server, flight, replace(result, server=server.name))

    def save(self, server: RunServer, flight: Flight, result: JobResult) -> JobResult:
        """Download a finished job's outputs; a download that fails is tried again, not the GPU work."""
        assert self.out_dir is not None
        try:
            return server.link.save(result, self.out_dir)
        except ComfyError as exc:
            if self.recover(server, flight, exc) is None:
                raise
            return server.link.save(result, self.out_dir)

    def recover(self, server: RunServer, flight: Flight, error: ComfyError) -> JobResult | None:
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

    def completed(self, server: RunServer, flight: Flight, result: JobResult) -> None:
        ticket = flight.ticket
        with self.lock:
            self.drop(server, flight)
            now = server.answered_at = time.monotonic()  # its outputs were downloaded, if asked
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

    def failed(self, server: RunServer, flight: Flight, error: ComfyError) -> None:
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

    def mark_down(self, server: RunServer, error: ComfyError) -> list[FarmEvent]:
        """Take the server out (lock held); the jobs it held go back to the waiting list."""
        if not server.up:
            return []
        rest_s = server.failed(error, self.policy, time.monotonic())
        displaced = list(server.flights)
        server.flights.clear()
        for flight in displaced:
            flight.ticket.copies -= 1
            self.forget_if_gone(flight.ticket)  # a settled job's last copy: drop() will not see it again
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

    def cancel_all(self, server: RunServer, flights: Sequence[Flight]) -> None:
        for flight in flights:
            self.cancel(server, flight)

    def cancel(self, server: RunServer, flight: Flight) -> None:
        """Take a copy that is no longer wanted off its server (its own thread reaps the handle)."""
        assert flight.handle is not None
        try:
            flight.handle.cancel()
        except ComfyError as exc:
            logger.info("%s: could not cancel an unwanted copy of job %s: %s", server.name, flight.ticket.seq, exc)
