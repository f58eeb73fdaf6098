"""Live tests run against a real ComfyUI named by COMFY_URL (and COMFY_TOKEN if it sits behind a proxy)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_orchestrator.client import Client
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job, content_name
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.retry import RetryPolicy
from tests.conftest import img2img_prompt


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/live/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.live)


@pytest.fixture
def live() -> Iterator[Client]:
    """A Client of the real server in COMFY_URL; skips when it is not set."""
    url = os.environ.get("COMFY_URL")
    if not url:
        pytest.skip("set COMFY_URL to a real ComfyUI to run the live tests")
    with Client(url, token=os.environ.get("COMFY_TOKEN") or None, timeouts=Timeouts(read_s=30, silence_s=10, job_s=600),
                retry=RetryPolicy(max_attempts=3, first_delay_s=0.5)) as client:
        yield client


@pytest.fixture
def live_job(live: Client, sample_image: Path) -> Job:
    """Prompt (a) of the reference recordings on the server's first checkpoint, at 8 steps."""
    checkpoints = live.schema().checkpoints
    if not checkpoints:
        pytest.skip("the server has no checkpoint")
    image = content_name(sample_image)
    graph = Graph.from_api(img2img_prompt(image, seed=int.from_bytes(os.urandom(4), "big"), steps=8,
                                          checkpoint=checkpoints[0], prefix="comfy-orch-live",
                                          positive="a lighthouse at dusk", negative="blurry"))
    return Job(graph=graph, template="img2img", params={"steps": 8}, inputs={image: sample_image},
               parameter_map={"6.sampler_name": "sampler", "1.ckpt_name": "checkpoint"})

