"""The `comfy-orch` group itself: its options and logging; the commands attach to it from their modules."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import click

from comfy_orchestrator.cli.output import Commands


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--templates", "templates_dir", multiple=True, type=click.Path(file_okay=False),
              help="a folder of your own templates, searched before the built-in ones "
                   "(also $COMFY_ORCH_TEMPLATES)")
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
@click.version_option(package_name="comfy-orchestrator")
def main(templates_dir: Sequence[str], verbose: int) -> None:
    """Run ComfyUI workflows at scale: templates, sweeps and farms."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
