"""Model families (SD1.5, SDXL): which one a checkpoint is, and each one's native picture size.

A checkpoint's family comes from its safetensors metadata when a server gives it, else from
its official file name, else a guess from its name that is said aloud.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from comfy_orchestrator.errors import ParameterError

ModelFamily = Literal["sd15", "sdxl"]
FAMILY_LABELS: dict[str, str] = {"sd15": "SD1.5", "sdxl": "SDXL"}
NATIVE_SIZE: dict[str, int] = {"sd15": 512, "sdxl": 1024}  # the side length each family was trained at
# A picture whose side (the square root of its area) is outside these shares of the native side
# gets a warning: SDXL at 512 loses detail, SD1.5 at 1024 repeats subjects.
NATIVE_SIDE_RANGE = (0.7, 1.6)
# Official file names whose family needs no guess.
KNOWN_CHECKPOINTS: dict[str, ModelFamily] = {
    "v1-5-pruned-emaonly.safetensors": "sd15", "v1-5-pruned-emaonly-fp16.safetensors": "sd15",
    "v1-5-pruned.safetensors": "sd15", "sd_xl_base_1.0.safetensors": "sdxl",
    "sd_xl_base_1.0_0.9vae.safetensors": "sdxl",
}
DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # a workflow's checkpoint when none is named
_SDXL_NAME = re.compile(r"sd_?xl|xl(?![a-z])|pony|illustrious", re.IGNORECASE)
_SAI_ARCHITECTURES: dict[str, ModelFamily | None] = {
    "stable-diffusion-v1": "sd15", "stable-diffusion-xl-v1-base": "sdxl",
    # the refiner and the edit model are other networks the templates do not wire
    "stable-diffusion-xl-v1-refiner": None, "stable-diffusion-xl-v1-edit": None,
}


@dataclass(frozen=True)
class FamilyFinding:
    """A checkpoint's model family and where it came from: the server's metadata, a known name, or a guess."""

    checkpoint: str
    family: ModelFamily
    source: Literal["server", "known", "guess"]

    @property
    def note(self) -> str:
        """What to tell a user about a guess; empty when the family is certain."""
        if self.source != "guess":
            return ""
        return (f"model_family of {self.checkpoint!r} guessed from its name: {self.family} "
                f"(its metadata does not say; --set model_family=sd15|sdxl to be sure)")


def family_from_metadata(checkpoint: str, metadata: Mapping[str, Any] | None) -> ModelFamily | None:
    """The family a checkpoint's safetensors metadata names (ComfyUI's /view_metadata), or None.

    Reads the SAI model spec (modelspec.architecture, as ComfyUI's CheckpointSave writes it) and
    kohya's ss_base_model_version; an architecture the templates cannot run is a ParameterError.
    """
    if not metadata:
        return None
    architecture = str(metadata.get("modelspec.architecture", "")).strip().lower()
    if architecture:
        base = architecture.split("/")[0]
        if base.startswith("stable-diffusion-v1"):
            return "sd15"
        if base in _SAI_ARCHITECTURES and _SAI_ARCHITECTURES[base] is not None:
            return _SAI_ARCHITECTURES[base]
        raise ParameterError(f"checkpoint {checkpoint!r} is a {architecture} model; the templates run "
                             "SD1.5 and SDXL base checkpoints", parameter="checkpoint")
    base_version = str(metadata.get("ss_base_model_version", "")).lower()
    if base_version.startswith("sdxl_base"):
        return "sdxl"
    if base_version.startswith("sd_v1"):
        return "sd15"
    return None


def find_family(checkpoint: str, metadata: Mapping[str, Any] | None = None) -> FamilyFinding:
    """A checkpoint's family: from its metadata, else its official name, else a guess from its name."""
    family = family_from_metadata(checkpoint, metadata)
    if family is not None:
        return FamilyFinding(checkpoint, family, "server")
    known = KNOWN_CHECKPOINTS.get(checkpoint.rsplit("/", 1)[-1])
    if known is not None:
        return FamilyFinding(checkpoint, known, "known")
    return FamilyFinding(checkpoint, "sdxl" if _SDXL_NAME.search(checkpoint) else "sd15", "guess")


def native_size_note(family: str, width: int, height: int, *, what: str = "the picture") -> str:
    """A warning when `width` x `height` is far from the family's native size; empty when close."""
    native = NATIVE_SIZE[family]
    side = math.sqrt(width * height)
    low, high = NATIVE_SIDE_RANGE
    if low * native <= side <= high * native:
        return ""
    scale = native / side
    better_w, better_h = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
    other = next(name for name in NATIVE_SIZE if name != family)
    fits_other = low * NATIVE_SIZE[other] <= side <= high * NATIVE_SIZE[other]
    return (f"{what} is {width}x{height}, far from {FAMILY_LABELS[family]}'s native {native}x{native} "
            f"(expect {'lost detail' if side < native else 'repeated subjects'}): try width={better_w} "
            f"height={better_h}" + (f", or a {FAMILY_LABELS[other]} checkpoint" if fits_other else ""))
