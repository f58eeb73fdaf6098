"""WORKFLOWS: each documented workflow's name and its parameter model, one frozen pydantic model a workflow.

The models live in three rooms, each loaded on its first use (building a pydantic model costs
milliseconds, and `run img2img` needs three of the seventeen): params_sampling.py (Sampling, what
every workflow shares, and Img2Img), params_img2img.py (Img2Img's kin) and params_txt2img.py
(HiresFix, ControlNet). Their names can be imported from here as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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


def _sampling() -> ModuleType:
    from comfy_orchestrator import params_sampling

    return params_sampling


def _img2img_kin() -> ModuleType:
    from comfy_orchestrator import params_img2img

    return params_img2img


def _txt2img() -> ModuleType:
    from comfy_orchestrator import params_txt2img

    return params_txt2img


# each workflow: the room its model lives in and the model's name there
_MODELS: dict[str, tuple[Callable[[], ModuleType], str]] = {
    "img2img": (_sampling, "Img2Img"),
    "style-transfer": (_img2img_kin, "StyleTransfer"),
    "upscale": (_img2img_kin, "Upscale"),
    "sketch-to-image": (_img2img_kin, "SketchToImage"),
    "photo-restoration": (_img2img_kin, "PhotoRestoration"),
    "hires-fix": (_txt2img, "HiresFix"),
    "variations": (_img2img_kin, "Variations"),
    "blend": (_img2img_kin, "Blend"),
    "tiled": (_img2img_kin, "Tiled"),
    "resize": (_img2img_kin, "Resize"),
    "inpaint": (_img2img_kin, "Inpaint"),
    "inpaint-partial": (_img2img_kin, "InpaintPartial"),
    "controlnet": (_txt2img, "ControlNet"),
}
# the other public names of the rooms, importable from here as they were when one module held them all
_NAMES: dict[str, Callable[[], ModuleType]] = {
    **{name: room for room, name in _MODELS.values()},
    **dict.fromkeys(("Sampling", "LoraSpec", "SizeRoundedWarning", "SEED_MAX", "resized_size"), _sampling),
    "ControlSpec": _txt2img,
}


class _Workflows(Mapping[str, type[Params]]):
    """Workflow name -> parameter model; a model's room is imported when the model is first looked up
    (names, `in` and len() import nothing)."""

    def __getitem__(self, name: str) -> type[Params]:
        room, model = _MODELS[name]
        found: type[Params] = getattr(room(), model)
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
    return getattr(room(), name)



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
