"""The GPU benchmarks' measuring parts (not a test): ComfyUI started through docker/entrypoint.sh, each
prompt's record from its server's history, GPU busy % from nvidia-smi, where servers x wall went, and
`Bench`, the servers and the rows gathered so far. bench/gpu_suite.py and bench/sweep_ceiling.py build on it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
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
from comfy_orchestrator.dispatch import Dispatch, SoonestFinish
from comfy_orchestrator.farm import Farm, JobFailed
from comfy_orchestrator.jobs import Job, JobResult
from comfy_orchestrator.servers import ServerConfig
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_progress import SweepProgress
from comfy_orchestrator.sweep_run import run_sweep
from comfy_orchestrator.templates import Templates

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "comfy_orchestrator" / "data" / "sample.png"

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
