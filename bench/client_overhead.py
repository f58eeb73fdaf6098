"""Benchmark (not a test): the client's own CPU per job, against ComfyUI's websocket example loop.

Every client runs in a process of its own against simulated servers (instant nodes) in
other processes, and each row is that client process's own CPU time (user + system, all
its threads, from getrusage) spent on the measured jobs, divided by their number. Wall
time would hide the client's cost: the server shares the machine.

Rows, each the same img2img prompt with a new seed (nothing cached):
- example loop: ComfyUI's script_examples/websockets_api_example.py written out (urllib
  POST /prompt, websocket-client read to `executing` null, GET /history, GET /view of each
  image into memory), one job at a time; the baseline, with and without the /view reads;
- Client.run, without and with downloading the outputs (out_dir);
- Farm.run over one and over four servers, downloading;
- Template.job + Client.run with download: the same from parameters, as a sweep cell is
  made (rendering and checking the template counted too).

With --profile, each of our rows runs once more under cProfile (every thread) and prints
where the time goes. One command reproduces the table:

    python bench/client_overhead.py --jobs 300 --rounds 3 --profile 12
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib.util
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import pstats
import resource
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
FARM_SERVERS = 4


@functools.cache
def reference_prompt() -> Callable[..., dict[str, Any]]:
    """img2img_prompt of docker/smoke_test.py, the one copy of the reference img2img prompt."""
    spec = importlib.util.spec_from_file_location("smoke_test", Path(__file__).resolve().parents[1] / "docker"
                                                  / "smoke_test.py")
    assert spec is not None and spec.loader is not None
    smoke_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke_test)
    made: Callable[..., dict[str, Any]] = smoke_test.img2img_prompt
    return made


def prompt(image: str, seed: int) -> dict[str, Any]:
    """The img2img prompt of the img2img template, in API format."""
    return reference_prompt()(image, seed=seed, checkpoint=CHECKPOINT, prefix="bench", positive="a lighthouse",
                              negative="blurry")


# -- the simulated servers, one process each

def serve(conn: multiprocessing.connection.Connection) -> None:
    """Run one simulated server until the parent says stop; tell the parent its URL."""
    from comfy_orchestrator.sim import SimServer

    with SimServer(checkpoints=(CHECKPOINT,)) as server:
        conn.send(server.url)
        conn.recv()


# -- the clients, each run in a fresh process

@dataclass(frozen=True)
class Setup:
    urls: tuple[str, ...]
    source: Path  # the local input picture
    image: str  # its name on the servers (uploaded there already)
    out_dir: Path
    jobs: int
    warmup: int


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def example_loop(setup: Setup, seeds: range, *, download: bool) -> None:
    """ComfyUI's websockets_api_example.py: one job at a time, as its get_images() does it."""
    import websocket

    server_address = setup.urls[0].split("://", 1)[1]
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server_address}/ws?clientId={client_id}")
    try:
        for seed in seeds:
            prompt_id = str(uuid.uuid4())
            data = json.dumps({"prompt": prompt(setup.image, seed), "client_id": client_id,
                               "prompt_id": prompt_id}).encode("utf-8")
            urllib.request.urlopen(urllib.request.Request(f"http://{server_address}/prompt", data=data)).read()
            while True:
                out = ws.recv()
                if isinstance(out, str):
                    message = json.loads(out)
                    if message["type"] == "executing":
                        body = message["data"]
                        if body["node"] is None and body["prompt_id"] == prompt_id:
                            break
            with urllib.request.urlopen(f"http://{server_address}/history/{prompt_id}") as response:
                history = json.loads(response.read())[prompt_id]
            images = []
            for node_output in history["outputs"].values():
                for image in node_output.get("images", ()):
                    if download:
                        query = urllib.parse.urlencode({"filename": image["filename"],
                                                        "subfolder": image["subfolder"], "type": image["type"]})
                        with urllib.request.urlopen(f"http://{server_address}/view?{query}") as response:
                            images.append(response.read())
                    else:
                        images.append(image["filename"])
            assert images, "the example loop got no image"
    finally:
        ws.close()


def client_loop(setup: Setup, seeds: range, *, download: bool, from_template: bool = False) -> None:
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.graph import Graph
    from comfy_orchestrator.jobs import Job

    make = template_jobs(setup) if from_template else \
        (lambda seed: Job(graph=Graph.from_api(prompt(setup.image, seed)), inputs={setup.image: setup.source}))
    with Client(setup.urls[0]) as client:
        for seed in seeds:
            result = client.run(make(seed), out_dir=setup.out_dir if download else None)
            assert result.outputs and (result.files or not download)


def template_jobs(setup: Setup) -> Callable[[int], Any]:
    from comfy_orchestrator.templates import Templates

    template = Templates.default().get("img2img")

    def make(seed: int) -> Any:
        params = template.params({"image": str(setup.source), "seed": seed, "checkpoint": CHECKPOINT,
                                  "positive": "a lighthouse", "negative": "blurry"})
        return template.job(params)

    return make


def farm_loop(setup: Setup, seeds: range, *, servers: int) -> None:
    from comfy_orchestrator.farm import Farm, JobFailed
    from comfy_orchestrator.graph import Graph
    from comfy_orchestrator.jobs import Job

    def jobs() -> Iterator[Job]:
        for seed in seeds:
            yield Job(graph=Graph.from_api(prompt(setup.image, seed)), inputs={setup.image: setup.source})

    for outcome in Farm(setup.urls[:servers]).run(jobs(), out_dir=setup.out_dir):
        assert not isinstance(outcome, JobFailed), outcome.error


CLIENTS: dict[str, Callable[[Setup, range], None]] = {
    "example loop, no download": lambda setup, seeds: example_loop(setup, seeds, download=False),
    "example loop": lambda setup, seeds: example_loop(setup, seeds, download=True),
    "Client.run": lambda setup, seeds: client_loop(setup, seeds, download=False),
    "Client.run + download": lambda setup, seeds: client_loop(setup, seeds, download=True),
    "Farm, 1 server": lambda setup, seeds: farm_loop(setup, seeds, servers=1),
    f"Farm, {FARM_SERVERS} servers": lambda setup, seeds: farm_loop(setup, seeds, servers=FARM_SERVERS),
    "Template.job + Client.run + download":
        lambda setup, seeds: client_loop(setup, seeds, download=True, from_template=True),
}
BASELINE = {"example loop, no download": "example loop, no download", "Client.run": "example loop, no download"}


def measure(name: str, setup: Setup, profile_top: int) -> tuple[float, str]:
    """In a fresh process: warm up, then the CPU seconds of `setup.jobs` jobs; a profile if asked."""
    loop = CLIENTS[name]
    loop(setup, range(setup.warmup))
    first = 1_000_000 + setup.warmup
    before = cpu_s()
    loop(setup, range(first, first + setup.jobs))
    spent_s = cpu_s() - before
    report = ""
    if profile_top and not name.startswith("example"):
        report = profiled(lambda: loop(setup, range(2_000_000, 2_000_000 + setup.jobs)), profile_top)
    return spent_s, report


def profiled(work: Callable[[], None], top: int) -> str:
    """Run `work` with every thread profiled by its CPU time; the top entries by own time, threads merged."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(*_: Any) -> None:
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()  # replaces this hook for the rest of the thread

    threading.setprofile(start_in_thread)
    main = cProfile.Profile(time.thread_time)
    main.enable()
    try:
        work()
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    text = io.StringIO()
    stats = pstats.Stats(main, stream=text)
    with lock:
        for profile in profiles:
            profile.disable()
            stats.add(profile)
    stats.sort_stats("tottime").print_stats(top)
    lines = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:]).rstrip()


def start_servers(count: int) -> tuple[list[str], list[Any]]:
    context = multiprocessing.get_context("spawn")
    handles = []
    for _ in range(count):
        parent, child = context.Pipe()
        process = context.Process(target=serve, args=(child,), daemon=True)
        process.start()
        handles.append((process, parent))
    urls = [parent.recv() for _, parent in handles]
    return urls, handles


def upload(urls: list[str], source: Path) -> str:
    from comfy_orchestrator.client import Client

    names = set()
    for url in urls:
        with Client(url) as client:
            names.add(client.upload(source))
    (name,) = names
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="measured jobs per row")
    parser.add_argument("--warmup", type=int, default=20, help="jobs run first, not measured")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row; the median is reported")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile our rows once more and print the N entries with most own time")
    parser.add_argument("--only", action="append", choices=list(CLIENTS), help="run only these rows")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    from PIL import Image

    names = args.only or list(CLIENTS)
    for name in names:  # the ratios need their baselines
        base = BASELINE.get(name, "example loop")
        if base not in names:
            names.insert(0, base)
    urls, handles = start_servers(FARM_SERVERS)
    rows: dict[str, float] = {}
    profiles: dict[str, str] = {}
    try:
        with TemporaryDirectory() as folder:
            source = Path(folder) / "input.png"
            Image.new("RGB", (512, 512), (40, 90, 160)).save(source)
            image = upload(urls, source)
            context = multiprocessing.get_context("spawn")
            samples: dict[str, list[float]] = {name: [] for name in names}
            for round_number in range(args.rounds):  # rows interleaved: a busy spell on the machine hits all
                for index, name in enumerate(names):
                    setup = Setup(urls=tuple(urls), source=source, image=image,
                                  out_dir=Path(folder) / f"out-{round_number}-{index}", jobs=args.jobs,
                                  warmup=args.warmup)
                    profile_top = args.profile if round_number == args.rounds - 1 else 0
                    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                        spent_s, report = pool.submit(measure, name, setup, profile_top).result()
                    samples[name].append(spent_s / args.jobs * 1000)
                    if report:
                        profiles[name] = report
                    print(f"  round {round_number + 1}: {name:40s} {samples[name][-1]:6.2f} ms CPU/job",
                          file=sys.stderr, flush=True)
            rows = {name: statistics.median(values) for name, values in samples.items()}
    finally:
        for process, parent in handles:
            parent.send("stop")
            process.join(10)
    print(f"{args.jobs} jobs a row, simulated servers with instant nodes, each client in its own process; "
          f"client CPU (user+sys) per job, median of {args.rounds} interleaved rounds, {os.cpu_count()} CPUs")
    print(f"  {'client':40s} {'CPU ms/job':>10s}  ratio to the example loop")
    for name, ms in rows.items():
        base = BASELINE.get(name, "example loop")
        ratio = "" if name.startswith("example") else f"x{ms / rows[base]:.2f} (of {base!r})"
        print(f"  {name:40s} {ms:10.2f}  {ratio}")
    for name, report in profiles.items():
        print(f"\nprofile of {name!r} ({args.jobs} jobs, CPU seconds of every thread, by own time):\n{report}")
    if args.json:
        args.json.write_text(json.dumps({"jobs": args.jobs, "cpu_ms_per_job": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
