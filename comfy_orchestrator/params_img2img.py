"""Img2Img's kin: style transfer, upscale, sketch to image, photo restoration, variations, tiled, resize,
blend and inpainting, each Img2Img with its own defaults or a few fields more."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from comfy_orchestrator.input_images import ImageFile, check_mask, has_alpha
from comfy_orchestrator.params_sampling import Img2Img, recommended


class StyleTransfer(Img2Img):
    """Img2img that restyles a picture while keeping its layout."""

    workflow: ClassVar[str] = "style-transfer"
    description: ClassVar[str] = "Style transfer: restyle a picture, keep its layout (denoise 0.5-0.7, cfg 8-10)."
    denoise: float = Field(0.6, ge=0.0, le=1.0, description="how much to change",
                           json_schema_extra=recommended(0.5, 0.7))
    cfg: float = Field(9.0, ge=0.0, le=100.0, description="how closely to follow the style prompt",
                       json_schema_extra=recommended(8, 10))


class Upscale(Img2Img):
    """Img2img after an image upscale, to add detail at the new size."""

    workflow: ClassVar[str] = "upscale"
    description: ClassVar[str] = "Upscale and enhance: enlarge (2x by default), then refine (denoise 0.3-0.5)."
    scale_by: float = Field(2.0, ge=0.01, le=8.0, description="size factor applied before encoding")
    denoise: float = Field(0.4, ge=0.0, le=1.0, description="how much detail to add",
                           json_schema_extra=recommended(0.3, 0.5))

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
                           json_schema_extra=recommended(0.7, 0.9))
    cfg: float = Field(10.5, ge=0.0, le=100.0, description="how closely to follow the prompt",
                       json_schema_extra=recommended(9, 12))


class PhotoRestoration(Img2Img):
    """Img2img that repairs an old or damaged photo gently."""

    workflow: ClassVar[str] = "photo-restoration"
    description: ClassVar[str] = "Photo restoration: repair gently (denoise 0.3-0.5, steps 30-40, ddim)."
    denoise: float = Field(0.4, ge=0.0, le=1.0, description="how much to repair",
                           json_schema_extra=recommended(0.3, 0.5))
    steps: int = Field(35, ge=1, le=10000, description="sampler steps", json_schema_extra=recommended(30, 40))
    sampler: str = Field("ddim", description="sampler, as ComfyUI or as users name it",
                         json_schema_extra={"choices_from": "sampler_name"})


class Variations(Img2Img):
    """Img2img that makes several variations of one picture in one run."""

    workflow: ClassVar[str] = "variations"
    description: ClassVar[str] = "Variations: N versions of one picture in one batched run (denoise 0.4-0.6)."
    batch_size: int = Field(4, ge=1, le=64, description="how many variations (RepeatLatentBatch amount)")
    denoise: float = Field(0.5, ge=0.0, le=1.0, description="how different the variations are",
                           json_schema_extra=recommended(0.4, 0.6))


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
                           json_schema_extra=recommended(0.4, 0.8))
    grow_mask_by: int = Field(0, ge=0, le=0, description="not used by SetLatentNoiseMask")
