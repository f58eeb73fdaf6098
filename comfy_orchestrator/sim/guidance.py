"""Simulated guidance nodes: LoRAs, ControlNets with Canny edges, and inpainting masks.

Each leaves a visible, measurable trace on what the sampler paints: a LoRA tints the picture
toward its own colour by its strength, a ControlNet pulls it toward its control image (white
edges on black for Canny) by strength times its (end - start) window, and a noise mask confines
the change to the masked pixels, as on a real server where the unmasked latent is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from comfy_orchestrator.sim.images import FloatArray
from comfy_orchestrator.sim.registry import NODES, SAMPLE_GUIDES, NodeContext, NodeResult, SimModel, simulates

LORA_PULL = 0.6  # how far strength 1.0 moves the painted pattern toward the LoRA's colour
CONTROL_PULL = 0.8  # how far strength 1.0 over the whole schedule moves it toward the control image
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class PatchedModel(SimModel):
    """A MODEL or CLIP with LoRAs applied: (lora_name, strength) in the order they were stacked."""

    loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class SimControlNet:
    """What ControlNetLoader hands out."""

    name: str


@dataclass(frozen=True)
class ControlHint:
    """One applied ControlNet on a conditioning: its control image (grey, h x w) and schedule."""

    name: str
    hint: FloatArray
    strength: float
    start_percent: float
    end_percent: float

    @property
    def pull(self) -> float:
        """How far this ControlNet moves the painted pattern toward its control image (0..1)."""
        window = max(0.0, self.end_percent - self.start_percent)
        return float(np.clip(CONTROL_PULL * self.strength * window, 0.0, 1.0))


def lora_colour(name: str) -> FloatArray:
    """The colour a LoRA file tints toward: stable per name."""
    digest = hashlib.sha256(f"lora:{name}".encode()).digest()
    return np.frombuffer(digest[:3], dtype=np.uint8).astype(np.float32) / 255.0


def _patched(model: SimModel, name: str, strength: float) -> PatchedModel:
    loras = model.loras if isinstance(model, PatchedModel) else ()
    return PatchedModel(model.checkpoint, model.kind, (*loras, (name, strength)))


@simulates("LoraLoader")
def lora_loader(ctx: NodeContext, *, model: SimModel, clip: SimModel, lora_name: str, strength_model: float,
                strength_clip: float) -> NodeResult:
    if strength_model == 0 and strength_clip == 0:  # ComfyUI returns its inputs untouched then
        return NodeResult((model, clip))
    ctx.spend(ctx.costs.image_io_s)
    return NodeResult((_patched(model, lora_name, strength_model), _patched(clip, lora_name, strength_clip)))


@simulates("LoraLoaderModelOnly")
def lora_loader_model_only(ctx: NodeContext, *, model: SimModel, lora_name: str,
                           strength_model: float) -> NodeResult:
    if strength_model == 0:
        return NodeResult((model,))
    ctx.spend(ctx.costs.image_io_s)
    return NodeResult((_patched(model, lora_name, strength_model),))


@simulates("ControlNetLoader")
def control_net_loader(ctx: NodeContext, *, control_net_name: str) -> NodeResult:
    ctx.spend(ctx.costs.image_io_s)
    return NodeResult((SimControlNet(control_net_name),))


def _with_control(conditioning: Any, control: ControlHint) -> list[list[Any]]:
    out = []
    for vector, options in conditioning:
        previous = tuple(options.get("control", ()))
        out.append([vector, {**options, "control": (*previous, control)}])
    return out


@simulates("ControlNetApplyAdvanced")
def control_net_apply_advanced(ctx: NodeContext, *, positive: Any, negative: Any, control_net: SimControlNet,
                               image: FloatArray, strength: float, start_percent: float, end_percent: float,
                               vae: SimModel | None = None) -> NodeResult:
    if strength == 0:  # ComfyUI skips a ControlNet of strength 0
        return NodeResult((positive, negative))
    hint = (np.clip(image[0], 0.0, 1.0) @ LUMINANCE).astype(np.float32)
    control = ControlHint(control_net.name, hint, strength, start_percent, end_percent)
    return NodeResult((_with_control(positive, control), _with_control(negative, control)))


def _shift(grey: FloatArray, dy: int, dx: int) -> FloatArray:
    """`grey` moved by (dy, dx), edges repeated."""
    height, width = grey.shape
    padded = np.pad(grey, 1, mode="edge")
    return padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]


def _blur(grey: FloatArray) -> FloatArray:
    """A 5x5 binomial blur (close to a Gaussian of sigma 1), as Canny smooths first."""
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
    padded = np.pad(grey, 2, mode="edge")
    rows = sum(k * padded[:, i:i + grey.shape[1]] for i, k in enumerate(kernel))
    return np.asarray(sum(k * rows[i:i + grey.shape[0], :] for i, k in enumerate(kernel)), dtype=np.float32)


def detect_edges(picture: FloatArray, low_threshold: float, high_threshold: float) -> FloatArray:
    """Canny edges of one image (h, w, 3): blur, Sobel magnitude, thinning, hysteresis; 1.0 on edges."""
    grey = _blur((np.clip(picture, 0.0, 1.0) @ LUMINANCE).astype(np.float32))
    gx = (_shift(grey, -1, 1) + 2 * _shift(grey, 0, 1) + _shift(grey, 1, 1)
          - _shift(grey, -1, -1) - 2 * _shift(grey, 0, -1) - _shift(grey, 1, -1))
    gy = (_shift(grey, 1, -1) + 2 * _shift(grey, 1, 0) + _shift(grey, 1, 1)
          - _shift(grey, -1, -1) - 2 * _shift(grey, -1, 0) - _shift(grey, -1, 1))
    magnitude = np.hypot(gx, gy).astype(np.float32)
    # thin edges: keep a pixel only where it is a maximum across the edge (gradient direction in 4 bins)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    direction = ((angle + 22.5) // 45).astype(int) % 4
    thin = np.zeros_like(magnitude)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        # strict on one side: of two equal neighbours across a step, only one stays
        peak = (magnitude > _shift(magnitude, dy, dx)) & (magnitude >= _shift(magnitude, -dy, -dx))
        thin = np.where((direction == index) & peak, magnitude, thin)
    strong = thin > high_threshold
    weak = thin > low_threshold
    edges: NDArray[np.bool_] = strong
    while True:  # hysteresis: weak pixels join when they touch an edge; ends as edges only grow
        grown: NDArray[np.bool_] = weak & np.logical_or.reduce([_shift(edges.astype(np.float32), dy, dx) > 0
                                             for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        if np.array_equal(grown, edges):
            return edges.astype(np.float32)
        edges = grown


@simulates("Canny")
def canny(ctx: NodeContext, *, image: FloatArray, low_threshold: float, high_threshold: float) -> NodeResult:
    edges = np.stack([detect_edges(picture, low_threshold, high_threshold) for picture in image])
    return NodeResult((np.repeat(edges[..., None], 3, axis=-1).astype(np.float32),))


def _resize_grey(grey: FloatArray, width: int, height: int) -> FloatArray:
    if grey.shape == (height, width):
        return grey
    resized = Image.fromarray(grey.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _fit_masks(mask: FloatArray, batch: int, width: int, height: int) -> FloatArray:
    """A MASK (n, h, w) or (h, w) stretched to (batch, height, width), as ComfyUI interpolates masks."""
    masks = mask.reshape((-1, mask.shape[-2], mask.shape[-1]))
    fitted = np.stack([_resize_grey(m, width, height) for m in masks])
    stretched: FloatArray = fitted[np.arange(batch) % fitted.shape[0]]
    return stretched


def _dilate(mask: FloatArray, size: int) -> FloatArray:
    """ComfyUI's grow_mask_by: a size x size box over the rounded mask, clamped to 0..1."""
    if size == 0:
        return mask
    before = size // 2  # ceil((size - 1) / 2), ComfyUI's padding
    padded = np.pad(mask, ((0, 0), (before, size), (before, size)))
    height, width = mask.shape[1], mask.shape[2]
    grown = np.zeros_like(mask)
    for dy in range(size):
        for dx in range(size):
            grown = np.maximum(grown, padded[:, dy:dy + height, dx:dx + width])
    return grown


@simulates("VAEEncodeForInpaint")
def vae_encode_for_inpaint(ctx: NodeContext, *, pixels: FloatArray, vae: SimModel, mask: FloatArray,
                           grow_mask_by: int = 6) -> NodeResult:
    batch, height, width = pixels.shape[0], pixels.shape[1], pixels.shape[2]
    fitted = _fit_masks(mask, batch, width, height)
    crop_h, crop_w = height // 8 * 8, width // 8 * 8
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    fitted = np.round(fitted[:, top:top + crop_h, left:left + crop_w])
    neutral = pixels.copy()
    neutral[:, top:top + crop_h, left:left + crop_w] = np.where(
        fitted[..., None] > 0, 0.5, pixels[:, top:top + crop_h, left:left + crop_w])
    (latent,) = NODES["VAEEncode"](ctx, pixels=neutral, vae=vae).outputs
    return NodeResult(({**latent, "noise_mask": _dilate(fitted, grow_mask_by)},))


@simulates("SetLatentNoiseMask")
def set_latent_noise_mask(ctx: NodeContext, *, samples: Mapping[str, Any], mask: FloatArray) -> NodeResult:
    return NodeResult(({**samples, "noise_mask": mask.reshape((-1, mask.shape[-2], mask.shape[-1]))},))


def guide_sample(model: SimModel, positive: Any, latent: Mapping[str, Any], pattern: FloatArray,
                 region: FloatArray | float) -> tuple[FloatArray, FloatArray | float]:
    """Shape what a sampler paints (LoRAs, ControlNets) and where (the latent's noise mask)."""
    batch, height, width = pattern.shape[0], pattern.shape[1], pattern.shape[2]
    for name, strength in model.loras if isinstance(model, PatchedModel) else ():
        pull = float(np.clip(LORA_PULL * strength, -1.0, 1.0))
        pattern = pattern + pull * (lora_colour(name) - pattern)
    controls = positive[0][1].get("control", ()) if positive else ()
    for control in controls:
        hint = _resize_grey(control.hint, width, height)[None, :, :, None]
        pattern = (1.0 - control.pull) * pattern + control.pull * hint
    noise_mask = latent.get("noise_mask")
    if noise_mask is not None:
        region = region * _fit_masks(noise_mask, batch, width, height)[..., None]
    return np.clip(pattern, 0.0, 1.0).astype(np.float32), region


SAMPLE_GUIDES.append(guide_sample)
