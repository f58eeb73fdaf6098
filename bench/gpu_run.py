"""End-to-end check and benchmarks against real ComfyUI servers (run on a GPU machine).

    python bench/gpu_run.py --server http://127.0.0.1:8188 --server http://127.0.0.1:8189 ... \
        --checkpoint random-sd15.safetensors --out results/

1. every template runs once through the client on the first server (skipping those whose
   LoRA or ControlNet files the server lacks);
2. a denoise x CFG sweep runs over a farm of the first two servers (`comfy-orch sweep`);
3. benchmarks: a one-job-at-a-time client against the farm on 1, 2 and all servers (one-image
   img2img prompts, 512x512, 20 steps), and one batched prompt; each as images per second,
   with orchestration efficiency (server-side execution time / servers x wall) and the idle
   gap between consecutive prompts on a server, read from each prompt's own history record.
Writes results.json in --out and prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from comfy_orchestrator import Client, Farm, Templates
from comfy_orchestrator.jobs import Job, JobResult

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


def server_times(url: str, prompt_id: str) -> tuple[float, float] | None:
    """(start, end) in epoch seconds of a prompt, from the server's own history record."""
    url = url if "://" in url else f"http://{url}"  # the farm names servers host:port
    entry = requests.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id, {})
    marks = {name: data.get("timestamp") for name, data in entry.get("status", {}).get("messages", [])}
    start, end = marks.get("execution_start"), marks.get("execution_success")
    return (start / 1000, end / 1000) if start and end else None


def occupancy(results: Sequence[JobResult], wall_s: float) -> dict[str, Any]:
    """Orchestration efficiency and idle gaps from the servers' own start and end times."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        times = server_times(result.server, result.prompt_id)
        if times:
            spans.setdefault(result.server, []).append(times)
    busy = sum(end - start for runs in spans.values() for start, end in runs)
    gaps = [b[0] - a[1] for runs in spans.values() for a, b in zip(sorted(runs), sorted(runs)[1:])]
    return {"efficiency": round(busy / (max(len(spans), 1) * wall_s), 3),
            "idle_gap_median_ms": round(statistics.median(gaps) * 1000, 1) if gaps else None,
            "idle_gap_max_ms": round(max(gaps) * 1000, 1) if gaps else None}


def one_image_jobs(count: int, files: dict[str, Path], checkpoint: str, steps: int, seed0: int) -> list[Job]:
    template = Templates.default().get("img2img")
    return [template.job(template.params({"image": str(files["image"]), "checkpoint": checkpoint, "steps": steps,
                                          "denoise": 0.6, "seed": seed0 + i})) for i in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--checkpoint", default="random-sd15.safetensors")
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--skip-bench", action="store_true", help="run steps 1 and 2 only (the end-to-end check)")
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

    if args.skip_bench:
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        return 0

    # 3. benchmarks: one job at a time against the farm
    with Client(first) as client:
        client.run(one_image_jobs(1, files, args.checkpoint, args.steps, 99)[0])  # warm
        jobs = one_image_jobs(args.jobs // 2, files, args.checkpoint, args.steps, 1000)
        started = time.perf_counter()
        serial = [client.run(job, out_dir=args.out / "serial") for job in jobs]
        wall = time.perf_counter() - started
        emit(results, step="bench", mode="one job at a time", servers=1, images=len(serial),
             images_per_s=round(len(serial) / wall, 3), **occupancy(serial, wall))
    counts = sorted({1, 2, len(args.server)})
    for count in counts:
        farm = Farm(args.server[:count])
        jobs = one_image_jobs(args.jobs, files, args.checkpoint, args.steps, 2000 + 100 * count)
        list(farm.run(one_image_jobs(count, files, args.checkpoint, args.steps, 50), out_dir=None))  # warm each
        started = time.perf_counter()
        outcomes = [o for o in farm.run(jobs, out_dir=args.out / f"farm{count}") if isinstance(o, JobResult)]
        wall = time.perf_counter() - started
        emit(results, step="bench", mode="farm", servers=count, images=len(outcomes),
             images_per_s=round(len(outcomes) / wall, 3), **occupancy(outcomes, wall))
    with Client(first) as client:
        template = Templates.default().get("variations")
        for batch in (8, 16):
            job = template.job(template.params({**template_values("variations", files, args.checkpoint, args.steps),
                                                "batch_size": batch}))
            started = time.perf_counter()
            result = client.run(job, out_dir=args.out / f"batch{batch}")
            wall = time.perf_counter() - started
            emit(results, step="bench", mode="batched prompt", batch=batch, images=len(result.files),
                 images_per_s=round(len(result.files) / wall, 3))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
