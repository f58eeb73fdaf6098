"""The simulated node classes: cheap numpy stand-ins whose pictures follow image, denoise, seed and cfg."""

from __future__ import annotations

import math
import random
import re
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from comfy_orchestrator.sim import images
from comfy_orchestrator.sim.images import FloatArray
from comfy_orchestrator.sim.registry import (
    SAMPLE_GUIDES,
    NodeContext,
    NodeFailure,
    NodeResult,
    SimModel,
    annotated_path,
    file_hash,
    simulates,
)

OOM_TIPS = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before "
            "you might have accidentally set the batch_size to a large number.")


def _check_memory(ctx: NodeContext, pixels: int, batch: int, tried_bytes: int) -> None:
    budget = ctx.faults.oom_pixels
    if budget is not None and pixels * batch > budget:
        gib = tried_bytes / 2**30
        raise NodeFailure(
            f"CUDA out of memory. Tried to allocate {gib:.2f} GiB. GPU 0 has a total capacity of 79.19 GiB "
            "of which 17.06 MiB is free. Including non-PyTorch memory, this process has 79.16 GiB memory "
            "in use. Of the allocated memory 76.51 GiB is allocated by PyTorch, and 1.98 GiB is reserved by "
            "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation "
            "for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
            exception_type="torch.OutOfMemoryError", tips=OOM_TIPS)


@simulates("CheckpointLoaderSimple")
def checkpoint_loader(ctx: NodeContext, *, ckpt_name: str) -> NodeResult:
    ctx.load_checkpoint(ckpt_name)
    return NodeResult((SimModel(ckpt_name, "MODEL"), SimModel(ckpt_name, "CLIP"), SimModel(ckpt_name, "VAE")))


@simulates("CLIPTextEncode")
def clip_text_encode(ctx: NodeContext, *, text: str, clip: SimModel) -> NodeResult:
    ctx.spend(ctx.costs.text_encode_s)
    return NodeResult(([[images.conditioning_vector(text), {"text": text}]],))


@simulates("LoadImage")
def load_image(ctx: NodeContext, *, image: str) -> NodeResult:
    path = annotated_path(ctx, image)
    ctx.spend(ctx.costs.image_io_s)
    try:
        pixels, mask = images.load_image(path)
    except (OSError, ValueError) as exc:
        raise NodeFailure(f"cannot identify image file {str(path)!r}") from exc
    return NodeResult((pixels, mask))


@simulates("LoadImageMask")
def load_image_mask(ctx: NodeContext, *, image: str, channel: str) -> NodeResult:
    path = annotated_path(ctx, image)
    try:
        return NodeResult((images.load_mask(path, channel),))
    except (OSError, ValueError) as exc:
        raise NodeFailure(f"cannot identify image file {str(path)!r}") from exc


@simulates("ImageScale")
def image_scale(ctx: NodeContext, *, image: FloatArray, upscale_method: str, width: int, height: int,
                crop: str) -> NodeResult:
    if width == 0 and height == 0:
        return NodeResult((image,))
    old_h, old_w = image.shape[1], image.shape[2]
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    return NodeResult((images.resize(image, width, height, upscale_method, crop),))


@simulates("ImageScaleBy")
def image_scale_by(ctx: NodeContext, *, image: FloatArray, upscale_method: str, scale_by: float) -> NodeResult:
    width = max(1, round(image.shape[2] * scale_by))
    height = max(1, round(image.shape[1] * scale_by))
    return NodeResult((images.resize(image, width, height, upscale_method),))


def _encode(ctx: NodeContext, pixels: FloatArray) -> NodeResult:
    cropped = images.crop_to_multiple(pixels)
    height, width = cropped.shape[1], cropped.shape[2]
    _check_memory(ctx, width * height, cropped.shape[0], width * height * cropped.shape[0] * 512)
    ctx.spend(ctx.costs.vae_cost_s(width * height, cropped.shape[0]))
    return NodeResult(({"samples": images.encode_samples(cropped), "pixels": cropped},))


@simulates("VAEEncode")
def vae_encode(ctx: NodeContext, *, pixels: FloatArray, vae: SimModel) -> NodeResult:
    return _encode(ctx, pixels)


def tiled_steps(width: int, height: int, tile: int, overlap: int, batch: int) -> int:
    """How many tiles ComfyUI's tiled VAE reports progress for: three passes of differently shaped tiles."""
    def passes(tile_x: int, tile_y: int) -> int:
        rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
        cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
        return rows * cols
    return batch * (passes(tile, tile) + passes(tile // 2, tile * 2) + passes(tile * 2, tile // 2))


def _tiles(ctx: NodeContext, total: int, cost_s: float) -> None:
    for index in range(1, total + 1):
        ctx.spend(cost_s / total)
        ctx.step(index, total, None)


@simulates("VAEEncodeTiled")
def vae_encode_tiled(ctx: NodeContext, *, pixels: FloatArray, vae: SimModel, tile_size: int, overlap: int,
                     temporal_size: int = 64, temporal_overlap: int = 8) -> NodeResult:
    cropped = images.crop_to_multiple(pixels)
    batch, height, width = cropped.shape[0], cropped.shape[1], cropped.shape[2]
    _tiles(ctx, tiled_steps(width, height, tile_size, overlap, batch), ctx.costs.vae_cost_s(width * height, batch))
    return NodeResult(({"samples": images.encode_samples(cropped), "pixels": cropped},))


def _decode(ctx: NodeContext, samples: Mapping[str, Any], *, tiled: tuple[int, int] | None) -> NodeResult:
    pixels: FloatArray = samples["pixels"]
    batch, height, width = pixels.shape[0], pixels.shape[1], pixels.shape[2]
    if tiled:
        tile, overlap = tiled
        total = tiled_steps(width // 8, height // 8, tile // 8, overlap // 8, batch)
        _tiles(ctx, total, ctx.costs.vae_cost_s(width * height, batch))
    else:
        _check_memory(ctx, width * height, batch, width * height * batch * 1024)
        ctx.spend(ctx.costs.vae_cost_s(width * height, batch))
    return NodeResult((np.clip(pixels, 0.0, 1.0).astype(np.float32),))


@simulates("VAEDecode")
def vae_decode(ctx: NodeContext, *, samples: Mapping[str, Any], vae: SimModel) -> NodeResult:
    return _decode(ctx, samples, tiled=None)


@simulates("VAEDecodeTiled")
def vae_decode_tiled(ctx: NodeContext, *, samples: Mapping[str, Any], vae: SimModel, tile_size: int = 512,
                     overlap: int = 64, temporal_size: int = 64, temporal_overlap: int = 8) -> NodeResult:
    return _decode(ctx, samples, tiled=(tile_size, overlap))


@simulates("EmptyLatentImage")
def empty_latent_image(ctx: NodeContext, *, width: int, height: int, batch_size: int) -> NodeResult:
    return NodeResult((images.empty_latent(width, height, batch_size),))


def _sample(ctx: NodeContext, model: SimModel, latent: Mapping[str, Any], *, seed: int, steps: int, cfg: float,
            positive: Any, strength: float, add_noise: bool = True) -> dict[str, Any]:
    """Blend the latent's pixels toward a seeded pattern, one progress message per step."""
    pixels: FloatArray = latent["pixels"]
    batch, height, width = pixels.shape[0], pixels.shape[1], pixels.shape[2]
    if steps <= 0:
        return dict(latent)
    _check_memory(ctx, width * height, batch, width * height * batch * 2048)
    ctx.sampler_warmup(model)
    tint = np.asarray(positive[0][0], dtype=np.float32) if positive else np.zeros(3, dtype=np.float32)
    noise_seed = seed if add_noise else seed ^ 0x5EED
    pattern = images.sampled_pattern(noise_seed, (batch, height, width), cfg, tint)
    region: FloatArray | float = 1.0
    for guide in SAMPLE_GUIDES:
        pattern, region = guide(model, positive, latent, pattern, region)
    step_cost = ctx.costs.step_cost_s(width * height, batch)
    current = pixels
    for index in range(1, steps + 1):
        ctx.spend(step_cost)
        weight = strength * index / steps * region
        current = ((1.0 - weight) * pixels + weight * pattern).astype(np.float32)
        ctx.counters.sampler_steps += 1
        ctx.step(index, steps, current)
    return {**latent, "samples": images.encode_samples(current), "pixels": current}


@simulates("KSampler")
def ksampler(ctx: NodeContext, *, model: SimModel, seed: int, steps: int, cfg: float, sampler_name: str,
             scheduler: str, positive: Any, negative: Any, latent_image: Mapping[str, Any],
             denoise: float = 1.0) -> NodeResult:
    run_steps = steps if denoise > 0 else 0
    return NodeResult((_sample(ctx, model, latent_image, seed=seed, steps=run_steps, cfg=cfg, positive=positive,
                               strength=min(1.0, denoise)),))


@simulates("KSamplerAdvanced")
def ksampler_advanced(ctx: NodeContext, *, model: SimModel, add_noise: str, noise_seed: int, steps: int,
                      cfg: float, sampler_name: str, scheduler: str, positive: Any, negative: Any,
                      latent_image: Mapping[str, Any], start_at_step: int, end_at_step: int,
                      return_with_leftover_noise: str) -> NodeResult:
    last = min(end_at_step, steps)
    run_steps = max(0, last - start_at_step)
    strength = run_steps / steps if steps else 0.0
    return NodeResult((_sample(ctx, model, latent_image, seed=noise_seed, steps=run_steps, cfg=cfg, positive=positive,
                               strength=strength, add_noise=add_noise == "enable"),))


@simulates("LatentUpscale")
def latent_upscale(ctx: NodeContext, *, samples: Mapping[str, Any], upscale_method: str, width: int,
                   height: int, crop: str) -> NodeResult:
    if width == 0 and height == 0:
        return NodeResult((samples,))
    old_h, old_w = samples["samples"].shape[2], samples["samples"].shape[3]
    if width == 0:
        height = max(64, height)
        width = max(1, round(old_w * height / old_h / 8) * 8)
    elif height == 0:
        width = max(64, width)
        height = max(1, round(old_h * width / old_w / 8) * 8)
    else:
        width, height = max(64, width), max(64, height)
    return NodeResult((images.resize_latent(samples, width // 8, height // 8, upscale_method, crop),))


@simulates("LatentUpscaleBy")
def latent_upscale_by(ctx: NodeContext, *, samples: Mapping[str, Any], upscale_method: str,
                      scale_by: float) -> NodeResult:
    width = round(samples["samples"].shape[3] * scale_by)
    height = round(samples["samples"].shape[2] * scale_by)
    return NodeResult((images.resize_latent(samples, width, height, upscale_method, "disabled"),))


@simulates("RepeatLatentBatch")
def repeat_latent_batch(ctx: NodeContext, *, samples: Mapping[str, Any], amount: int) -> NodeResult:
    repeated = {**samples, "samples": np.concatenate([samples["samples"]] * amount),
                "pixels": np.concatenate([samples["pixels"]] * amount)}
    batch = samples["samples"].shape[0]
    indexes = samples.get("batch_index", list(range(batch)))
    repeated["batch_index"] = [i + batch * copy for copy in range(amount) for i in indexes]
    return NodeResult((repeated,))


@simulates("LatentBlend")
def latent_blend(ctx: NodeContext, *, samples1: Mapping[str, Any], samples2: Mapping[str, Any],
                 blend_factor: float) -> NodeResult:
    first, second = samples1["pixels"], samples2["pixels"]
    if first.shape != second.shape:
        second = images.resize(second, first.shape[2], first.shape[1], "bicubic", "center")
    pixels = (first * blend_factor + second * (1.0 - blend_factor)).astype(np.float32)
    return NodeResult(({**samples1, "samples": images.encode_samples(pixels), "pixels": pixels},))


_TOKENS = ("year", "month", "day", "hour", "minute", "second")


def expand_prefix(prefix: str, width: int, height: int) -> str:
    """Expand %width%, %height% and the date tokens as the server does (not %date:...%)."""
    now = time.localtime()
    values = {"width": str(width), "height": str(height), "year": str(now.tm_year),
              "month": f"{now.tm_mon:02d}", "day": f"{now.tm_mday:02d}", "hour": f"{now.tm_hour:02d}",
              "minute": f"{now.tm_min:02d}", "second": f"{now.tm_sec:02d}"}
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    return prefix


def next_counter(folder: Path, base: str) -> int:
    """One more than the highest <base>_NNNNN counter already in `folder`, as ComfyUI counts."""
    highest = 0
    pattern = re.compile(re.escape(base) + r"_(\d+)", re.IGNORECASE)
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def _save(ctx: NodeContext, pictures: FloatArray, prefix: str, *, kind: str, compress_level: int) -> NodeResult:
    root = ctx.output_dir if kind == "output" else ctx.temp_dir
    prefix = expand_prefix(prefix, pictures.shape[2], pictures.shape[1])
    subfolder, _, base = prefix.replace("\\", "/").rpartition("/")
    folder = (root / subfolder).resolve()
    if not folder.is_relative_to(root.resolve()):
        raise NodeFailure("Saving image outside the output folder is not allowed.")
    folder.mkdir(parents=True, exist_ok=True)
    counter = next_counter(folder, base)
    chunks = images.pnginfo_chunks(_prompt_with_hashes(ctx), ctx.extra_data.get("extra_pnginfo"))
    results = []
    for batch_number, picture in enumerate(pictures):
        name = f"{base.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        ctx.spend(ctx.costs.image_io_s)
        (folder / name).write_bytes(images.png_bytes(picture, chunks, compress_level))
        ctx.counters.images_saved += 1
        reported = ctx.faults.hostile_filename or name
        results.append({"filename": reported, "subfolder": subfolder, "type": kind})
        counter += 1
    return NodeResult((), {"images": results})


def _prompt_with_hashes(ctx: NodeContext) -> dict[str, Any]:
    """The prompt chunk: LoadImage nodes carry "is_changed" with their file hash, as on the real server."""
    prompt: dict[str, Any] = {}
    for node_id, node in ctx.prompt.items():
        entry = dict(node)
        if node.get("class_type") in ("LoadImage", "LoadImageMask"):
            entry["is_changed"] = [file_hash(annotated_path(ctx, str(node["inputs"].get("image", ""))))]
        prompt[node_id] = entry
    return prompt


@simulates("SaveImage")
def save_image(ctx: NodeContext, *, images: FloatArray, filename_prefix: str) -> NodeResult:
    return _save(ctx, images, filename_prefix, kind="output", compress_level=4)


@simulates("PreviewImage")
def preview_image(ctx: NodeContext, *, images: FloatArray) -> NodeResult:
    letters = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    return _save(ctx, images, f"ComfyUI_temp_{letters}", kind="temp", compress_level=1)


@simulates("SaveImageWebsocket")
def save_image_websocket(ctx: NodeContext, *, images: FloatArray) -> NodeResult:
    """ComfyUI's example node: each picture goes to the submitter as a PNG progress frame; nothing is saved."""
    for index, picture in enumerate(images):
        ctx.step_with_picture(index, len(images), image_png(picture))
    return NodeResult((), None)


def image_png(picture: FloatArray) -> bytes:
    """One picture as ComfyUI's websocket sends it: PNG at compress level 1, no text chunks."""
    return images.png_bytes(picture, {}, compress_level=1)


@simulates("EmptyImage")
def empty_image(ctx: NodeContext, *, width: int, height: int, batch_size: int, color: int) -> NodeResult:
    rgb = np.array([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=np.float32) / 255.0
    return NodeResult((np.broadcast_to(rgb, (batch_size, height, width, 3)).astype(np.float32),))


@simulates("ImageInvert")
def image_invert(ctx: NodeContext, *, image: FloatArray) -> NodeResult:
    return NodeResult(((1.0 - image).astype(np.float32),))


@simulates("ReferenceFailOnImage")
def reference_fail_on_image(ctx: NodeContext, *, image: FloatArray, message: str = "") -> NodeResult:
    """The recording's deliberately failing custom node."""
    raise NodeFailure(f"{message} (image shape {tuple(image.shape)})")

