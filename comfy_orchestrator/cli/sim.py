"""`comfy-orch sim`: run the simulated ComfyUI server."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import click

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.output import fail, stdout


@main.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8188, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port")
@click.option("--profile", "profile_name", default="instant", show_default=True,
              type=click.Choice(["instant", "realistic"]), help="instant: no delays; realistic: GPU timings")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="NAME",
              help="a checkpoint name the server offers (repeatable; default: the templates' default, "
                   "random-sd15.safetensors and random-sdxl.safetensors, whose metadata names SD1.5 and SDXL)")
@click.option("--lora", "loras", multiple=True, metavar="NAME",
              help="a LoRA file the server offers (repeatable; default detail.safetensors, style.safetensors)")
@click.option("--controlnet", "controlnets", multiple=True, metavar="NAME",
              help="a ControlNet file the server offers (repeatable; default control_v11p_sd15_canny.safetensors)")
@click.option("--vae", "vaes", multiple=True, metavar="NAME",
              help="a VAE file the server offers (repeatable; default random-vae.safetensors, sdxl_vae.safetensors)")
@click.option("--root", type=click.Path(file_okay=False), help="folder for input/, output/, temp/ and user/")
@click.option("--preview-method", default="none", show_default=True,
              type=click.Choice(["none", "auto", "latent2rgb", "taesd"]),
              help="sampler previews over the websocket, as ComfyUI's --preview-method")
@click.option("--preview-size", default=512, show_default=True, type=click.IntRange(1, 16384),
              help="previews are fitted inside this many pixels, as ComfyUI's --preview-size")
def sim(host: str, port: int, profile_name: str, checkpoints: Sequence[str], loras: Sequence[str],
        controlnets: Sequence[str], vaes: Sequence[str], root: str | None, preview_method: str,
        preview_size: int) -> None:
    """Run a simulated ComfyUI server (no GPU) until interrupted."""
    try:
        from comfy_orchestrator.sim import SimServer
    except ImportError as exc:
        fail(f"the simulated server needs the [sim] extra: pip install 'comfy-orchestrator[sim]' ({exc})")
    from comfy_orchestrator.sim.server import DEFAULT_CHECKPOINTS, DEFAULT_CONTROLNETS, DEFAULT_LORAS, DEFAULT_VAES

    server = SimServer(host=host, port=port, profile_name=profile_name,
                       checkpoints=checkpoints or DEFAULT_CHECKPOINTS,
                       loras=loras or DEFAULT_LORAS, controlnets=controlnets or DEFAULT_CONTROLNETS,
                       vaes=vaes or DEFAULT_VAES, root=Path(root) if root else None, preview_method=preview_method,
                       preview_size=preview_size)
    with server:
        stdout.print(f"simulated ComfyUI at {server.url} ({profile_name}); files in {server.root}; Ctrl-C stops")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            stdout.print("stopping")
