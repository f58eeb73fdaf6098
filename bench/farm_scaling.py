"""Benchmark (not a test): how the farm scales, and what its dispatch saves, on simulated servers.

Every server is a SimServer with the "realistic" cost profile (recorded on an H200 with SD1.5
at 512x512: checkpoint load 2 s, first sampling after a load 3.5 s more, 15.5 steps/s), each
standing for one GPU of its own. The workload is img2img at 512x512, 20 steps, denoise 0.6,
a new seed per cell so that the sampler always runs. Two comparisons, each in one run:

1. scaling: the same sweep on 1 server and on 2 servers, as a throughput ratio;
2. dispatch: a sweep over two checkpoints on 2 servers with the farm's dispatch
   (soonest finish with checkpoint affinity) against round-robin with the same queue
   depth, as a throughput ratio, with the checkpoint loads counted on the servers.

The sweep of (2) runs in grid order: denoise (outer) x checkpoint x seed (3, inner),
so the checkpoint changes every third cell, as a grid with the checkpoint as a middle
axis does.

    python bench/farm_scaling.py                 # about 3 minutes
    python bench/farm_scaling.py --speedup 4     # the same costs 4x faster: under a minute
    python bench/farm_scaling.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from comfy_orchestrator.farm import Dispatch, Farm, JobFailed, RoundRobin, SoonestFinish
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.sim import SimServer, profile
from comfy_orchestrator.templates import Templates

CHECKPOINTS = ("model-a.safetensors", "model-b.safetensors")


@dataclass(frozen=True)
class Measurement:
    """One run of a sweep over a farm."""

    name: str
    servers: int
    cells: int
    wall_s: float
    checkpoint_loads: int
    per_server: dict[str, int]
    busy_fraction: float  # server-side execution time / (servers x wall time)

    @property
    def images_per_s(self) -> float:
        return self.cells / self.wall_s


def sweep(image: Path, cells: int, checkpoints: Sequence[str]) -> Iterator[Job]:
    """img2img cells in grid order: denoise (outer) x checkpoint x seed (3, inner)."""
    template = Templates.default().get("img2img")
    schema = SimServer(checkpoints=CHECKPOINTS).schema
    denoises = (0.3, 0.45, 0.6, 0.75)
    for index in range(cells):
        block, within = divmod(index, 3 * len(checkpoints))
        params = template.params({"image": str(image), "checkpoint": checkpoints[within // 3], "seed": index,
                                  "steps": 20, "denoise": denoises[block % len(denoises)], "cfg": 7.0})
        yield template.job(params, label=f"cell-{index}", schema=schema)


def measure(name: str, servers: int, cells: int, image: Path, work: Path, *, speedup: float,
            checkpoints: Sequence[str], dispatch: Dispatch) -> Measurement:
    """Start fresh servers, run the sweep over them, and count."""
    costs = profile("realistic").scaled(speedup)
    with ExitStack() as stack:
        sims = [stack.enter_context(SimServer(costs=costs, checkpoints=CHECKPOINTS, preview_method="none"))
                for _ in range(servers)]
        farm = Farm([sim.url for sim in sims], dispatch=dispatch)
        started = time.monotonic()
        outcomes = list(farm.run(sweep(image, cells, checkpoints), out_dir=work / name))
        wall_s = time.monotonic() - started
        failed = [o for o in outcomes if isinstance(o, JobFailed)]
        if failed or len(outcomes) != cells:
            raise SystemExit(f"{name}: {len(failed)} of {len(outcomes)} cells failed: {failed[:1]}")
        results = [o for o in outcomes if isinstance(o, JobResult)]
        busy_s = sum(r.timings["finished"] - r.timings["started"] for r in results
                     if "started" in r.timings and "finished" in r.timings)
        return Measurement(name=name, servers=servers, cells=cells, wall_s=wall_s,
                           checkpoint_loads=sum(sim.counters.checkpoint_loads for sim in sims),
                           per_server=dict(Counter(r.server for r in results)),
                           busy_fraction=busy_s / (servers * wall_s))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=24, help="cells per sweep (default 24)")
    parser.add_argument("--speedup", type=float, default=1.0, help="run the realistic costs this many times faster")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="farm-bench-") as folder:
        work = Path(folder)
        image = work / "input.png"
        Image.new("RGB", (512, 512), (90, 120, 160)).save(image)
        one = measure("1 server", 1, args.cells, image, work, speedup=args.speedup,
                      checkpoints=CHECKPOINTS[:1], dispatch=SoonestFinish())
        two = measure("2 servers", 2, args.cells, image, work, speedup=args.speedup,
                      checkpoints=CHECKPOINTS[:1], dispatch=SoonestFinish())
        round_robin = measure("round-robin, 2 checkpoints", 2, args.cells, image, work, speedup=args.speedup,
                              checkpoints=CHECKPOINTS, dispatch=RoundRobin())
        farm = measure("farm dispatch, 2 checkpoints", 2, args.cells, image, work, speedup=args.speedup,
                       checkpoints=CHECKPOINTS, dispatch=SoonestFinish())

    print(f"simulated servers, realistic costs / {args.speedup:g}, {args.cells} cells of img2img 512x512, 20 steps")
    print(f"{'run':32} {'servers':>7} {'wall s':>8} {'images/s':>9} {'ckpt loads':>10} {'busy':>6}  cells per server")
    for m in (one, two, round_robin, farm):
        print(f"{m.name:32} {m.servers:7d} {m.wall_s:8.2f} {m.images_per_s:9.3f} {m.checkpoint_loads:10d} "
              f"{m.busy_fraction:6.2f}  {sorted(m.per_server.values(), reverse=True)}")
    scaling = two.images_per_s / one.images_per_s
    dispatch = farm.images_per_s / round_robin.images_per_s
    print(f"2 servers / 1 server throughput:        x{scaling:.2f}")
    print(f"farm dispatch / round-robin throughput: x{dispatch:.2f} "
          f"(checkpoint loads {farm.checkpoint_loads} vs {round_robin.checkpoint_loads})")
    figures = {
        "speedup": args.speedup, "cells": args.cells,
        "runs": [{**m.__dict__, "images_per_s": m.images_per_s} for m in (one, two, round_robin, farm)],
        "scaling_2_vs_1": scaling, "dispatch_vs_round_robin": dispatch,
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
