"""Benchmark suite of issue 10 (not a test): keep the GPUs busy, measurably, against real ComfyUI.

One command on a GPU machine starts N ComfyUI processes on GPU 0 through docker/entrypoint.sh
(OMP_NUM_THREADS=1 each), measures, stops them and writes one JSON file::

    python docker/random_checkpoint.py --comfyui-dir ComfyUI           # once
    python bench/gpu_suite.py --comfyui-dir ComfyUI --processes 6 --json gpu-results.json

or, against servers already running (each must have both checkpoints)::

    python bench/gpu_suite.py --server http://127.0.0.1:8188 ... --json gpu-results.json

Rows (img2img 512x512, 20 steps, random-weight SD1.5 unless noted), each measured in this run:

* serial: the 20-cell sweep (denoise 4 x cfg 5) with a one-job-at-a-time client on one server
  (submit, wait, download, next);
* processes-k: one-image prompts through the farm over k = 1..N processes on the one GPU; the
  best of these is this run's one-image ceiling, and each row's steady rate (while every server
  had work) shows what a run without start and tail reaches;
* sweep-20, grid-5x5 and grid-10x10: the 20-cell sweep, a 5x5 and a 10x10 denoise x cfg grid
  through `run_sweep` on --sweep-processes servers (the entrypoint's default per GPU), and the 5x5
  grid once more on all N (journal, downloads, thumbnails, grids and page in the wall time);
* cache rows: a 20-cell sweep over two checkpoints (cfg 5 x denoise 2 x checkpoint 2, checkpoint
  innermost) in the sweep's cache-aware order through the farm, against the same prompts shuffled
  and dealt round-robin, and shuffled through the farm; work counted from each prompt's history
  (nodes not in its execution_cached message ran; a checkpoint load is a loader that ran);
* batch-16: one variations prompt of 16 on an idle server, 16 / its server time: the batch ceiling;
* seeds: a cfg 4 x seed 16 sweep of `variations` with batched seeds, on 1 and 2 servers.

Every row gives images/s, orchestration efficiency (the servers' own execution time from each
prompt's history record / (servers x wall)), the idle gap between consecutive prompts on a server
(median, max), where the rest of servers x wall went (lead, gaps, wind-down, end: see gpu_measure.figures()),
and the mean GPU busy % from nvidia-smi samples when there is one. The client's peak memory is
its max RSS, and the tracemalloc peak over the sweep-20 cells run again last (apart, as tracing
slows the client).
Rehearse without a GPU against simulated servers:
``comfy-orch sim --port 8188 --profile realistic --checkpoint random-sd15.safetensors
--checkpoint random-sd15-b.safetensors`` (one per port), then ``--server`` as above.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sweep_ceiling
from gpu_measure import Bench, machine, start_servers

from comfy_orchestrator.client import Client
from comfy_orchestrator.dispatch import RoundRobin
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.sweep_run import plan_sweep

SWEEP_20 = ("denoise=0.3:0.9:0.2", "cfg=5:9")
GRID_5X5 = ("denoise=0.3:0.7:0.1", "cfg=5:9")
GRID_10X10 = ("denoise=0.3:0.75:0.05", "cfg=4.5:9:0.5")
TARGETS = {"sweep_vs_one_image_ceiling": 0.95, "seeds_vs_batch_ceiling": 0.95, "two_gpu_scaling": 1.9,
           "efficiency": 0.97, "idle_gap_median_ms": 20.0, "checkpoint_loads_per_server": 1}


def one_image_jobs(bench: Bench, count: int, seed0: int) -> list[Job]:
    template = bench.library.get("img2img")
    return [template.job(template.params(bench.fixed(denoise=0.6, seed=seed0 + i))) for i in range(count)]


def probe_one_server(bench: Bench, jobs: int) -> dict[str, Any]:
    """Why one server fed by the farm is slower than one job at a time: vary what the farm does."""
    first = bench.urls[:1]
    rows = [bench.serial("probe-serial", one_image_jobs(bench, jobs, 500)),
            bench.farm("probe-farm", first, one_image_jobs(bench, jobs, 600)),
            bench.farm("probe-farm-no-health", first, one_image_jobs(bench, jobs, 700), health_interval_s=3600),
            bench.farm("probe-farm-no-download", first, one_image_jobs(bench, jobs, 800), download=False),
            bench.farm("probe-farm-queue-0", first, one_image_jobs(bench, jobs, 900), queue_ahead=0),
            bench.serial("probe-serial-again", one_image_jobs(bench, jobs, 1000))]
    return {"probe_server_s_per_prompt": {r["row"]: round(r["efficiency"] * r["wall_s"] / r["prompts"], 3)
                                          for r in rows}}


def run_suite(bench: Bench, *, processes: Sequence[int], scaling_jobs: int, seed_values: int,
              sweep_processes: int) -> dict[str, Any]:
    """Every row, then the ratios and the targets.

    The one-image ceiling comes first (farm rows over 1..N processes); the sweeps then run on
    `sweep_processes` servers (the entrypoint's default per GPU), and once more on all N.
    """
    urls = bench.urls
    sweep_urls = urls[:sweep_processes]
    sweep20 = bench.sweep(SWEEP_20)
    serial = bench.serial("serial", [sweep20.template.job(cell.params) for cell in sweep20.cells()])
    scaling = [bench.farm(f"processes-{k}", urls[:k], one_image_jobs(bench, scaling_jobs, 1000 * k))
               for k in processes]
    swept = bench.swept("sweep-20", sweep_urls, sweep20)
    grid = bench.swept("grid-5x5", sweep_urls, bench.sweep(GRID_5X5))
    long_grid = bench.swept("grid-10x10", sweep_urls, bench.sweep(GRID_10X10))
    grid_all = bench.swept(f"grid-5x5-on-{len(urls)}", urls, bench.sweep(GRID_5X5)) \
        if len(urls) > len(sweep_urls) else grid
    summary: dict[str, Any] = {"sweep_servers": len(sweep_urls)}
    if len(bench.checkpoints) >= 2:
        two = bench.sweep(("cfg=5:9", "denoise=0.4,0.6", f"checkpoint={','.join(bench.checkpoints[:2])}"))
        ordered = list(plan_sweep(two).jobs)
        shuffled = random.Random(10).sample(ordered, len(ordered))
        aware = bench.swept("cache-aware", urls, two)
        naive = bench.farm("shuffled-round-robin", urls, shuffled, RoundRobin())
        bench.farm("shuffled-farm", urls, shuffled)
        summary["cache"] = {key: {"cache_aware": aware[key], "shuffled_round_robin": naive[key]}
                            for key in ("node_executions", "checkpoint_loads", "image_encodes", "images_per_s")}
        summary["cache"]["met"] = (aware["checkpoint_loads"] <= aware["servers_used"]
                                   and aware["image_encodes"] <= aware["servers_used"])
    variations = bench.library.get("variations")
    batch_job = variations.job(variations.params(bench.fixed(batch_size=16)))
    batch = bench.farm("batch-16", urls[:1], [batch_job])
    batch_ceiling = round(16 / (batch["efficiency"] * batch["wall_s"]), 3)  # 16 / server time
    seeds = bench.sweep(("cfg=5:8", f"seed=1:{seed_values}"), template="variations", batch_seeds=True)
    seed_rows = [bench.swept(f"seeds-{k}", urls[:k], seeds) for k in sorted({1, min(2, len(urls))})]

    bench.swept("sweep-20-traced", sweep_urls, sweep20, trace=True)  # tracemalloc slows it: a row of its own
    one_image_ceiling = max(row["images_per_s"] for row in scaling)
    steady = [row["steady_images_per_s"] for row in scaling if row["steady_images_per_s"]]
    best_seeds = max(row["images_per_s"] for row in seed_rows)
    sweep_rows = [swept, grid, long_grid, grid_all, *scaling, *seed_rows]
    summary.update({
        "one_image_ceiling_images_per_s": one_image_ceiling,
        "one_image_steady_ceiling_images_per_s": max(steady, default=None),
        "best_processes": max(scaling, key=lambda r: r["images_per_s"])["servers"],
        "batch_ceiling_images_per_s": batch_ceiling,
        "sweep20_vs_serial": round(swept["images_per_s"] / serial["images_per_s"], 2),
        "grid_vs_serial": round(grid["images_per_s"] / serial["images_per_s"], 2),
        "vs_one_image_ceiling": {row["row"]: round(row["images_per_s"] / one_image_ceiling, 3)
                                 for row in (swept, grid, long_grid, grid_all)},
        "grid_vs_one_image_ceiling": round(max(row["images_per_s"] for row in (grid, long_grid))
                                           / one_image_ceiling, 3),
        "efficiency_by_row": {row["row"]: row["efficiency"] for row in sweep_rows},
        "seeds_vs_batch_ceiling": round(best_seeds / batch_ceiling, 3),
        "seeds_vs_serial": round(best_seeds / serial["images_per_s"], 2),
        "processes_vs_serial": {row["servers"]: round(row["images_per_s"] / serial["images_per_s"], 2)
                                for row in scaling},
        "efficiency_min": min(row["efficiency"] for row in sweep_rows),
        # batched rows give one gap per server, often a ComfyUI GC pause: the target is about one-image sweeps
        "idle_gap_median_ms_max": max(row["idle_gap_median_ms"] or 0.0
                                      for row in [swept, grid, long_grid, grid_all, *scaling]),
    })
    summary["met"] = {
        "grid_within_5pct_of_one_image_ceiling": summary["grid_vs_one_image_ceiling"] >= 0.95,
        "seeds_within_5pct_of_batch_ceiling": summary["seeds_vs_batch_ceiling"] >= 0.95,
        "efficiency_at_least_0.97_on_every_row": summary["efficiency_min"] >= 0.97,
        "efficiency_at_least_0.97_on_the_100_cell_sweep": long_grid["efficiency"] >= 0.97,
        "median_idle_gap_under_20ms": summary["idle_gap_median_ms_max"] < 20.0,
        "cache_once_per_server": summary.get("cache", {}).get("met"),
    }
    return summary


def link_second_checkpoint(comfyui_dir: Path, first: str, second: str) -> None:
    """The second checkpoint is a hard link of the first: same weights, a name ComfyUI loads again."""
    folder = comfyui_dir / "models" / "checkpoints"
    if not (folder / second).exists():
        os.link(folder / first, folder / second)


def print_table(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{'row':22} {'srv':>3} {'img':>4} {'img/s':>7} {'steady':>6} {'effic':>6} {'gap ms med/max':>15} "
          f"{'gc':>3} {'lead':>5} {'gaps':>5} {'wind':>5} {'end':>5} {'nodes':>5} {'loads':>5} {'enc':>4} {'gpu%':>5}")
    for row in rows:
        gap = f"{row['idle_gap_median_ms']}/{row['idle_gap_max_ms']}"
        loss = row["loss"]
        print(f"{row['row']:22} {row['servers']:3d} {row['images']:4d} {row['images_per_s']:7.3f} "
              f"{row['steady_images_per_s'] or '-':>6} {row['efficiency']:6.3f} {gap:>15} {row['gc_pauses']:3d} "
              f"{loss['lead']:5.3f} {loss['gaps_short'] + loss['gaps_gc']:5.3f} {loss['wind_down']:5.3f} "
              f"{loss['end']:5.3f} {row['node_executions']:5d} {row['checkpoint_loads']:5d} "
              f"{row['image_encodes']:4d} {row['gpu_busy_pct'] if row['gpu_busy_pct'] is not None else '-':>5}")
    print(json.dumps(summary, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", action="append", default=[], metavar="URL", help="a running server (repeat)")
    parser.add_argument("--comfyui-dir", type=Path, help="start this ComfyUI through docker/entrypoint.sh instead")
    parser.add_argument("--comfyui-python", default=sys.executable, help="the python that runs ComfyUI")
    parser.add_argument("--processes", type=int, default=6, help="with --comfyui-dir: processes on each GPU")
    parser.add_argument("--gpus", default="0", help="with --comfyui-dir: the GPUs to start them on, e.g. 0,1")
    parser.add_argument("--ceiling", action="store_true",
                        help="only issue 17's rows (bench/sweep_ceiling.py): the sweep command timed from outside "
                             "against a bare loop, on GPU 0's servers and on every GPU's")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--log-dir", type=Path, default=Path("comfyui-logs"))
    parser.add_argument("--comfyui-arg", action="append", default=[], help="passed on to ComfyUI (repeat)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME",
                        help="default random-sd15.safetensors and its hard link random-sd15-b.safetensors")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scaling-jobs", type=int, default=36, help="one-image prompts per processes-k row")
    parser.add_argument("--sweep-processes", type=int, default=4,
                        help="servers the sweep rows use (docker/entrypoint.sh's default per GPU)")
    parser.add_argument("--seed-values", type=int, default=16, help="seeds per cfg in the batched seed sweep")
    parser.add_argument("--two-gpu-scaling", type=float, help="a figure from bench/farm_scaling.py to record")
    parser.add_argument("--json", type=Path, default=Path("gpu-results.json"))
    parser.add_argument("--probe", action="store_true", help="only the one-server probe rows")
    parser.add_argument("--probe-jobs", type=int, default=20)
    sweep_ceiling.add_options(parser)
    args = parser.parse_args(argv)
    checkpoints = args.checkpoint or ["random-sd15.safetensors", "random-sd15-b.safetensors"]
    entry = None
    if args.comfyui_dir:
        if len(checkpoints) >= 2:
            link_second_checkpoint(args.comfyui_dir, checkpoints[0], checkpoints[1])
        up = time.monotonic()
        gpus = [int(gpu) for gpu in args.gpus.split(",")]
        entry, urls = start_servers(args.comfyui_dir, args.comfyui_python, args.processes, args.port, args.log_dir,
                                    args.comfyui_arg, gpus)
        print(f"{len(urls)} servers up in {time.monotonic() - up:.1f} s", flush=True)
    else:
        urls = args.server
    if not urls:
        parser.error("give --server URLs or --comfyui-dir")
    if args.ceiling:  # the servers in GPU order, --processes a GPU
        groups = [urls[i:i + args.processes] for i in range(0, len(urls), args.processes)]
        try:
            return sweep_ceiling.measure(groups, args, checkpoint=checkpoints[0])
        finally:
            if entry is not None:
                entry.terminate()
                entry.wait(timeout=60)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-suite-") as folder:
            bench = Bench(urls, checkpoints, Path(folder), args.steps, args.size, partial=args.json)
            try:
                summary = probe_one_server(bench, args.probe_jobs) if args.probe else run_suite(
                    bench, processes=range(1, len(urls) + 1), scaling_jobs=args.scaling_jobs,
                    seed_values=args.seed_values, sweep_processes=min(args.sweep_processes, len(urls)))
            finally:
                bench.sampler.stop()
            with Client(urls[0]) as client:
                version = client.comfyui_version()
    finally:
        if entry is not None:
            entry.terminate()
            entry.wait(timeout=60)
    summary["client_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    summary["client_tracemalloc_peak_mb"] = next((r["client_tracemalloc_peak_mb"] for r in bench.rows
                                                  if "client_tracemalloc_peak_mb" in r), None)
    if args.two_gpu_scaling is not None and "met" in summary:
        summary["two_gpu_scaling"] = args.two_gpu_scaling
        summary["met"]["two_gpu_scaling_at_least_1.9"] = args.two_gpu_scaling >= 1.9
    results = {"machine": machine(), "comfyui_version": version, "servers": len(urls), "steps": args.steps,
               "size": args.size, "targets": TARGETS, "rows": bench.rows, "summary": summary}
    args.json.write_text(json.dumps(results, indent=2))
    print_table(bench.rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
