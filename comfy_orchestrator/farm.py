"""Farm and RetryPolicy: many servers, a thread each.

A farm runs a stream of jobs over several ComfyUI servers (several GPUs, or several
processes on one GPU) and keeps each one busy::

    from comfy_orchestrator.farm import Farm, JobFailed, load_farm

    farm = Farm(load_farm("farm.toml"))            # or Farm.from_urls(["http://a:8188", ...])
    for outcome in farm.run(jobs, out_dir=Path("out"), on_event=print):
        if isinstance(outcome, JobFailed):
            print(outcome.job.label, "failed on", outcome.servers, outcome.error)
        else:                                        # a JobResult
            print(outcome.job.label, "ran on", outcome.server, outcome.files)

`run` reads `jobs` lazily (a bounded window ahead of the servers) and yields one outcome
per job, in completion order, never two: a `JobResult` (`.server` names the server that
ran it) or a `JobFailed` with the error, the number of attempts and the servers tried.
Progress arrives as `FarmEvent` values through `on_event`, called from the farm's
threads. `Farm.status()` reads each server's health for `comfy-orch farm status`.

How jobs move (the policy is pure and lives in the first half of this module):
- Each server holds `1 + queue_ahead` jobs (default 2 ahead), so its GPU never waits.
- A free slot takes the waiting job that this server will finish soonest, judged from
  each server's observed job times, queue and loaded checkpoint (`SoonestFinish`);
  among those it prefers jobs sharing the checkpoint, input image and prompt text of
  its last job (affinity), and it only takes jobs whose checkpoint and node classes
  its object_info lists.
- A server that fails (connection, 5xx, timeout) is marked down; its jobs go back to
  the waiting list; it is probed with `RetryPolicy.delay()` backoff and rejoins when
  /system_stats answers. A job that fails the same deterministic way on two servers,
  or runs out of attempts, is reported as `JobFailed`. A second completion of a job
  that was moved is discarded.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from comfy_orchestrator.errors import (
    AuthFailed,
    ComfyError,
    ExecutionFailed,
    FarmFileInvalid,
    JobTimedOut,
    MissingModel,
    PromptRejected,
    ServerError,
)
from comfy_orchestrator.graph import is_link
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.schema import CHECKPOINT_LOADERS, Schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_AHEAD = 2
DEFAULT_JOB_S = 1.0  # a guess for a server that has not finished a job yet
_TEXT_ENCODERS = frozenset({"CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner"})
_IMAGE_LOADERS = frozenset({"LoadImage", "LoadImageMask"})


# ---------------------------------------------------------------------------
# Configuration


class ServerConfig(BaseModel):
    """One server of a farm, as a farm file or --server gives it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    name: str = ""  # defaults to host:port
    headers: dict[str, str] = Field(default_factory=dict)
    token: str | None = None  # sent as "Authorization: Bearer <token>"
    weight: float = Field(default=1.0, gt=0)  # relative speed before any job was timed
    tags: tuple[str, ...] = ()
    queue_ahead: int = Field(default=DEFAULT_QUEUE_AHEAD, ge=0, le=64)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http(s) URL such as http://127.0.0.1:8188")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _default_name(self) -> ServerConfig:
        if not self.name:
            object.__setattr__(self, "name", urlsplit(self.url).netloc)
        return self

    def request_headers(self) -> dict[str, str]:
        """The headers every request to this server carries."""
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def servers_from_urls(urls: Iterable[str], *, queue_ahead: int = DEFAULT_QUEUE_AHEAD) -> tuple[ServerConfig, ...]:
    """Server configs for plain URLs, as --server gives them."""
    return _checked_servers([{"url": url, "queue_ahead": queue_ahead} for url in urls], source="--server")


def parse_farm(text: str, *, source: str = "farm file") -> tuple[ServerConfig, ...]:
    """Read a farm file's TOML text: one [[server]] table per server."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FarmFileInvalid(f"not valid TOML: {exc}", source=source) from exc
    unknown = sorted(set(data) - {"server"})
    if unknown:
        raise FarmFileInvalid(f"unknown top-level key(s) {', '.join(unknown)}; expected [[server]] tables",
                              source=source)
    tables = data.get("server")
    if not isinstance(tables, list) or not tables:
        raise FarmFileInvalid("no [[server]] tables", source=source)
    return _checked_servers(tables, source=source)


def load_farm(path: str | Path) -> tuple[ServerConfig, ...]:
    """Read a farm file (TOML, one [[server]] table per server)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise FarmFileInvalid(f"cannot read it: {exc.strerror or exc}", source=str(path)) from exc
    return parse_farm(text, source=str(path))


def _checked_servers(tables: Sequence[Any], *, source: str) -> tuple[ServerConfig, ...]:
    servers = []
    for index, table in enumerate(tables, start=1):
        try:
            servers.append(ServerConfig.model_validate(table))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'server'}: {error['msg']}" for error in exc.errors())
            raise FarmFileInvalid(f"server {index}: {problems}", source=source) from exc
    if not servers:
        raise FarmFileInvalid("no servers given", source=source)
    names = [server.name for server in servers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FarmFileInvalid(f"server name(s) used twice: {', '.join(duplicates)}", source=source)
    return tuple(servers)


# ---------------------------------------------------------------------------
# What a job needs, and what a server can do


@dataclass(frozen=True)
class JobNeeds:
    """What a job asks of a server, and the parts a server may already have cached."""

    class_types: frozenset[str]
    literals: frozenset[tuple[str, str, str]]  # (class_type, input, value) of every string input
    uploads: frozenset[str]  # input files the job uploads itself
    checkpoint: str | None = None
    images: frozenset[str] = frozenset()
    texts: frozenset[str] = frozenset()


def job_needs(job: Job) -> JobNeeds:
    """Read what `job` needs from its graph: node classes, model and file names, cacheable inputs."""
    literals: set[tuple[str, str, str]] = set()
    checkpoints: list[str] = []
    images: set[str] = set()
    texts: set[str] = set()
    for node in job.graph.values():
        for name, value in node.inputs.items():
            if is_link(value) or not isinstance(value, str):
                continue
            literals.add((node.class_type, name, value))
            if CHECKPOINT_LOADERS.get(node.class_type) == name:
                checkpoints.append(value)
            elif node.class_type in _IMAGE_LOADERS and name == "image":
                images.add(value)
            elif node.class_type in _TEXT_ENCODERS:
                texts.add(value)
    return JobNeeds(
        class_types=frozenset(node.class_type for node in job.graph.values()),
        literals=frozenset(literals),
        uploads=frozenset(job.inputs),
        checkpoint=checkpoints[0] if checkpoints else None,
        images=frozenset(images),
        texts=frozenset(texts),
    )


class Capability:
    """What one server's object_info offers: node classes and the allowed values of choice inputs."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._choices: dict[tuple[str, str], frozenset[Any] | None] = {}

    def _allowed(self, class_type: str, input_name: str) -> frozenset[Any] | None:
        key = (class_type, input_name)
        if key not in self._choices:
            spec = self.schema[class_type].inputs.get(input_name)
            self._choices[key] = frozenset(spec.choices or ()) if spec is not None and spec.type == "COMBO" else None
        return self._choices[key]

    def lacks(self, needs: JobNeeds) -> list[str]:
        """What the server lacks to run a job with `needs`: missing node classes and choice values."""
        missing = [f"node class {class_type}" for class_type in sorted(needs.class_types - set(self.schema))]
        for class_type, input_name, value in sorted(needs.literals):
            if class_type not in self.schema or value in needs.uploads:
                continue
            allowed = self._allowed(class_type, input_name)
            if allowed is not None and value not in allowed:
                missing.append(f"{class_type}.{input_name} {value!r}")
        return missing

    def can_run(self, needs: JobNeeds) -> bool:
        """Whether the server has every node class and listed value the job needs."""
        return not self.lacks(needs)


# ---------------------------------------------------------------------------
# Choosing a server


@dataclass(frozen=True)
class ServerView:
    """What the scheduler knows of one server at one moment."""

    name: str
    order: int  # position in the farm, for round-robin and ties
    up: bool
    free_slots: int
    queued: int  # jobs submitted and not yet finished (the running one included)
    job_s: float  # expected seconds for a job whose checkpoint is loaded
    switch_s: float  # expected extra seconds to load another checkpoint
    last: JobNeeds | None = None  # the most recently assigned job: what will be loaded when the next one starts


@dataclass(frozen=True)
class WaitingJob:
    """A job waiting for a server, as the scheduler sees it."""

    seq: int  # the order in which the farm read it
    needs: JobNeeds
    eligible: frozenset[str]  # servers allowed to run it now (able, not excluded, not resting)


def affinity(needs: JobNeeds, last: JobNeeds | None) -> int:
    """How much of `needs` a server whose last job was `last` has cached: checkpoint 4, image 2, text 1."""
    if last is None:
        return 0
    score = 0
    if needs.checkpoint is not None and needs.checkpoint == last.checkpoint:
        score += 4
    if needs.images & last.images:
        score += 2
    if needs.texts & last.texts:
        score += 1
    return score


def estimate_finish_s(server: ServerView, needs: JobNeeds) -> float:
    """Seconds from now until `server` would finish a job with `needs`, queued behind its current jobs."""
    loaded = server.last is not None and needs.checkpoint == server.last.checkpoint
    return (server.queued + 1) * server.job_s + (0.0 if loaded else server.switch_s)


class Dispatch(Protocol):
    """A rule that picks which waiting job a server with a free slot takes next."""

    def pick(self, server: ServerView, waiting: Sequence[WaitingJob], servers: Sequence[ServerView]) -> int | None:
        """The index in `waiting` of the job `server` takes now, or None to take nothing yet."""


@dataclass(frozen=True)
class SoonestFinish:
    """Give each job to the server that will finish it soonest; among those, prefer cached work.

    A server takes a job only if no other server would finish it more than `tolerance`
    sooner (so a fast server that is full still gets the job once it frees a slot).
    Among the first `lookahead` waiting jobs it may take, it takes the one sharing most
    with its last job (see `affinity`), then the oldest.
    """

    lookahead: int = 32
    tolerance: float = 0.05

    def pick(self, server: ServerView, waiting: Sequence[WaitingJob], servers: Sequence[ServerView]) -> int | None:
        best: tuple[int, int] | None = None
        chosen = None
        for index, job in enumerate(waiting[: self.lookahead]):
            if server.name not in job.eligible:
                continue
            mine = estimate_finish_s(server, job.needs)
            others = min((estimate_finish_s(other, job.needs) for other in servers
                          if other.up and other.name != server.name and other.name in job.eligible),
                         default=math.inf)
            if mine > others * (1.0 + self.tolerance):
                continue
            score = (affinity(job.needs, server.last), -index)
            if best is None or score > best:
                best, chosen = score, index
        return chosen


@dataclass(frozen=True)
class RoundRobin:
    """The baseline: the n-th job read goes to server n mod size, or to anyone if that one is down."""

    def pick(self, server: ServerView, waiting: Sequence[WaitingJob], servers: Sequence[ServerView]) -> int | None:
        by_order = {other.order: other for other in servers}
        for index, job in enumerate(waiting):
            if server.name not in job.eligible:
                continue
            turn = by_order.get(job.seq % len(servers))
            if turn is None or turn.name == server.name or not turn.up or turn.name not in job.eligible:
                return index
        return None


# ---------------------------------------------------------------------------
# Job times


@dataclass
class JobTimes:
    """Observed seconds per job on one server: warm (checkpoint loaded) and cold (it loaded one)."""

    window: int = 16
    warm_s: deque[float] = field(default_factory=deque)
    cold_s: deque[float] = field(default_factory=deque)

    def add(self, seconds: float, *, loaded_checkpoint: bool) -> None:
        """Record one finished job's seconds on the server."""
        samples = self.cold_s if loaded_checkpoint else self.warm_s
        samples.append(max(seconds, 0.0))
        while len(samples) > self.window:
            samples.popleft()

    def job_s(self, fallback_s: float) -> float:
        """The median warm job time (the cold ones, or `fallback_s`, until a warm one is seen)."""
        if self.warm_s:
            return statistics.median(self.warm_s)
        if self.cold_s:
            return statistics.median(self.cold_s)
        return fallback_s

    def switch_s(self, fallback_s: float) -> float:
        """Extra seconds a checkpoint load costs here (`fallback_s` until both kinds were seen)."""
        if self.warm_s and self.cold_s:
            return max(statistics.median(self.cold_s) - statistics.median(self.warm_s), 0.0)
        return fallback_s


# ---------------------------------------------------------------------------
# Retries


@dataclass(frozen=True)
class RetryPolicy:
    """How often a job is tried and how long a failing server rests."""

    max_attempts: int = 3
    first_delay_s: float = 2.0
    max_delay_s: float = 60.0

    def delay(self, attempt: int, jitter: float = 1.0) -> float:
        """Seconds a failing server rests after `attempt`."""
        return float(min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s) * jitter)


@dataclass(frozen=True)
class Attempt:
    """One failed try of a job: where, and why."""

    server: str
    error: ComfyError


@dataclass(frozen=True)
class RetryDecision:
    """What to do after a job failed on a server."""

    retry: bool
    avoid_s: float = 0.0  # keep the job off the failing server this long (inf: for good)
    server_down: bool = False  # the failure was the server's: mark it down and probe it


def failure_reason(error: ComfyError) -> str:
    """A signature of a deterministic failure; equal on two servers means the job itself is at fault."""
    if isinstance(error, ExecutionFailed):
        first_line = error.exception_message.strip().splitlines()[0] if error.exception_message.strip() else ""
        return f"{type(error).__name__}:{error.node_id}:{error.node_type}:{first_line}"
    if isinstance(error, PromptRejected):
        nodes = ",".join(
            f"{node_id}/{'+'.join(sorted(str(e.get('type', '')) for e in entry.get('errors', [])))}"
            for node_id, entry in sorted(error.node_errors.items()) if isinstance(entry, Mapping))
        return f"{type(error).__name__}:{error.error.get('type', '')}:{nodes}"
    return type(error).__name__


def is_server_fault(error: ComfyError) -> bool:
    """Whether the error says the server, not the job, is unwell (mark it down, probe it)."""
    return isinstance(error, (ServerError, AuthFailed, JobTimedOut))


def decide_retry(
    error: ComfyError,
    earlier: Sequence[Attempt],
    *,
    server: str,
    untried: frozenset[str],
    policy: RetryPolicy,
) -> RetryDecision:
    """Decide whether a job that just failed with `error` on `server` runs again.

    `earlier` are its previous failed attempts; `untried` the other able servers it has
    not failed on. Retryable errors are tried again up to `policy.max_attempts` in all;
    a deterministic error gets one more try on another server, and fails the job when
    it repeats there or no other server can take the job.
    """
    attempt = len(earlier) + 1
    down = is_server_fault(error)
    if attempt >= policy.max_attempts:
        return RetryDecision(retry=False, server_down=down)
    if error.retryable or down:
        if isinstance(error, MissingModel):
            return RetryDecision(retry=bool(untried), avoid_s=math.inf)
        return RetryDecision(retry=True, avoid_s=policy.delay(attempt), server_down=down)
    reason = failure_reason(error)
    if any(failure_reason(a.error) == reason and a.server != server for a in earlier):
        return RetryDecision(retry=False)
    return RetryDecision(retry=bool(untried), avoid_s=math.inf)


class CompletionLedger:
    """Which jobs have a result; a second completion of the same job is a duplicate to discard."""

    def __init__(self) -> None:
        self._done: dict[int, str] = {}

    def settle(self, seq: int, server: str) -> bool:
        """Record that job `seq` finished on `server`; False when it had already finished."""
        if seq in self._done:
            return False
        self._done[seq] = server
        return True

    def winner(self, seq: int) -> str | None:
        """The server whose result was kept for job `seq`."""
        return self._done.get(seq)

    def forget(self, seq: int) -> None:
        """Drop a settled job once no other server can still report it."""
        self._done.pop(seq, None)
