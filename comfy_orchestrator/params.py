"""Parameter models: one frozen pydantic model per documented workflow, each naming its template.

A model holds the documented defaults, the ranges the server accepts, and the
ranges the img2img guide recommends (shown to users, never enforced). Sampling holds what
every workflow shares (prompts, checkpoint, KSampler, LoRAs, VAE) and the template nodes
that carry it; Img2Img and its kin, HiresFix, Inpaint and ControlNet build on it.

The pieces they stand on have rooms of their own: the Params base (params_base.py), sampler
names (samplers.py), the denoise guide (denoise_guide.py), input pictures (input_images.py)
and model families (families.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from comfy_orchestrator.denoise_guide import DENOISE_GUIDE, DenoiseBand, denoise_band
from comfy_orchestrator.families import (
    FAMILY_LABELS,
    NATIVE_SIZE,
    ModelFamily,
    find_family,
    native_size_note,
)
from comfy_orchestrator.input_images import ImageFile, check_mask, has_alpha, picture_size
from comfy_orchestrator.params_base import Params
from comfy_orchestrator.samplers import resolve_sampler, scheduler_names, split_sampler

DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SEED_MAX = 2**64 - 1
logger = logging.getLogger(__name__)


class SizeRoundedWarning(UserWarning):
    """A width or height was rounded down to a multiple of 8."""


# -- field types ----------------------------------------------------------------------------------

UpscaleMethod = Literal["lanczos", "bicubic", "nearest-exact", "bilinear", "area"]


def _recommended(low: float, high: float) -> dict[str, Any]:
    return {"recommended": [low, high]}


# -- models ---------------------------------------------------------------------------------------

LORA_FIRST_ID = 20
CONTROL_FIRST_ID = 30
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
    steps: int = Field(20, ge=1, le=10000, description="sampler steps", json_schema_extra=_recommended(20, 30))
    cfg: float = Field(8.0, ge=0.0, le=100.0, description="how closely to follow the prompt",
                       json_schema_extra=_recommended(7, 9))
    sampler: str = Field("euler", description="sampler, as ComfyUI or as users name it ('dpm++ 2m karras')",
                         json_schema_extra={"choices_from": "sampler_name"})
    scheduler: str = Field("normal", description="noise schedule", json_schema_extra={"choices_from": "scheduler"})
    denoise: float = Field(0.5, ge=0.0, le=1.0, description="how much to change: 0 keeps, 1 replaces; "
                           "or an effect of the denoise guide (minimal, moderate, significant, major, new)",
                           json_schema_extra=_recommended(0.3, 0.7))
    filename_prefix: str = Field("comfy-orch", min_length=1, description="output file name prefix on the server")
    lora: str = Field("", description="a LoRA file on the server to apply ('' for none)")
    lora_strength: float = Field(1.0, ge=-100.0, le=100.0, description="LoRA strength on the model",
                                 json_schema_extra=_recommended(0.5, 1.0))
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
        return _list_from_text(value)

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


def _list_from_text(value: Any) -> Any:
    """A list given as text on the command line: JSON, or items separated by commas."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        import json

        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


def _multiple_of_8(value: int, info: ValidationInfo) -> int:
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

    check_sizes = field_validator("width", "height")(_multiple_of_8)

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


class StyleTransfer(Img2Img):
    """Img2img that restyles a picture while keeping its layout."""

    workflow: ClassVar[str] = "style-transfer"
    description: ClassVar[str] = "Style transfer: restyle a picture, keep its layout (denoise 0.5-0.7, cfg 8-10)."
    denoise: float = Field(0.6, ge=0.0, le=1.0, description="how much to change",
                           json_schema_extra=_recommended(0.5, 0.7))
    cfg: float = Field(9.0, ge=0.0, le=100.0, description="how closely to follow the style prompt",
                       json_schema_extra=_recommended(8, 10))


class Upscale(Img2Img):
    """Img2img after an image upscale, to add detail at the new size."""

    workflow: ClassVar[str] = "upscale"
    description: ClassVar[str] = "Upscale and enhance: enlarge (2x by default), then refine (denoise 0.3-0.5)."
    scale_by: float = Field(2.0, ge=0.01, le=8.0, description="size factor applied before encoding")
    denoise: float = Field(0.4, ge=0.0, le=1.0, description="how much detail to add",
                           json_schema_extra=_recommended(0.3, 0.5))

    @model_validator(mode="after")
    def _one_resize(self) -> Upscale:
        if self.scale_by != 1.0 and (self.width or self.height):
            raise ValueError("give either scale_by or width/height, not both")
        return self


class SketchToImage(Img2Img):
    """Img2img that turns a rough sketch into a finished picture."""

    workflow: ClassVar[str] = "sketch-to-image"
    description: ClassVar[str] = "Sketch to image: turn a drawing into a picture (denoise 0.7-0.9, cfg 9-12)."
    denoise: float = Field(0.8, ge=0.0, le=1.0, description="how far to move from the sketch",
                           json_schema_extra=_recommended(0.7, 0.9))
    cfg: float = Field(10.5, ge=0.0, le=100.0, description="how closely to follow the prompt",
                       json_schema_extra=_recommended(9, 12))


class PhotoRestoration(Img2Img):
    """Img2img that repairs an old or damaged photo gently."""

    workflow: ClassVar[str] = "photo-restoration"
    description: ClassVar[str] = "Photo restoration: repair gently (denoise 0.3-0.5, steps 30-40, ddim)."
    denoise: float = Field(0.4, ge=0.0, le=1.0, description="how much to repair",
                           json_schema_extra=_recommended(0.3, 0.5))
    steps: int = Field(35, ge=1, le=10000, description="sampler steps", json_schema_extra=_recommended(30, 40))
    sampler: str = Field("ddim", description="sampler, as ComfyUI or as users name it",
                         json_schema_extra={"choices_from": "sampler_name"})


class Variations(Img2Img):
    """Img2img that makes several variations of one picture in one run."""

    workflow: ClassVar[str] = "variations"
    description: ClassVar[str] = "Variations: N versions of one picture in one batched run (denoise 0.4-0.6)."
    batch_size: int = Field(4, ge=1, le=64, description="how many variations (RepeatLatentBatch amount)")
    denoise: float = Field(0.5, ge=0.0, le=1.0, description="how different the variations are",
                           json_schema_extra=_recommended(0.4, 0.6))


class Tiled(Img2Img):
    """Img2img for large pictures: encodes and decodes in tiles to save GPU memory."""

    workflow: ClassVar[str] = "tiled"
    description: ClassVar[str] = "Large images: VAE encode/decode in tiles, for pictures that exhaust GPU memory."
    stages: ClassVar[Mapping[str, Any]] = {**Img2Img.stages, "tiled": True}
    tile_size: int = Field(512, ge=64, le=4096, description="tile edge in pixels (a multiple of 64)")
    tile_overlap: int = Field(64, ge=0, le=4096, description="overlap between tiles in pixels (a multiple of 32)")

    @field_validator("tile_size")
    @classmethod
    def _tile_step(cls, value: int) -> int:
        if value % 64:
            raise ValueError("must be a multiple of 64")
        return value


class Resize(Img2Img):
    """Img2img after a resize that keeps the aspect ratio."""

    workflow: ClassVar[str] = "resize"
    description: ClassVar[str] = "Resize first (0 for width or height keeps the aspect ratio), then img2img."
    native_size_fields: ClassVar[tuple[str, ...]] = ("height",)
    height: int = Field(512, ge=0, le=16384, description="target height; 0 keeps the aspect ratio "
                        "(default: the family's native size, 512 SD1.5, 1024 SDXL)")


class Blend(Img2Img):
    """Two pictures encoded, blended in latent space, then sampled."""

    workflow: ClassVar[str] = "blend"
    template: ClassVar[str] = "blend.json.j2"
    description: ClassVar[str] = "Image blending: mix two pictures in latent space (0.5 = equal), then sample."
    image2: ImageFile = Field(description="the second picture (a local file)")
    blend_factor: float = Field(0.5, ge=0.0, le=1.0, description="share of the first picture: 0.5 mixes equally")


class HiresFix(Sampling):
    """Two-pass txt2img: sample small, upscale the latent, refine at the larger size."""

    workflow: ClassVar[str] = "hires-fix"
    template: ClassVar[str] = "hires_fix.json.j2"
    description: ClassVar[str] = ("Hires fix: txt2img at the native size (512 SD1.5, 1024 SDXL), upscale the "
                                  "latent (2x), refine (denoise 0.4-0.6).")
    native_size_fields: ClassVar[tuple[str, ...]] = ("width", "height")
    width: int = Field(512, ge=16, le=16384, description="first pass width (default: the family's native size)")
    height: int = Field(512, ge=16, le=16384, description="first pass height (default: the family's native size)")
    batch_size: int = Field(1, ge=1, le=4096, description="pictures per run")
    upscale_by: float = Field(2.0, ge=1.0, le=8.0, description="latent upscale factor for the second pass")
    denoise: float = Field(0.5, ge=0.0, le=1.0, description="second pass denoise (the first is always 1.0)",
                           json_schema_extra=_recommended(0.4, 0.6))

    check_sizes = field_validator("width", "height")(_multiple_of_8)

    def template_values(self, image_names: Mapping[str, str] | None = None) -> dict[str, Any]:
        values = super().template_values(image_names)
        values["hires_width"] = int(self.width * self.upscale_by) // 8 * 8
        values["hires_height"] = int(self.height * self.upscale_by) // 8 * 8
        return values

    @classmethod
    def template_variables(cls) -> set[str]:
        return super().template_variables() | {"hires_width", "hires_height"}

    def generation_size(self) -> tuple[int, int] | None:
        return self.width, self.height


class Inpaint(Img2Img):
    """Repaint the masked region of a picture from scratch (VAEEncodeForInpaint, denoise 1.0)."""

    workflow: ClassVar[str] = "inpaint"
    template: ClassVar[str] = "inpaint.json.j2"
    description: ClassVar[str] = ("Inpainting: repaint where the mask is white (or the image is transparent); "
                                  "VAEEncodeForInpaint at denoise 1.0.")
    stages: ClassVar[Mapping[str, Any]] = {**Img2Img.stages, "partial": False}
    mask: ImageFile | None = Field(None, description="a mask picture (white = repaint); none: use the "
                                   "image's transparency")
    mask_channel: Literal["red", "green", "blue", "alpha"] = Field(
        "red", description="which channel of the mask file to read (alpha: transparent = repaint)")
    grow_mask_by: int = Field(6, ge=0, le=64, description="widen the mask by this many pixels to blend edges")
    denoise: float = Field(1.0, ge=0.0, le=1.0, description="keep at 1.0: the masked area is encoded empty")

    @model_validator(mode="after")
    def _mask_source(self) -> Inpaint:
        if self.mask is None and not has_alpha(self.image):
            raise ValueError(f"image {self.image.name!r} has no transparency to use as the mask; "
                             "give mask=FILE, or save the image with an alpha channel")
        if self.mask is not None:
            check_mask(self.image, self.mask, self.mask_channel)
        return self


class InpaintPartial(Inpaint):
    """Change the masked region partly, keeping its content as a start (SetLatentNoiseMask)."""

    workflow: ClassVar[str] = "inpaint-partial"
    description: ClassVar[str] = ("Inpainting at partial denoise: VAEEncode + SetLatentNoiseMask keeps the "
                                  "masked area's content as the start (denoise 0.4-0.8).")
    stages: ClassVar[Mapping[str, Any]] = {**Img2Img.stages, "partial": True, "grow_mask_by": 0}
    denoise: float = Field(0.6, ge=0.0, le=1.0, description="how much the masked area changes",
                           json_schema_extra=_recommended(0.4, 0.8))
    grow_mask_by: int = Field(0, ge=0, le=0, description="not used by SetLatentNoiseMask")


class ControlSpec(BaseModel):
    """One ControlNet: its model file, its control image and how strongly and when it steers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    control_net: str = Field(min_length=1)
    image: ImageFile
    strength: float = Field(1.0, ge=0.0, le=10.0)
    start_percent: float = Field(0.0, ge=0.0, le=1.0)
    end_percent: float = Field(1.0, ge=0.0, le=1.0)
    preprocess: Literal["canny", "none"] = "canny"


class ControlNet(Sampling):
    """Sampling steered by ControlNets (edges of a control image), on img2img or txt2img."""

    workflow: ClassVar[str] = "controlnet"
    template: ClassVar[str] = "controlnet.json.j2"
    description: ClassVar[str] = ("ControlNet: steer the structure by a control image's edges (Canny) or a "
                                  "ready-made control image; img2img when image is given, else txt2img.")
    control_net: str = Field("control_v11p_sd15_canny.safetensors", min_length=1,
                             description="ControlNet model file on the server")
    control_image: ImageFile = Field(description="the picture whose structure to follow (a local file)")
    control_strength: float = Field(1.0, ge=0.0, le=10.0, description="how strongly the ControlNet steers",
                                    json_schema_extra=_recommended(0.5, 1.2))
    start_percent: float = Field(0.0, ge=0.0, le=1.0, description="when the ControlNet starts steering")
    end_percent: float = Field(1.0, ge=0.0, le=1.0, description="when it stops")
    preprocess: Literal["canny", "none"] = Field("canny", description="canny: detect edges with ComfyUI's "
                                                 "Canny node; none: the control image is ready-made")
    low_threshold: float = Field(0.4, ge=0.01, le=0.99, description="Canny low threshold")
    high_threshold: float = Field(0.8, ge=0.01, le=0.99, description="Canny high threshold")
    more_controls: tuple[ControlSpec, ...] = Field((), description="further ControlNets stacked after the "
                                                   "first (JSON objects)")
    image: ImageFile | None = Field(None, description="an input picture for img2img; none: txt2img")
    native_size_fields: ClassVar[tuple[str, ...]] = ("width", "height")
    width: int = Field(512, ge=16, le=16384, description="txt2img width (ignored for img2img; default: the "
                       "family's native size)")
    height: int = Field(512, ge=16, le=16384, description="txt2img height (ignored for img2img; default: the "
                        "family's native size)")
    denoise: float = Field(1.0, ge=0.0, le=1.0, description="1.0 for txt2img; lower keeps more of the image",
                           json_schema_extra=_recommended(0.5, 1.0))

    check_sizes = field_validator("width", "height")(_multiple_of_8)

    @field_validator("more_controls", mode="before")
    @classmethod
    def _control_list(cls, value: Any) -> Any:
        return _list_from_text(value)

    @model_validator(mode="after")
    def _window(self) -> ControlNet:
        windows = [(self.start_percent, self.end_percent)] + [(c.start_percent, c.end_percent)
                                                                for c in self.more_controls]
        for start, end in windows:
            if start > end:
                raise ValueError(f"start_percent {start} is after end_percent {end}")
        return self

    def generation_size(self) -> tuple[int, int] | None:
        return picture_size(self.image) if self.image is not None else (self.width, self.height)

    def image_fields(self) -> dict[str, Path]:
        fields = super().image_fields()
        for index, spec in enumerate(self.more_controls):
            fields[f"more_controls.{index}.image"] = spec.image
        return fields

    def template_values(self, image_names: Mapping[str, str] | None = None) -> dict[str, Any]:
        values = super().template_values(image_names)
        names = image_names or {}
        first = {"control_net": self.control_net, "strength": self.control_strength,
                 "start_percent": self.start_percent, "end_percent": self.end_percent,
                 "preprocess": self.preprocess, "image": values["control_image"]}
        specs = [first, *[{**spec.model_dump(mode="json"),
                           "image": names.get(f"more_controls.{index}.image", str(spec.image))}
                          for index, spec in enumerate(self.more_controls)]]
        positive, negative = ["2", 0], ["3", 0]
        controls = []
        for index, spec in enumerate(specs):
            base = CONTROL_FIRST_ID + 4 * index
            ids = {"loader": str(base), "load": str(base + 1), "canny": str(base + 2), "apply": str(base + 3)}
            controls.append({**spec, "ids": ids, "positive": positive, "negative": negative,
                             "pixels": [ids["canny"] if spec["preprocess"] == "canny" else ids["load"], 0]})
            positive, negative = [ids["apply"], 0], [ids["apply"], 1]
        values.update(controls=controls, positive_link=positive, negative_link=negative)
        return values

    @classmethod
    def template_variables(cls) -> set[str]:
        return super().template_variables() | {"controls", "positive_link", "negative_link"}


WORKFLOWS: dict[str, type[Params]] = {model.workflow: model for model in (
    Img2Img, StyleTransfer, Upscale, SketchToImage, PhotoRestoration, HiresFix, Variations, Blend, Tiled, Resize,
    Inpaint, InpaintPartial, ControlNet,
)}
