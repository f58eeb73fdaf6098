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
