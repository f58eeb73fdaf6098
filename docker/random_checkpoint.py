#!/usr/bin/env python3
"""Write a randomly initialised Stable Diffusion 1.5 checkpoint in ComfyUI's single-file layout.

No weights are downloaded: the UNet, VAE and CLIP-L text encoder are built from
ComfyUI's own model classes (so the architecture is exactly what ComfyUI loads),
every parameter is initialised here, because ComfyUI's layers skip
initialisation, and ComfyUI's own detector must classify the result as SD15.
The images it makes are noise; it exists to test a farm end to end.

    python3 docker/random_checkpoint.py --comfyui-dir ComfyUI \
        --out ComfyUI/models/checkpoints/random-sd15.safetensors

Other random models plug in as entries of WRITERS (a `make` function and the
models/ folder ComfyUI reads them from), chosen with --kind. The pieces are
shared: a model is a mapping from a key prefix of the file to a module
(`Parts`), `initialise` fills one module, `state_dict_of` flattens parts into
file keys. A LoRA writer can take `build_sd15()`'s modules to name the layers
it adapts; a ControlNet writer can build ComfyUI's ControlNet class with
SD15_UNET_CONFIG under the prefix "control_model.".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Parts = dict[str, torch.nn.Module]
"""File key prefix -> module whose state dict is stored under it."""

# The UNet of SD1.5 as ComfyUI's detector describes it (comfy/model_detection.py).
SD15_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# The KL autoencoder of SD1.x (ComfyUI's default in comfy/sd.py, class VAE).
SD15_VAE_CONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
SD15_VAE_EMBED_DIM = 4

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def import_comfy(comfyui_dir: Path, *, cpu: bool) -> Any:
    """Import ComfyUI's `comfy` package, with the submodules used here, from `comfyui_dir`."""
    if not (comfyui_dir / "comfy" / "model_detection.py").is_file():
        raise SystemExit(f"not a ComfyUI folder (no comfy/model_detection.py): {comfyui_dir}")
    sys.path.insert(0, str(comfyui_dir.resolve()))
    import comfy.cli_args

    # comfy.model_management probes the GPU when imported; --cpu stops it on machines without one.
    comfy.cli_args.args.cpu = cpu
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel
    import comfy.model_detection
    import comfy.ops

    return comfy


def build_sd15(comfy: Any, device: torch.device) -> Parts:
    """Build SD1.5's UNet, VAE and text encoder (uninitialised) with ComfyUI's classes."""
    ops = comfy.ops.disable_weight_init
    unet = comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel(
        **SD15_UNET_CONFIG, dtype=torch.float32, device=device, operations=ops
    )
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD15_VAE_CONFIG), embed_dim=SD15_VAE_EMBED_DIM)
    clip_config = json.loads((Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json").read_text())
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, device, ops)
    # ComfyUI drops the projection when it saves SD1.5 (SD15.process_clip_state_dict_for_saving).
    del clip.text_projection
    return {UNET_PREFIX: unet, VAE_PREFIX: vae.to(device), CLIP_PREFIX: clip}


def initialise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter and float buffer of `module` a defined value.

    Matrices and kernels get N(0, 1/fan_in), so activations keep their scale
    through the network; 1-D weights (norm scales) get 1, biases 0.
    """
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if tensor.dim() >= 2:
                fan_in = tensor[0].numel()
                tensor.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            elif name.endswith("bias"):
                tensor.zero_()
            elif name.endswith("weight"):
                tensor.fill_(1.0)
            else:
                raise ValueError(f"no initialisation rule for {name} {tuple(tensor.shape)}")


def state_dict_of(parts: Parts, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Flatten `parts` into one state dict of contiguous CPU tensors in `dtype`."""
    flat: dict[str, torch.Tensor] = {}
    for prefix, module in parts.items():
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            flat[prefix + key] = tensor.detach().to("cpu").contiguous()
    return flat


def detected_model(comfy: Any, state_dict: dict[str, torch.Tensor]) -> str:
    """Name of the model class ComfyUI's own detector picks for `state_dict`."""
    config = comfy.model_detection.model_config_from_unet(state_dict, UNET_PREFIX)
    return "none" if config is None else type(config).__name__


def count_params(module: torch.nn.Module) -> int:
    """Number of parameter values in `module`."""
    return sum(p.numel() for p in module.parameters())


def make_sd15(comfy: Any, device: torch.device, generator: torch.Generator,
              dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A random SD1.5 checkpoint's tensors, checked with ComfyUI's detector, and facts about it."""
    parts = build_sd15(comfy, device)
    for module in parts.values():
        initialise(module, generator)
    state_dict = state_dict_of(parts, dtype)
    detected = detected_model(comfy, state_dict)
    if detected != "SD15":
        raise SystemExit(f"ComfyUI detects this checkpoint as {detected}, not SD15")
    params = {name: count_params(parts[prefix])
              for name, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("clip", CLIP_PREFIX))}
    return state_dict, {"detected_as": detected, "params": params}


@dataclass(frozen=True)
class Writer:
    """One kind of model file this script writes, and where ComfyUI looks for it."""

    folder: str  # under COMFYUI_DIR/models
    filename: str
    make: Callable[[Any, torch.device, torch.Generator, torch.dtype],
                   tuple[dict[str, torch.Tensor], dict[str, Any]]]


# Issue 9 adds a LoRA (folder "loras") and a ControlNet (folder "controlnet") here.
WRITERS: dict[str, Writer] = {
    "sd15": Writer("checkpoints", "random-sd15.safetensors", make_sd15),
}


def write_model(kind: str, comfyui_dir: Path, out: Path | None, *, dtype: str, device: str,
                seed: int) -> dict[str, Any]:
    """Write a random model of `kind` (default path: where ComfyUI looks); return a report."""
    from safetensors.torch import save_file

    started = time.monotonic()
    writer = WRITERS[kind]
    out = out or comfyui_dir / "models" / writer.folder / writer.filename
    torch_device = torch.device(device)
    comfy = import_comfy(comfyui_dir, cpu=torch_device.type == "cpu")
    generator = torch.Generator(device=torch_device).manual_seed(seed)
    state_dict, facts = writer.make(comfy, torch_device, generator, DTYPES[dtype])
    bad = [key for key, tensor in state_dict.items() if tensor.is_floating_point() and not bool(tensor.isfinite().all())]
    if bad:
        raise SystemExit(f"non-finite values in {len(bad)} tensors, first {bad[0]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(state_dict, str(partial), metadata={"format": "pt", "note": "random weights, not a trained model"})
    partial.replace(out)
    return {"kind": kind, "out": str(out), "tensors": len(state_dict), **facts, "bytes": out.stat().st_size,
            "dtype": dtype, "device": device, "seconds": round(time.monotonic() - started, 1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", type=Path, required=True, help="ComfyUI source folder (holds comfy/)")
    parser.add_argument("--kind", choices=sorted(WRITERS), default="sd15", help="what to write (default sd15)")
    parser.add_argument("--out", type=Path,
                        help="file to write (default: where ComfyUI looks, e.g. models/checkpoints/random-sd15.safetensors)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to initialise (cuda is much faster)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Write the model and print a one-line JSON report."""
    args = parse_args(argv)
    report = write_model(args.kind, args.comfyui_dir, args.out, dtype=args.dtype, device=args.device, seed=args.seed)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
