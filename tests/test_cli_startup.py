"""What the command line loads before it works: each command imports what it needs when it runs."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_the_start_is_collected_rarely_until_the_command_says_it_started() -> None:
    from comfy_orchestrator.cli.output import (
        STARTING_COLLECTION_THRESHOLD,
        USUAL_COLLECTION_THRESHOLDS,
        collect_rarely_while_starting,
        mark_started,
    )

    frozen = gc.get_freeze_count()
    try:
        mark_started()  # not starting: nothing happens
        assert gc.get_threshold() == USUAL_COLLECTION_THRESHOLDS and gc.get_freeze_count() == frozen
        collect_rarely_while_starting()
        assert gc.get_threshold() == (STARTING_COLLECTION_THRESHOLD, *USUAL_COLLECTION_THRESHOLDS[1:])
        mark_started()
        assert gc.get_threshold() == USUAL_COLLECTION_THRESHOLDS
        assert gc.get_freeze_count() > frozen  # what the start made is out of later collections
        after = gc.get_freeze_count()
        made = [[index] for index in range(1000)]
        mark_started()  # once only
        assert gc.get_freeze_count() == after and made
    finally:
        gc.unfreeze()
        gc.set_threshold(*USUAL_COLLECTION_THRESHOLDS)


AT_EXIT_COLLECTOR = ("import atexit, gc\n"
                     "atexit.register(lambda: print('collector', gc.get_threshold(), gc.get_freeze_count() > 0))")


def test_run_and_sweep_collect_as_usual_once_their_first_prompt_is_out(comfy: Any, sample_image: Path,
                                                                       tmp_path: Path) -> None:
    from comfy_orchestrator.cli.output import STARTING_COLLECTION_THRESHOLD, USUAL_COLLECTION_THRESHOLDS
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    job = ["--server", comfy.url, "--set", f"image={sample_image}", "--set", f"checkpoint={DEFAULT_CHECKPOINT}"]
    usual = f"collector {USUAL_COLLECTION_THRESHOLDS} True"
    ran = _entry(AT_EXIT_COLLECTOR, "run", "img2img", *job, "--out", str(tmp_path / "run"))
    assert ran.returncode == 0 and usual in ran.stdout, ran.stderr
    swept = _entry(AT_EXIT_COLLECTOR, "sweep", "img2img", *job, "--axis", "denoise=0.4,0.6",
                   "--out", str(tmp_path / "sweep"))
    assert swept.returncode == 0 and usual in swept.stdout, swept.stderr
    listed = _entry(AT_EXIT_COLLECTOR, "templates")  # no prompt: it never starts, and collects rarely
    assert listed.returncode == 0 and f"collector ({STARTING_COLLECTION_THRESHOLD}," in listed.stdout, listed.stderr


def test_each_command_loads_through_the_modules_that_attach_it() -> None:
    import click

    from comfy_orchestrator.cli import main
    from comfy_orchestrator.cli.group import COMMAND_MODULES

    names = main.list_commands(click.Context(main))  # a listing loads every command's modules
    assert names == sorted(COMMAND_MODULES)
    for name in names:
        command = main.commands[name]
        for each in [command, *getattr(command, "commands", {}).values()]:
            assert each.callback is not None and each.callback.__module__.rpartition(".")[2] in COMMAND_MODULES[name]


def test_every_command_module_is_listed() -> None:
    # a listing loads only the listed modules, so a command module left out of COMMAND_MODULES would vanish
    # from --help and from the command line without the test above noticing: load every one and compare
    import importlib
    import pkgutil

    import comfy_orchestrator.cli
    from comfy_orchestrator.cli import main
    from comfy_orchestrator.cli.group import COMMAND_MODULES

    for module in pkgutil.iter_modules(comfy_orchestrator.cli.__path__):
        if module.name != "__main__":  # that one runs the command line
            importlib.import_module(f"comfy_orchestrator.cli.{module.name}")
    assert sorted(main.commands) == sorted(COMMAND_MODULES)
    for name, command in main.commands.items():
        for each in [command, *getattr(command, "commands", {}).values()]:
            assert each.callback is not None and each.callback.__module__.rpartition(".")[2] in COMMAND_MODULES[name]


LOADED_COMMAND_MODULES = ("import atexit, sys\n"
                          "atexit.register(lambda: print('loaded', sorted(name.rpartition('.')[2] for name in sys.modules"
                          " if name.startswith('comfy_orchestrator.cli.'))))")


def test_a_command_loads_only_its_own_command_module(comfy: Any, sample_image: Path, tmp_path: Path) -> None:
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    shared = ["group", "options", "output", "values"]
    ran = _entry(LOADED_COMMAND_MODULES, "run", "img2img", "--server", comfy.url, "--set", f"image={sample_image}",
                 "--set", f"checkpoint={DEFAULT_CHECKPOINT}", "--out", str(tmp_path))
    assert ran.returncode == 0 and f"loaded {sorted([*shared, 'server'])}" in ran.stdout, ran.stderr
    listed = _entry(LOADED_COMMAND_MODULES, "queue", "--help")  # a group split over two modules
    assert listed.returncode == 0 and "status" in listed.stdout and "cancel" in listed.stdout, listed.stderr
    assert f"loaded {sorted([*shared, 'queue', 'server'])}" in listed.stdout


def test_rich_loads_only_when_something_is_shown_through_it() -> None:
    # the consoles are made at their first use: click writes a command's help, run's seed note is plain text
    loaded = "import atexit, sys\natexit.register(lambda: print('rich loaded', 'rich' in sys.modules))"
    done = _entry(loaded, "run", "--help")
    assert done.returncode == 0 and "rich loaded False" in done.stdout, done.stderr
    shown = _entry(loaded, "templates")  # a listing shown through rich's console
    assert shown.returncode == 0 and "img2img" in shown.stdout and "rich loaded True" in shown.stdout
