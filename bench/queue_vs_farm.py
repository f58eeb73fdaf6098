"""Benchmark (not a test): a sweep through the queue against the same sweep through the direct farm.

The same cells run on the same simulated servers twice: once as `comfy-orch sweep --server ...`
(the direct farm, the baseline) and once as `comfy-orch sweep --broker ...` with one
`comfy-orch worker` driving all the servers (the queue: Celery on a redis-server of our own).
Every part is a process of its own (each simulated server, redis-server, the worker, each
submitter), so CPU times are each process's own (getrusage of the finished child).

For each row it reports, from the servers' own history records (execution_start and
execution_success of every prompt): the GPU span (first start to last end), throughput, the
servers' busy share of servers x span (efficiency), and the idle gap between consecutive
prompts on a server (median and max); and the CPU time per cell of the submitter and, for the
queue, of the worker. Before each row every server runs one prompt, untimed, so both rows start
with the checkpoint loaded. The target: the queue costs the GPUs no more than 3 % of the direct
farm's throughput.

Seen 2026-11-30 on the 2-core development machine (shared with other work), 3 servers, 36 cells
a row, --repeat 3:

    row                                cells  span s   img/s effic.  gap ms med/max submitter ms/cell worker ms/cell
    direct farm, 3 servers                36   17.77   2.026  0.993         0.0/5.0              59.4
    queue, 1 worker x 3 servers           36   17.61   2.045  0.990         0.0/6.0              46.5           22.2
    direct farm, 3 servers                36   18.63   1.933  0.991         0.0/1.0              68.6
    queue, 1 worker x 3 servers           36   17.88   2.014  0.993         0.0/4.0              50.6           23.1
    direct farm, 3 servers                36   18.13   1.985  0.991         0.0/4.0              61.6
    queue, 1 worker x 3 servers           36   18.78   1.917  0.986         0.0/3.0              49.4           24.7
    queue / direct throughput (medians of 3) x1.015 (-1.5 % cost to the GPUs; target at most 3 %)

The queue keeps every server as busy as the direct farm does (the rows differ by the machine's
noise, a few per cent either way; the median idle gap is 0 ms in both, as each server always has
prompts queued behind the running one). A cell costs the submitter about 50 ms of CPU through the
queue (collecting and writing its image, thumbnail and journal) against about 60 ms direct, and
the worker about 23 ms (Celery, the websocket, the download and base64 of the image).

The simulated servers use the "realistic" cost profile (recorded on an H200 with SD1.5 at
512x512: about 1.4 s a prompt), optionally `--speedup` times faster:

    python bench/queue_vs_farm.py                       # 3 servers, 36 cells a row, 2 pairs: about 3 minutes
    python bench/queue_vs_farm.py --speedup 4 --cells 72
    python bench/queue_vs_farm.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
START_DEADLINE_S = 60.0
SIM_CODE = """
import sys, threading
from comfy_orchestrator.sim import SimServer, profile
server = SimServer(port=int(sys.argv[1]), costs=profile("realistic").scaled(float(sys.argv[2])),
                   preview_method="none")
with server:
    print(server.url, flush=True)
    threading.Event().wait()
"""


@dataclass(frozen=True)
class Row:
    """One sweep over the servers, measured."""

    name: str
    cells: int
    span_s: float
    images_per_s: float
    efficiency: float
    gap_median_ms: float | None
    gap_max_ms: float | None
    submitter_cpu_ms_per_cell: float
    worker_cpu_ms_per_cell: float | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def reap(process: subprocess.Popen[bytes]) -> float:
    """Wait for a child and return its CPU seconds (user + system), from the kernel's own accounting."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def spans(urls: Sequence[str], known: set[str]) -> tuple[list[tuple[str, float, float]], set[str]]:
    """(server, start, end) of each prompt the servers ran that is not in `known`; and every prompt id."""
    found, seen = [], set()
    for url in urls:
        for prompt_id, entry in requests.get(f"{url}/history", timeout=30).json().items():
            seen.add(prompt_id)
            if prompt_id in known:
                continue
            marks = {kind: data.get("timestamp") for kind, data in (entry.get("status") or {}).get("messages", [])}
            if marks.get("execution_start") and marks.get("execution_success"):
                found.append((url, marks["execution_start"] / 1000, marks["execution_success"] / 1000))
    return found, seen


def measured(name: str, runs: list[tuple[str, float, float]], servers: int, cells: int, submitter_cpu_s: float,
             worker_cpu_s: float | None) -> Row:
    if len(runs) != cells:
        raise SystemExit(f"{name}: the servers ran {len(runs)} prompts for {cells} cells")
    span_s = max(end for _, _, end in runs) - min(start for _, start, _ in runs)
    busy_s = sum(end - start for _, start, end in runs)
    gaps = []
    for url in {server for server, _, _ in runs}:
        mine = sorted((start, end) for server, start, end in runs if server == url)
        gaps += [later[0] - earlier[1] for earlier, later in zip(mine, mine[1:])]
    return Row(name, cells, round(span_s, 2), round(cells / span_s, 3), round(busy_s / (servers * span_s), 3),
               round(statistics.median(gaps) * 1000, 1) if gaps else None,
               round(max(gaps) * 1000, 1) if gaps else None, round(submitter_cpu_s / cells * 1000, 1),
               round(worker_cpu_s / cells * 1000, 1) if worker_cpu_s is not None else None)


def sweep_command(image: Path, out: Path, cells: int, *target: str) -> list[str]:
    cfgs = ",".join(str(4 + n % 12) for n in range(12))
    return [sys.executable, "-m", "comfy_orchestrator.cli", "sweep", "img2img", "--set", f"image={image}",
            "--axis", f"cfg={cfgs}", "--axis", f"seed={','.join(str(s) for s in range(1, cells // 12 + 1))}",
            "--out", str(out), *target]


def prime(urls: Sequence[str], image: Path, work: Path) -> None:
    """One untimed prompt on every server, so that every row starts with the checkpoint loaded."""
    for index, url in enumerate(urls):
        subprocess.run([sys.executable, "-m", "comfy_orchestrator.cli", "run", "img2img", "--server", url,
                        "--set", f"image={image}", "--set", f"seed={900 + index}", "--out", str(work / "prime")],
                       check=True, capture_output=True, env=environment(), timeout=120)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--servers", type=int, default=3, help="simulated servers (default 3)")
    parser.add_argument("--cells", type=int, default=36, help="cells a row, a multiple of 12 (default 36)")
    parser.add_argument("--speedup", type=float, default=1.0, help="simulated costs this many times faster")
    parser.add_argument("--repeat", type=int, default=2, help="pairs of rows, alternating (default 2)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.cells % 12:
        parser.error("--cells must be a multiple of 12")
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    children: list[subprocess.Popen[bytes]] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as folder:
        work = Path(folder)
        image = work / "input.png"
        Image.new("RGB", (512, 512), (90, 120, 160)).save(image)
        try:
            urls = []
            for _ in range(args.servers):
                port = free_port()
                children.append(subprocess.Popen([sys.executable, "-c", SIM_CODE, str(port), str(args.speedup)],
                                                 env=environment(), stdout=subprocess.DEVNULL))
                urls.append(f"http://127.0.0.1:{port}")
            redis_port = free_port()
            children.append(subprocess.Popen([redis_server, "--port", str(redis_port), "--save", "", "--appendonly",
                                              "no", "--dir", str(work)], stdout=subprocess.DEVNULL))
            broker = f"redis://127.0.0.1:{redis_port}/0"
            for url in urls:
                wait_for(lambda url=url: _answers(url), f"the simulated server at {url}")
            client = redis.Redis(port=redis_port)
            wait_for(lambda: _pings(client), "redis-server")

            worker = subprocess.Popen([sys.executable, "-m", "comfy_orchestrator.cli", "worker", "--broker", broker,
                                       "--name", "bench", *[part for url in urls for part in ("--server", url)]],
                                      env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children.append(worker)
            wait_for(lambda: client.exists("comfy-orch:worker:bench"), "the worker's heartbeat")
            _, known = spans(urls, set())
            for repeat in range(args.repeat):  # alternating, so that a busy moment of the machine hits both
                prime(urls, image, work)
                _, known = spans(urls, known)
                direct = subprocess.Popen(sweep_command(image, work / f"direct-{repeat}", args.cells,
                                                        *[part for url in urls for part in ("--server", url)]),
                                          env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                direct_cpu_s = reap(direct)
                if direct.returncode != 0:
                    raise SystemExit(f"the direct sweep failed ({direct.returncode})")
                runs, known = spans(urls, known)
                rows.append(measured(f"direct farm, {args.servers} servers", runs, args.servers, args.cells,
                                     direct_cpu_s, None))

                prime(urls, image, work)
                _, known = spans(urls, known)
                started_cpu = _cpu_s(worker.pid)
                submitter = subprocess.Popen(sweep_command(image, work / f"queued-{repeat}", args.cells, "--broker",
                                                           broker),
                                             env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                queued_cpu_s = reap(submitter)
                worker_cpu_s = _cpu_s(worker.pid) - started_cpu
                if submitter.returncode != 0:
                    raise SystemExit(f"the queued sweep failed ({submitter.returncode})")
                runs, known = spans(urls, known)
                rows.append(measured(f"queue, 1 worker x {args.servers} servers", runs, args.servers, args.cells,
                                     queued_cpu_s, worker_cpu_s))
        finally:
            for child in reversed(children):
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in reversed(children):
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()

    return report(rows, args)


def report(rows: Sequence[Row], args: argparse.Namespace) -> dict[str, Any]:
    """Print the rows as a table with the queue's throughput ratio; write them as JSON when asked."""
    header = f"{'row':34} {'cells':>5} {'span s':>7} {'img/s':>7} {'effic.':>6} {'gap ms med/max':>15} " \
             f"{'submitter ms/cell':>17} {'worker ms/cell':>14}"
    print(header)
    for row in rows:
        gaps = f"{row.gap_median_ms}/{row.gap_max_ms}"
        worker_ms = "" if row.worker_cpu_ms_per_cell is None else f"{row.worker_cpu_ms_per_cell}"
        print(f"{row.name:34} {row.cells:5d} {row.span_s:7.2f} {row.images_per_s:7.3f} {row.efficiency:6.3f} "
              f"{gaps:>15} {row.submitter_cpu_ms_per_cell:17.1f} {worker_ms:>14}")
    direct_rate = statistics.median(row.images_per_s for row in rows[0::2])
    queued_rate = statistics.median(row.images_per_s for row in rows[1::2])
    ratio = queued_rate / direct_rate
    print(f"queue / direct throughput (medians of {args.repeat}) x{ratio:.3f} "
          f"({(1 - ratio) * 100:+.1f} % cost to the GPUs; target at most 3 %)")
    figures = {"rows": [asdict(row) for row in rows], "throughput_ratio": round(ratio, 4),
               "servers": args.servers, "speedup": args.speedup, "repeat": args.repeat}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", "utf-8")
    return figures


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/system_stats", timeout=2).ok
    except requests.RequestException:
        return False


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _cpu_s(pid: int) -> float:
    """A running process's CPU seconds so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


if __name__ == "__main__":
    main()
