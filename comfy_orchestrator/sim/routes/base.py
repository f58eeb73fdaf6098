"""What every route group is handed: the server's configuration, its live state, and shared answers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from comfy_orchestrator.schema import Schema
from comfy_orchestrator.sim.faults import Faults
from comfy_orchestrator.sim.hub import SocketHub
from comfy_orchestrator.sim.queue import PromptQueue
from comfy_orchestrator.sim.worker import Executor

COMFYUI_VERSION = "0.8.0"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE,
                   "extension": {"manager": {"supports_v4": True}}}
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
MODEL_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
                 "model_patches", "audio_encoders")


@dataclass
class SimState:
    """Everything a crash loses: queue, history, cache, sockets."""

    queue: PromptQueue
    executor: Executor
    hub: SocketHub
    number: int = 0


@dataclass
class SimConfig:
    """What the routes need to know about their server."""

    schema: Schema
    faults: Faults
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    user_dir: Path
    models_dir: Path
    checkpoints: tuple[str, ...]
    vae_approx: tuple[str, ...] = ()
    checkpoint_metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # what /view_metadata adds
    started_at: float = 0.0  # Unix time the server started: the simulated model files' dates


class RouteGroup:
    """A group of routes; `routes()` lists its methods by path, without the /api prefix."""

    def __init__(self, config: SimConfig, state: Callable[[], SimState]) -> None:
        self.config = config
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError


def json_answer(data: Any, status: int = 200) -> web.Response:
    """A JSON answer, as aiohttp's json_response writes it."""
    return web.json_response(data, status=status)


def folder_of(config: SimConfig, kind: str | None) -> Path | None:
    """The input, output or temp folder (input when `kind` is None); None for any other kind."""
    return {"input": config.input_dir, "output": config.output_dir, "temp": config.temp_dir}.get(kind or "input")


def annotated(name: str) -> tuple[str, str | None]:
    """Split `x.png [output]` into ("x.png", "output"); a plain name has no kind."""
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def inside(folder: Path, path: Path) -> bool:
    """Whether `path` stays inside `folder`, as ComfyUI's os.path.commonpath checks it."""
    return os.path.commonpath((os.path.abspath(folder), os.path.abspath(path))) == os.path.abspath(folder)


def queue_info(state: SimState) -> dict[str, Any]:
    """The status message's body: how many prompts wait or run."""
    return {"exec_info": {"queue_remaining": state.queue.remaining()}}
