"""Benchmark (not a test): what `comfy-orch` costs before it does its work, in CPU over the bare interpreter.

Each command runs as a child process of its own, several times, interleaved with `python -c
pass` (the bare interpreter); a row is the median of the child's own CPU time (user + system,
from os.wait4), and its difference to and ratio over the bare interpreter's median. The
simulated server (instant nodes) runs in a process of its own, so its CPU is not counted. The
package loads from bytecode, as an installed one does (written once, unmeasured, into a
temporary folder).

Rows:
- `comfy-orch --help`;
- `comfy-orch run img2img --server URL` to its first prompt: the server holds its queue, and
  the command is killed as soon as the server has the prompt, so the row is the CPU from start
  to the prompt submitted (and the few instants after it, waiting on the websocket);
- `comfy-orch sweep img2img` of 2x2 cells to its first prompt, the same way;
- `comfy-orch run img2img` of one whole job, to its file on disk, for comparison.

    python bench/startup.py --runs 7

Where the time goes: python -X importtime -m comfy_orchestrator.cli run img2img --server URL ...
(start a server with `comfy-orch sim --port 0`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

COMMAND = [sys.executable, "-m", "comfy_orchestrator.cli"]
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
FIRST_PROMPT_WAIT_S = 60.0  # a command that submits nothing in this long has failed


def serve(conn: multiprocessing.connection.Connection) -> None:
    """Run one simulated server; on "hold", keep prompts queued, on "first", answer once one is queued."""
    from comfy_orchestrator.sim import SimServer

    with SimServer(checkpoints=(CHECKPOINT,)) as server:
        conn.send(server.url)
        while (order := conn.recv()) != "stop":
            if order == "hold":
                server.faults.hold_queue()
                conn.send("held")
            elif order == "first":
                deadline = time.monotonic() + FIRST_PROMPT_WAIT_S
                while server.queue_remaining < 1 and time.monotonic() < deadline:
                    time.sleep(0.001)
                conn.send(server.queue_remaining >= 1)
            elif order == "clear":
                request = urllib.request.Request(f"{server.url}/queue", data=json.dumps({"clear": True}).encode(),
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=10).close()
                conn.send("cleared")


class Server:
    """The simulated server's process, driven through a pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child,), daemon=True)
        self._process.start()
        self.url: str = self._conn.recv()

    def ask(self, order: str) -> object:
        self._conn.send(order)
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(10)


# As installed, the package's modules load from bytecode: compiled once into a folder of our own
# (not beside the sources), even where the environment says not to write any.
BYTECODE = tempfile.TemporaryDirectory(prefix="startup-bytecode-")
ENVIRONMENT = {**{name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"},
               "PYTHONPYCACHEPREFIX": BYTECODE.name}


def started(command: list[str]) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """The command running, its output dropped and its errors kept in a file (a pipe could fill and stall it)."""
    errors = tempfile.TemporaryFile()
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=ENVIRONMENT), errors


def ended(process: subprocess.Popen[bytes], errors: IO[bytes]) -> tuple[int, float, str]:
    """Reap the command: its exit code, its own CPU (user + system) and the end of what it said on stderr."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    errors.seek(0)
    said = errors.read().decode(errors="replace").strip()[-800:]
    errors.close()
    return process.returncode, usage.ru_utime + usage.ru_stime, said


def whole_cpu_s(command: list[str]) -> float:
    """The CPU a command spends from start to exit; it must succeed."""
    code, spent_s, said = ended(*started(command))
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}): {said}")
    return spent_s


def first_prompt_cpu_s(command: list[str], server: Server) -> float:
    """The CPU a command spends until the (holding) server has its first prompt; then it is killed."""
    process, errors = started(command)
    arrived = server.ask("first")
    process.send_signal(signal.SIGKILL)
    _, spent_s, said = ended(process, errors)
    server.ask("clear")
    if not arrived:
        raise SystemExit(f"{' '.join(command)} submitted no prompt: {said}")
    return spent_s


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command; the median is reported")
    args = parser.parse_args()
    from PIL import Image

    instant, holding = Server(), Server()
    holding.ask("hold")
    try:
        with tempfile.TemporaryDirectory() as folder:
            picture = Path(folder) / "input.png"
            Image.new("RGB", (512, 512), (40, 90, 160)).save(picture)
            job = ["--set", f"image={picture}", "--set", f"checkpoint={CHECKPOINT}"]
            sweep_axes = ["--axis", "denoise=0.4,0.6", "--axis", "cfg=6,8"]
            outputs = iter(range(1_000_000))

            def out() -> str:
                return str(Path(folder) / f"out-{next(outputs)}")

            rows: dict[str, Callable[[], float]] = {
                "python -c pass (the bare interpreter)": lambda: whole_cpu_s([sys.executable, "-c", "pass"]),
                "comfy-orch --help": lambda: whole_cpu_s([*COMMAND, "--help"]),
                "comfy-orch run img2img, to its first prompt": lambda: first_prompt_cpu_s(
                    [*COMMAND, "run", "img2img", "--server", holding.url, *job, "--out", out()], holding),
                "comfy-orch sweep img2img 2x2, to its first prompt": lambda: first_prompt_cpu_s(
                    [*COMMAND, "sweep", "img2img", "--server", holding.url, *job, *sweep_axes, "--out", out()],
                    holding),
                "comfy-orch run img2img, one whole job to its file": lambda: whole_cpu_s(
                    [*COMMAND, "run", "img2img", "--server", instant.url, *job, "--out", out()]),
            }
            for measure in rows.values():  # once unmeasured: the bytecode is written
                measure()
            spent: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.runs):  # interleaved, so that a busy moment of the machine hits every row alike
                for name, measure in rows.items():
                    spent[name].append(measure())
    finally:
        instant.stop()
        holding.stop()
    medians = {name: statistics.median(values) for name, values in spent.items()}
    bare_s = next(iter(medians.values()))
    print(f"CPU (user+sys) of each command, median of {args.runs} runs; over and x of the bare interpreter")
    for name, median_s in medians.items():
        print(f"  {name:52s} {median_s * 1000:6.0f} ms  +{(median_s - bare_s) * 1000:5.0f} ms  "
              f"x{median_s / bare_s:5.2f}")


if __name__ == "__main__":
    main()
