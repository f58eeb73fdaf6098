"""Which queue a job goes to, and which queues a worker listens on (pure).

Each sweep puts its cells on one Celery queue per kind of need (checkpoint, node classes,
choice values), named ``comfy-orch.<sweep>.<needs digest>``. A worker listens only on the
queues its servers can run, so it never takes a cell it cannot run; Celery's Redis transport
serves a worker's queues in turn, so sweeps submitted together progress side by side. Within
one sweep, a worker whose servers have a checkpoint loaded prefers that checkpoint's queue
while it has cells (affinity, as in the farm).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from comfy_orchestrator.dispatch import JobNeeds
from comfy_orchestrator.queue.broker import QUEUE_PREFIX


def needs_to_json(needs: JobNeeds) -> dict[str, Any]:
    """The parts of a job's needs a worker checks, as JSON."""
    return {"class_types": sorted(needs.class_types), "literals": sorted(list(item) for item in needs.literals),
            "uploads": sorted(needs.uploads), "checkpoint": needs.checkpoint}


def needs_from_json(data: Mapping[str, Any]) -> JobNeeds:
    """Read needs written by `needs_to_json`."""
    return JobNeeds(class_types=frozenset(str(c) for c in data["class_types"]),
                    literals=frozenset((str(a), str(b), str(c)) for a, b, c in data["literals"]),
                    uploads=frozenset(str(u) for u in data["uploads"]),
                    checkpoint=None if data.get("checkpoint") is None else str(data["checkpoint"]))


def queue_name(sweep_id: str, needs: JobNeeds) -> str:
    """The queue for a sweep's jobs with these needs."""
    text = json.dumps(needs_to_json(needs), sort_keys=True, separators=(",", ":"))
    return f"{QUEUE_PREFIX}{sweep_id}.{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class OfferedQueue:
    """A queue on offer, as a worker sees it: its sweep, the checkpoint it needs, and its length."""

    name: str
    sweep_id: str
    checkpoint: str | None
    waiting: int


def choose_queues(able: Sequence[OfferedQueue], loaded: Collection[str]) -> list[str]:
    """The queues a worker listens on now: all it can run, except that within a sweep, queues of a
    checkpoint its servers have loaded come first while they hold cells (the others wait)."""
    chosen: list[str] = []
    sweeps: dict[str, list[OfferedQueue]] = {}
    for queue in able:
        sweeps.setdefault(queue.sweep_id, []).append(queue)
    for queues in sweeps.values():
        warm = [q for q in queues if q.checkpoint is not None and q.checkpoint in loaded and q.waiting > 0]
        chosen += [q.name for q in (warm or queues)]
    return sorted(chosen)
