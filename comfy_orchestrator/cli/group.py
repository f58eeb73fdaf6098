"""The `comfy-orch` group itself: its options and logging; the commands attach to it from their modules,
which load when a command is asked for (all of them for a listing: --help, completion)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

import click

from comfy_orchestrator.cli.output import Commands

# each command and the modules that attach it and its subcommands to `main` (tests/test_cli_startup.py keeps
# this whole): `run` loads the command line's server module only, not the sweep's, the farm's or the queue's
COMMAND_MODULES = {
    "advise": ("advise",), "demo": ("sweeps",), "denoise-guide": ("templates",), "farm": ("farm",),
    "history": ("server",), "inspect": ("server",), "interrupt": ("server",), "queue": ("server", "queue"),
    "render": ("templates",), "run": ("server",), "sim": ("sim",), "sweep": ("sweeps",),
    "template": ("templates",), "templates": ("templates",), "worker": ("queue",),
}


class CommandsByModule(Commands):
    """Commands whose modules load when one is named (COMMAND_MODULES), every one for a listing."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in COMMAND_MODULES.get(cmd_name, ()):
            importlib.import_module(f"comfy_orchestrator.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for modules in COMMAND_MODULES.values():
            for module in modules:
                importlib.import_module(f"comfy_orchestrator.cli.{module}")
        return super().list_commands(ctx)


@click.group(cls=CommandsByModule, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--templates", "templates_dir", multiple=True, type=click.Path(file_okay=False),
              help="a folder of your own templates, searched before the built-in ones "
                   "(also $COMFY_ORCH_TEMPLATES)")
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
@click.version_option(package_name="comfy-orchestrator")
def main(templates_dir: Sequence[str], verbose: int) -> None:
    """Run ComfyUI workflows at scale: templates, sweeps and farms."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
