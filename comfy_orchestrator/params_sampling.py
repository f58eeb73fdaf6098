"""Sampling, what every workflow's parameters share (prompts, checkpoint, KSampler, LoRAs, VAE), and Img2Img.

A model holds the documented defaults, the ranges the server accepts, and the
ranges the img2img guide recommends (shown to users, never enforced). Sampling holds what
every workflow shares and the template nodes that carry it; Img2Img is the basic workflow,
and its kin (params_img2img.py), HiresFix and ControlNet (params_txt2img.py) build on them.
params.py maps workflow names to the models and loads each room on first use: building a
pydantic model costs milliseconds, and a command needs few of them.

The pieces they stand on have rooms of their own: the Params base (params_base.py), sampler
names (samplers.py), the denoise guide (denoise_guide.py), input pictures (input_images.py)
and model families (families.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from comfy_orchestrator.denoise_guide import DENOISE_GUIDE, DenoiseBand, denoise_band
from comfy_orchestrator.families import (
    DEFAULT_CHECKPOINT,
    FAMILY_LABELS,
    NATIVE_SIZE,
    ModelFamily,
    find_family,
    native_size_note,
)
from comfy_orchestrator.input_images import ImageFile, picture_size
from comfy_orchestrator.params_base import Params
from comfy_orchestrator.samplers import resolve_sampler, scheduler_names, split_sampler

SEED_MAX = 2**64 - 1
logger = logging.getLogger(__name__)


class SizeRoundedWarning(UserWarning):
    """A width or height was rounded down to a multiple of 8."""


# -- field types ----------------------------------------------------------------------------------

UpscaleMethod = Literal["lanczos", "bicubic", "nearest-exact", "bilinear", "area"]


def recommended(low: float, high: float) -> dict[str, Any]:
    """A field's range the img2img guide recommends: shown to users, never enforced."""
    return {"recommended": [low, high]}


# -- models ---------------------------------------------------------------------------------------

LORA_FIRST_ID = 20
VAE_ID = "17"  # the VAELoader, when a separate VAE is given


class LoraSpec(BaseModel):
    """One stacked LoRA: its file, its strength on the model and on CLIP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    strength: float = Field(1.0, ge=-100.0, le=100.0)
    clip_strength: float | None = Field(None, ge=-100.0, le=100.0)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        """Accept 'name:strength[:clip_strength]' as users write it on the command line."""
        if not isinstance(data, str):
            return data
        name, *numbers = data.rsplit(":", 2) if data.count(":") >= 1 else (data,)
        try:
            values = [float(n) for n in numbers]
        except ValueError:
            return {"name": data}
        return {"name": name, "strength": values[0] if values else 1.0,
                "clip_strength": values[1] if len(values) > 1 else None}


class Sampling(Params):
    """Prompts, checkpoint and KSampler settings shared by every workflow."""

    positive: str = Field("a detailed, high quality picture", description="what the picture should show")
    negative: str = Field("blurry, low quality, watermark", description="what it should not show")
    checkpoint: str = Field(DEFAULT_CHECKPOINT, min_length=1, description="checkpoint file on the server")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="noise seed; the same seed gives the same picture")
    steps: int = Field(20, ge=1, le=10000, description="sampler steps", json_schema_extra=recommended(20, 30))
    cfg: float = Field(8.0, ge=0.0, le=100.0, description="how closely to follow the prompt",
                       json_schema_extra=recommended(7, 9))
    sampler: str = Field("euler", description="sampler, as ComfyUI or as users name it ('dpm++ 2m karras')",
                         json_schema_extra={"choices_from": "sampler_name"})
    scheduler: str = Field("normal", description="noise schedule", json_schema_extra={"choices_from": "scheduler"})
    denoise: float = Field(0.5, ge=0.0, le=1.0, description="how much to change: 0 keeps, 1 replaces; "
                           "or an effect of the denoise guide (minimal, moderate, significant, major, new)",
                           json_schema_extra=recommended(0.3, 0.7))
    filename_prefix: str = Field("comfy-orch", min_length=1, description="output file name prefix on the server")
    lora: str = Field("", description="a LoRA file on the server to apply ('' for none)")
    lora_strength: float = Field(1.0, ge=-100.0, le=100.0, description="LoRA strength on the model",
                                 json_schema_extra=recommended(0.5, 1.0))
    lora_clip_strength: float | None = Field(None, ge=-100.0, le=100.0,
                                             description="LoRA strength on CLIP (default: lora_strength)")
    more_loras: tuple[LoraSpec, ...] = Field((), description="further LoRAs stacked after the first, "
                                             "as name:strength[:clip_strength] or objects")
    model_family: ModelFamily | None = Field(None, description="sd15 or sdxl; default: read from the server's "
                                             "checkpoint metadata, else guessed from the checkpoint's name")
    vae: str = Field("", description="a VAE file on the server to encode and decode with ('' for the "
                     "checkpoint's own)")
    size_conditioning: bool = Field(False, description="SDXL only: encode the prompts with CLIPTextEncodeSDXL "
                                    "and the picture's size")

    # fields whose default is the family's native size (512 SD1.5, 1024 SDXL) rather than the one declared
    native_size_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def family(self) -> ModelFamily:
        """The model family; validation always fills it in."""
        return self.model_family or find_family(self.checkpoint).family

    def generation_size(self) -> tuple[int, int] | None:
        """The size in pixels the sampler works at first, where it is known before running."""
        return None

    def size_note(self) -> str:
        """A warning when the picture is far from the family's native size; empty when it is close."""
        size = self.generation_size()
        return native_size_note(self.family, *size) if size else ""

    def lora_chain(self) -> list[LoraSpec]:
        """Every LoRA to apply, in order."""
        if not self.lora:
            return list(self.more_loras)
        first = LoraSpec(name=self.lora, strength=self.lora_strength, clip_strength=self.lora_clip_strength)
        return [first, *self.more_loras]

    def template_values(self, image_names: Mapping[str, str] | None = None) -> dict[str, Any]:
        values = super().template_values(image_names)
        model, clip = ["1", 0], ["1", 1]
        chain = []
        for index, spec in enumerate(self.lora_chain()):
            node_id = str(LORA_FIRST_ID + index)
            if index == 0 and self.lora:  # the first LoRA's own fields, so errors can name them
                spec = spec.model_construct(name=self.lora, strength=self.lora_strength,
                                            clip_strength=self.lora_clip_strength)
            chain.append({"id": node_id, "name": spec.name, "strength": spec.strength,
                          "clip_strength": spec.strength if spec.clip_strength is None else spec.clip_strength,
                          "model": model, "clip": clip})
            model, clip = [node_id, 0], [node_id, 1]
        values.update(loras=chain, model_link=model, clip_link=clip, vae_link=[VAE_ID, 0] if self.vae else ["1", 2])
        size = self.generation_size() if self.size_conditioning else None
        values["text_size"] = {"width": size[0], "height": size[1]} if size else None
        return values

    @classmethod
    def template_variables(cls) -> set[str]:
        return super().template_variables() | {"loras", "model_link", "clip_link", "vae_link", "text_size"}

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill in the model family (the server's, passed as context, or a guess) and the sizes it implies."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("model_family") in (None, ""):
            checkpoint = str(data.get("checkpoint") or cls.model_fields["checkpoint"].default)
            families: Mapping[str, str] = (info.context or {}).get("families") or {}
            if checkpoint in families:
                data["model_family"] = families[checkpoint]
            else:
                finding = find_family(checkpoint)
                if finding.note:
                    logger.warning("%s", finding.note)
                data["model_family"] = finding.family
        family = data["model_family"]
        if family in NATIVE_SIZE:
            for name in cls.native_size_fields:
                if data.get(name) is None:
                    data[name] = NATIVE_SIZE[family]
        return data

    @model_validator(mode="after")
    def _conditioning_needs_sdxl(self) -> Sampling:
        if self.size_conditioning and self.family != "sdxl":
            raise ValueError("size_conditioning needs an SDXL checkpoint (CLIPTextEncodeSDXL); "
                             f"{self.checkpoint!r} is {FAMILY_LABELS[self.family]}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _friendly_names(cls, data: Any) -> Any:
        """Split 'dpm++ 2m karras' into sampler and scheduler; turn 'moderate' into a denoise."""
        if not isinstance(data, dict):
            return data
        data = split_sampler(data, has_scheduler=True)
        denoise = data.get("denoise")
        if isinstance(denoise, str) and denoise.strip().lower() in {b.name for b in DENOISE_GUIDE}:
            data["denoise"] = denoise_band(denoise).middle
        return data

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return resolve_sampler(value)[0]

    @field_validator("more_loras", mode="before")
    @classmethod
    def _lora_list(cls, value: Any) -> Any:
        return list_from_text(value)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value not in scheduler_names():
            raise ValueError(f"unknown scheduler; valid: {', '.join(scheduler_names())}")
        return value

    @property
    def denoise_effect(self) -> DenoiseBand:
        """The guide's band this denoise falls in."""
        for band in DENOISE_GUIDE:
            if self.denoise <= band.high:
                return band
        return DENOISE_GUIDE[-1]


def list_from_text(value: Any) -> Any:
    """A list given as text on the command line: JSON, or items separated by commas."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        import json

        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


def multiple_of_8(value: int, info: ValidationInfo) -> int:
    """A width or height rounded down to a multiple of 8 with a warning, or refused under strict_sizes."""
    if value % 8 == 0:
        return value
    strict = bool(info.context and info.context.get("strict_sizes"))
    if strict:
        raise ValueError(f"must be a multiple of 8 (try {value - value % 8} or {value - value % 8 + 8})")
    rounded = value - value % 8
    warnings.warn(f"{info.field_name}={value} rounded down to {rounded}, a multiple of 8",
                  SizeRoundedWarning, stacklevel=2)
    return rounded


class Img2Img(Sampling):
    """Basic img2img: encode an image, sample it at a partial denoise, decode and save."""

    workflow: ClassVar[str] = "img2img"
    template: ClassVar[str] = "img2img.json.j2"
    description: ClassVar[str] = "Basic img2img: change an existing picture by a chosen amount (denoise)."
    stages: ClassVar[Mapping[str, Any]] = {"scale_by": 1.0, "batch_size": 1, "tiled": False,
                                           "tile_size": 512, "tile_overlap": 64}

    image: ImageFile = Field(description="the input picture (a local file; uploaded for you)")
    width: int = Field(0, ge=0, le=16384, description="resize to this width first; 0 keeps the aspect ratio")
    height: int = Field(0, ge=0, le=16384, description="resize to this height first; 0 keeps the aspect ratio")
    upscale_method: UpscaleMethod = Field("lanczos", description="resampling filter for resizing")

    check_sizes = field_validator("width", "height")(multiple_of_8)

    def generation_size(self) -> tuple[int, int] | None:
        values = {**self.stages, **dict(self)}
        return resized_size(picture_size(self.image), width=values["width"], height=values["height"],
                            scale_by=values["scale_by"])


def resized_size(size: tuple[int, int], *, width: int, height: int, scale_by: float) -> tuple[int, int]:
    """The size after the templates' resize: by a factor, or to width/height (0 keeps the aspect ratio)."""
    w, h = size
    if scale_by != 1.0:
        return max(1, round(w * scale_by)), max(1, round(h * scale_by))
    if width and height:
        return width, height
    if width:
        return width, max(1, round(h * width / w))
    if height:
        return max(1, round(w * height / h)), height
    return w, h


