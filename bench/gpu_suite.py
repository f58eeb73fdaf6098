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
(median, max), where the rest of servers x wall went (lead, gaps, wind-down, end: see figures()),
and the mean GPU busy % from nvidia-smi samples when there is one. The client's peak memory is
its max RSS, and the tracemalloc peak over the sweep-20 cells run again last (apart, as tracing
slows the client).
Rehearse without a GPU against simulated servers:
``comfy-orch sim --port 8188 --profile realistic --checkpoint random-sd15.safetensors
--checkpoint random-sd15-b.safetensors`` (one per port), then ``--server`` as above.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from comfy_orchestrator.client import Client
from comfy_orchestrator.dispatch import Dispatch, RoundRobin, SoonestFinish
from comfy_orchestrator.farm import Farm, JobFailed
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.servers import ServerConfig
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_run import SweepProgress, plan_sweep, run_sweep
from comfy_orchestrator.templates import Templates

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "comfy_orchestrator" / "data" / "sample.png"
SWEEP_20 = ("denoise=0.3:0.9:0.2", "cfg=5:9")
GRID_5X5 = ("denoise=0.3:0.7:0.1", "cfg=5:9")
GRID_10X10 = ("denoise=0.3:0.75:0.05", "cfg=4.5:9:0.5")
TARGETS = {"sweep_vs_one_image_ceiling": 0.95, "seeds_vs_batch_ceiling": 0.95, "two_gpu_scaling": 1.9,
           "efficiency": 0.97, "idle_gap_median_ms": 20.0, "checkpoint_loads_per_server": 1}


@dataclass(frozen=True)
class PromptRecord:
    """One prompt as its server recorded it."""

    server: str
    start_s: float
    end_s: float
    nodes: dict[str, str]  # node id -> class type
    cached: frozenset[str]

    def ran(self, class_type: str) -> int:
        """How many nodes of `class_type` this prompt executed (rather than took from the cache)."""
        return sum(1 for node_id, kind in self.nodes.items() if kind == class_type and node_id not in self.cached)


class GpuSampler:
    """nvidia-smi samples of GPU busy % and power, every 200 ms, in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, float, float]] = []  # (monotonic s, gpu index, busy %, watts)
        self._process: subprocess.Popen[str] | None = None
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,power.draw", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.monotonic(), int(parts[0]), float(parts[1]), float(parts[2])))
            except (ValueError, IndexError):
                continue  # "[N/A]" power on some boards: the sample carries nothing we use

    def busy(self, start_s: float, end_s: float, gpu: int = 0) -> dict[str, float | None]:
        """Mean busy % and watts of `gpu` between two monotonic times."""
        window = [(u, w) for t, g, u, w in self.samples if g == gpu and start_s <= t <= end_s]
        if not window:
            return {"gpu_busy_pct": None, "gpu_watts": None}
        return {"gpu_busy_pct": round(statistics.fmean(u for u, _ in window), 1),
                "gpu_watts": round(statistics.fmean(w for _, w in window), 1)}

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)


def history_records(pairs: Iterable[tuple[str, str]]) -> list[PromptRecord]:
    """Each (server URL, prompt id)'s record: start and end from its status messages, what it ran."""
    clients: dict[str, Client] = {}
    records = []
    try:
        for url, prompt_id in pairs:
            client = clients.setdefault(url, Client(url))
            entry = client.history_entry(prompt_id) or {}
            marks: dict[str, Any] = {}
            for kind, data in (entry.get("status") or {}).get("messages", []):
                marks[kind] = data
            start = (marks.get("execution_start") or {}).get("timestamp")
            end = (marks.get("execution_success") or {}).get("timestamp")
            prompt = entry.get("prompt") or []
            graph = prompt[2] if len(prompt) > 2 and isinstance(prompt[2], dict) else {}
            if start and end:
                records.append(PromptRecord(
                    server=url, start_s=start / 1000, end_s=end / 1000,
                    nodes={node_id: str(node.get("class_type")) for node_id, node in graph.items()},
                    cached=frozenset((marks.get("execution_cached") or {}).get("nodes") or ())))
    finally:
        for client in clients.values():
            client.close()
    return records


GC_GAP_S = 0.1  # a gap this long between two prompts on a server is ComfyUI's own gc.collect + empty_cache


def figures(name: str, records: Sequence[PromptRecord], *, servers: int, images: int, wall_s: float,
            sampler: GpuSampler, started: float) -> dict[str, Any]:
    """A row: throughput, efficiency, idle gaps, the work the servers did, and where the idle time went.

    servers x wall = the servers' execution time + the losses, each a share of servers x wall:
    lead (row start to each server's first prompt: the client's setup, probes, uploads, first
    submit), gaps (between prompts on a server; those over GC_GAP_S are ComfyUI's garbage
    collection), wind-down (each server's last prompt end to the last end of all: the tail of a
    finite run) and end (the last end to the row's end: the last download, then the client's
    own finishing work such as grids), and servers left without a prompt.
    """
    wall_start = time.time() - (time.monotonic() - started)  # history timestamps are wall-clock
    wall_end = wall_start + wall_s
    spans: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        spans.setdefault(record.server, []).append((record.start_s, record.end_s))
    for runs in spans.values():
        runs.sort()
    busy_s = sum(end - start for runs in spans.values() for start, end in runs)
    gaps = [later[0] - earlier[1] for runs in spans.values() for earlier, later in zip(runs, runs[1:])]
    last_end = max((runs[-1][1] for runs in spans.values()), default=wall_end)
    capacity = servers * wall_s
    losses = {
        "lead": sum(max(runs[0][0] - wall_start, 0.0) for runs in spans.values()),
        "gaps_short": sum(g for g in gaps if g < GC_GAP_S),
        "gaps_gc": sum(g for g in gaps if g >= GC_GAP_S),
        "wind_down": sum(last_end - runs[-1][1] for runs in spans.values()),
        "end": len(spans) * max(wall_end - last_end, 0.0),
        "unused_servers": (servers - len(spans)) * wall_s,
    }
    row = {"row": name, "servers": servers, "prompts": len(records), "images": images, "wall_s": round(wall_s, 2),
           "images_per_s": round(images / wall_s, 3), "efficiency": round(busy_s / capacity, 3),
           "steady_images_per_s": steady_rate(spans, images / max(len(records), 1)),
           "idle_gap_median_ms": round(statistics.median(gaps) * 1000, 1) if gaps else None,
           "idle_gap_max_ms": round(max(gaps) * 1000, 1) if gaps else None,
           "gc_pauses": sum(1 for g in gaps if g >= GC_GAP_S),
           "loss": {key: round(value / capacity, 3) for key, value in losses.items()},
           "node_executions": sum(len(r.nodes) - len(r.cached & set(r.nodes)) for r in records),
           "checkpoint_loads": sum(r.ran("CheckpointLoaderSimple") for r in records),
           "image_encodes": sum(r.ran("VAEEncode") for r in records),
           "servers_used": len(spans),
           "prompts_per_server": sorted((len(runs) for runs in spans.values()), reverse=True)}
    row.update(sampler.busy(started, started + wall_s))
    print(json.dumps(row), flush=True)
    return row


def steady_rate(spans: dict[str, list[tuple[float, float]]], images_per_prompt: float) -> float | None:
    """Images/s while every server had work: from the moment all had finished a first prompt to
    the moment the first ran out, the prompt-work done in that window (each prompt counted by the
    share of its run inside it) over its length; None when the window is too short to tell."""
    if not spans or any(len(runs) < 3 for runs in spans.values()):
        return None
    begin = max(runs[0][1] for runs in spans.values())
    finish = min(runs[-1][1] for runs in spans.values())
    if finish - begin < 2.0:
        return None
    work = sum(max(min(end, finish) - max(start, begin), 0.0) / (end - start)
               for runs in spans.values() for start, end in runs if end > start)
    return round(work * images_per_prompt / (finish - begin), 3)


class Bench:
    """The servers, the input picture and the figures gathered so far."""

    def __init__(self, urls: Sequence[str], checkpoints: Sequence[str], work: Path, steps: int, size: int,
                 partial: Path | None = None) -> None:
        self.urls = list(urls)
        self.partial = partial  # rows so far go here, so a run cut short still leaves its figures
        self.checkpoints = list(checkpoints)
        self.work = work
        self.steps = steps
        self.image = work / "input.png"
        Image.open(SAMPLE).convert("RGB").resize((size, size)).save(self.image)
        self.sampler = GpuSampler()
        self.rows: list[dict[str, Any]] = []
        self.library = Templates.default()

    def fixed(self, **extra: Any) -> dict[str, Any]:
        return {"image": str(self.image), "steps": self.steps, "checkpoint": self.checkpoints[0], "seed": 7, **extra}

    def sweep(self, axes: Sequence[str], template: str = "img2img", batch_seeds: bool = False,
              **fixed: Any) -> Sweep:
        values = self.fixed(**fixed)
        names = {spec.split("=")[0] for spec in axes}
        return Sweep(self.library.get(template), tuple(parse_axis(a) for a in axes),
                     {k: v for k, v in values.items() if k not in names}, batch_seeds=batch_seeds)

    def prime(self, urls: Sequence[str], checkpoint: str | None = None) -> None:
        """One untimed prompt on each server at once, so that a row starts warm with `checkpoint` loaded."""
        template = self.library.get("img2img")
        errors: list[BaseException] = []

        def warm(index: int, url: str) -> None:
            try:
                with Client(url) as client:
                    client.run(template.job(template.params(self.fixed(
                        checkpoint=checkpoint or self.checkpoints[0], seed=90_000 + index))))
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=warm, args=(i, u)) for i, u in enumerate(urls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        if errors:
            raise errors[0]

    def serial(self, name: str, jobs: Sequence[Job]) -> dict[str, Any]:
        """One job at a time on the first server: submit, wait, download, next."""
        self.prime(self.urls[:1])
        started = time.monotonic()
        pairs, images = [], 0
        with Client(self.urls[0]) as client:
            for job in jobs:
                result = client.run(job, out_dir=self.work / name)
                pairs.append((self.urls[0], result.prompt_id))
                images += len(result.files)
        wall_s = time.monotonic() - started
        return self.add(figures(name, history_records(pairs), servers=1, images=images, wall_s=wall_s,
                                sampler=self.sampler, started=started))

    def farm(self, name: str, urls: Sequence[str], jobs: Sequence[Job], dispatch: Dispatch = SoonestFinish(),
             checkpoint: str | None = None, *, queue_ahead: int | None = None, health_interval_s: float = 1.0,
             download: bool = True) -> dict[str, Any]:
        """`jobs` through a farm of `urls`, in the order given."""
        self.prime(urls, checkpoint)
        configs = [ServerConfig(url=u) if queue_ahead is None else ServerConfig(url=u, queue_ahead=queue_ahead)
                   for u in urls]
        farm = Farm(configs, dispatch=dispatch, health_interval_s=health_interval_s)
        by_name = {config.name: config.url for config in farm.servers}
        started = time.monotonic()
        outcomes = list(farm.run(jobs, out_dir=self.work / name if download else None))
        wall_s = time.monotonic() - started
        failed = [o for o in outcomes if isinstance(o, JobFailed)]
        if failed:
            raise SystemExit(f"{name}: {len(failed)} prompts failed: {failed[0].error}")
        results = [o for o in outcomes if isinstance(o, JobResult)]
        pairs = [(by_name.get(r.server, r.server), r.prompt_id) for r in results]
        return self.add(figures(name, history_records(pairs), servers=len(urls),
                                images=sum(len(r.files) or len(r.outputs) for r in results), wall_s=wall_s, sampler=self.sampler,
                                started=started))

    def swept(self, name: str, urls: Sequence[str], sweep: Sweep, *, trace: bool = False) -> dict[str, Any]:
        """`sweep` through `run_sweep` over a farm of `urls` (cache-aware order, journal, grids, page)."""
        self.prime(urls)
        farm = Farm(list(urls))
        by_name = {config.name: config.url for config in farm.servers}
        if trace:
            tracemalloc.start()
        started = time.monotonic()
        last_cell: list[float] = []  # when the consumer had recorded every cell: the run's end, before its finish

        def on_progress(progress: SweepProgress) -> None:
            if progress.done + progress.failed == progress.total and not last_cell:
                last_cell.append(time.monotonic() - started)

        report = run_sweep(sweep, self.work / name, farm, on_progress=on_progress)
        wall_s = time.monotonic() - started
        traced = tracemalloc.get_traced_memory()[1] if trace else None
        if trace:
            tracemalloc.stop()
        if report.done != report.total:
            raise SystemExit(f"{name}: {report.total - report.done} cells not done: {dict(report.failures)}")
        entries = [json.loads(line) for line in report.manifest.read_text().splitlines()]
        pairs = sorted({(by_name.get(e["server"], e["server"]), e["prompt_id"]) for e in entries})
        row = figures(name, history_records(pairs), servers=len(urls), images=report.done, wall_s=wall_s,
                      sampler=self.sampler, started=started)
        row["phases_s"] = dict(report.phases, last_cell_recorded=round(last_cell[0], 3) if last_cell else None)
        if traced is not None:
            row["client_tracemalloc_peak_mb"] = round(traced / 2**20, 1)
        return self.add(row)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(row)
        if self.partial is not None:
            self.partial.write_text(json.dumps({"rows": self.rows}, indent=2))
        return row


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


def machine() -> dict[str, Any]:
    """The GPU, driver and host this run measured."""
    info: dict[str, Any] = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
                            "python": platform.python_version()}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["gpus"] = [line.strip() for line in query.stdout.splitlines() if line.strip()]
    return info


def start_servers(comfyui_dir: Path, python: str, processes: int, port: int, log_dir: Path,
                  extra: Sequence[str], gpus: Sequence[int] = (0,)) -> tuple[subprocess.Popen[bytes], list[str]]:
    """docker/entrypoint.sh with `processes` ComfyUI processes on each of `gpus`; wait until each answers.

    The entrypoint numbers ports GPU by GPU: GPU gpus[0]'s processes come first.
    """
    command = [str(REPO / "docker" / "entrypoint.sh"), "--comfyui-dir", str(comfyui_dir), "--python", python,
               "--gpus", ",".join(str(gpu) for gpu in gpus), "--processes-per-gpu", str(processes),
               "--port", str(port), "--log-dir", str(log_dir), "--", *extra]
    entry = subprocess.Popen(command, start_new_session=True)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(processes * len(gpus))]
    deadline = time.monotonic() + 300
    pause = threading.Event()
    for url in urls:
        while True:
            try:
                if requests.get(f"{url}/system_stats", timeout=5).ok:
                    break
            except requests.RequestException:
                pass  # not listening yet
            if entry.poll() is not None or time.monotonic() > deadline:
                entry.terminate()
                raise SystemExit(f"{url} did not come up (entrypoint rc {entry.poll()}); see {log_dir}")
            pause.wait(0.5)
    return entry, urls


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
    import sweep_ceiling  # issue 17's rows; it builds on this module's Bench and figures

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
