"""What a farm reports (its events, a server's status) and how it reaches a server: ServerLink.

The engine (engine.py) talks to servers only through `ServerLink`; `ClientLink` is the real one,
over `Client`, and tests hand the farm stub links instead. `ServerRecord` is what a farm run
and a queue worker's box both keep of each server they drive: health, backoff, what it can run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from comfy_orchestrator.client import Client
from comfy_orchestrator.dispatch import Capability, JobNeeds
from comfy_orchestrator.errors import ComfyError
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.limits import FARM_TIMEOUTS, Timeouts
from comfy_orchestrator.protocol import Progress
from comfy_orchestrator.retry import RetryPolicy, jitter
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.servers import ServerConfig
from comfy_orchestrator.transport import SharedAnswers

__all__ = [
    "ClientLink", "Device", "DuplicateDiscarded", "FarmEvent", "JobDone", "JobFailed", "JobOutcome",
    "JobProgress", "JobRetrying", "JobSubmitted", "JobSubmitting", "NoServerUp", "RunningJob", "ServerDown",
    "ServerLink", "ServerStatus", "ServerUp",
]

LINK_RETRY = RetryPolicy(max_attempts=2, first_delay_s=0.5, max_delay_s=2.0)  # fail over rather than retry long


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
    refused: bool = False  # down because it refused our certificate check or credentials: set-up to fix
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

    def __init__(self, config: ServerConfig, *, timeouts: Timeouts = FARM_TIMEOUTS,
                 shared: SharedAnswers | None = None) -> None:
        """`shared`: what the farm's links read once for all (the /object_info of servers of one install)."""
        self.config = config
        self.client = Client(config.url, headers=config.headers, token=config.token, timeouts=timeouts,
                             retry=LINK_RETRY, ca_cert=config.ca_cert, allow_plain_http=config.allow_plain_http,
                             shared=shared)

    def probe(self) -> Schema:
        self.client.system_stats()
        return self.client.schema(refresh=True)

    def check(self) -> None:
        self.client.system_stats()

    def submit(self, job: Job, *, prompt_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> RunningJob:
        # only waited on: no progress_state frames, and no steps unless someone follows the progress
        return self.client.submit(job, prompt_id=prompt_id, on_progress=on_progress, every_event=False, steps=False)

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
# What a driver keeps of each server


@dataclass(eq=False)
class ServerRecord:
    """One server as the farm's engine or a queue worker's box drives it; guarded by its owner's lock.

    `name` and `slots` (1 + queue_ahead: the prompts it holds at most) are its config's, read once.
    """

    config: ServerConfig
    name: str = field(init=False)
    slots: int = field(init=False)
    up: bool = False
    capability: Capability | None = None  # a new one each time its object_info is read
    last: JobNeeds | None = None  # the last job queued: what will be loaded when the next one starts
    failures: int = 0  # in a row, probes and faults alike; the backoff grows with it
    next_probe_at: float = 0.0  # monotonic; while down, not asked before then
    last_error: ComfyError | None = None

    def __post_init__(self) -> None:
        self.name = self.config.name
        self.slots = 1 + self.config.queue_ahead

    def came_up(self, schema: Schema) -> None:
        """It answered its probe: up, with what its object_info lists."""
        self.up, self.failures, self.last_error = True, 0, None
        self.capability = Capability(schema)

    def failed(self, error: ComfyError, policy: RetryPolicy, now: float) -> float:
        """It failed a probe or went down: out, resting `policy.delay()` (with jitter); the seconds it rests."""
        self.up = False
        self.failures += 1
        self.last_error = error
        rest_s = policy.delay(self.failures, jitter())
        self.next_probe_at = now + rest_s
        return rest_s

