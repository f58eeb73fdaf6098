"""End-to-end check against real ComfyUI servers (run on a GPU machine); the timings are gpu_suite.py's.

    python bench/gpu_end_to_end.py --server http://127.0.0.1:8188 --server http://127.0.0.1:8189 \
        --checkpoint random-sd15.safetensors --out results/

1. every template runs once through the client on the first server (skipping those whose
   LoRA or ControlNet files the server lacks);
2. a denoise x CFG sweep runs over a farm of the first two servers (`comfy-orch sweep`).
Writes results.json in --out and prints one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from comfy_orchestrator import Client, Templates

SAMPLE = Path(__file__).resolve().parents[1] / "comfy_orchestrator" / "data" / "sample.png"


def emit(results: list[dict[str, Any]], **row: Any) -> None:
    results.append(row)
    print(json.dumps(row), flush=True)


def inputs(folder: Path, size: int) -> dict[str, Path]:
    """An input picture at the benchmark size, a mask and a picture with a transparent hole."""
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.open(SAMPLE).convert("RGB").resize((size, size))
    paths = {"image": folder / "input.png", "mask": folder / "mask.png", "alpha": folder / "alpha.png"}
    picture.save(paths["image"])
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    mask.save(paths["mask"])
    holed = picture.convert("RGBA")
    holed.paste((0, 0, 0, 0), (size // 4, size // 4, size // 2, size // 2))
    holed.save(paths["alpha"])
    return paths


def template_values(name: str, files: dict[str, Path], checkpoint: str, steps: int) -> dict[str, Any]:
    values: dict[str, Any] = {"checkpoint": checkpoint, "steps": steps}
    fields = Templates.default().get(name).model.model_fields
    for field, key in (("image", "image"), ("image2", "image"), ("control_image", "image"), ("mask", "mask")):
        if field in fields and not (name == "controlnet" and field == "image"):
            values[field] = str(files[key])
    if name == "inpaint":
        values.pop("mask")
        values["image"] = str(files["alpha"])
    if name in ("upscale",):
        values["scale_by"] = 1.5
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--checkpoint", default="random-sd15.safetensors")
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    files = inputs(args.out / "inputs", args.size)
    first = args.server[0]

    # 1. every template, end to end, through the client
    with Client(first) as client:
        schema = client.object_info()
        has = {k: set(schema.get(k, {}).get("input", {}).get("required", {}).get(n, [[]])[0])
               for k, n in (("LoraLoader", "lora_name"), ("ControlNetLoader", "control_net_name"))}
        for template in Templates.default():
            if template.name == "controlnet" and not has["ControlNetLoader"]:
                emit(results, step="template", template=template.name, status="skipped: no ControlNet file")
                continue
            started = time.perf_counter()
            try:
                values = template_values(template.name, files, args.checkpoint, args.steps)
                if template.name == "controlnet":  # the server's own file, not the template's default name
                    values["control_net"] = sorted(has["ControlNetLoader"])[0]
                job = template.job(template.params(values))
                result = client.run(job, out_dir=args.out / "templates" / template.name, timeout_s=300)
                sizes = sorted({Image.open(f).size for f in result.files})
                emit(results, step="template", template=template.name, status="ok",
                     seconds=round(time.perf_counter() - started, 2), images=len(result.files), sizes=sizes)
            except Exception as exc:  # report and go on: every template gets its line
                emit(results, step="template", template=template.name, status=f"failed: {type(exc).__name__}: {exc}")
        if has["LoraLoader"]:
            template = Templates.default().get("img2img")
            values = {**template_values("img2img", files, args.checkpoint, args.steps),
                      "lora": sorted(has["LoraLoader"])[0], "lora_strength": 0.8}
            result = client.run(template.job(template.params(values)), out_dir=args.out / "templates" / "lora")
            emit(results, step="template", template="img2img+lora", status="ok", images=len(result.files))

    # 2. a sweep over a two-server farm, as a user runs it
    servers = [arg for url in args.server[:2] for arg in ("--server", url)]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "comfy_orchestrator.cli", "sweep", "img2img", *servers,
                           "--set", f"image={files['image']}", "--set", f"checkpoint={args.checkpoint}",
                           "--axis", "denoise=0.3:0.7:0.2", "--axis", "cfg=6,8", "--out",
                           str(args.out / "sweep")], capture_output=True, text=True)
    emit(results, step="farm-sweep", rc=done.returncode, seconds=round(time.perf_counter() - started, 2),
         output=done.stdout[-600:] + done.stderr[-600:])

    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
