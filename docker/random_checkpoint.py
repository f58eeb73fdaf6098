#!/usr/bin/env python3
"""Write randomly initialised Stable Diffusion models (SD1.5, SDXL, a VAE, a LoRA, a ControlNet) for ComfyUI.

No weights are downloaded: the UNets, VAE and CLIP text encoders are built from
ComfyUI's own model classes (so the architecture is exactly what ComfyUI loads),
every parameter is initialised here, because ComfyUI's layers skip
initialisation, and ComfyUI's own detector must classify a checkpoint as the
model it is meant to be (SD15, SDXL). The images they make are noise; they
exist to test a farm end to end.

    python3 docker/random_checkpoint.py --comfyui-dir ComfyUI              # models/checkpoints/ (SD1.5)
    python3 docker/random_checkpoint.py --comfyui-dir ComfyUI --kind sdxl  # models/checkpoints/
    python3 docker/random_checkpoint.py --comfyui-dir ComfyUI --kind vae   # models/vae/
    python3 docker/random_checkpoint.py --comfyui-dir ComfyUI --kind lora  # models/loras/
    python3 docker/random_checkpoint.py --comfyui-dir ComfyUI --kind controlnet

Each kind is an entry of WRITERS: a `make` function, the models/ folder
ComfyUI reads it from and the metadata written with it (checkpoints carry the
SAI model spec, as ComfyUI's CheckpointSave writes it, so /view_metadata names
their architecture). A model is a mapping from a key prefix of the file to a
module (`Parts`), `initialise` fills one module, `state_dict_of` flattens parts
into file keys. SDXL's two text encoders are renamed into the checkpoint layout
by ComfyUI's own SDXL class and loaded back through it as a check. The LoRA
adapts the layers a kohya SD1.5 LoRA adapts, named as kohya names them
(ComfyUI's comfy/lora.py maps those names); the ControlNet is ComfyUI's own
cldm ControlNet with the SD1.5 UNet's configuration. torch is imported only
when a model is written, so --help works without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Parts = dict[str, "torch.nn.Module"]
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

# The UNet of SDXL base as ComfyUI's detector describes it (comfy/model_detection.py): three levels, no
# attention at the first, 2/10 transformer blocks below, a 2048-wide context from two text encoders, and
# the size and pooled-text conditioning ("adm", 2816 wide) as a class embedding.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# The KL autoencoder of SD1.x (ComfyUI's default in comfy/sd.py, class VAE); SDXL's VAE has the same shape.
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
CONTROLNET_PREFIX = "control_model."
# The SAI model spec ComfyUI's CheckpointSave writes into a checkpoint's metadata; its /view_metadata
# serves it, and comfy-orch reads the model family from it.
SD15_METADATA = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
                 "modelspec.implementation": "sgm", "modelspec.title": "random SD1.5 (not a trained model)"}
SDXL_METADATA = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-xl-v1-base",
                 "modelspec.implementation": "sgm", "modelspec.title": "random SDXL (not a trained model)",
                 "modelspec.predict_key": "epsilon"}

LORA_RANK = 8
# kohya scales a LoRA's product up @ down by alpha / rank; half keeps the random delta below the weights' own size.
LORA_ALPHA = LORA_RANK / 2

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def import_comfy(comfyui_dir: Path, *, cpu: bool) -> Any:
    """Import ComfyUI's `comfy` package, with the submodules used here, from `comfyui_dir`."""
    if not (comfyui_dir / "comfy" / "model_detection.py").is_file():
        raise SystemExit(f"not a ComfyUI folder (no comfy/model_detection.py): {comfyui_dir}")
    sys.path.insert(0, str(comfyui_dir.resolve()))
    import comfy.cli_args

    # comfy.model_management probes the GPU when imported; --cpu stops it on machines without one.
    comfy.cli_args.args.cpu = cpu
    import comfy.cldm.cldm
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel
    import comfy.lora
    import comfy.model_detection
    import comfy.ops
    import comfy.supported_models
    import comfy.utils

    return comfy


def build_unet(comfy: Any, device: torch.device, config: dict[str, Any] | None = None) -> torch.nn.Module:
    """A UNet (uninitialised), ComfyUI's class; SD1.5's unless `config` says otherwise."""
    import torch

    return comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel(
        **(config or SD15_UNET_CONFIG), dtype=torch.float32, device=device, operations=comfy.ops.disable_weight_init
    )


def build_clip(comfy: Any, device: torch.device, config_name: str = "sd1_clip_config.json", *,
               projection: bool = False) -> torch.nn.Module:
    """A CLIP text encoder (uninitialised), ComfyUI's class: CLIP-L, or another configuration of comfy/."""
    import torch

    clip_config = json.loads((Path(comfy.clip_model.__file__).parent / config_name).read_text())
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, device, comfy.ops.disable_weight_init)
    if not projection:  # ComfyUI drops CLIP-L's projection when it saves (process_clip_state_dict_for_saving)
        del clip.text_projection
    return clip


def build_vae(comfy: Any, device: torch.device) -> torch.nn.Module:
    """The KL autoencoder SD1.5 and SDXL share (uninitialised), ComfyUI's class."""
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD15_VAE_CONFIG), embed_dim=SD15_VAE_EMBED_DIM)
    return vae.to(device)


def build_sd15(comfy: Any, device: torch.device) -> Parts:
    """Build SD1.5's UNet, VAE and text encoder (uninitialised) with ComfyUI's classes."""
    return {UNET_PREFIX: build_unet(comfy, device), VAE_PREFIX: build_vae(comfy, device),
            CLIP_PREFIX: build_clip(comfy, device)}


def initialise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter and float buffer of `module` a defined value.

    Matrices and kernels get N(0, 1/fan_in), so activations keep their scale
    through the network; 1-D weights (norm scales) get 1, biases 0.
    """
    import torch

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


def sdxl_text_encoders(comfy: Any, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP-L and OpenCLIP bigG tensors (ComfyUI's clip_l./clip_g. names) in an SDXL checkpoint's layout.

    ComfyUI's own SDXL.process_clip_state_dict_for_saving does the renaming (bigG to the OpenCLIP
    layout under conditioner.embedders.1.model., CLIP-L under conditioner.embedders.0.).
    """
    return dict(comfy.supported_models.SDXL(SDXL_UNET_CONFIG).process_clip_state_dict_for_saving(state_dict))


def check_sdxl_text_encoders(comfy: Any, saved: dict[str, torch.Tensor]) -> None:
    """Load the saved text encoders back as ComfyUI does; every key must land on its SDXL CLIP model."""
    import torch

    loaded = comfy.supported_models.SDXL(SDXL_UNET_CONFIG).process_clip_state_dict(dict(saved))
    meta = torch.device("meta")
    expected = {f"clip_l.transformer.{key}" for key in build_clip(comfy, meta).state_dict()}
    expected |= {f"clip_g.transformer.{key}"
                 for key in build_clip(comfy, meta, "clip_config_bigg.json", projection=True).state_dict()}
    missing, unexpected = sorted(expected - set(loaded)), sorted(set(loaded) - expected)
    # position ids are rebuilt at load time; the logit scale is not used for text encoding
    unexpected = [key for key in unexpected if not key.endswith(("position_ids", "logit_scale"))]
    if missing or unexpected:
        raise SystemExit(f"ComfyUI would not load these text encoders: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def make_sdxl(comfy: Any, device: torch.device, generator: torch.Generator,
              dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A random SDXL base checkpoint's tensors, checked with ComfyUI's detector and loader, and facts about it."""
    unet = build_unet(comfy, device, SDXL_UNET_CONFIG)
    vae = build_vae(comfy, device)
    clip_l = build_clip(comfy, device)
    clip_g = build_clip(comfy, device, "clip_config_bigg.json", projection=True)
    for module in (unet, vae, clip_l, clip_g):
        initialise(module, generator)
    state_dict = state_dict_of({UNET_PREFIX: unet, VAE_PREFIX: vae}, dtype)
    text = state_dict_of({"clip_l.transformer.": clip_l, "clip_g.transformer.": clip_g}, dtype)
    saved = sdxl_text_encoders(comfy, text)
    check_sdxl_text_encoders(comfy, saved)
    state_dict.update(saved)
    detected = detected_model(comfy, state_dict)
    if detected != "SDXL":
        raise SystemExit(f"ComfyUI detects this checkpoint as {detected}, not SDXL")
    params = {"unet": count_params(unet), "vae": count_params(vae), "clip_l": count_params(clip_l),
              "clip_g": count_params(clip_g)}
    return state_dict, {"detected_as": detected, "params": params}


def make_vae(comfy: Any, device: torch.device, generator: torch.Generator,
             dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A random stand-alone VAE (the KL autoencoder SD1.5 and SDXL share), as VAELoader reads it."""
    vae = build_vae(comfy, device)
    initialise(vae, generator)
    state_dict = state_dict_of({"": vae}, dtype)
    if "decoder.conv_in.weight" not in state_dict or "encoder.conv_in.weight" not in state_dict:
        raise SystemExit("the VAE lacks the keys ComfyUI's VAE loader recognises (decoder.conv_in.weight)")
    return state_dict, {"params": count_params(vae)}


def lora_targets(comfy: Any) -> dict[str, tuple[int, ...]]:
    """kohya key -> weight shape of each layer an SD1.5 LoRA adapts.

    UNet: every matrix and 1x1 kernel of the transformer blocks (proj_in, attention, feed-forward,
    proj_out), under its diffusers name; text encoder: each CLIP layer's attention and MLP.
    """
    import torch

    meta = torch.device("meta")  # shapes only: nothing is allocated
    unet = build_unet(comfy, meta).state_dict()
    targets: dict[str, tuple[int, ...]] = {}
    for diffusers_key, unet_key in comfy.utils.unet_to_diffusers(SD15_UNET_CONFIG).items():
        if ".attentions." not in diffusers_key or not diffusers_key.endswith(".weight"):
            continue
        shape = tuple(unet[unet_key].shape)
        if len(shape) >= 2:  # norms are vectors; kohya adapts matrices and kernels
            targets["lora_unet_" + diffusers_key.removesuffix(".weight").replace(".", "_")] = shape
    clip = build_clip(comfy, meta).state_dict()
    layers = {int(key.split(".")[3]) for key in clip if key.startswith("text_model.encoder.layers.")}
    for layer in sorted(layers):
        for module, name in comfy.lora.LORA_CLIP_MAP.items():
            shape = tuple(clip[f"text_model.encoder.layers.{layer}.{module}.weight"].shape)
            targets[f"lora_te_text_model_encoder_layers_{layer}_{name}"] = shape
    return targets


def make_lora(comfy: Any, device: torch.device, generator: torch.Generator,
              dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A random rank-LORA_RANK LoRA for SD1.5 in kohya's layout, and facts about it.

    Both factors are random (a trained-from-zero LoRA would change nothing), each N(0, 1/fan_in),
    so up @ down has the scale of the weights it is added to.
    """
    import torch

    state_dict: dict[str, torch.Tensor] = {}
    for key, (out_features, in_features, *kernel) in lora_targets(comfy).items():
        down = torch.empty(LORA_RANK, in_features, *kernel, device=device)
        up = torch.empty(out_features, LORA_RANK, *kernel, device=device)
        down.normal_(0.0, 1.0 / math.sqrt(down[0].numel()), generator=generator)
        up.normal_(0.0, 1.0 / math.sqrt(up[0].numel()), generator=generator)
        state_dict[f"{key}.lora_down.weight"] = down.to(dtype).cpu().contiguous()
        state_dict[f"{key}.lora_up.weight"] = up.to(dtype).cpu().contiguous()
        state_dict[f"{key}.alpha"] = torch.tensor(LORA_ALPHA, dtype=dtype)
    adapted = [key.removesuffix(".alpha") for key in state_dict if key.endswith(".alpha")]
    return state_dict, {"rank": LORA_RANK, "alpha": LORA_ALPHA,
                        "unet_layers": sum(k.startswith("lora_unet_") for k in adapted),
                        "text_encoder_layers": sum(k.startswith("lora_te_") for k in adapted)}


def make_controlnet(comfy: Any, device: torch.device, generator: torch.Generator,
                    dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A random SD1.5 ControlNet (RGB hint) in ComfyUI's layout, and facts about it.

    comfy/controlnet.py rebuilds the network from the UNet configuration its detector reads
    off the file, so that detection must give back SD15_UNET_CONFIG.
    """
    import torch

    config = {key: value for key, value in SD15_UNET_CONFIG.items() if key != "out_channels"}
    control = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, dtype=torch.float32, device=device,
                                         operations=comfy.ops.disable_weight_init)
    initialise(control, generator)
    state_dict = state_dict_of({CONTROLNET_PREFIX: control}, dtype)
    detected = comfy.model_detection.model_config_from_unet(state_dict, CONTROLNET_PREFIX, True).unet_config
    # A ControlNet has no output blocks, so the detector cannot read transformer_depth_output.
    differs = sorted(key for key, value in config.items()
                     if key != "transformer_depth_output" and detected.get(key) != value)
    if differs:
        raise SystemExit(f"ComfyUI reads another UNet configuration off this ControlNet: {differs}")
    return state_dict, {"params": count_params(control), "hint_channels": 3}


@dataclass(frozen=True)
class Writer:
    """One kind of model file this script writes, where ComfyUI looks for it, and its metadata."""

    folder: str  # under COMFYUI_DIR/models
    filename: str
    make: Callable[[Any, torch.device, torch.Generator, torch.dtype],
                   tuple[dict[str, torch.Tensor], dict[str, Any]]]
    metadata: dict[str, str] = field(default_factory=dict)


WRITERS: dict[str, Writer] = {
    "sd15": Writer("checkpoints", "random-sd15.safetensors", make_sd15, SD15_METADATA),
    "sdxl": Writer("checkpoints", "random-sdxl.safetensors", make_sdxl, SDXL_METADATA),
    "vae": Writer("vae", "random-vae.safetensors", make_vae),
    "lora": Writer("loras", "random-sd15-lora.safetensors", make_lora),
    "controlnet": Writer("controlnet", "random-sd15-controlnet.safetensors", make_controlnet),
}


def write_model(kind: str, comfyui_dir: Path, out: Path | None, *, dtype: str, device: str,
                seed: int) -> dict[str, Any]:
    """Write a random model of `kind` (default path: where ComfyUI looks); return a report."""
    import torch
    from safetensors.torch import save_file

    started = time.monotonic()
    writer = WRITERS[kind]
    out = out or comfyui_dir / "models" / writer.folder / writer.filename
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    comfy = import_comfy(comfyui_dir, cpu=torch_device.type == "cpu")
    generator = torch.Generator(device=torch_device).manual_seed(seed)
    state_dict, facts = writer.make(comfy, torch_device, generator, getattr(torch, DTYPES[dtype]))
    bad = [key for key, tensor in state_dict.items() if tensor.is_floating_point() and not bool(tensor.isfinite().all())]
    if bad:
        raise SystemExit(f"non-finite values in {len(bad)} tensors, first {bad[0]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(state_dict, str(partial), metadata={"format": "pt", "note": "random weights, not a trained model",
                                                  **writer.metadata})
    partial.replace(out)
    return {"kind": kind, "out": str(out), "tensors": len(state_dict), **facts, "bytes": out.stat().st_size,
            "dtype": dtype, "device": device, "seconds": round(time.monotonic() - started, 1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui-dir", type=Path, required=True, help="ComfyUI source folder (holds comfy/)")
    parser.add_argument("--kind", choices=sorted(WRITERS), default="sd15",
                        help="what to write (default sd15): " + ", ".join(
                            f"{kind} -> models/{w.folder}/{w.filename}" for kind, w in WRITERS.items()))
    parser.add_argument("--out", type=Path, help="file to write (default: where ComfyUI looks, as --kind says)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="auto", help="where to initialise (default: cuda if there is one; much faster)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Write the model and print a one-line JSON report."""
    args = parse_args(argv)
    report = write_model(args.kind, args.comfyui_dir, args.out, dtype=args.dtype, device=args.device, seed=args.seed)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
