"""JobHandle: one submitted prompt; wait for it, iterate its events, or cancel it.

A handle reads its prompt's events from the queue the Listener fills, and is driven by
the thread that waits on it or iterates its events (its callbacks run there too). The
socket is a hint: when it is silent for `Timeouts.silence_s`, reconnects, or the queue
shrinks before the prompt started, the handle reads the prompt's record (`locate`) and
replays its ending from history; a prompt in neither queue nor history raises JobLost.
It asks its server only what `PromptRecords` names, and its listener only what `EventFeed` names.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from comfy_orchestrator.errors import (
    Cancelled,
    ComfyError,
    Interrupted,
    JobLost,
    JobTimedOut,
    OutOfMemory,
    ServerError,
)
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.listener import Disconnected, QueueShrank, Reconnected
from comfy_orchestrator.protocol import (
    Event,
    ExecutionStarted,
    NodeExecuting,
    NodesCached,
    PreviewImage,
    Progress,
    ProgressTracker,
    PromptFailed,
    outcome_from_history,
    outputs_from_history,
    track,
)

__all__ = ["EventCallback", "EventFeed", "JobHandle", "ProgressCallback", "PromptRecords"]

log = logging.getLogger(__name__)

EventCallback = Callable[[Event], None]
ProgressCallback = Callable[[Progress], None]


class PromptRecords(Protocol):
    """What a JobHandle asks of its server (the Client): the prompt's record and the queue's controls."""

    @property
    def url(self) -> str: ...
    def history_entry(self, prompt_id: str) -> dict[str, Any] | None: ...
    def locate(self, prompt_id: str) -> tuple[str, dict[str, Any] | None]: ...
    def delete(self, prompt_ids: Sequence[str]) -> None: ...
    def interrupt(self, prompt_id: str | None = None) -> None: ...


class EventFeed(Protocol):
    """What a JobHandle asks of the websocket reader (the Listener)."""

    @property
    def last_frame_at(self) -> float: ...
    def recycle(self) -> None: ...
    def unsubscribe(self, prompt_id: str) -> None: ...


class JobHandle:
    """One submitted prompt: wait for it, iterate its events, or cancel it."""

    def __init__(self, server: PromptRecords, feed: EventFeed, job: Job, prompt_id: str,
                 events: queue.SimpleQueue[Event], *, timeouts: Timeouts, on_event: EventCallback | None,
                 on_progress: ProgressCallback | None, prompt: Mapping[str, Any] | None = None) -> None:
        """`prompt` is the job's graph in API format, where the caller has it already."""
        self._server = server
        self._feed = feed
        self._timeouts = timeouts
        self.job = job
        self.prompt_id = prompt_id
        self.number: float | None = None
        self.node_errors: dict[str, Any] = {}  # a 200 answer's errors for branches that will not run
        self.previews: list[PreviewImage] = []
        self._events = events
        self._on_event = on_event
        self._on_progress = on_progress
        self._tracker = ProgressTracker(job.graph.to_api() if prompt is None else prompt)
        self._drive = threading.Lock()
        self._entry: Mapping[str, Any] | None = None
        self._result: JobResult | None = None
        self._error: ComfyError | None = None
        self._cached: tuple[str, ...] = ()
        self._timings: dict[str, float] = {"submitted": time.time()}
        self._cancelled = False

    @property
    def progress(self) -> Progress:
        return self._tracker.progress

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def wait(self, timeout_s: float | None = None) -> JobResult:
        """Block until the prompt ends; return its result or raise what went wrong."""
        for _ in self.events(timeout_s=timeout_s):
            pass
        assert self._result is not None
        return self._result

    def events(self, *, timeout_s: float | None = None) -> Iterator[Event]:
        """Yield this prompt's events as they come; end when it is done, raise if it fails."""
        with self._drive:
            if self._error is not None:
                raise self._error
            if self._result is not None:
                return
            limit_s = self._timeouts.job_s if timeout_s is None else timeout_s
            try:
                for event in track(self._stream(time.monotonic() + limit_s, limit_s), self.prompt_id,
                                   server=self._server.url):
                    self._note(event)
                    yield event
                self._note(NodeExecuting(self.prompt_id, None))  # track() keeps the closing message
                self._result = self._finish()
            except Interrupted as exc:
                if self._cancelled and not isinstance(exc, Cancelled):  # we stopped it: say so
                    self._error = Cancelled(self.prompt_id, how="interrupted", node_id=exc.node_id,
                                            server=self._server.url)
                    raise self._error from exc
                self._error = exc
                raise
            except ComfyError as exc:
                if isinstance(exc, OutOfMemory) and self.job.template:
                    from comfy_orchestrator.advice import out_of_memory_advice  # its tables: only on this path

                    exc.advise(out_of_memory_advice(self.job.template, self.job.params) or exc.advice)
                self._error = exc
                raise
            finally:
                if self.done:
                    self._feed.unsubscribe(self.prompt_id)

    def cancel(self) -> None:
        """Take the prompt off the queue if it waits, interrupt it if it runs (this prompt only).

        Waiting for it afterwards raises Cancelled, not JobLost or Interrupted.
        """
        self._cancelled = True
        self._server.delete([self.prompt_id])  # first: a prompt deleted while it starts is then interrupted
        self._server.interrupt(self.prompt_id)

    def _note(self, event: Event) -> None:
        if isinstance(event, ExecutionStarted):
            self._timings["started"] = time.time()
        elif isinstance(event, NodesCached):
            self._cached = event.nodes
        elif isinstance(event, PreviewImage):
            self.previews.append(event)
        before = self._tracker.progress
        progress = self._tracker.update(event)
        if self._on_event is not None:
            self._on_event(event)
        if self._on_progress is not None and progress != before:
            self._on_progress(progress)

    def _stream(self, deadline: float, limit_s: float) -> Iterator[Event]:
        """The raw events of this prompt; read its record when the socket may have missed its end.

        That is when the socket was silent `silence_s` (then a running prompt also gets a new
        socket), when it reconnected, and when the queue shrank by more than the ends the socket
        told of before the prompt started (a deleted prompt sends nothing but that broadcast).
        """
        checked_at = time.monotonic()
        started = False
        while True:
            event = self._next_event(deadline, limit_s, checked_at)
            check = False
            if event is None or isinstance(event, Reconnected):
                check = True
            elif isinstance(event, Disconnected):
                log.info("%s: websocket lost while prompt %s is pending", self._server.url, self.prompt_id)
            elif isinstance(event, QueueShrank):
                check = not started
            else:
                started = started or event.prompt_id == self.prompt_id
                if isinstance(event, NodeExecuting) and event.node is None and event.prompt_id == self.prompt_id:
                    self._entry = self._server.history_entry(self.prompt_id)
                    if self._entry is None:
                        raise ServerError(f"prompt {self.prompt_id} ended but has no history entry",
                                          server=self._server.url)
                yield event
            if check:
                checked_at = time.monotonic()
                yield from self._reconcile(recycle=event is None)
            if self._entry is not None:
                return

    def _next_event(self, deadline: float, limit_s: float, checked_at: float) -> Event | None:
        """The next event for this prompt; None once the socket, and we, were silent `silence_s`."""
        silence_s = self._timeouts.silence_s
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise JobTimedOut(self.prompt_id, timeout_s=limit_s, server=self._server.url)
            quiet_since = max(self._feed.last_frame_at, checked_at)
            try:
                return self._events.get(timeout=max(0.0, min(deadline - now, quiet_since + silence_s - now)))
            except queue.Empty:
                if time.monotonic() - max(self._feed.last_frame_at, checked_at) >= silence_s:
                    log.info("%s: no websocket message for %.1f s; checking prompt %s", self._server.url,
                             silence_s, self.prompt_id)
                    return None

    def _reconcile(self, *, recycle: bool) -> Iterator[Event]:
        """Ask the server where the prompt is; on a finished record, replay its ending."""
        state, entry = self._server.locate(self.prompt_id)
        if state == "unknown" and self._cancelled:
            raise Cancelled(self.prompt_id, how="taken off the queue", server=self._server.url)
        if state == "unknown":
            raise JobLost(self.prompt_id, server=self._server.url)
        if state != "done" or entry is None:
            if recycle and state == "running":
                self._feed.recycle()
            return
        self._entry = entry
        outcome = outcome_from_history(entry, self.prompt_id)
        log.info("%s: prompt %s found finished in history (%s)", self._server.url, self.prompt_id,
                 outcome.status or "no status")
        if outcome.failure is not None:
            yield outcome.failure
        elif outcome.interruption is not None:
            yield outcome.interruption
        elif outcome.status == "error":
            yield PromptFailed(self.prompt_id, None, None, "", "the server recorded an error without details")
        if outcome.cached_nodes:
            yield NodesCached(self.prompt_id, outcome.cached_nodes)
        yield NodeExecuting(self.prompt_id, None)

    def _finish(self) -> JobResult:
        assert self._entry is not None
        self._timings["finished"] = time.time()
        outcome = outcome_from_history(self._entry, self.prompt_id)
        return JobResult(job=self.job, prompt_id=self.prompt_id, server=self._server.url,
                         outputs=outputs_from_history(self._entry), timings=dict(self._timings),
                         cached_nodes=self._cached or outcome.cached_nodes)
