"""WORKFLOWS: each documented workflow's name and its parameter model, one frozen pydantic model a workflow.

The models live in three rooms, each loaded on its first use (building a pydantic model costs
milliseconds, and `run img2img` needs three of the seventeen): params_sampling.py (Sampling, what
every workflow shares, and Img2Img), params_img2img.py (Img2Img's kin) and params_txt2img.py
(HiresFix, ControlNet). Their names can be imported from here as well.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from comfy_orchestrator.families import DEFAULT_CHECKPOINT
from comfy_orchestrator.params_base import Params

if TYPE_CHECKING:
    from comfy_orchestrator.params_img2img import (
        Blend,
        Inpaint,
        InpaintPartial,
        PhotoRestoration,
        Resize,
        SketchToImage,
        StyleTransfer,
        Tiled,
        Upscale,
        Variations,
    )
    from comfy_orchestrator.params_sampling import (
        SEED_MAX,
        Img2Img,
        LoraSpec,
        Sampling,
        SizeRoundedWarning,
        resized_size,
    )
    from comfy_orchestrator.params_txt2img import ControlNet, ControlSpec, HiresFix


# each workflow: the room (a module of this package) its model lives in and the model's name there
_MODELS: dict[str, tuple[str, str]] = {
    "img2img": ("params_sampling", "Img2Img"),
    "style-transfer": ("params_img2img", "StyleTransfer"),
    "upscale": ("params_img2img", "Upscale"),
    "sketch-to-image": ("params_img2img", "SketchToImage"),
    "photo-restoration": ("params_img2img", "PhotoRestoration"),
    "hires-fix": ("params_txt2img", "HiresFix"),
    "variations": ("params_img2img", "Variations"),
    "blend": ("params_img2img", "Blend"),
    "tiled": ("params_img2img", "Tiled"),
    "resize": ("params_img2img", "Resize"),
    "inpaint": ("params_img2img", "Inpaint"),
    "inpaint-partial": ("params_img2img", "InpaintPartial"),
    "controlnet": ("params_txt2img", "ControlNet"),
}
# the other public names of the rooms, importable from here as they were when one module held them all
_NAMES: dict[str, str] = {
    **{name: room for room, name in _MODELS.values()},
    **dict.fromkeys(("Sampling", "LoraSpec", "SizeRoundedWarning", "SEED_MAX", "resized_size"), "params_sampling"),
    "ControlSpec": "params_txt2img",
}


def _imported(room: str) -> ModuleType:
    """A room of this package, imported on first use (later imports find it in sys.modules)."""
    return importlib.import_module(f"comfy_orchestrator.{room}")


class _Workflows(Mapping[str, type[Params]]):
    """Workflow name -> parameter model; a model's room is imported when the model is first looked up
    (names, `in` and len() import nothing)."""

    def __getitem__(self, name: str) -> type[Params]:
        room, model = _MODELS[name]
        found: type[Params] = getattr(_imported(room), model)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(_MODELS)

    def __len__(self) -> int:
        return len(_MODELS)

    def __contains__(self, name: object) -> bool:
        return name in _MODELS

    def __repr__(self) -> str:
        return f"WORKFLOWS({', '.join(_MODELS)})"


WORKFLOWS: Mapping[str, type[Params]] = _Workflows()


def __getattr__(name: str) -> Any:
    """A model or helper of the rooms above, imported on first use."""
    room = _NAMES.get(name)
    if room is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_imported(room), name)


__all__ = [
    "DEFAULT_CHECKPOINT",
    "SEED_MAX",
    "WORKFLOWS",
    "Blend",
    "ControlNet",
    "ControlSpec",
    "HiresFix",
    "Img2Img",
    "Inpaint",
    "InpaintPartial",
    "LoraSpec",
    "PhotoRestoration",
    "Resize",
    "Sampling",
    "SizeRoundedWarning",
    "SketchToImage",
    "StyleTransfer",
    "Tiled",
    "Upscale",
    "Variations",
    "resized_size",
]
