"""Pixels for the simulated server: numpy images in ComfyUI's layout, PNG files and previews.

An IMAGE is a float32 array (batch, height, width, 3) in 0..1, as in ComfyUI. A LATENT is
ComfyUI's dict with `samples` (batch, 4, height/8, width/8); the simulator also carries the
full-size `pixels` in it, so that decoding gives back a sharp picture.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, PngImagePlugin

FloatArray = NDArray[np.float32]

RESAMPLING = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bislerp": Image.Resampling.BILINEAR,
}


def load_image(path: Path) -> tuple[FloatArray, FloatArray]:
    """Read an image file as ComfyUI's LoadImage does: (IMAGE, MASK); no alpha gives a 64x64 zero mask."""
    with Image.open(path) as opened:
        picture = ImageOps.exif_transpose(opened)
        rgb = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
        if "A" in picture.getbands():
            alpha = np.asarray(picture.getchannel("A"), dtype=np.float32) / 255.0
            mask = 1.0 - alpha
        else:
            mask = np.zeros((64, 64), dtype=np.float32)
    return rgb[None, ...], mask[None, ...]


def load_mask(path: Path, channel: str) -> FloatArray:
    """Read one channel of an image file as a MASK, as LoadImageMask does."""
    with Image.open(path) as opened:
        picture = ImageOps.exif_transpose(opened)
        band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
        if picture.getbands() != ("R", "G", "B", "A"):  # as LoadImageMask: a grey mask's red is its grey
            picture = picture.convert("RGBA")
        if band not in picture.getbands():
            return np.zeros((1, 64, 64), dtype=np.float32)
        mask = np.asarray(picture.getchannel(band), dtype=np.float32) / 255.0
    if band == "A":
        mask = 1.0 - mask
    return mask[None, ...]


def resize(images: FloatArray, width: int, height: int, method: str, crop: str = "disabled") -> FloatArray:
    """Resize each image of a batch with PIL; `crop="center"` keeps the aspect ratio by cropping first."""
    out = []
    for picture in images:
        pil = Image.fromarray(to_uint8(picture))
        if crop == "center":
            pil = ImageOps.fit(pil, (width, height), RESAMPLING[method])
        else:
            pil = pil.resize((width, height), RESAMPLING[method])
        out.append(np.asarray(pil, dtype=np.float32) / 255.0)
    return np.stack(out)


def resize_latent(latent: Mapping[str, Any], width: int, height: int, method: str, crop: str) -> dict[str, Any]:
    """Resize a latent to (width, height) in latent units, with its full-size pixels."""
    pixels = resize(latent["pixels"], width * 8, height * 8, method, crop)
    return {**latent, "samples": encode_samples(pixels), "pixels": pixels}


def crop_to_multiple(images: FloatArray, multiple: int = 8) -> FloatArray:
    """Center-crop to a multiple of `multiple`, as ComfyUI's VAE encoders do."""
    height, width = images.shape[1], images.shape[2]
    new_h, new_w = height // multiple * multiple, width // multiple * multiple
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return images[:, top:top + new_h, left:left + new_w, :]


def encode_samples(pixels: FloatArray) -> FloatArray:
    """The 4-channel, 1/8-size latent of a batch of pixels (block means, scaled to -1..1)."""
    batch, height, width, _ = pixels.shape
    blocks = pixels.reshape(batch, height // 8, 8, width // 8, 8, 3).mean(axis=(2, 4))
    luminance = blocks @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    samples = np.concatenate([blocks, luminance[..., None]], axis=-1) * 2.0 - 1.0
    return np.ascontiguousarray(samples.transpose(0, 3, 1, 2), dtype=np.float32)


def empty_latent(width: int, height: int, batch_size: int) -> dict[str, Any]:
    """EmptyLatentImage: a neutral grey latent of width//8 x height//8."""
    pixels = np.full((batch_size, height // 8 * 8, width // 8 * 8, 3), 0.5, dtype=np.float32)
    return {"samples": encode_samples(pixels), "pixels": pixels}


def conditioning_vector(text: str) -> FloatArray:
    """A stable 3-colour tint derived from the prompt text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return np.frombuffer(digest[:3], dtype=np.uint8).astype(np.float32) / 255.0


def sampled_pattern(seed: int, shape: tuple[int, int, int], cfg: float, tint: FloatArray) -> FloatArray:
    """What a sampler 'paints': smooth seeded colour blobs, contrast rising with cfg, tinted by the prompt."""
    batch, height, width = shape
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, max(2, height // 64), max(2, width // 64), 3), dtype=np.float32)
    out = np.empty((batch, height, width, 3), dtype=np.float32)
    for index in range(batch):
        pil = Image.fromarray(to_uint8(coarse[index])).resize((width, height), Image.Resampling.BICUBIC)
        out[index] = np.asarray(pil, dtype=np.float32) / 255.0
    contrast = float(np.clip(cfg / 8.0, 0.05, 4.0))
    pattern = 0.5 + (out - 0.5) * contrast
    return np.clip(0.7 * pattern + 0.3 * tint, 0.0, 1.0).astype(np.float32)


def to_uint8(picture: FloatArray) -> NDArray[np.uint8]:
    """One float image (h, w, c) in 0..1 as bytes."""
    out: NDArray[np.uint8] = np.clip(picture * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def png_bytes(picture: FloatArray, text_chunks: Mapping[str, str], compress_level: int) -> bytes:
    """Encode one image as PNG with tEXt chunks (ComfyUI writes `prompt` and `extra_pnginfo` keys)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text_chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(picture)).save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def pnginfo_chunks(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None) -> dict[str, str]:
    """The text chunks SaveImage writes: `prompt`, then one per extra_pnginfo key, JSON-encoded."""
    chunks: dict[str, str] = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        chunks[key] = json.dumps(value)
    return chunks


def preview_jpeg(pixels: FloatArray, max_size: int, *, decoded: bool) -> bytes:
    """A sampler preview of the batch's first image, as ComfyUI's previewers make it.

    latent2rgb (`decoded=False`) maps the latent to colours at latent size (1/8), TAESD decodes at
    full size; the server then fits either inside `max_size` (bilinear, up or down) as JPEG quality 95.
    """
    pil = Image.fromarray(to_uint8(pixels[0]))
    if not decoded:
        pil = pil.resize((max(1, pil.width // 8), max(1, pil.height // 8)), Image.Resampling.BOX)
    pil = ImageOps.contain(pil, (max_size, max_size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def image_repr(images: FloatArray) -> str:
    """A short text for an image tensor in error reports, in the spirit of torch's repr."""
    return f"tensor(shape={tuple(images.shape)}, mean={float(images.mean()):.4f})"
