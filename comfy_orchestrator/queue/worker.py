"""The queue worker: a Celery worker on a GPU box that runs cells on the box's ComfyUI servers.

    comfy-orch worker --broker redis://HOST:6379/0 --server http://127.0.0.1:8188 [--server ...]

It runs tasks on threads, as many as its servers keep prompts queued (1 + queue_ahead each),
and, with a prefetch of one per thread and late acknowledgement, holds no more cells than that:
a worker killed mid-run leaves its cells unacknowledged, and the submitter, seeing the worker's
lease lapse, queues them again. Every `heartbeat_s` a thread renews the worker's heartbeat and
the leases of its running tasks, probes servers that are down, writes a verdict on each queue
on offer (can run it, or what it lacks) and listens on the queues it can run (`routing`).

A task runs only while it is the current task of its cell and nobody else holds its lease, so
a message delivered twice (a lapsed visibility timeout, a re-queue) never runs a cell twice
that already ran, and never overwrites a stored result.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.exceptions import Ignore
from celery.signals import task_postrun
from celery.worker.consumer import Consumer

from comfy_orchestrator.errors import ComfyError, MalformedMessage
from comfy_orchestrator.queue.box import Box
from comfy_orchestrator.queue.broker import IDLE_QUEUE, TASK_NAME, Broker, Keys, QueueTimeouts, as_text, make_app
from comfy_orchestrator.queue.payload import failure_to_json, job_from_json, result_to_json
from comfy_orchestrator.queue.routing import OfferedQueue, choose_queues, needs_from_json
from comfy_orchestrator.servers import ServerConfig

logger = logging.getLogger(__name__)


def default_worker_name() -> str:
    """The host's name: what `queue status` and each result's server show for this box."""
    return socket.gethostname() or "worker"


class QueueWorker:
    """One worker's state: its box, its Redis connection, its running tasks and the queues it serves."""

    def __init__(self, broker: Broker, box: Box, *, name: str, timeouts: QueueTimeouts,
                 scratch: Path, client: redis.Redis | None = None) -> None:
        self.broker = broker
        self.box = box
        self.name = name
        self.timeouts = timeouts
        self.scratch = scratch
        self.inputs = scratch / "inputs"
        self.inputs.mkdir(parents=True, exist_ok=True)
        self.redis = client or broker.client(timeouts)
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}  # task id -> sweep id
        self._verdicts: dict[str, str] = {}  # queue -> what we last wrote
        self._consuming: set[str] = set()
        self.stop = threading.Event()

    # -- a task
    def run(self, task_id: str, payload: Any) -> dict[str, Any]:
        """Run one task: check it still counts, fetch its inputs, run it on the box, return its result."""
        order = job_from_json(payload, input_folder=self.inputs)
        sweep, key = order.sweep_id, order.key
        current, holder, state = self._read(sweep, key, task_id)
        if current != task_id:
            logger.info("task %s of sweep %s is no longer its cell's current task; skipped", task_id, sweep)
            raise Ignore()
        if holder not in (None, self.name) or (state or {}).get("state") == "done":
            logger.info("task %s already ran or runs on %s; skipped", task_id, holder)
            raise Ignore()
        self._begin(sweep, task_id)
        try:
            self._fetch_inputs(order.inputs)
            with tempfile.TemporaryDirectory(dir=self.scratch, prefix="outputs-") as folder:
                result = self.box.run(order.job, Path(folder),
                                      on_start=lambda server: self._note_server(sweep, task_id, server))
                files = [(path.name, path.read_bytes()) for path in result.files]
        except ComfyError as exc:
            logger.warning("%s failed: %s", order.job.label or task_id, exc)
            return failure_to_json(exc, worker=self.name, attempts=1, servers=())
        return result_to_json(result, worker=self.name, files=files)

    def _read(self, sweep: str, key: str, task_id: str) -> tuple[str | None, str | None, dict[str, Any] | None]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(Keys.current(sweep), key)
        pipe.get(Keys.lease(task_id))
        pipe.hget(Keys.state(sweep), task_id)
        current, holder, state = pipe.execute()
        return (as_text(current) or None, as_text(holder) or None,
                json.loads(state) if state else None)

    def _begin(self, sweep: str, task_id: str) -> None:
        with self._lock:
            self._running[task_id] = sweep
        self._write_state(sweep, task_id, {"state": "running", "worker": self.name, "server": ""}, "started")

    def _note_server(self, sweep: str, task_id: str, server: str) -> None:
        self._write_state(sweep, task_id, {"state": "running", "worker": self.name, "server": server}, "started")

    def finished(self, task_id: str) -> None:
        """After Celery stored the task's result: mark it done, drop the lease, tell the submitter."""
        with self._lock:
            sweep = self._running.pop(task_id, None)
        if sweep is not None:
            self._write_state(sweep, task_id, {"state": "done", "worker": self.name}, "finished", lease=False)

    def _write_state(self, sweep: str, task_id: str, state: Mapping[str, Any], event: str, *,
                     lease: bool = True) -> None:
        expires = int(self.timeouts.state_expires_s)
        pipe = self.redis.pipeline(transaction=True)
        if lease:
            pipe.set(Keys.lease(task_id), self.name, px=int(self.timeouts.lease_s * 1000))
        else:
            pipe.delete(Keys.lease(task_id))
        pipe.hset(Keys.state(sweep), task_id, json.dumps(dict(state)))
        pipe.expire(Keys.state(sweep), expires)
        pipe.rpush(Keys.events(sweep), json.dumps({"task": task_id, "event": event}))
        pipe.expire(Keys.events(sweep), expires)
        pipe.execute()

    def _fetch_inputs(self, names: Sequence[str]) -> None:
        """Fetch each input image from Redis once per worker (the client uploads it once per server)."""
        for name in names:
            path = self.inputs / name
            if path.is_file():
                continue
            data = self.redis.get(Keys.input(name))
            if not isinstance(data, bytes):
                raise MalformedMessage(f"the input {name!r} has expired from the broker; run the sweep command "
                                       "again to store it again", server=self.broker.display)
            partial = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.part")
            partial.write_bytes(data)
            os.replace(partial, path)

    # -- the heartbeat thread
    def beat(self, consumer: Consumer | None) -> None:
        """Renew the heartbeat and leases, probe servers, judge the queues on offer, listen on the able ones."""
        self.box.probe_due()
        with self._lock:
            running = list(self._running)
        lease_ms = int(self.timeouts.lease_s * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(Keys.worker(self.name), json.dumps(self.describe(len(running))), px=lease_ms)
        pipe.sadd(Keys.workers, self.name)
        for task_id in running:
            pipe.set(Keys.lease(task_id), self.name, px=lease_ms)
        pipe.hgetall(Keys.queues)
        offered: dict[bytes, bytes] = pipe.execute()[-1]
        wanted = self._judge(offered)
        if consumer is not None:
            for queue in sorted(wanted - self._consuming):
                consumer.call_soon(consumer.add_task_queue, queue)
                logger.info("listening on %s", queue)
            for queue in sorted(self._consuming - wanted):
                consumer.call_soon(consumer.cancel_task_queue, queue)
                logger.info("no longer listening on %s", queue)
        self._consuming = wanted

    def _judge(self, offered: Mapping[bytes, bytes]) -> set[str]:
        """Write a verdict on each queue on offer; return the queues to listen on now."""
        able: list[OfferedQueue] = []
        verdict_expires = int(self.timeouts.state_expires_s)
        pipe = self.redis.pipeline(transaction=False)
        for raw_name, raw_entry in offered.items():
            name = as_text(raw_name)
            try:
                entry = json.loads(raw_entry)
                needs = needs_from_json(entry["needs"])
            except (ValueError, KeyError, TypeError):
                logger.warning("queue %s is offered with a malformed description; ignored", name)
                continue
            lacks = self.box.lacks(needs)
            verdict = "" if lacks is None else lacks
            if self._verdicts.get(name) != verdict or lacks is None:
                pipe.hset(Keys.verdicts(name), self.name, verdict)
                pipe.expire(Keys.verdicts(name), verdict_expires)
                self._verdicts[name] = verdict
            if lacks is None:
                able.append(OfferedQueue(name, str(entry.get("sweep", "")), needs.checkpoint, 0))
        for queue in able:
            pipe.llen(queue.name)
        answers = pipe.execute()
        lengths = answers[len(answers) - len(able):] if able else []
        counted = [OfferedQueue(q.name, q.sweep_id, q.checkpoint, int(n)) for q, n in zip(able, lengths)]
        if not self.box.any_up():
            return set()
        return set(choose_queues(counted, self.box.loaded()))

    def describe(self, running: int) -> dict[str, Any]:
        """What `queue status` shows of this worker."""
        return {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "started_at": self.started_at,
                "capacity": self.box.capacity, "running": running,
                "servers": [asdict(summary) for summary in self.box.summaries()]}

    def heartbeat_loop(self, consumer: Consumer | None) -> None:
        while not self.stop.is_set():
            try:
                self.beat(consumer)
            except (redis.RedisError, OSError) as exc:
                logger.warning("the broker did not take the heartbeat: %s", exc)
            except Exception:  # a bug here must not stop the heartbeat silently: say so, go on
                logger.exception("the worker's heartbeat failed")
            self.stop.wait(self.timeouts.heartbeat_s)

    def leave(self) -> None:
        """Say goodbye: the worker's record goes at once instead of when its heartbeat lapses."""
        try:
            self.redis.delete(Keys.worker(self.name))
        except (redis.RedisError, OSError) as exc:
            logger.info("could not remove the worker's record: %s", exc)


def make_worker_app(worker: QueueWorker) -> Celery:
    """The Celery app of a worker: our task, the signal that reports results, the heartbeat step."""
    app = make_app(worker.broker, worker.timeouts)

    @app.task(name=TASK_NAME, bind=True)
    def run_job(task: Any, payload: Any) -> dict[str, Any]:
        return worker.run(str(task.request.id), payload)

    def on_postrun(sender: Any = None, task_id: str = "", state: str | None = None, **_: Any) -> None:
        if state in ("SUCCESS", "FAILURE"):  # not IGNORED: a skipped duplicate is not ours to report
            worker.finished(task_id)

    task_postrun.connect(on_postrun, sender=run_job, weak=False)

    class Heartbeat(bootsteps.StartStopStep):
        """Starts the worker's heartbeat thread once the consumer can take queues."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, parent: Any, **options: Any) -> None:
            super().__init__(parent, **options)
            self.thread: threading.Thread | None = None

        def start(self, consumer: Consumer) -> None:
            worker.stop.clear()
            worker._consuming = set()
            self.thread = threading.Thread(target=worker.heartbeat_loop, args=(consumer,), daemon=True,
                                           name="queue-heartbeat")
            self.thread.start()

        def stop(self, consumer: Consumer) -> None:
            worker.stop.set()
            if self.thread is not None:
                self.thread.join(10.0)

    app.steps["consumer"].add(Heartbeat)
    return app


def run_worker(broker: Broker, servers: Sequence[ServerConfig], *, name: str | None = None,
               timeouts: QueueTimeouts = QueueTimeouts(), loglevel: str = "WARNING") -> None:
    """Run a worker for `servers` until it is stopped (SIGTERM or Ctrl-C: running tasks finish first)."""
    # Containers run as root; the warning is about pickle, which this app does not accept (JSON only).
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")
    # Celery's result backend still calls redis-py's deprecated setex.
    warnings.filterwarnings("ignore", message="Call to deprecated setex", category=DeprecationWarning)
    client = broker.client(timeouts)
    broker.check(client)
    box = Box(servers, job_timeout_s=timeouts.job_timeout_s)
    name = name or default_worker_name()
    with tempfile.TemporaryDirectory(prefix="comfy-orch-worker-") as scratch:
        worker = QueueWorker(broker, box, name=name, timeouts=timeouts, scratch=Path(scratch), client=client)
        worker.beat(None)  # probe the servers and say hello before taking anything
        app = make_worker_app(worker)
        celery_worker = app.Worker(hostname=f"comfy-orch@{name}", pool="threads", concurrency=box.capacity,
                                   queues=[IDLE_QUEUE], quiet=True, loglevel=loglevel, without_mingle=True,
                                   without_gossip=True, without_heartbeat=True, optimization="fair")
        try:
            celery_worker.start()
        finally:
            worker.stop.set()
            worker.leave()
            box.close()
            client.close()
