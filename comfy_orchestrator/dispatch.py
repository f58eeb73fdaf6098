"""The farm's policy, pure: what a job needs, which server takes it, job times, retries, duplicates.

No threads and no network: the farm's engine (engine.py, run_state.py) asks these functions and classes, so
every decision can be tested as a table.
- `job_needs` reads a job's node classes, checkpoint, images and prompts; `Capability`
  says whether a server's object_info can run it.
- A `Dispatch` picks the waiting job a server with a free slot takes (`SoonestFinish`,
  judged from each server's `JobTimes` and loaded checkpoint, with affinity for cached
  work; `RoundRobin` is the baseline) and the queued job an idle server moves to itself.
- `decide_retry` says whether a failed job runs again, where not, and whether the server
  is at fault; `CompletionLedger` keeps the first completion of a job that ran twice.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from comfy_orchestrator.errors import (
    AuthFailed,
    CertificateRejected,
    ComfyError,
    ExecutionFailed,
    JobTimedOut,
    MissingModel,
    PromptRejected,
    ServerError,
)
from comfy_orchestrator.graph import is_link
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.schema import CHECKPOINT_LOADERS, Schema

__all__ = [
    "Attempt", "Capability", "CompletionLedger", "Dispatch", "JobNeeds", "JobTimes", "QueuedJob", "RetryDecision",
    "RoundRobin", "ServerView", "SoonestFinish", "WaitingJob", "affinity", "decide_retry", "estimate_finish_s",
    "failure_reason", "has_loaded", "is_refusal", "is_server_fault", "job_needs", "worth_duplicating",
]

_TEXT_ENCODERS = frozenset({"CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner"})
_IMAGE_LOADERS = frozenset({"LoadImage", "LoadImageMask"})


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


VERDICTS_KEPT = 1024  # distinct job needs a Capability remembers its answer for (memory stays flat)


class Capability:
    """What one server's object_info offers: node classes and the allowed values of choice inputs."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._choices: dict[tuple[str, str], frozenset[Any] | None] = {}
        self._verdicts: dict[JobNeeds, bool] = {}  # a sweep's cells mostly need the same

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
        verdict = self._verdicts.get(needs)
        if verdict is None:
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            verdict = self._verdicts[needs] = not self.lacks(needs)
        return verdict


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


def has_loaded(server: ServerView, needs: JobNeeds) -> bool:
    """Whether the job's checkpoint is what `server` will have loaded when its queue runs out."""
    return server.last is not None and needs.checkpoint == server.last.checkpoint


def estimate_finish_s(server: ServerView, needs: JobNeeds, *, backlog: int = 0) -> float:
    """Seconds until `server` would finish a job with `needs`, behind its queue and `backlog` more jobs."""
    return (server.queued + 1 + backlog) * server.job_s + (0.0 if has_loaded(server, needs) else server.switch_s)


def worth_duplicating(server: ServerView, holder: ServerView, needs: JobNeeds, *, running_for_s: float,
                      factor: float) -> bool:
    """Whether idle `server` should run a copy of the job `holder` has been running `running_for_s`.

    Only a straggler far slower than `server` is worth it: the copy must finish, from
    scratch, in 1/`factor` of the time the holder is still expected to take. A holder past
    its expected time is assumed to need as long again as it has run (it is stuck or slow).
    """
    left_s = holder.job_s - running_for_s
    if left_s <= 0:
        left_s = running_for_s
    return factor * estimate_finish_s(server, needs) <= left_s


@dataclass(frozen=True)
class QueuedJob:
    """A job queued on another server behind its running one, as a server with nothing to do sees it."""

    server: str
    position: int  # jobs ahead of it on that server, the running one included (1 or more)
    needs: JobNeeds


class Dispatch(Protocol):
    """A rule that picks which waiting job a server with a free slot takes next."""

    def pick(self, server: ServerView, waiting: Sequence[WaitingJob], servers: Sequence[ServerView]) -> int | None:
        """The index in `waiting` of the job `server` takes now, or None to take nothing yet."""

    def steal(self, server: ServerView, queued: Sequence[QueuedJob], servers: Sequence[ServerView]) -> int | None:
        """The index in `queued` of a job to move to `server`, which found nothing waiting; or None."""


@dataclass(frozen=True)
class SoonestFinish:
    """Give each job to the server that will finish it soonest; among those, prefer cached work.

    A server takes a job only if no other server would finish it more than `tolerance`
    sooner. The other servers are judged with the waiting jobs of the same checkpoint
    that they would run first: the servers that have it loaded share that backlog
    (so a fast server that is full still gets the job once it frees a slot, and an idle
    server loads a second checkpoint once the backlog of it outlasts the load).
    Among the first `lookahead` waiting jobs it may take, it takes the one sharing most
    with its last job (see `affinity`), then the one it finishes most ahead of the
    others, then the oldest.
    """

    lookahead: int = 32
    tolerance: float = 0.05

    def pick(self, server: ServerView, waiting: Sequence[WaitingJob], servers: Sequence[ServerView]) -> int | None:
        window = waiting[: self.lookahead]
        same_checkpoint = Counter(job.needs.checkpoint for job in window)
        best: tuple[int, float, int] | None = None
        chosen = None
        # Finish times depend only on a job's checkpoint and who may run it: a sweep has few of those.
        judged: dict[tuple[str | None, frozenset[str]], tuple[float, float]] = {}
        for index, job in enumerate(window):
            if server.name not in job.eligible:
                continue
            key = (job.needs.checkpoint, job.eligible)
            if key not in judged:
                judged[key] = self._finish_s(server, job, servers, same_checkpoint[job.needs.checkpoint])
            mine, others = judged[key]
            if mine > others * (1.0 + self.tolerance):
                continue
            score = (affinity(job.needs, server.last), round(min(others - mine, 1e9), 6), -index)
            if best is None or score > best:
                best, chosen = score, index
        return chosen

    @staticmethod
    def _finish_s(server: ServerView, job: WaitingJob, servers: Sequence[ServerView],
                  same_checkpoint: int) -> tuple[float, float]:
        """When `server` would finish `job`, and the soonest any other server allowed to run it would."""
        mine = estimate_finish_s(server, job.needs)
        rivals = [other for other in servers if other.up and other.name != server.name and other.name in job.eligible]
        sharers = sum(has_loaded(other, job.needs) for other in rivals)
        backlog = -(-same_checkpoint // max(sharers, 1)) - 1
        others = min((estimate_finish_s(other, job.needs, backlog=backlog if has_loaded(other, job.needs) else 0)
                      for other in rivals), default=math.inf)
        return mine, others

    def steal(self, server: ServerView, queued: Sequence[QueuedJob], servers: Sequence[ServerView]) -> int | None:
        """Move the queued job this server would finish most ahead of the server holding it.

        That server is assumed halfway through its running job; this evens out the end of a
        sweep, when some servers still hold queued jobs and others have none.
        """
        by_name = {other.name: other for other in servers}
        mine_s = [estimate_finish_s(server, job.needs) for job in queued]
        best_gain_s, chosen = 0.0, None
        for index, job in enumerate(queued):
            holder = by_name.get(job.server)
            if holder is None or job.position < 1:
                continue
            theirs_s = (job.position + 0.5) * holder.job_s
            gain_s = theirs_s * (1.0 - self.tolerance) - mine_s[index]
            if gain_s > best_gain_s:
                best_gain_s, chosen = gain_s, index
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

    def steal(self, server: ServerView, queued: Sequence[QueuedJob], servers: Sequence[ServerView]) -> int | None:
        return None  # the baseline keeps each job where its turn put it


# ---------------------------------------------------------------------------
# Job times


@dataclass
class JobTimes:
    """Observed seconds per job on one server: warm (checkpoint loaded) and cold (it loaded one).

    Record through `add`: the medians are worked out there, once a job, since the farm
    reads them for every server each time a server takes a job.
    """

    window: int = 16
    warm_s: deque[float] = field(default_factory=deque)
    cold_s: deque[float] = field(default_factory=deque)
    _medians: tuple[float | None, float | None] = field(default=(None, None), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._medians = (self._median(self.warm_s), self._median(self.cold_s))

    @staticmethod
    def _median(samples: deque[float]) -> float | None:
        return statistics.median(samples) if samples else None

    def add(self, seconds: float, *, loaded_checkpoint: bool) -> None:
        """Record one finished job's seconds on the server."""
        samples = self.cold_s if loaded_checkpoint else self.warm_s
        samples.append(max(seconds, 0.0))
        while len(samples) > self.window:
            samples.popleft()
        self._medians = (self._median(self.warm_s), self._median(self.cold_s))

    def warm_median_s(self) -> float | None:
        """The median warm job time; None until a warm job was seen."""
        return self._medians[0]

    def cold_median_s(self) -> float | None:
        """The median time of a job that loaded its checkpoint; None until one was seen."""
        return self._medians[1]

    def job_s(self, fallback_s: float) -> float:
        """The median warm job time; `fallback_s` until a warm job was seen."""
        warm_s = self._medians[0]
        return fallback_s if warm_s is None else warm_s

    def switch_s(self, fallback_s: float) -> float:
        """Extra seconds a checkpoint load costs here; `fallback_s` until both kinds were seen."""
        warm_s, cold_s = self._medians
        if warm_s is None or cold_s is None:
            return fallback_s
        return max(cold_s - warm_s, 0.0)


# ---------------------------------------------------------------------------
# Retries


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


def is_refusal(error: ComfyError) -> bool:
    """Whether the server will not talk to us as configured (its certificate, our credentials): waiting won't help."""
    return isinstance(error, (AuthFailed, CertificateRejected))


def is_server_fault(error: ComfyError) -> bool:
    """Whether the error says the server, not the job, is unwell (mark it down, probe it)."""
    return isinstance(error, (ServerError, AuthFailed, CertificateRejected, JobTimedOut))


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
