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
    graph = Graph.from_api({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoints[0]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0],
            "seed": int.from_bytes(os.urandom(4), "big"), "steps": 8, "cfg": 8.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 0.6}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "comfy-orch-live"}},
    })
    return Job(graph=graph, template="img2img", params={"steps": 8}, inputs={image: sample_image},
               parameter_map={"6.sampler_name": "sampler", "1.ckpt_name": "checkpoint"})

