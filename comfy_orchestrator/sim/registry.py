"""The simulated node classes by name, and what a running node is handed: its context, results and errors.

nodes.py (the common nodes), guidance.py (LoRA, ControlNet, inpainting) and generic.py (any other
node of the schema) each register here with `@simulates("ClassName")`; the executor reads `NODES`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from comfy_orchestrator.errors import ComfyError
from comfy_orchestrator.sim.costs import Costs
from comfy_orchestrator.sim.faults import Faults
from comfy_orchestrator.sim.images import FloatArray


class NodeFailure(ComfyError):
    """A simulated node raised; reported to the client as an execution_error, never raised out of the sim."""

    def __init__(self, message: str, *, exception_type: str = "RuntimeError", tips: str = "") -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.tips = tips


class ProcessingInterrupted(ComfyError):
    """POST /interrupt reached the running prompt (ComfyUI's InterruptProcessingException)."""


class ServerCrashed(ComfyError):
    """The simulated server was crashed; the running prompt stops without a trace."""


@dataclass
class SimModel:
    """What a checkpoint loader hands out for MODEL, CLIP and VAE."""

    checkpoint: str
    kind: str


@dataclass
class Counters:
    """What the simulated server has done since it started: for tests and benchmarks."""

    node_executions: dict[str, int] = field(default_factory=dict)  # class_type -> runs
    checkpoint_loads: int = 0
    prompts_started: int = 0
    prompts_finished: int = 0
    sampler_steps: int = 0
    images_saved: int = 0

    def count_node(self, class_type: str) -> None:
        self.node_executions[class_type] = self.node_executions.get(class_type, 0) + 1


class NodeContext(Protocol):
    """What a running node may use from the executor."""

    @property
    def node_id(self) -> str: ...

    @property
    def prompt(self) -> Mapping[str, Any]: ...

    @property
    def extra_data(self) -> Mapping[str, Any]: ...

    @property
    def costs(self) -> Costs: ...

    @property
    def faults(self) -> Faults: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def input_dir(self) -> Path: ...

    @property
    def output_dir(self) -> Path: ...

    @property
    def temp_dir(self) -> Path: ...


    def spend(self, seconds: float) -> None: ...

    def step(self, value: int, total: int, preview: FloatArray | None) -> None: ...

    def load_checkpoint(self, name: str) -> None: ...

    def sampler_warmup(self, model: SimModel | None = None) -> None: ...

    def step_with_picture(self, value: int, total: int, png: bytes) -> None: ...


@dataclass(frozen=True)
class NodeResult:
    """A node's outputs (one per declared output) and its UI dict for output nodes."""

    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


NodeFunction = Callable[..., NodeResult]
NODES: dict[str, NodeFunction] = {}
# (model, positive, latent, pattern, region) -> (pattern, region): what a sampler paints and where (0..1)
SampleGuide = Callable[[SimModel, Any, Mapping[str, Any], FloatArray, "FloatArray | float"],
                       "tuple[FloatArray, FloatArray | float]"]
SAMPLE_GUIDES: list[SampleGuide] = []  # guidance.py adds LoRA, ControlNet and noise-mask effects
NEVER_CACHED = frozenset({"SaveImageWebsocket"})  # their IS_CHANGED answers time.time()


def simulates(class_type: str) -> Callable[[NodeFunction], NodeFunction]:
    """Register the decorated function as the simulation of `class_type`."""
    def register(function: NodeFunction) -> NodeFunction:
        NODES[class_type] = function
        return function
    return register


def annotated_path(ctx: NodeContext, name: str, default: str = "input") -> Path:
    """Where a LoadImage name points: `x.png`, `sub/x.png`, `x.png [output]`."""
    folder = {"input": ctx.input_dir, "output": ctx.output_dir, "temp": ctx.temp_dir}
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return folder[kind] / name[: -len(suffix)]
    return folder[default] / name


def file_hash(path: Path) -> str:
    """sha256 of a file, as LoadImage's IS_CHANGED gives it; '' when it is missing."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
