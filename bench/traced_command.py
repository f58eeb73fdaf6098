"""Run `comfy-orch` with a timestamp on every log line (the library's and urllib3's), for bench/sweep_ceiling.py.

    python bench/traced_command.py LAUNCHED_AT sweep img2img --server ... 2> trace.txt

LAUNCHED_AT is the epoch time the caller started the interpreter at; each line reads seconds since then,
the thread and the logger, so the trace shows when the imports ended, each request went out, each server
was probed and the first prompt was submitted.
"""

from __future__ import annotations

import atexit
import logging
import runpy
import sys
import time

LAUNCHED_AT = float(sys.argv.pop(1))


def mark(what: str) -> None:
    print(f"{time.time() - LAUNCHED_AT:7.3f} {'-':14} {'mark':22} {what}", file=sys.stderr, flush=True)


class _Since(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.created - LAUNCHED_AT:7.3f} {record.threadName[:14]:14} {record.name[:22]:22} " \
               f"{record.getMessage()[:160]}"


mark("interpreter up")
handler = logging.StreamHandler()
handler.setFormatter(_Since())
logging.basicConfig(level=logging.DEBUG, handlers=[handler])
for quiet in ("PIL", "websocket", "asyncio"):
    logging.getLogger(quiet).setLevel(logging.WARNING)
atexit.register(mark, "exit")
import comfy_orchestrator.cli  # noqa: E402,F401  the command's own imports, timed apart

mark("comfy_orchestrator.cli imported")
sys.argv = ["comfy-orch", *sys.argv[1:]]
runpy.run_module("comfy_orchestrator.cli", run_name="__main__")
