"""Box: the ComfyUI servers of one GPU box, as a queue worker drives them.

A worker runs each task on one of its box's servers: the one with a free slot (1 + queue_ahead
prompts each, as in the farm) whose last job shares the most with this one (`dispatch.affinity`:
checkpoint, image, prompt text), among those whose object_info can run it (`dispatch.Capability`).
A failure is judged by the farm's own `decide_retry`: a server fault marks the server down (it
is probed again with the policy's backoff) and the job tries another server of the box or the
same one later; a deterministic failure that repeats, or one no other server can avoid, ends it.
Each server's record (health, backoff, what it can run) is the farm's `ServerRecord`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from comfy_orchestrator.dispatch import Attempt, JobNeeds, affinity, decide_retry, job_needs
from comfy_orchestrator.errors import ComfyError, JobTimedOut, NoServerAvailable
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.limits import FARM_TIMEOUTS
from comfy_orchestrator.links import ClientLink, RunningJob, ServerLink, ServerRecord
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.servers import ServerConfig

logger = logging.getLogger(__name__)

ACQUIRE_WAIT_S = 0.5  # how often a task waiting for a slot looks again (servers coming up, timeouts)


@dataclass(eq=False, kw_only=True)
class BoxServer(ServerRecord):
    """One server of the box: its record, its link and its load; guarded by the box's lock."""

    link: ServerLink
    busy: int = 0  # prompts of ours it holds now
    ran: int = 0  # jobs it finished for this worker


@dataclass(frozen=True)
class ServerSummary:
    """What a worker advertises of one server: health, load and what it can run."""

    name: str
    up: bool
    busy: int
    slots: int
    ran: int
    loaded: str | None
    checkpoints: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()
    node_classes: int = 0
    error: str = ""


@dataclass
class _Waiter:
    avoid: dict[str, float] = field(default_factory=dict)  # server -> monotonic time it may be used again


class Box:
    """The servers of one box: slots, capabilities, health; thread-safe (tasks run on threads)."""

    def __init__(self, servers: Sequence[ServerConfig], *, policy: RetryPolicy = RetryPolicy(),
                 connect: Callable[[ServerConfig], ServerLink] | None = None, job_timeout_s: float = 600.0) -> None:
        timeouts = replace(FARM_TIMEOUTS, job_s=job_timeout_s)
        connect = connect or (lambda config: ClientLink(config, timeouts=timeouts))
        self.servers = [BoxServer(config=config, link=connect(config)) for config in servers]
        self.policy = policy
        self.job_timeout_s = job_timeout_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._handles: dict[int, tuple[BoxServer, RunningJob]] = {}  # prompts queued now, to cancel on a stop

    @property
    def capacity(self) -> int:
        """How many prompts the box keeps queued on its servers at most."""
        return sum(server.slots for server in self.servers)

    # -- health
    def probe_due(self) -> None:
        """Probe the servers that are down and due (at start, then with backoff)."""
        now = time.monotonic()
        for server in self.servers:
            with self._lock:
                due = not server.up and now >= server.next_probe_at
            if not due:
                continue
            try:
                schema = server.link.probe()
            except ComfyError as exc:
                with self._lock:
                    server.failed(exc, self.policy, time.monotonic())
                logger.info("%s did not answer its probe: %s", server.name, exc)
                continue
            with self._lock:
                server.came_up(schema)
                self._changed.notify_all()
            logger.info("%s is up", server.name)

    def mark_down(self, server: BoxServer, error: ComfyError) -> None:
        with self._lock:
            if not server.up:
                return
            server.failed(error, self.policy, time.monotonic())
            server.last = None
        logger.warning("%s is down: %s", server.name, error)

    # -- what the box can do
    def lacks(self, needs: JobNeeds) -> str | None:
        """None if a server that is up can run a job with `needs`; else what each lacks (or that none is up)."""
        with self._lock:
            known = [server for server in self.servers if server.capability is not None]
            if any(server.up and server.capability is not None and server.capability.can_run(needs)
                   for server in self.servers):
                return None
            if not any(server.up for server in self.servers):
                return "no server of this box is up"
            return "; ".join(f"{server.name} lacks {', '.join(server.capability.lacks(needs)[:3])}"
                             for server in known if server.capability is not None)

    def any_up(self) -> bool:
        with self._lock:
            return any(server.up for server in self.servers)

    def loaded(self) -> set[str]:
        """The checkpoints the box's servers ran last."""
        with self._lock:
            return {server.last.checkpoint for server in self.servers
                    if server.up and server.last is not None and server.last.checkpoint is not None}

    def summaries(self) -> list[ServerSummary]:
        with self._lock:
            return [_summary(server) for server in self.servers]

    # -- running jobs
    def acquire(self, needs: JobNeeds, waiter: _Waiter, deadline: float) -> BoxServer:
        """Wait for a free slot on an able server; prefer the one that has the most of `needs` cached."""
        with self._changed:
            while True:
                now = time.monotonic()
                able = [s for s in self.servers if s.up and s.capability is not None and s.capability.can_run(needs)
                        and waiter.avoid.get(s.name, 0.0) <= now]
                free = [s for s in able if s.busy < s.slots]
                if free:
                    best = max(free, key=lambda s: _preference(needs, s, self.servers.index(s)))
                    best.busy += 1
                    best.last = needs
                    return best
                if now >= deadline:
                    lacks = "; ".join(f"{s.name}: {'up' if s.up else 'down ' + _error_text(s)}" for s in self.servers)
                    raise NoServerAvailable(f"no server of this box could take the job in time ({lacks})")
                if not any(s.up for s in self.servers) or not able:
                    # nothing to wait on but a probe or an avoidance running out
                    if all(waiter.avoid.get(s.name, 0.0) == math.inf or
                           (s.capability is not None and not s.capability.can_run(needs)) for s in self.servers):
                        raise NoServerAvailable("no server of this box can run the job any more")
                self._changed.wait(ACQUIRE_WAIT_S)

    def release(self, server: BoxServer) -> None:
        with self._changed:
            server.busy -= 1
            self._changed.notify_all()

    def run(self, job: Job, out_dir: Path, *, on_start: Callable[[str], None] = lambda server: None) -> JobResult:
        """Run `job` on a server of the box and download its outputs into `out_dir`; retry per policy.

        `on_start` hears the name of each server the job is queued on.
        """
        needs = job_needs(job)
        waiter = _Waiter()
        attempts: list[Attempt] = []
        deadline = time.monotonic() + self.job_timeout_s
        while True:
            server = self.acquire(needs, waiter, deadline)
            handle: RunningJob | None = None
            try:
                on_start(server.name)
                handle = server.link.submit(job)
                with self._lock:
                    self._handles[id(handle)] = (server, handle)
                result = handle.wait(max(deadline - time.monotonic(), 1.0))
                result = server.link.save(result, out_dir)
            except ComfyError as exc:
                self._forget(handle)
                self.release(server)
                with self._lock:
                    untried = frozenset(s.name for s in self.servers if s is not server and s.capability is not None
                                        and s.capability.can_run(needs) and s.name not in {a.server for a in attempts})
                decision = decide_retry(exc, attempts, server=server.name, untried=untried, policy=self.policy)
                attempts.append(Attempt(server.name, exc))
                if decision.server_down:
                    self.mark_down(server, exc)
                logger.info("%s failed on %s (%s); %s", job.label, server.name, exc,
                            "retrying" if decision.retry else "giving up")
                if not decision.retry:
                    raise
                waiter.avoid[server.name] = time.monotonic() + decision.avoid_s
                if time.monotonic() >= deadline:
                    raise JobTimedOut(job.label or job.id, timeout_s=self.job_timeout_s, server=server.name) from exc
                continue
            self._forget(handle)
            with self._lock:
                server.ran += 1
            self.release(server)
            return replace(result, server=server.name)

    def _forget(self, handle: RunningJob | None) -> None:
        with self._lock:
            self._handles.pop(id(handle), None)

    def close(self) -> None:
        """Take what the box still runs off its servers (a stop leaves no prompt of ours), then disconnect."""
        with self._lock:
            left = list(self._handles.values())
            self._handles.clear()
        for server, handle in left:
            try:
                handle.cancel()
            except ComfyError as exc:
                logger.info("%s: could not cancel prompt %s: %s", server.name, handle.prompt_id, exc)
        for server in self.servers:
            server.link.close()


def _preference(needs: JobNeeds, server: BoxServer, order: int) -> tuple[bool, bool, int, int, int]:
    """How much a free server suits a job: its checkpoint loaded there, then no other checkpoint pushed out
    (an idle server loads it rather than one that keeps another warm), then the farm's affinity, free slots."""
    loaded = server.last is not None and server.last.checkpoint == needs.checkpoint
    spares = server.last is None or loaded
    return loaded, spares, affinity(needs, server.last), server.slots - server.busy, -order


def _summary(server: BoxServer) -> ServerSummary:
    capability = server.capability
    if capability is None:
        return ServerSummary(server.name, server.up, server.busy, server.slots, server.ran, None,
                             error=_error_text(server))
    schema = capability.schema

    def choices(class_type: str, input_name: str) -> tuple[str, ...]:
        return tuple(str(c) for c in schema.choices(class_type, input_name)) if class_type in schema else ()

    return ServerSummary(server.name, server.up, server.busy, server.slots, server.ran,
                         server.last.checkpoint if server.last is not None else None,
                         checkpoints=schema.checkpoints if "CheckpointLoaderSimple" in schema else (),
                         loras=choices("LoraLoader", "lora_name"),
                         controlnets=choices("ControlNetLoader", "control_net_name"),
                         node_classes=len(list(schema)), error=_error_text(server))


def _error_text(server: BoxServer) -> str:
    return "" if server.last_error is None else str(server.last_error)
