"""Benchmark (not a test): how the farm scales, and what its dispatch saves.

Two comparisons, each measured in one run:

1. scaling: the same number of one-image img2img prompts on 1 server and on all of them,
   as a throughput ratio;
2. dispatch: a sweep over two checkpoints on all servers with the farm's dispatch
   (soonest finish, checkpoint affinity, moving queued jobs to idle servers) against
   round-robin with the same queue depth, as a throughput ratio, with the checkpoint
   loads counted (prompts whose checkpoint loader did not come from the cache).

The sweep of (2) runs in grid order: denoise (outer) x checkpoint x seed (3, inner), so the
checkpoint changes every third cell, as a grid with the checkpoint as a middle axis does.
Every row also gives the orchestration efficiency (the servers' own execution time, from
each prompt's history record, over servers x wall time) and the idle gap between
consecutive prompts on a server.

Without --server, each row starts fresh simulated servers with the "realistic" cost profile
(recorded on an H200 with SD1.5 at 512x512: checkpoint load 2 s, first sampling after a load
3.5 s more, 15.5 steps/s), each standing for one GPU of its own. With --server, it drives
real ComfyUI servers that have both --checkpoint files; before each row every server runs
one prompt of the first checkpoint, untimed, so that every row starts warm.

Seen 2026-11-26 on one NVIDIA H100 80GB (16 vCPU), ComfyUI 0.8.0, random-weight SD1.5 fp16, 4 ComfyUI
processes on the GPU with OMP_NUM_THREADS=1 (docker/entrypoint.sh), the second checkpoint a hard link
of the first, 100 prompts per row:

    row                                       images/s  wall s loads effic.  gap ms med/max
    farm, 1 server                               1.448   69.08     0   0.97       1.0/327.0
    farm, 4 servers                              2.759   36.24     0   0.95       1.0/331.0
    round-robin, 2 checkpoints, 4 servers        1.933   51.73    65   0.93       1.0/384.0
    farm, 2 checkpoints, 4 servers               2.734   36.58     3   0.95       1.0/342.0

4 servers / 1 server x1.91; farm dispatch / round-robin x1.41 (3 checkpoint loads against 65). On
2 H100s (4 processes each, 120 prompts, --baseline-servers 4): 2.656 images/s on one GPU, 5.121 on
two, x1.93 (efficiency 0.95 and 0.92, median idle gap 1 and 2 ms). The
maxima of the idle gaps are ComfyUI's own garbage collection every ~10 s (about 3 % of each server's
time here); the median gap between prompts is 1 ms. Simulated (--speedup 4, 24 prompts, 2 servers):
x1.73 and x2.10 (4 loads against 16).

    python bench/farm_scaling.py                        # simulated, about 3 minutes
    python bench/farm_scaling.py --speedup 4            # the same costs 4x faster
    python bench/farm_scaling.py --server URL ... (8, on 2 GPUs) --baseline-servers 4 --checkpoint NAME
    python bench/farm_scaling.py --server http://127.0.0.1:8188 --server http://127.0.0.1:8189 \\
        --checkpoint random-sd15.safetensors --checkpoint random-sd15-b.safetensors --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from comfy_orchestrator.client import Client
from comfy_orchestrator.dispatch import Dispatch, RoundRobin, SoonestFinish
from comfy_orchestrator.farm import Farm, JobFailed
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.sim import SimServer, profile
from comfy_orchestrator.templates import Templates

SIM_CHECKPOINTS = ("model-a.safetensors", "model-b.safetensors")


@dataclass(frozen=True)
class Measurement:
    """One timed run of prompts over a farm."""

    name: str
    servers: int
    cells: int
    wall_s: float
    images_per_s: float
    checkpoint_loads: int
    efficiency: float
    idle_gap_median_ms: float | None
    idle_gap_max_ms: float | None
    per_server: list[int]


def sweep(image: Path, cells: int, checkpoints: Sequence[str], *, steps: int, schema: Schema | None,
          seed0: int) -> Iterator[Job]:
    """img2img cells in grid order: denoise (outer) x checkpoint x seed (3, inner)."""
    template = Templates.default().get("img2img")
    denoises = (0.3, 0.45, 0.6, 0.75)
    for index in range(cells):
        block, within = divmod(index, 3 * len(checkpoints))
        params = template.params({"image": str(image), "checkpoint": checkpoints[within // 3], "seed": seed0 + index,
                                  "steps": steps, "denoise": denoises[block % len(denoises)], "cfg": 7.0})
        yield template.job(params, label=f"cell-{index}", schema=schema)


def loaded_checkpoint(result: JobResult) -> bool:
    """Whether the prompt ran its checkpoint loader rather than taking it from the cache."""
    loaders = [node.id for node in result.job.graph.values() if node.class_type == "CheckpointLoaderSimple"]
    return any(node_id not in result.cached_nodes for node_id in loaders)


def occupancy(results: Sequence[JobResult], urls: dict[str, str], wall_s: float) -> tuple[float, list[float]]:
    """Efficiency and idle gaps (s) from each prompt's execution_start/execution_success on its server."""
    spans: dict[str, list[tuple[float, float]]] = {}
    clients = {name: Client(url) for name, url in urls.items()}
    try:
        for result in results:
            entry = clients[result.server].history_entry(result.prompt_id) or {}
            marks = {kind: data.get("timestamp") for kind, data in (entry.get("status") or {}).get("messages", [])}
            start, end = marks.get("execution_start"), marks.get("execution_success")
            if start and end:
                spans.setdefault(result.server, []).append((start / 1000, end / 1000))
    finally:
        for client in clients.values():
            client.close()
    busy_s = sum(end - start for runs in spans.values() for start, end in runs)
    gaps = [later[0] - earlier[1] for runs in spans.values()
            for earlier, later in zip(sorted(runs), sorted(runs)[1:])]
    return busy_s / (max(len(urls), 1) * wall_s), gaps


def measure(name: str, urls: Sequence[str], jobs: Iterator[Job], out_dir: Path, dispatch: Dispatch) -> Measurement:
    """Run `jobs` over the servers at `urls` and measure."""
    farm = Farm(list(urls), dispatch=dispatch)
    names = {config.name: config.url for config in farm.servers}
    started = time.monotonic()
    outcomes = list(farm.run(jobs, out_dir=out_dir))
    wall_s = time.monotonic() - started
    failed = [o for o in outcomes if isinstance(o, JobFailed)]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} of {len(outcomes)} prompts failed: {failed[0].error}")
    results = [o for o in outcomes if isinstance(o, JobResult)]
    efficiency, gaps = occupancy(results, names, wall_s)
    return Measurement(
        name=name, servers=len(urls), cells=len(results), wall_s=round(wall_s, 2),
        images_per_s=round(len(results) / wall_s, 3), checkpoint_loads=sum(map(loaded_checkpoint, results)),
        efficiency=round(efficiency, 3),
        idle_gap_median_ms=round(statistics.median(gaps) * 1000, 1) if gaps else None,
        idle_gap_max_ms=round(max(gaps) * 1000, 1) if gaps else None,
        per_server=sorted(Counter(r.server for r in results).values(), reverse=True))


def prime(urls: Sequence[str], image: Path, checkpoint: str, steps: int) -> None:
    """One untimed prompt on each server, so that a row starts with the first checkpoint loaded."""
    for index, url in enumerate(urls):
        with Client(url) as client:
            job = next(sweep(image, 1, [checkpoint], steps=steps, schema=client.schema(), seed0=90_000 + index))
            client.run(job)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", action="append", default=[], metavar="URL",
                        help="a real ComfyUI server (repeat); default: simulated servers")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME",
                        help="with --server: the checkpoint(s) every server has; two for the dispatch row")
    parser.add_argument("--baseline-servers", type=int, default=1,
                        help="servers of the scaling baseline row (default 1; on 2 GPUs with 4 processes each: 4)")
    parser.add_argument("--cells", type=int, default=24, help="prompts per row (default 24)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sim-servers", type=int, default=2, help="simulated servers (default 2)")
    parser.add_argument("--speedup", type=float, default=1.0, help="simulated costs this many times faster")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    real = bool(args.server)
    checkpoints = tuple(args.checkpoint) if real else SIM_CHECKPOINTS
    if real and not checkpoints:
        parser.error("--server needs --checkpoint (twice for the dispatch comparison)")

    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as folder, ExitStack() as stack:
        work = Path(folder)
        image = work / "input.png"
        Image.new("RGB", (512, 512), (90, 120, 160)).save(image)
        costs = profile("realistic").scaled(args.speedup)

        def servers(count: int) -> list[str]:
            if real:
                urls: list[str] = args.server[:count]
                prime(urls, image, checkpoints[0], args.steps)
                return urls
            return [stack.enter_context(SimServer(costs=costs, checkpoints=SIM_CHECKPOINTS,
                                                  preview_method="none")).url for _ in range(count)]

        if real:
            with Client(args.server[0]) as client:
                schema = client.schema()  # templates are checked against what the servers offer
        else:
            schema = SimServer(checkpoints=SIM_CHECKPOINTS).schema
        size = len(args.server) if real else args.sim_servers
        plan: list[tuple[str, int, tuple[str, ...], Dispatch]] = [
            (f"farm, {args.baseline_servers} server(s)", args.baseline_servers, checkpoints[:1], SoonestFinish()),
            (f"farm, {size} servers", size, checkpoints[:1], SoonestFinish()),
        ]
        if len(checkpoints) >= 2:
            plan += [(f"round-robin, 2 checkpoints, {size} servers", size, checkpoints[:2], RoundRobin()),
                     (f"farm, 2 checkpoints, {size} servers", size, checkpoints[:2], SoonestFinish())]
        for number, (name, count, names, dispatch) in enumerate(plan):
            urls = servers(count)
            jobs = sweep(image, args.cells, names, steps=args.steps, schema=schema, seed0=1000 * (number + 1))
            rows.append(measure(name, urls, jobs, work / f"row{number}", dispatch))
            print(json.dumps(asdict(rows[-1])), flush=True)

    where = "the --server servers" if real else f"simulated servers, realistic costs / {args.speedup:g}"
    print(f"\n{where}; {args.cells} prompts per row, img2img 512x512, {args.steps} steps")
    print(f"{'row':40} {'images/s':>9} {'wall s':>7} {'loads':>5} {'effic.':>6} {'gap ms med/max':>15}  per server")
    for row in rows:
        gap = f"{row.idle_gap_median_ms}/{row.idle_gap_max_ms}"
        print(f"{row.name:40} {row.images_per_s:9.3f} {row.wall_s:7.2f} {row.checkpoint_loads:5d} "
              f"{row.efficiency:6.2f} {gap:>15}  {row.per_server}")
    figures: dict[str, Any] = {"mode": where, "cells": args.cells, "rows": [asdict(row) for row in rows],
                               "scaling": round(rows[1].images_per_s / rows[0].images_per_s, 3)}
    print(f"{rows[1].servers} servers / {rows[0].servers} throughput: x{figures['scaling']:.2f}")
    if len(rows) == 4:
        figures["dispatch_vs_round_robin"] = round(rows[3].images_per_s / rows[2].images_per_s, 3)
        print(f"farm dispatch / round-robin throughput: x{figures['dispatch_vs_round_robin']:.2f} "
              f"(checkpoint loads {rows[3].checkpoint_loads} vs {rows[2].checkpoint_loads})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
