"""Benchmark rows of issue 17 (not a test): `comfy-orch sweep`, timed from outside, against a bare loop.

Run through ``bench/gpu_suite.py --ceiling`` (which starts the servers through docker/entrypoint.sh,
4 a GPU) or on its own against servers already running, grouped by GPU::

    python bench/sweep_ceiling.py --gpu-servers URL,URL,URL,URL --gpu-servers URL,URL,URL,URL

Rows, each measured in this run on the same servers (img2img 512x512, 20 steps, a 10x10 denoise x
cfg grid, a new seed a row so nothing comes from ComfyUI's cache):

* bare-k: ComfyUI's own API and nothing else: one thread a server keeps `--depth` prompts (3)
  queued from one shared list (POST /prompt, a websocket read to each prompt's closing
  ``executing``), no downloads, nothing written; the ceiling a client can reach;
* command-k: the same 100 cells through ``comfy-orch sweep`` run as a subprocess, its wall time
  from before the interpreter starts to its exit (imports, probes, journal, downloads,
  thumbnails, grid, results page all inside), and how much of it lies outside its own sweep;
* example: ComfyUI's script_examples/websockets_api_example.py written out, one job at a time
  on the first server (POST, websocket to ``executing`` null, /history, /view), a reference;
* batch-16 and seeds: one variations prompt of 16 on an idle server (16 / its server time, the
  batch ceiling) against a cfg 4 x seed 16 sweep of batched seeds through the command on GPU 0.

k is GPU 0's servers, then every GPU's. Each row also gives each GPU's busy % (nvidia-smi) and
where servers x wall went (gpu_measure.figures: lead, gaps, wind-down, end).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import requests
import websocket
from gpu_measure import Bench, figures, history_records, machine

from comfy_orchestrator.servers import ServerConfig
from comfy_orchestrator.sweep_run import plan_sweep

GRID_AXES = ("denoise=0.3:0.75:0.05", "cfg=4.5:9:0.5")  # 10 x 10
SEED_AXES = ("cfg=5:8", "seed=1:16")  # 4 prompts of a batch of 16
TARGETS = {"one_gpu_vs_bare": 0.97, "all_gpus_vs_bare": 0.95, "two_gpu_scaling": 1.93}
WAIT_S = 600.0  # a prompt that takes longer than this has hung the row


def api_prompts(bench: Bench, axes: Sequence[str], seed: int, template: str = "img2img",
                batch_seeds: bool = False) -> list[dict[str, Any]]:
    """The API-format prompts of a sweep, in the order the command runs them."""
    sweep = bench.sweep(axes, template=template, batch_seeds=batch_seeds, seed=seed)  # a seed axis wins
    return [job.graph.to_api() for job in plan_sweep(sweep).jobs]


def bare_loop(urls: Sequence[str], prompts: Sequence[dict[str, Any]], *, depth: int) -> tuple[float, list[tuple[str, str]]]:
    """Each server keeps `depth` prompts queued from one shared list; seconds from the first POST to the last end."""
    todo = collections.deque(prompts)
    lock = threading.Lock()
    pairs: list[tuple[str, str]] = []
    ends: list[float] = []
    errors: list[BaseException] = []
    client_id = uuid.uuid4().hex
    sockets = []
    for url in urls:
        ws = websocket.WebSocket()
        ws.connect(url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=WAIT_S)
        sockets.append(ws)

    def serve(url: str, ws: websocket.WebSocket) -> None:
        session = requests.Session()
        flying: set[str] = set()

        def submit() -> bool:
            with lock:
                if not todo or errors:
                    return False
                prompt = todo.popleft()
            prompt_id = uuid.uuid4().hex
            flying.add(prompt_id)
            session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id},
                         timeout=60).raise_for_status()
            return True

        try:
            while len(flying) < depth and submit():
                pass
            while flying:
                message = ws.recv()
                if not isinstance(message, str):
                    continue
                body = json.loads(message)
                data = body.get("data") or {}
                if body.get("type") == "execution_error" and data.get("prompt_id") in flying:
                    raise RuntimeError(f"{url}: {data.get('exception_message')}")
                if body.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") in flying:
                    flying.discard(data["prompt_id"])
                    with lock:
                        pairs.append((url, data["prompt_id"]))
                        ends.append(time.monotonic())
                    submit()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
        finally:
            session.close()

    threads = [threading.Thread(target=serve, args=(url, ws)) for url, ws in zip(urls, sockets)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ws in sockets:
        ws.close()
    if errors:
        raise SystemExit(f"bare loop failed: {errors[0]}")
    return max(ends) - started, pairs


def example_loop(url: str, prompts: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """ComfyUI's websockets_api_example.py: one job at a time, as its get_images() does it."""
    address = url.split("://", 1)[1]
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{address}/ws?clientId={client_id}", timeout=WAIT_S)
    pairs = []
    try:
        for prompt in prompts:
            data = json.dumps({"prompt": prompt, "client_id": client_id}).encode("utf-8")
            request = urllib.request.Request(f"http://{address}/prompt", data=data)
            prompt_id = json.loads(urllib.request.urlopen(request).read())["prompt_id"]
            while True:
                out = ws.recv()
                if isinstance(out, str):
                    message = json.loads(out)
                    if message["type"] == "executing" and message["data"]["node"] is None \
                            and message["data"]["prompt_id"] == prompt_id:
                        break
            with urllib.request.urlopen(f"http://{address}/history/{prompt_id}") as response:
                history = json.loads(response.read())[prompt_id]
            images = []
            for node_output in history["outputs"].values():
                for image in node_output.get("images", ()):
                    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                                    "type": image["type"]})
                    with urllib.request.urlopen(f"http://{address}/view?{query}") as response:
                        images.append(response.read())
            if not images:
                raise SystemExit("the example loop got no image")
            pairs.append((url, prompt_id))
    finally:
        ws.close()
    return pairs


def answer_times(urls: Sequence[str]) -> dict[str, dict[str, float]]:
    """Seconds each server takes to answer what a client asks first (/system_stats, then /object_info), idle."""
    times = {}
    with requests.Session() as session:
        for url in urls:
            times[url] = {}
            for route in ("/system_stats", "/object_info"):
                started = time.monotonic()
                session.get(f"{url}{route}", timeout=60).raise_for_status()
                times[url][route] = round(time.monotonic() - started, 3)
    return times


class Ceiling:
    """The rows: the servers grouped by GPU, the command to time, and the figures so far."""

    def __init__(self, bench: Bench, groups: Sequence[Sequence[str]], command: Sequence[str], depth: int) -> None:
        self.bench = bench
        self.groups = [list(group) for group in groups]
        self.command = list(command)
        self.depth = depth
        self.seed = 1000  # every row its own seed: nothing comes from ComfyUI's cache
        # The command loads from bytecode, as an installed package does (pip compiles what it installs), even
        # where the environment says not to write any (PYTHONDONTWRITEBYTECODE) or the site-packages hold none:
        # the warm-up row writes it into a folder of the bench's own, and every later row reads it from there.
        self.environment = {**{name: value for name, value in os.environ.items()
                               if name != "PYTHONDONTWRITEBYTECODE"},
                            "PYTHONPYCACHEPREFIX": str(bench.work / "bytecode")}

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed

    def gpus(self, urls: Sequence[str]) -> list[int]:
        return [index for index, group in enumerate(self.groups) if set(group) & set(urls)]

    def row(self, name: str, urls: Sequence[str], pairs: Sequence[tuple[str, str]], images: int, wall_s: float,
            started: float) -> dict[str, Any]:
        row = figures(name, history_records(pairs), servers=len(urls), images=images, wall_s=wall_s,
                      sampler=self.bench.sampler, started=started)
        for gpu in self.gpus(urls):
            row[f"gpu{gpu}_busy_pct"] = self.bench.sampler.busy(started, started + wall_s, gpu)["gpu_busy_pct"]
        return row

    def bare(self, name: str, urls: Sequence[str], axes: Sequence[str] = GRID_AXES, **kinds: Any) -> dict[str, Any]:
        prompts = api_prompts(self.bench, axes, self.next_seed(), **kinds)
        started = time.monotonic()
        wall_s, pairs = bare_loop(urls, prompts, depth=self.depth)
        images = len(prompts) * (16 if kinds.get("batch_seeds") else 1)
        return self.bench.add(self.row(name, urls, pairs, images, wall_s, started))

    def example(self, name: str, count: int) -> dict[str, Any]:
        url = self.groups[0][0]
        prompts = api_prompts(self.bench, GRID_AXES, self.next_seed())[:count]
        started = time.monotonic()
        pairs = example_loop(url, prompts)
        wall_s = time.monotonic() - started
        return self.bench.add(self.row(name, [url], pairs, len(pairs), wall_s, started))

    def batch(self, name: str) -> dict[str, Any]:
        """One batch-16 prompt on an idle server: 16 / the server's own time for it is the batch ceiling."""
        variations = self.bench.library.get("variations")
        prompt = variations.job(variations.params(self.bench.fixed(batch_size=16, seed=self.next_seed()))).graph
        url = self.groups[0][0]
        started = time.monotonic()
        wall_s, pairs = bare_loop([url], [prompt.to_api()], depth=1)
        row = self.row(name, [url], pairs, 16, wall_s, started)
        record = history_records(pairs)[0]
        row["batch_ceiling_images_per_s"] = round(16 / (record.end_s - record.start_s), 3)
        return self.bench.add(row)

    def sweep_command(self, name: str, urls: Sequence[str], axes: Sequence[str] = GRID_AXES,
                      template: str = "img2img", extra: Sequence[str] = (), trace: Path | None = None) -> dict[str, Any]:
        """`comfy-orch sweep` as a subprocess: wall time from before the interpreter starts to its exit.

        With `trace`, the command runs under bench/traced_command.py (every log line timestamped from
        the launch) and its log goes to that file: a slower run, kept out of the ratios.
        """
        seed = self.next_seed()
        out = self.bench.work / f"{name}-{seed}"  # a repeated row runs a new sweep into a new folder
        sets = {**self.bench.fixed(), "seed": seed}
        names = {axis.split("=")[0] for axis in axes}
        arguments = ["sweep", template, *[f"--server={url}" for url in urls], *[f"--axis={axis}" for axis in axes],
                     *[f"--set={key}={value}" for key, value in sets.items() if key not in names],
                     f"--out={out}", *extra]
        started = time.monotonic()
        launched_at = time.time()
        argv = [*self.command, *arguments] if trace is None else \
            [sys.executable, str(Path(__file__).with_name("traced_command.py")), repr(launched_at), *arguments]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S, env=self.environment)
        if trace is not None:
            trace.write_text(done.stderr)
        wall_s = time.monotonic() - started
        exited_at = time.time()
        if done.returncode != 0:
            raise SystemExit(f"{name}: {' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
        by_name = {ServerConfig(url=url).name: url for url in urls}
        entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        pairs = sorted({(by_name.get(e["server"], e["server"]), e["prompt_id"]) for e in entries})
        row = self.row(name, urls, pairs, len(entries), wall_s, started)
        records = history_records(pairs)
        inside = re.search(r"cells already done\) in ([0-9.]+) s", done.stdout)
        row["command"] = {
            "sweep_s": float(inside.group(1)) if inside else None,  # run_sweep's own time, as it reports it
            "outside_sweep_s": round(wall_s - float(inside.group(1)), 3) if inside else None,
            # the command's own marks (the journal's) against the servers' (history) and the clock outside
            "launch_to_first_submit_s": round(min(e["started_at"] for e in entries) - launched_at, 3),
            "launch_to_first_prompt_start_s": round(min(r.start_s for r in records) - launched_at, 3),
            "last_prompt_end_to_last_record_s": round(max(e["finished_at"] for e in entries)
                                                      - max(r.end_s for r in records), 3),
            "last_record_to_exit_s": round(exited_at - max(e["finished_at"] for e in entries), 3),
            "last_prompt_end_to_exit_s": round(exited_at - max(r.end_s for r in records), 3),
            # each server's first submit and first prompt start, from the launch: one late server (busy
            # answering, or collecting its garbage) against all of them late (the command itself slow)
            "first_submit_by_server_s": _firsts(((e["server"], e["started_at"]) for e in entries), launched_at),
            "first_start_by_server_s": _firsts(((r.server, r.start_s) for r in records), launched_at),
        }
        print(json.dumps({"row": name, "command": row["command"]}), flush=True)
        return self.bench.add(row)


def _firsts(marks: Iterable[tuple[str, float]], since: float) -> list[float]:
    """Each server's earliest mark, in seconds from `since`, earliest first."""
    first: dict[str, float] = {}
    for server, at in marks:
        first[server] = min(at, first.get(server, at))
    return sorted(round(at - since, 3) for at in first.values())


def run_ceiling(ceiling: Ceiling, *, repeats: int, example_jobs: int, trace: Path | None = None) -> dict[str, Any]:
    """Every row (the 100-cell pairs `repeats` times, interleaved), then the ratios and the targets.

    With `trace`, one more command row on every server first, traced into that file (see sweep_command),
    and one more pair at the end whose command row is traced too (into TRACE-after-bare): that row starts
    right after a bare row, as the timed ones do, where the first starts after the warm-up.
    """
    one = ceiling.groups[0]
    every = [url for group in ceiling.groups for url in group]
    ceiling.bench.prime(every)
    answers = answer_times(every)
    # once, untimed in the ratios: the command's modules get their bytecode written, as an install does
    ceiling.sweep_command("warm-up", one[:1], ("cfg=5,6",))
    if trace is not None:  # first, so a run cut short still leaves it
        ceiling.sweep_command(f"traced-{len(every)}", every, trace=trace)
    pairs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {"one": [], "all": []}
    for _ in range(repeats):
        pairs["one"].append((ceiling.bare(f"bare-{len(one)}", one), ceiling.sweep_command(f"command-{len(one)}", one)))
        if len(every) > len(one):
            pairs["all"].append((ceiling.bare(f"bare-{len(every)}", every),
                                 ceiling.sweep_command(f"command-{len(every)}", every)))
    if trace is not None and len(every) > len(one):
        ceiling.bare(f"bare-{len(every)}-before-traced", every)
        ceiling.sweep_command(f"traced-{len(every)}-after-bare", every,
                              trace=trace.with_name(f"{trace.stem}-after-bare{trace.suffix}"))
    example = ceiling.example("example-1", example_jobs)
    batch = ceiling.batch("batch-16")
    seeds = ceiling.sweep_command(f"seeds-{len(one)}", one, SEED_AXES, template="variations", extra=["--batch-seeds"])

    def busy(row: dict[str, Any]) -> dict[str, float | None]:
        return {key: value for key, value in row.items() if re.fullmatch(r"gpu\d+_busy_pct", key)}

    def best(rows: Sequence[dict[str, Any]]) -> float:
        return max(row["images_per_s"] for row in rows)

    summary: dict[str, Any] = {"answer_s": answers}
    for key, found in pairs.items():
        if not found:
            continue
        bare_rate, command_rate = best([b for b, _ in found]), best([c for _, c in found])
        summary[key] = {"servers": found[0][0]["servers"], "bare_images_per_s": bare_rate,
                        "command_images_per_s": command_rate,
                        "command_vs_bare": round(command_rate / bare_rate, 3),
                        "each_pair_vs_bare": [round(c["images_per_s"] / b["images_per_s"], 3) for b, c in found],
                        "command_outside_sweep_s": [c["command"]["outside_sweep_s"] for _, c in found],
                        "gpu_busy_pct": {"bare": [busy(b) for b, _ in found], "command": [busy(c) for _, c in found]}}
    summary["example_images_per_s"] = example["images_per_s"]
    summary["one"]["command_vs_example"] = round(summary["one"]["command_images_per_s"] / example["images_per_s"], 2)
    summary["seeds"] = {"command_images_per_s": seeds["images_per_s"],
                        "batch_ceiling_images_per_s": batch["batch_ceiling_images_per_s"],
                        "vs_batch_ceiling": round(seeds["images_per_s"] / batch["batch_ceiling_images_per_s"], 3)}
    met = {"one_gpu_command_at_least_0.97_of_bare": summary["one"]["command_vs_bare"] >= TARGETS["one_gpu_vs_bare"]}
    if "all" in summary:
        summary["two_gpu_scaling"] = {
            "command": round(summary["all"]["command_images_per_s"] / summary["one"]["command_images_per_s"], 3),
            "bare": round(summary["all"]["bare_images_per_s"] / summary["one"]["bare_images_per_s"], 3)}
        met["all_gpus_command_at_least_0.95_of_bare"] = summary["all"]["command_vs_bare"] >= TARGETS["all_gpus_vs_bare"]
        met["command_scales_at_least_1.93x"] = summary["two_gpu_scaling"]["command"] >= TARGETS["two_gpu_scaling"]
    summary["met"] = met
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpu-servers", action="append", required=True, metavar="URL,URL,...",
                        help="one GPU's servers, comma-separated (repeat per GPU)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--checkpoint", default="random-sd15.safetensors")
    parser.add_argument("--json", type=Path, default=Path("gpu-ceiling.json"))
    add_options(parser)
    args = parser.parse_args(argv)
    groups = [[url for url in spec.split(",") if url] for spec in args.gpu_servers]
    return measure(groups, args, checkpoint=args.checkpoint)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of these rows alone, also taken by gpu_suite.py --ceiling."""
    parser.add_argument("--repeats", type=int, default=1, help="times each 100-cell bare/command pair runs")
    parser.add_argument("--depth", type=int, default=3, help="prompts the bare loop keeps queued on each server")
    parser.add_argument("--example-jobs", type=int, default=20, help="jobs of the one-at-a-time example row")
    parser.add_argument("--command", default=f"{sys.executable} -m comfy_orchestrator.cli",
                        help="how to start comfy-orch (split on spaces)")
    parser.add_argument("--trace", type=Path, help="one more command row on every server, its timestamped log here")


def measure(groups: Sequence[Sequence[str]], args: argparse.Namespace, *, checkpoint: str) -> int:
    """The rows on servers already up (args: steps, size, json and add_options'); the JSON file and a table."""
    with tempfile.TemporaryDirectory(prefix="sweep-ceiling-") as folder:
        bench = Bench([url for group in groups for url in group], [checkpoint], Path(folder), args.steps,
                      args.size, partial=args.json)
        try:
            summary = run_ceiling(Ceiling(bench, groups, args.command.split(), args.depth), repeats=args.repeats,
                                  example_jobs=args.example_jobs, trace=args.trace)
        finally:
            bench.sampler.stop()
    results = {"machine": machine(), "gpus": len(groups), "servers_per_gpu": [len(g) for g in groups],
               "steps": args.steps, "size": args.size, "depth": args.depth, "command": args.command,
               "targets": TARGETS, "rows": bench.rows, "summary": summary}
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{'row':12} {'srv':>3} {'img':>4} {'wall s':>7} {'img/s':>7} {'lead':>5} {'wind':>5} {'end':>5} gpu busy %")
    for row in bench.rows:
        busy = " ".join(f"{row[k]}" for k in sorted(row) if re.fullmatch(r"gpu\d+_busy_pct", k))
        loss = row["loss"]
        print(f"{row['row']:12} {row['servers']:3d} {row['images']:4d} {row['wall_s']:7.2f} {row['images_per_s']:7.3f} "
              f"{loss['lead']:5.3f} {loss['wind_down']:5.3f} {loss['end']:5.3f} {busy}")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
