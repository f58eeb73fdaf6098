"""Benchmark (not a test): a 20-cell sweep against a client that runs one job at a time.

Both sides run the same cells on a fresh simulated server with the recorded GPU costs
(the "realistic" profile: 2 s checkpoint load, 15.5 steps/s, ...), in this one run:

* serial: for each cell in grid order, `Client.run` (upload, submit, wait, download), then the next;
* sweep:  `run_sweep` through the farm: jobs queued ahead, cells ordered for ComfyUI's cache,
          files named after their cells, journal, manifests, grid image and results page.

Three sweeps are measured: denoise x cfg (4 x 5, one checkpoint: only the queue kept full
can help), cfg x checkpoint (10 x 2: in grid order the serial client switches checkpoints on
every cell, the sweep loads each checkpoint once), and cfg x seed with --batch-seeds (5 x 4:
the serial client makes one image a prompt, the sweep one prompt of 4 per cfg).

    python bench/sweep_vs_serial.py              # about 3 minutes
    python bench/sweep_vs_serial.py --speed 4    # costs 4x smaller: quicker, same shape
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from comfy_orchestrator.client import Client
from comfy_orchestrator.farm import Farm
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.sim.costs import profile
from comfy_orchestrator.sim.server import SimServer
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_run import run_sweep
from comfy_orchestrator.templates import Templates

SECOND_CHECKPOINT = "dreamshaper-8.safetensors"


def serial_s(sweep: Sweep, url: str, out: Path) -> float:
    """Wall time of running each cell alone, in grid order: submit, wait, download, next."""
    jobs = [sweep.template.job(cell.params) for cell in sweep.cells()]
    return serial_jobs_s(jobs, url, out)


def serial_jobs_s(jobs: Sequence[Job], url: str, out: Path) -> float:
    """Wall time of running `jobs` one at a time."""
    started = time.perf_counter()
    with Client(url) as client:
        for job in jobs:
            client.run(job, out_dir=out)
    return time.perf_counter() - started


def sweep_s(sweep: Sweep, url: str, out: Path) -> float:
    """Wall time of the same cells as a sweep through the farm, results page included."""
    started = time.perf_counter()
    report = run_sweep(sweep, out, Farm([url]))
    elapsed = time.perf_counter() - started
    if report.done != report.total:
        raise SystemExit(f"the sweep left {report.total - report.done} cells not done: {report.failures}")
    return elapsed


def measure(name: str, sweep: Sweep, speed: float, work: Path, serial_jobs: Sequence[Job] = ()) -> None:
    """Both ways, each on its own fresh (cold) server; `serial_jobs` replace the sweep's cells on the serial side."""
    costs = profile("realistic").scaled(speed)
    checkpoints = (DEFAULT_CHECKPOINT, SECOND_CHECKPOINT)
    with SimServer(costs=costs, checkpoints=checkpoints) as server:
        serial = (serial_jobs_s(serial_jobs, server.url, work / f"{name}-serial") if serial_jobs
                  else serial_s(sweep, server.url, work / f"{name}-serial"))
        serial_loads = server.counters.checkpoint_loads
    with SimServer(costs=costs, checkpoints=checkpoints) as server:
        swept = sweep_s(sweep, server.url, work / f"{name}-sweep")
        sweep_loads = server.counters.checkpoint_loads
    print(f"{name:22s} {len(sweep):3d} cells  serial {serial:7.2f} s ({serial_loads:2d} loads)  "
          f"sweep {swept:7.2f} s ({sweep_loads:2d} loads)  speed-up x{serial / swept:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0, help="divide the recorded costs by this")
    args = parser.parse_args(argv)
    library = Templates.default()
    img2img = library.get("img2img")
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as folder, \
            resources.as_file(resources.files("comfy_orchestrator").joinpath("data/sample.png")) as sample:
        work = Path(folder)
        fixed = {"image": str(sample), "seed": 7}
        grid = Sweep(img2img, (parse_axis("denoise=0.3:0.9:0.2"), parse_axis("cfg=5:9")), fixed)
        models = Sweep(img2img, (parse_axis("cfg=3:12"),
                                 parse_axis(f"checkpoint={DEFAULT_CHECKPOINT},{SECOND_CHECKPOINT}")), fixed)
        print(f"simulated server, realistic costs / {args.speed:g}; one server; wall time per side")
        measure("denoise x cfg", grid, args.speed, work)
        measure("cfg x checkpoint", models, args.speed, work)
        # 20 variations: the serial client runs one image a prompt; the sweep batches the seeds
        variations = library.get("variations")
        image = {"image": str(sample)}
        seeds = Sweep(variations, (parse_axis("cfg=5:9"), parse_axis("seed=1:4")), image, batch_seeds=True)
        one_each = [variations.job(variations.params(image | {"cfg": cfg, "seed": seed, "batch_size": 1}))
                    for cfg in range(5, 10) for seed in range(1, 5)]
        measure("cfg x seed, batched", seeds, args.speed, work, one_each)


if __name__ == "__main__":
    main()
