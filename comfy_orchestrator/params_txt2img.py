"""Workflows that can start from text: HiresFix (two-pass txt2img) and ControlNet (txt2img, or img2img when
given a picture), steered by control images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comfy_orchestrator.input_images import ImageFile, picture_size
from comfy_orchestrator.params_sampling import Sampling, list_from_text, multiple_of_8, recommended

CONTROL_FIRST_ID = 30


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
                           json_schema_extra=recommended(0.4, 0.6))

    check_sizes = field_validator("width", "height")(multiple_of_8)

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
                                    json_schema_extra=recommended(0.5, 1.2))
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
                           json_schema_extra=recommended(0.5, 1.0))

    check_sizes = field_validator("width", "height")(multiple_of_8)

    @field_validator("more_controls", mode="before")
    @classmethod
    def _control_list(cls, value: Any) -> Any:
        return list_from_text(value)

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
