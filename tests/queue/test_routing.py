"""Which queue a job goes to, and which queues a worker listens on."""

from __future__ import annotations

import pytest

from comfy_orchestrator.dispatch import JobNeeds, job_needs
from comfy_orchestrator.queue.routing import OfferedQueue, choose_queues, needs_from_json, needs_to_json, queue_name


def _needs(checkpoint: str | None, *classes: str) -> JobNeeds:
    literals = frozenset({("CheckpointLoaderSimple", "ckpt_name", checkpoint)} if checkpoint else set())
    return JobNeeds(class_types=frozenset(classes or ("KSampler",)), literals=literals,
                    uploads=frozenset({"in-1.png"}), checkpoint=checkpoint)


def test_needs_survive_the_trip_through_json(img2img_job: object) -> None:
    needs = job_needs(img2img_job)  # type: ignore[arg-type]
    assert needs_from_json(needs_to_json(needs)).class_types == needs.class_types
    back = needs_from_json(needs_to_json(needs))
    assert (back.literals, back.uploads, back.checkpoint) == (needs.literals, needs.uploads, needs.checkpoint)


def test_a_sweep_has_one_queue_per_kind_of_need() -> None:
    a, b = _needs("a.safetensors"), _needs("b.safetensors")
    assert queue_name("s1", a) == queue_name("s1", _needs("a.safetensors"))
    assert queue_name("s1", a) != queue_name("s1", b)
    assert queue_name("s1", a) != queue_name("s2", a)
    assert queue_name("s1", a).startswith("comfy-orch.s1.")


def _q(name: str, sweep: str, checkpoint: str | None, waiting: int) -> OfferedQueue:
    return OfferedQueue(name, sweep, checkpoint, waiting)


@pytest.mark.parametrize("able, loaded, chosen", [
    # nothing loaded: every queue it can run
    ([_q("x.a", "x", "a", 3), _q("x.b", "x", "b", 3)], set(), ["x.a", "x.b"]),
    # within a sweep, the loaded checkpoint's queue first while it holds cells
    ([_q("x.a", "x", "a", 3), _q("x.b", "x", "b", 3)], {"b"}, ["x.b"]),
    # ... and the others once it is empty
    ([_q("x.a", "x", "a", 3), _q("x.b", "x", "b", 0)], {"b"}, ["x.a", "x.b"]),
    # across sweeps, no preference: sweeps submitted together progress side by side
    ([_q("x.a", "x", "a", 3), _q("y.b", "y", "b", 3)], {"b"}, ["x.a", "y.b"]),
    ([_q("x.a", "x", "a", 3), _q("x.b", "x", "b", 3), _q("y.a", "y", "a", 1)], {"a"}, ["x.a", "y.a"]),
    ([], {"a"}, []),
])
def test_a_worker_listens_on_the_queues_it_can_run_preferring_loaded_checkpoints(
        able: list[OfferedQueue], loaded: set[str], chosen: list[str]) -> None:
    assert choose_queues(able, loaded) == chosen
