"""Shared fixtures: the recorded reference, sample images, the template library."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_orchestrator.templates import Templates

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "comfyui-reference"


def recorded_exchange(name: str) -> dict[str, Any]:
    """One recorded HTTP exchange of the real server (shared/comfyui-reference/http)."""
    path = REFERENCE / "http" / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"the recorded reference is not beside the checkout ({path})")
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


@pytest.fixture
def recorded() -> Any:
    """Look up one recorded HTTP exchange by name."""
    return recorded_exchange


@pytest.fixture
def sample_image(tmp_path: Path) -> Path:
    """A small RGB picture on disk."""
    path = tmp_path / "input.png"
    image = Image.new("RGB", (96, 64), (40, 90, 160))
    for x in range(96):
        image.putpixel((x, x % 64), (250, 220, 30))
    image.save(path)
    return path


@pytest.fixture
def second_image(tmp_path: Path) -> Path:
    path = tmp_path / "second.png"
    Image.new("RGB", (96, 64), (200, 60, 60)).save(path)
    return path


@pytest.fixture
def library() -> Templates:
    return Templates.default()


@pytest.fixture
def sim() -> Iterator[Callable[..., list[Any]]]:
    """Start simulated ComfyUI servers on free loopback ports: `a, b = sim(2)`; all stop at teardown."""
    from comfy_orchestrator.sim import SimServer

    started: list[SimServer] = []

    def start(count: int = 1, **options: Any) -> list[SimServer]:
        servers = [SimServer(**options) for _ in range(count)]
        for server in servers:
            started.append(server.start())
        return servers

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def comfy(sim: Callable[..., list[Any]]) -> Any:
    """One simulated server with instant nodes that has the templates' default checkpoint."""
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,))
    return server


@pytest.fixture
def client(comfy: Any) -> Iterator[Any]:
    """A Client of `comfy` with short timeouts and quick retries, closed at teardown."""
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.limits import Timeouts
    from comfy_orchestrator.retry import RetryPolicy

    with Client(comfy.url, timeouts=Timeouts(read_s=5.0, silence_s=1.0, job_s=30.0),
                retry=RetryPolicy(max_attempts=3, first_delay_s=0.05, max_delay_s=0.5)) as made:
        yield made


@pytest.fixture
def img2img_job(sample_image: Path) -> Any:
    """The recorded img2img prompt (a) as a Job on `sample_image`, mapped like the img2img template."""
    from comfy_orchestrator.graph import Graph
    from comfy_orchestrator.jobs import Job, content_name
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    image = content_name(sample_image)
    graph = Graph.from_api({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEFAULT_CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "seed": 1234,
            "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.6}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "comfy-orch"}},
    })
    parameter_map = {"1.ckpt_name": "checkpoint", "2.text": "positive", "3.text": "negative", "4.image": "image",
                     "6.seed": "seed", "6.steps": "steps", "6.cfg": "cfg", "6.sampler_name": "sampler",
                     "6.denoise": "denoise"}
    params = {"checkpoint": DEFAULT_CHECKPOINT, "positive": "a lighthouse at dusk", "negative": "blurry",
              "image": str(sample_image), "seed": 1234, "steps": 20, "cfg": 8.0, "sampler": "euler",
              "denoise": 0.6}
    return Job(graph=graph, template="img2img", params=params, inputs={image: sample_image},
               parameter_map=parameter_map)
