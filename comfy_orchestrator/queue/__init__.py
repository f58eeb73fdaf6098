"""The durable queue: sweeps through Celery on Redis, run by workers on GPU boxes.

The only package that imports celery or redis; it needs the ``queue`` extra
(``pip install 'comfy-orchestrator[queue]'``). Modules, in import order:

    broker     the Redis URL (checked, masked), TLS, our keys, the Celery app
    payload    a job out and its result back, as JSON
    routing    which queue a job goes to; which queues a worker listens on (pure)
    box        the servers of one GPU box, as a worker drives them
    worker     the Celery worker: tasks, heartbeat, leases, verdicts
    submitter  CeleryQueue: queue a sweep's jobs, collect their outcomes; queue status
"""

from comfy_orchestrator.queue.broker import Broker, QueueTimeouts, mask
from comfy_orchestrator.queue.submitter import (
    CeleryQueue,
    QueueEvent,
    QueueNote,
    QueueStatus,
    SweepStatus,
    TaskLost,
    TaskQueued,
    TaskStarted,
    WorkerStatus,
)

__all__ = [
    "Broker",
    "CeleryQueue",
    "QueueEvent",
    "QueueNote",
    "QueueStatus",
    "QueueTimeouts",
    "SweepStatus",
    "TaskLost",
    "TaskQueued",
    "TaskStarted",
    "WorkerStatus",
    "mask",
]
