"""What the command line loads before it works: each command imports what it needs when it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_grid_format_choices_are_the_grid_modules() -> None:
    # the command line names them itself so that --help loads no Pillow; they must not drift apart
    from comfy_orchestrator import grid
    from comfy_orchestrator.cli import options

    assert options.GRID_FORMAT_NAMES == tuple(grid.GRID_FORMATS)
    assert options.DEFAULT_GRID_FORMAT == grid.DEFAULT_GRID_FORMAT


def _entry(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` and then comfy-orch's process entry with `args`, as a child process."""
    script = f"import sys\n{code}\nsys.argv = ['comfy-orch', *{list(args)!r}]\nfrom comfy_orchestrator.cli import entry\nentry()"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_the_process_ends_with_the_commands_exit_code_and_all_its_output() -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    listing = _entry("", "templates", "--json")  # a long answer into a pipe: all of it is flushed
    assert listing.returncode == 0 and listing.stdout == CliRunner().invoke(main, ["templates", "--json"]).stdout
    refused = _entry("", "templates", "no-such-template")
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: ")


def test_exit_handlers_still_run() -> None:
    done = _entry("import atexit\natexit.register(lambda: print('exit handler ran', flush=True))", "denoise-guide")
    assert done.returncode == 0 and "exit handler ran" in done.stdout, done.stderr


def test_a_thread_still_running_is_waited_for() -> None:
    done = _entry("import threading, time\n"
                  "threading.Thread(target=lambda: (time.sleep(2), print('thread finished', flush=True))).start()",
                  "denoise-guide")
    assert done.returncode == 0 and "thread finished" in done.stdout, done.stderr
