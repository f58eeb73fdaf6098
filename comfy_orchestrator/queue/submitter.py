"""CeleryQueue: a sweep's jobs through the durable queue instead of the submitter's own farm.

    from comfy_orchestrator.queue import CeleryQueue

    queue = CeleryQueue("redis://HOST:6379/0")
    for outcome in queue.run(jobs, sweep_id="...", tasks={}, out_dir=staging, on_event=print):
        ...  # a JobResult (server "worker/server") or a JobFailed, one per job, as they arrive

`run` puts each job on its sweep's queue (one per kind of need, see `routing`) unless `tasks`
names a task already queued for it (a rerun), stores input images once by content, then waits
for results and yields one outcome per job. A result that expired before it was collected, a
task whose worker stopped renewing its lease, and a task whose record is gone are queued again
under a new task id; a late copy of the old one is skipped by the worker or ignored here. With
`detach=True` it queues what is missing, yields what has already finished, and returns.

A job's outcome is yielded before its result is deleted from the backend, so a submitter killed
between the two finds the result again on its next run.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from comfy_orchestrator.client import safe_filename
from comfy_orchestrator.dispatch import job_needs
from comfy_orchestrator.errors import NoServerAvailable, ParameterError, WorkerJobFailed
from comfy_orchestrator.farm import JobFailed, JobOutcome
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.queue.broker import (
    TASK_NAME,
    Broker,
    Keys,
    QueueTimeouts,
    as_text,
    broker_errors,
    make_app,
)
from comfy_orchestrator.queue.payload import TaskFailure, job_to_json, read_result
from comfy_orchestrator.queue.routing import needs_to_json, queue_name

logger = logging.getLogger(__name__)

UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"  # Celery's Redis transport's own names
DEFAULT_MAX_LOST = 5  # times a task may be lost (its worker died, its result expired) before the job fails


@dataclass(frozen=True)
class TaskQueued:
    """A job was put on the queue under `task_id` (record it: a later run collects it by that id)."""

    job: Job
    task_id: str
    queue: str


@dataclass(frozen=True)
class TaskStarted:
    """A worker took a job and queued it on one of its servers."""

    job: Job
    worker: str
    server: str


@dataclass(frozen=True)
class TaskLost:
    """A task will not give a result (its worker died, its result expired); it is queued again."""

    job: Job
    task_id: str
    reason: str


@dataclass(frozen=True)
class QueueNote:
    """Something the person waiting should know, such as that no worker is listening."""

    message: str


QueueEvent = TaskQueued | TaskStarted | TaskLost | QueueNote


def _ignore(event: QueueEvent) -> None:
    """The default event callback: nothing."""


@dataclass(eq=False)
class _Task:
    key: str
    job: Job
    queue: str
    task_id: str = ""
    lost: int = 0
    failed: int = 0
    started: bool = False
    missing: int = 0  # audits in a row that found its message nowhere


@dataclass(frozen=True)
class SweepStatus:
    """One sweep on the queue, as `queue status` shows it."""

    sweep_id: str
    title: str
    total: int
    collected: int
    queued: int
    running: int
    finished: int  # results waiting to be collected
    submitted_at: float
    submitter: str


@dataclass(frozen=True)
class WorkerStatus:
    """One live worker, as it last described itself."""

    name: str
    host: str
    capacity: int
    running: int
    servers: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class QueueStatus:
    """The sweeps on the queue and the workers serving it."""

    broker: str
    sweeps: tuple[SweepStatus, ...]
    workers: tuple[WorkerStatus, ...]


class CeleryQueue:
    """A sweep's way through Celery on Redis; see the module docstring."""

    def __init__(self, url: str, *, ca_cert: str | Path | None = None, timeouts: QueueTimeouts = QueueTimeouts(),
                 max_attempts: int = 3, max_lost: int = DEFAULT_MAX_LOST) -> None:
        self.broker = Broker.parse(url, ca_cert=ca_cert)
        self.timeouts = timeouts
        self.max_attempts = max_attempts
        self.max_lost = max_lost

    @property
    def display(self) -> str:
        """The broker URL with its password masked."""
        return self.broker.display

    def connect(self) -> redis.Redis:
        """A checked connection to the broker (BrokerError if it cannot be used)."""
        client = self.broker.client(self.timeouts)
        try:
            self.broker.check(client)
        except BaseException:
            client.close()
            raise
        return client

    def run(self, jobs: Iterable[Job], *, sweep_id: str, title: str = "", tasks: Mapping[str, str] | None = None,
            out_dir: Path, detach: bool = False,
            on_event: Callable[[QueueEvent], None] = _ignore) -> Generator[JobOutcome, None, None]:
        """Queue `jobs` (keyed by label) and yield one outcome each; see the module docstring."""
        client = self.connect()
        return _Collection(self, client, list(jobs), sweep_id=sweep_id, title=title, tasks=dict(tasks or {}),
                           out_dir=Path(out_dir), on_event=on_event).outcomes(detach=detach)

    def status(self) -> QueueStatus:
        """The sweeps on offer with their progress, and the live workers with their servers."""
        client = self.connect()
        try:
            with broker_errors(self.broker, "reading the queue's status"):
                return _read_status(client, self.display)
        finally:
            client.close()

    def forget(self, sweep_id: str) -> None:
        """Take a sweep off the queue: its queues, records and waiting cells (running ones finish unheard)."""
        client = self.connect()
        try:
            with broker_errors(self.broker, f"taking sweep {sweep_id} off the queue"):
                _remove_sweep(client, sweep_id)
        finally:
            client.close()


class _Collection:
    """One `CeleryQueue.run`: the outstanding tasks of one sweep and what became of them."""

    def __init__(self, owner: CeleryQueue, client: redis.Redis, jobs: Sequence[Job], *, sweep_id: str, title: str,
                 tasks: dict[str, str], out_dir: Path, on_event: Callable[[QueueEvent], None]) -> None:
        self.owner = owner
        self.redis = client
        self.timeouts = owner.timeouts
        self.sweep_id = sweep_id
        self.title = title
        self.out_dir = out_dir
        self.on_event = on_event
        self.app: Celery = make_app(owner.broker, owner.timeouts)
        self.tasks: dict[str, _Task] = {}
        for job in jobs:
            key = job.label or job.id
            if key in self.tasks:
                raise ParameterError(f"two jobs of one queued run share the label {key!r}; labels name the cells",
                                     parameter="label")
            self.tasks[key] = _Task(key, job, queue_name(sweep_id, job_needs(job)), task_id=tasks.get(key, ""))
        self.by_id = {task.task_id: task for task in self.tasks.values() if task.task_id}
        self.noted_no_worker = False
        self.doomed: dict[str, str] = {}  # queue -> why no worker can run it

    # -- the caller's side
    def outcomes(self, *, detach: bool) -> Generator[JobOutcome, None, None]:
        try:
            with broker_errors(self.owner.broker, "queueing the sweep (what was queued stays on the queue: "
                                                  "run the same command again to go on)"):
                self.register()
                for task in self.tasks.values():
                    if not task.task_id:
                        self.submit(task)
                yield from self.audit()
                while self.tasks and not detach:
                    deadline = time.monotonic() + self.timeouts.audit_s
                    while self.tasks and time.monotonic() < deadline:
                        popped = self.redis.blpop([Keys.events(self.sweep_id)],
                                                  timeout=max(deadline - time.monotonic(), 0.05))
                        if popped is not None:
                            yield from self.heard(as_text(popped[1]))
                    yield from self.audit()
                if not self.tasks:
                    _remove_sweep(self.redis, self.sweep_id)
        finally:
            self.redis.close()

    # -- queueing
    def register(self) -> None:
        """Offer the sweep and its queues to workers, and store its input images once by content."""
        expires_ms = int(self.timeouts.state_expires_s * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(Keys.sweeps, self.sweep_id)
        sweep_key = Keys.sweep(self.sweep_id)
        pipe.hsetnx(sweep_key, "submitted_at", f"{time.time():.3f}")
        pipe.hset(sweep_key, mapping={"title": self.title, "submitter": socket.gethostname(),
                                      "total": str(max(len(self.tasks), _int(self.redis.hget(sweep_key, "total"))))})
        pipe.pexpire(sweep_key, expires_ms)
        for task in self.tasks.values():
            pipe.hset(Keys.queues, task.queue, json.dumps({"sweep": self.sweep_id,
                                                           "needs": needs_to_json(job_needs(task.job))}))
        pipe.execute()
        inputs: dict[str, Path] = {}
        for task in self.tasks.values():
            inputs.update(task.job.inputs)
        names = sorted(inputs)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.pexpire(Keys.input(name), int(self.timeouts.input_expires_s * 1000))
        present = pipe.execute()
        for name, there in zip(names, present):
            if not there:
                self.redis.set(Keys.input(name), inputs[name].read_bytes(),
                               px=int(self.timeouts.input_expires_s * 1000))

    def submit(self, task: _Task) -> None:
        """Queue a task for the job under a new id; the caller records the id before it is sent."""
        if task.task_id:
            self.by_id.pop(task.task_id, None)
        task.task_id = uuid.uuid4().hex
        task.started = False
        task.missing = 0
        self.by_id[task.task_id] = task
        self.on_event(TaskQueued(task.job, task.task_id, task.queue))
        expires = int(self.timeouts.state_expires_s)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(Keys.current(self.sweep_id), task.key, task.task_id)
        pipe.expire(Keys.current(self.sweep_id), expires)
        pipe.execute()
        self.app.send_task(TASK_NAME, args=[job_to_json(task.job, sweep_id=self.sweep_id, key=task.key)],
                           task_id=task.task_id, queue=task.queue)
        # Only now: a submitter killed before the send leaves no record, and its next run queues the job
        # again. NX: a worker quick enough to have started it already wrote "running".
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(Keys.state(self.sweep_id), task.task_id, json.dumps({"state": "queued"}))
        pipe.expire(Keys.state(self.sweep_id), expires)
        pipe.execute()

    def requeue(self, task: _Task, reason: str) -> Iterable[JobOutcome]:
        task.lost += 1
        logger.info("%s: %s", task.job.label or task.key, reason)
        if task.lost > self.owner.max_lost:
            yield from self.settle(task, JobFailed(task.job, WorkerJobFailed(
                f"lost {task.lost} times, the last time because {reason}", kind="TaskLost", retryable=True,
                worker=""), task.lost, ()))
            return
        self.on_event(TaskLost(task.job, task.task_id, reason))
        self.submit(task)

    # -- hearing back
    def heard(self, raw: str) -> Iterable[JobOutcome]:
        try:
            event = json.loads(raw)
            task = self.by_id.get(str(event["task"]))
        except (ValueError, KeyError, TypeError):
            return
        if task is None or task.key not in self.tasks:
            return  # a task of an earlier run, or a superseded one
        if event.get("event") == "finished":
            yield from self.collect(task)
        elif event.get("event") == "started":
            state = self.redis.hget(Keys.state(self.sweep_id), task.task_id)
            if state:
                entry = json.loads(state)
                if entry.get("server"):
                    task.started = True
                    self.on_event(TaskStarted(task.job, str(entry.get("worker", "")), str(entry["server"])))

    def audit(self) -> Iterable[JobOutcome]:
        """Look over every outstanding task: collect the finished, queue again the lost, fail the unrunnable."""
        tasks = list(self.tasks.values())
        if not tasks:
            return
        backend = self.app.backend
        pipe = self.redis.pipeline(transaction=False)
        for task in tasks:
            pipe.exists(backend.get_key_for_task(task.task_id))  # type: ignore[attr-defined]
            pipe.hget(Keys.state(self.sweep_id), task.task_id)
            pipe.exists(Keys.lease(task.task_id))
        answers = pipe.execute()
        delivered: dict[str, float] | None = None
        waiting: dict[str, int] = {}
        now = time.time()
        for index, task in enumerate(tasks):
            has_result, raw_state, leased = answers[3 * index: 3 * index + 3]
            if has_result:
                yield from self.collect(task)
                continue
            state = json.loads(raw_state) if raw_state else None
            if state is not None and state.get("state") == "queued" and not leased:
                if delivered is None:
                    delivered = _delivered(self.redis)
                    waiting = self.waiting_counts()
                taken_at = delivered.get(task.task_id)
                if taken_at is not None:
                    task.missing = 0
                    if now - taken_at > self.timeouts.lease_s:
                        # a worker holds only what it runs at once: one that took a task and never began it died
                        yield from self.requeue(task, "the worker that took it stopped before it began")
                elif waiting.get(task.queue, 1) == 0:
                    # neither waiting in its queue nor held by a worker: a worker killed as it took the message
                    # (between the transport's pop and its record of the delivery). Twice, for a worker that
                    # is just recording it.
                    task.missing += 1
                    if task.missing >= 2:
                        yield from self.requeue(task, "its message was lost as a worker took it")
                continue
            if state is None:
                yield from self.requeue(task, "its task's record is gone (never sent, or expired)")
            elif state.get("state") == "done":
                yield from self.requeue(task, "its result expired before it was collected")
            elif state.get("state") == "running" and not leased:
                yield from self.requeue(task, f"worker {state.get('worker', '?')} stopped renewing its lease")
            elif state.get("state") == "running" and state.get("server") and not task.started:
                task.started = True
                self.on_event(TaskStarted(task.job, str(state.get("worker", "")), str(state["server"])))
        yield from self.check_workers()

    def waiting_counts(self) -> dict[str, int]:
        """How many messages wait in each of this sweep's queues."""
        queues = sorted({task.queue for task in self.tasks.values()})
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        return {queue: int(length) for queue, length in zip(queues, pipe.execute())}

    def check_workers(self) -> Iterable[JobOutcome]:
        """Fail the jobs no live worker can run; note when no worker listens at all."""
        live = _live_workers(self.redis)
        if not live:
            if not self.noted_no_worker:
                self.noted_no_worker = True
                self.on_event(QueueNote(f"no worker is listening on {self.owner.display}; start one on a GPU box: "
                                        f"comfy-orch worker --broker URL --server http://127.0.0.1:8188"))
            return
        self.noted_no_worker = False
        queues = sorted({task.queue for task in self.tasks.values()})
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.hgetall(Keys.verdicts(queue))
        for queue, verdicts in zip(queues, pipe.execute()):
            said = {as_text(name): as_text(text) for name, text in verdicts.items() if as_text(name) in live}
            if set(live) - set(said) or any(text == "" for text in said.values()):
                continue  # a live worker has not judged it yet, or can run it
            reasons = "; ".join(f"worker {name}: {text}" for name, text in sorted(said.items()))
            error = NoServerAvailable(f"no worker can run this cell ({reasons})")
            for task in [t for t in self.tasks.values() if t.queue == queue]:
                yield from self.settle(task, JobFailed(task.job, error, 0, ()))

    def collect(self, task: _Task) -> Iterable[JobOutcome]:
        """Turn a stored result into the job's outcome: files into `out_dir`, or a failure."""
        meta = self.app.backend.get_task_meta(task.task_id)
        status = meta.get("status")
        if status == "FAILURE":
            error = WorkerJobFailed(f"the worker's task raised: {meta.get('result')}", kind="TaskFailed",
                                    retryable=False, worker="")
            yield from self.settle(task, JobFailed(task.job, error, task.failed + 1, ()))
            return
        if status != "SUCCESS":
            return
        outcome = read_result(meta.get("result"))
        if isinstance(outcome, TaskFailure):
            task.failed += 1
            if outcome.error.retryable and task.failed < self.owner.max_attempts:
                self.forget_result(task.task_id)
                self.on_event(TaskLost(task.job, task.task_id, f"failed on worker {outcome.error.worker}, "
                                                                f"trying again: {outcome.error}"))
                self.submit(task)
                return
            servers = outcome.servers or (outcome.error.worker,)
            yield from self.settle(task, JobFailed(task.job, outcome.error, task.failed, servers))
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for number, (name, data) in enumerate(outcome.files):
            path = self.out_dir / f"{task.task_id[:12]}-{number}-{safe_filename(name, fallback=f'output-{number}')}"
            path.write_bytes(data)
            files.append(path)
        result = JobResult(job=task.job, prompt_id=outcome.prompt_id, server=f"{outcome.worker}/{outcome.server}",
                           outputs=outcome.outputs, files=tuple(files), timings=outcome.timings,
                           cached_nodes=outcome.cached_nodes)
        yield from self.settle(task, result)

    def settle(self, task: _Task, outcome: JobOutcome) -> Iterable[JobOutcome]:
        """Hand the job's one outcome to the caller, then drop its result and records."""
        del self.tasks[task.key]
        self.by_id.pop(task.task_id, None)
        yield outcome
        # the caller has recorded it: only now may the result go
        self.forget_result(task.task_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(Keys.current(self.sweep_id), task.key)
        pipe.hdel(Keys.state(self.sweep_id), task.task_id)
        pipe.hincrby(Keys.sweep(self.sweep_id), "collected", 1)
        pipe.execute()

    def forget_result(self, task_id: str) -> None:
        self.app.backend.forget(task_id)


def _int(value: bytes | str | None) -> int:
    try:
        return int(as_text(value) or 0)
    except ValueError:
        return 0


def _delivered(client: redis.Redis) -> dict[str, float]:
    """Task ids that Celery's Redis transport delivered to a worker and that are not acknowledged yet, with
    when (its ``unacked`` hash and ``unacked_index``: as many entries as tasks in flight, so small)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(UNACKED_KEY)
    pipe.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True)
    messages, index = pipe.execute()
    times = {as_text(tag): float(score) for tag, score in index}
    found: dict[str, float] = {}
    for tag, raw in messages.items():
        try:
            task_id = json.loads(raw)[0]["headers"]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        found[str(task_id)] = times.get(as_text(tag), time.time())
    return found


def _live_workers(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """The workers whose heartbeat has not lapsed, with what they said of themselves."""
    names = sorted(as_text(name) for name in client.smembers(Keys.workers))
    if not names:
        return {}
    found = client.mget([Keys.worker(name) for name in names])
    live: dict[str, dict[str, Any]] = {}
    gone = []
    for name, raw in zip(names, found):
        if raw is None:
            gone.append(name)
            continue
        try:
            live[name] = json.loads(raw)
        except ValueError:
            live[name] = {"name": name}
    if gone:
        client.srem(Keys.workers, *gone)
    return live


def _read_status(client: redis.Redis, broker: str) -> QueueStatus:
    sweeps = []
    for raw_id in sorted(client.smembers(Keys.sweeps)):
        sweep_id = as_text(raw_id)
        info = {as_text(k): as_text(v) for k, v in client.hgetall(Keys.sweep(sweep_id)).items()}
        if not info:
            client.srem(Keys.sweeps, sweep_id)
            continue
        states = [json.loads(raw).get("state") for raw in client.hvals(Keys.state(sweep_id))]
        sweeps.append(SweepStatus(sweep_id, info.get("title", ""), _int(info.get("total")),
                                  _int(info.get("collected")), states.count("queued"),
                                  states.count("running"), states.count("done"),
                                  float(info.get("submitted_at") or 0.0), info.get("submitter", "")))
    workers = tuple(WorkerStatus(name, str(entry.get("host", "")), int(entry.get("capacity") or 0),
                                 int(entry.get("running") or 0), tuple(entry.get("servers") or ()))
                    for name, entry in _live_workers(client).items())
    sweeps.sort(key=lambda s: s.submitted_at)
    return QueueStatus(broker, tuple(sweeps), workers)


def _remove_sweep(client: redis.Redis, sweep_id: str) -> None:
    """Delete a sweep's queues (with any cells still waiting in them) and records."""
    offered = client.hgetall(Keys.queues)
    mine = [as_text(name) for name, entry in offered.items() if json.loads(entry).get("sweep") == sweep_id]
    pipe = client.pipeline(transaction=False)
    for queue in mine:
        pipe.hdel(Keys.queues, queue)
        pipe.delete(queue, Keys.verdicts(queue), f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    pipe.delete(Keys.current(sweep_id), Keys.state(sweep_id), Keys.events(sweep_id), Keys.sweep(sweep_id))
    pipe.srem(Keys.sweeps, sweep_id)
    pipe.execute()

