"""Benchmark (not a test): what `comfy-orch` costs before it does its work, in CPU over the bare interpreter.

Each command runs as a child process of its own, several times, interleaved with `python -c
pass` (the bare interpreter); a row is the median of the child's own CPU (user + system, all
threads), and its difference to and ratio over the bare interpreter's median. The simulated
server (instant nodes) runs in a process of its own, so its CPU is not counted. The package
loads from bytecode, as an installed one does (written once, unmeasured, into a temporary folder).

Rows:
- `comfy-orch --help`, start to exit (os.wait4);
- `comfy-orch run img2img --server URL`: to its first prompt, and start to exit (one whole job,
  its picture written);
- `comfy-orch sweep img2img` of 2x2 cells: to its first prompt, and start to exit.

"To its first prompt" is the child's own CPU (time.process_time) at the moment it sends
`POST /prompt`, noted by a sitecustomize.py this bench puts on the child's path (it wraps
socket.sendall; nothing else changes).

    python bench/startup.py --runs 7               # --breakdown: also each step of run's path

Where the time goes: python -X importtime -m comfy_orchestrator.cli run img2img --server URL ...
(start a server with `comfy-orch sim --port 0`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

COMMAND = [sys.executable, "-m", "comfy_orchestrator.cli"]
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"

# Notes the process's CPU when it first sends POST /prompt, into the file $STARTUP_BENCH_MARK names.
MARKER = """
import os, socket, time

_MARK = os.environ.get("STARTUP_BENCH_MARK")
_SENDALL = socket.socket.sendall


def _sendall(self, data, *args):
    if bytes(data[:12]) == b"POST /prompt":
        socket.socket.sendall = _SENDALL
        with open(_MARK, "w") as mark:
            mark.write(repr(time.process_time()))
    return _SENDALL(self, data, *args)


if _MARK:
    socket.socket.sendall = _sendall
"""

# `run img2img`'s path to its first prompt, step by step in one fresh process (argv: URL, picture,
# checkpoint), each step's CPU printed as JSON: what the command does, through the same calls.
BREAKDOWN = """
import json, sys, time
marks = [("", time.process_time())]
def mark(name): marks.append((name, time.process_time()))
import click, rich.console; mark("click and rich.console")
import comfy_orchestrator.cli; mark("the command line's own modules")
from comfy_orchestrator.cli.options import settings
config = settings(); mark("settings (pydantic's import, its first model)")
from comfy_orchestrator.templates import Templates; mark("templates (jinja2, the parameter models)")
template = Templates.default(config.template_folders()).get("img2img"); mark("the img2img template loaded")
import comfy_orchestrator.sweep; mark("drawing a seed (the sweep module's constants)")
from comfy_orchestrator.client import Client
mark("the client (urllib3, websocket-client, protocol models, PIL)")
client = Client(sys.argv[1]); mark("Client()")
from comfy_orchestrator.cli.values import with_families
template = with_families(template, {}, client.model_family); mark("the checkpoint's model family (a request)")
params = template.params({"image": sys.argv[2], "checkpoint": sys.argv[3], "seed": 1})
mark("the parameters validated (the picture read)")
job = template.job(params); mark("the job rendered and checked offline")
handle = client.submit(job); mark("submitted: /object_info, its check, upload, websocket, POST /prompt")
handle.wait()
client.close()
print(json.dumps([(name, now - before) for (name, now), (_, before) in zip(marks[1:], marks)]))
"""


def serve(conn: multiprocessing.connection.Connection) -> None:
    """Run one simulated server until the parent says stop; tell the parent its URL."""
    from comfy_orchestrator.sim import SimServer

    with SimServer(checkpoints=(CHECKPOINT,)) as server:
        conn.send(server.url)
        conn.recv()


class Bench:
    """The children's environment: bytecode in a folder of our own (even where the environment says not to
    write any), and for the first-prompt rows the marker on their path."""

    def __init__(self, folder: Path) -> None:
        (folder / "marker").mkdir()
        (folder / "marker" / "sitecustomize.py").write_text(MARKER, "utf-8")
        self.folder = folder
        self.environment = {**{name: value for name, value in os.environ.items()
                               if name != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPYCACHEPREFIX": str(folder / "bytecode")}
        self.marked = {**self.environment, "STARTUP_BENCH_MARK": str(folder / "mark"),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(folder / "marker"),
                                                                   self.environment.get("PYTHONPATH")]))}

    def cpu_s(self, command: list[str]) -> float:
        """The CPU a command spends from start to exit; it must succeed."""
        return self._run(command, self.environment)

    def first_prompt_and_whole_s(self, command: list[str]) -> tuple[float, float]:
        """The CPU a command spends until it sends its first POST /prompt, and until it exits."""
        mark = Path(self.marked["STARTUP_BENCH_MARK"])
        mark.unlink(missing_ok=True)
        whole_s = self._run(command, self.marked)
        if not mark.exists():
            raise SystemExit(f"{' '.join(command)} sent no POST /prompt")
        return float(mark.read_text("utf-8")), whole_s

    def _run(self, command: list[str], environment: dict[str, str]) -> float:
        with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a full pipe would stall the child
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=environment)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip()[-800:]
                raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {said}")
        return usage.ru_utime + usage.ru_stime


def breakdown(bench: Bench, url: str, picture: Path, runs: int) -> None:
    """Print the median CPU of each step of `run img2img`'s path to its first prompt."""
    steps: dict[str, list[float]] = {}
    for _ in range(runs + 1):  # the first run writes the bytecode
        done = subprocess.run([sys.executable, "-c", BREAKDOWN, url, str(picture), CHECKPOINT], capture_output=True,
                              text=True, env=bench.environment, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the breakdown failed: {done.stderr.strip()[-800:]}")
        for name, spent_s in json.loads(done.stdout):
            steps.setdefault(name, []).append(spent_s)
    print(f"`run img2img` to its first prompt, step by step in one process: CPU, median of {runs} runs")
    for name, values in steps.items():
        print(f"  {statistics.median(values[1:]) * 1000:6.1f} ms  {name}")
    print(f"  {sum(statistics.median(values[1:]) for values in steps.values()) * 1000:6.1f} ms  in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command; the median is reported")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each step of run's path to its first prompt, in one process")
    args = parser.parse_args()
    from PIL import Image

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child,), daemon=True)
    server.start()
    url = parent.recv()
    spent: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            bench = Bench(Path(folder))
            picture = Path(folder) / "input.png"
            Image.new("RGB", (512, 512), (40, 90, 160)).save(picture)
            job = ["--server", url, "--set", f"image={picture}", "--set", f"checkpoint={CHECKPOINT}"]
            outputs = iter(range(1_000_000))

            def out() -> list[str]:
                return ["--out", str(Path(folder) / f"out-{next(outputs)}")]

            def measure() -> dict[str, float]:
                run = bench.first_prompt_and_whole_s([*COMMAND, "run", "img2img", *job, *out()])
                sweep = bench.first_prompt_and_whole_s([*COMMAND, "sweep", "img2img", *job, "--axis",
                                                        "denoise=0.4,0.6", "--axis", "cfg=6,8", *out()])
                return {"python -c pass (the bare interpreter)": bench.cpu_s([sys.executable, "-c", "pass"]),
                        "comfy-orch --help": bench.cpu_s([*COMMAND, "--help"]),
                        "comfy-orch run img2img, to its first prompt": run[0],
                        "comfy-orch run img2img, start to exit (one job)": run[1],
                        "comfy-orch sweep img2img 2x2, to its first prompt": sweep[0],
                        "comfy-orch sweep img2img 2x2, start to exit": sweep[1]}

            if args.breakdown:
                breakdown(bench, url, picture, args.runs)
            measure()  # once unmeasured: the bytecode is written
            for _ in range(args.runs):  # interleaved, so that a busy moment of the machine hits every row alike
                for name, spent_s in measure().items():
                    spent.setdefault(name, []).append(spent_s)
    finally:
        parent.send("stop")
        server.join(10)
    medians = {name: statistics.median(values) for name, values in spent.items()}
    bare_s = next(iter(medians.values()))
    print(f"CPU (user+sys) of each command, median of {args.runs} runs; over and x of the bare interpreter")
    for name, median_s in medians.items():
        print(f"  {name:52s} {median_s * 1000:6.0f} ms  +{(median_s - bare_s) * 1000:5.0f} ms  "
              f"x{median_s / bare_s:5.2f}")


if __name__ == "__main__":
    main()
