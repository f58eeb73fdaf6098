"""A worker's box of servers: only able servers, failover within the box, failures judged like the farm's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.dispatch import job_needs
from comfy_orchestrator.errors import ExecutionFailed
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.queue.box import Box
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.servers import ServerConfig

QUICK = RetryPolicy(max_attempts=3, first_delay_s=0.05, max_delay_s=0.2)


def _box(*urls: str) -> Box:
    box = Box([ServerConfig(url=url) for url in urls], policy=QUICK, job_timeout_s=30.0)
    box.probe_due()
    return box


def test_a_box_runs_a_job_only_on_a_server_that_has_its_checkpoint(
        sim: Callable[..., list[Any]], img2img_job: Any, tmp_path: Path) -> None:
    (lacking,) = sim(1, checkpoints=("another.safetensors",))
    (able,) = sim(1, checkpoints=(DEFAULT_CHECKPOINT,))
    box = _box(lacking.url, able.url)
    try:
        assert box.lacks(job_needs(img2img_job)) is None
        results = [box.run(img2img_job, tmp_path) for _ in range(3)]
    finally:
        box.close()
    assert {result.server for result in results} == {ServerConfig(url=able.url).name}
    assert lacking.counters.prompts_started == 0 and able.counters.prompts_finished == 3
    assert all(path.exists() for result in results for path in result.files)


def test_a_box_says_what_its_servers_lack(sim: Callable[..., list[Any]], img2img_job: Any) -> None:
    (lacking,) = sim(1, checkpoints=("another.safetensors",))
    box = _box(lacking.url)
    try:
        verdict = box.lacks(job_needs(img2img_job))
    finally:
        box.close()
    assert verdict is not None and f"CheckpointLoaderSimple.ckpt_name '{DEFAULT_CHECKPOINT}'" in verdict


def test_a_server_that_dies_is_marked_down_and_the_job_runs_on_another_of_the_box(
        sim: Callable[..., list[Any]], img2img_job: Any, tmp_path: Path) -> None:
    first, second = sim(2, checkpoints=(DEFAULT_CHECKPOINT,))
    box = _box(first.url, second.url)
    first.stop()  # the box still believes it up: the job finds out
    try:
        result = box.run(img2img_job, tmp_path)
        summaries = {s.name: s for s in box.summaries()}
    finally:
        box.close()
    assert result.server == ServerConfig(url=second.url).name
    assert not summaries[ServerConfig(url=first.url).name].up


def test_a_failure_that_repeats_on_a_second_server_ends_the_job(
        sim: Callable[..., list[Any]], img2img_job: Any, tmp_path: Path) -> None:
    first, second = sim(2, checkpoints=(DEFAULT_CHECKPOINT,))
    for server in (first, second):
        server.fail_next(node_id="6", node_type="KSampler", message="bad latent")
    box = _box(first.url, second.url)
    try:
        with pytest.raises(ExecutionFailed, match="bad latent"):
            box.run(img2img_job, tmp_path)
    finally:
        box.close()
    assert first.counters.prompts_started + second.counters.prompts_started == 2


def test_a_box_keeps_each_checkpoint_warm_on_its_own_server(sim: Callable[..., list[Any]], library: Any,
                                                             sample_image: Path, tmp_path: Path) -> None:
    checkpoints = ("model-a.safetensors", "model-b.safetensors")
    first, second = sim(2, checkpoints=checkpoints)
    box = Box([ServerConfig(url=first.url, queue_ahead=0), ServerConfig(url=second.url, queue_ahead=0)],
              policy=QUICK, job_timeout_s=30.0)
    box.probe_due()
    template = library.get("img2img")
    jobs = [template.job(template.params({"image": str(sample_image), "checkpoint": checkpoints[n % 2], "seed": n}))
            for n in range(6)]
    try:
        servers = [box.run(job, tmp_path).server for job in jobs]
    finally:
        box.close()
    names = [ServerConfig(url=server.url).name for server in (first, second)]
    assert servers == [names[0], names[1]] * 3  # A stays on the first, B goes to the idle second and stays
    assert (first.counters.checkpoint_loads, second.counters.checkpoint_loads) == (1, 1)
