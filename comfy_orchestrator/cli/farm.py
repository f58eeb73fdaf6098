"""`comfy-orch farm status`: what each server of a farm can do and is doing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.options import farm_options, farm_servers, transport_options
from comfy_orchestrator.cli.output import EXIT_BAD_INPUT, EXIT_FAILED, fail, line, stderr, stdout
from comfy_orchestrator.limits import Timeouts

if TYPE_CHECKING:  # imported where used, so that a command loads only what it needs
    from comfy_orchestrator.farm import ServerStatus


@main.group("farm")
def farm_group() -> None:
    """Look at a farm of ComfyUI servers."""


def _print_statuses(statuses: Sequence[ServerStatus]) -> None:
    """One block a server: state and queue on its line, then GPUs, checkpoints and tags (80 columns, pipes)."""
    import textwrap

    width = max(stdout.width, 60)
    for status in statuses:
        tags = f"  [{', '.join(status.tags)}]" if status.tags else ""
        if not status.up:
            stdout.print(line((status.name, "bold"), "  ", ("refused us" if status.refused else "down", "red"), tags))
            continue
        stdout.print(line((status.name, "bold"), "  ", ("up", "green"),
                          f", {status.queue_running} running, {status.queue_pending} waiting{tags}"))
        for device in status.devices:  # without the allocator's name
            stdout.print(f"  {device.name.split(' : ')[0]}: {_gib(device.vram_free)} of "
                         f"{_gib(device.vram_total)} GiB VRAM free")
        listed = ", ".join(status.checkpoints) or "none"
        for number, text in enumerate(textwrap.wrap(f"checkpoints: {listed}", width - 2, subsequent_indent="  ",
                                                    break_on_hyphens=False)):
            stdout.print("  " + text)
    for status in statuses:
        if not status.up and not status.refused:  # a refusal is the error line itself
            stderr.print(line((f"{status.name} is down:", "red"), f" {status.error}"))


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f}"


@farm_group.command("status")
@farm_options
@click.option("--timeout", "timeout_s", default=Timeouts().status_s, show_default=True, type=click.FloatRange(0.1, 600),
              help="seconds to wait for each server")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
@transport_options
def farm_status(servers: Sequence[str], farm_file: str | None, timeout_s: float, as_json: bool,
                ca_cert: Path | None, allow_plain_http: bool) -> None:
    """Show each server: up or down, queue, GPU and VRAM, checkpoints.

    Exits 2 if a server refuses our certificate check or credentials (set-up to fix), else 1 if any is down.
    """
    import dataclasses

    from comfy_orchestrator.farm import Farm

    configs = farm_servers(servers, farm_file, ca_cert=ca_cert, allow_plain_http=allow_plain_http)
    statuses = Farm(configs).status(timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(status) for status in statuses], indent=2))
    else:
        _print_statuses(statuses)
    refused = [status.error for status in statuses if status.refused]
    if refused:  # each error names its server and how to fix it
        fail("; ".join(refused), EXIT_BAD_INPUT)
    down = [status.name for status in statuses if not status.up]
    if down:
        fail(f"{len(down)} of {len(statuses)} server(s) down: {', '.join(down)}", EXIT_FAILED)
