"""The `comfy-orch` command line: the only module that prints or exits.

Exit codes: 0 success, 1 a job or server failed, 2 bad input (a parameter, a
template, a file). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from comfy_orchestrator.errors import (
    ComfyError,
    GraphInvalid,
    ParameterError,
    SweepError,
    TemplateError,
    WorkflowImportError,
)
from comfy_orchestrator.params import DENOISE_GUIDE, denoise_band
from comfy_orchestrator.settings import Settings
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.templates import Template, Templates, default_user_folder, import_workflow, parse_assignments

BAD_INPUT = (ParameterError, TemplateError, GraphInvalid, SweepError, WorkflowImportError)
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line of error and exit."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    sys.exit(code)


class _Commands(click.Group):
    """A click group that turns our errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except BAD_INPUT as exc:
                fail(str(exc), EXIT_BAD_INPUT)
            except ComfyError as exc:
                fail(str(exc), EXIT_FAILED)
            except OSError as exc:  # a file we were asked to read or write
                fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), EXIT_BAD_INPUT)


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False)


def settings() -> Settings:
    return Settings()


def library(ctx: click.Context) -> Templates:
    folders: Sequence[str] = ctx.find_root().params.get("templates_dir") or ()
    return Templates.default(folders)


def template_values(sets: Sequence[str]) -> dict[str, str]:
    return parse_assignments(sets)


def set_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --set NAME=VALUE option, given many times."""
    return click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                        help="a template parameter; repeat for more")(function)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--templates", "templates_dir", multiple=True, type=click.Path(file_okay=False),
              help="a folder of your own templates, searched before the built-in ones "
                   "(also $COMFY_ORCH_TEMPLATES)")
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
@click.version_option(package_name="comfy-orchestrator")
def main(templates_dir: Sequence[str], verbose: int) -> None:
    """Run ComfyUI workflows at scale: templates, sweeps and farms."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command("templates")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list instead of tables")
@click.argument("names", nargs=-1)
@click.pass_context
def templates_command(ctx: click.Context, as_json: bool, names: Sequence[str]) -> None:
    """List the templates and their parameters."""
    chosen = [library(ctx).get(name) for name in names] if names else list(library(ctx))
    if as_json:
        listing = [{"name": t.name, "description": t.description,
                    "parameters": [p.to_json() for p in t.parameters()]} for t in chosen]
        click.echo(json.dumps(listing, indent=2))
        return
    for template in chosen:
        _print_template(template, detailed=bool(names))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _print_template(template: Template, *, detailed: bool) -> None:
    origin = "" if template.builtin else f"  [dim]({template.source.parent})[/]"
    stdout.print(f"[bold cyan]{template.name}[/] - {template.description}{origin}")
    if not detailed:
        names = ", ".join(p.name for p in template.parameters())
        stdout.print(f"  [dim]parameters:[/] {names}", highlight=False)
        return
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for column in ("parameter", "type", "default", "range", "recommended", "description"):
        table.add_column(column)
    for p in template.parameters():
        limits = f"{_number(p.min)}..{_number(p.max)}" if p.min is not None and p.max is not None else ""
        if p.choices and len(p.choices) <= 6:
            limits = ", ".join(map(str, p.choices))
        elif p.choices:
            limits = f"{len(p.choices)} choices"
        recommended = f"{p.recommended[0]:g}..{p.recommended[1]:g}" if p.recommended else ""
        default = "(required)" if p.default is None else json.dumps(p.default)
        table.add_row(p.name, p.type, default, limits, recommended, p.description)
    stdout.print(table)


@main.command()
@click.argument("template_name", metavar="TEMPLATE")
@set_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="write the JSON here")
@click.option("--strict", is_flag=True, help="refuse sizes that are not multiples of 8 instead of rounding")
@click.pass_context
def render(ctx: click.Context, template_name: str, sets: Sequence[str], output: str | None, strict: bool) -> None:
    """Render TEMPLATE into ComfyUI API-format JSON, validated offline."""
    template = library(ctx).get(template_name)
    params = template.params(template_values(sets), strict_sizes=strict)
    text = template.job(params).graph.to_json()
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
        stderr.print(f"wrote {output}")
    else:
        click.echo(text)


@main.group("template")
def template_group() -> None:
    """Manage your own templates."""


@template_group.command("import")
@click.argument("workflow_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="the new template's name")
@click.option("--param", "params", multiple=True, metavar="NAME=NODE.INPUT",
              help="a parameter: NODE is a node id, a node title or a class one node has "
                   "(3.denoise, 'My Sampler'.denoise, KSampler.denoise); repeat for more. "
                   "Without any, the usual ones are proposed.")
@click.option("--object-info", type=click.Path(exists=True, dir_okay=False),
              help="a server's saved /object_info answer to convert against (default: the recorded ComfyUI 0.8)")
@click.option("--description", default="", help="one line shown by 'comfy-orch templates'")
@click.pass_context
def template_import(ctx: click.Context, workflow_file: str, name: str, params: Sequence[str],
                    object_info: str | None, description: str) -> None:
    """Turn a saved workflow (API export or the editor's format) into a template."""
    schema = Schema(json.loads(Path(object_info).read_text("utf-8"))) if object_info else Schema.recorded()
    folder = library(ctx).user_folder or default_user_folder()
    imported = import_workflow(Path(workflow_file).read_bytes(), name=name, folder=folder, schema=schema,
                               parameters=parse_assignments(params), description=description)
    stdout.print(f"imported {imported.format}-format workflow as [bold cyan]{name}[/] in {folder}")
    for line in imported.account:
        stdout.print(f"  proposed {line}", highlight=False)
    for param, target in imported.parameters.items():
        if not imported.account:
            stdout.print(f"  {param} = {target}", highlight=False)
    for note in imported.notes:
        stderr.print(f"[yellow]not carried over:[/] {note}", highlight=False)
    stdout.print(f"render it with: comfy-orch render {name} --set NAME=VALUE")


@main.command("denoise-guide")
@click.argument("effect", required=False)
def denoise_guide(effect: str | None) -> None:
    """Show which denoise strength gives which effect (or the range of one EFFECT)."""
    bands = [denoise_band(effect)] if effect else list(DENOISE_GUIDE)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("effect", "denoise", "what it does"):
        table.add_column(column)
    for band in bands:
        table.add_row(band.name, f"{band.low:g}-{band.high:g}", band.effect)
    stdout.print(table)
    if effect:
        stdout.print(f"use --set denoise={bands[0].name} (= {bands[0].middle:g}) or any value in the range")


@main.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8188, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port")
@click.option("--profile", "profile_name", default="instant", show_default=True,
              type=click.Choice(["instant", "realistic"]), help="instant: no delays; realistic: GPU timings")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="NAME",
              help="a checkpoint name the server offers (repeatable; default random-sd15.safetensors)")
@click.option("--root", type=click.Path(file_okay=False), help="folder for input/, output/ and temp/")
def sim(host: str, port: int, profile_name: str, checkpoints: Sequence[str], root: str | None) -> None:
    """Run a simulated ComfyUI server (no GPU) until interrupted."""
    try:
        from comfy_orchestrator.sim import SimServer
    except ImportError as exc:
        fail(f"the simulated server needs the [sim] extra: pip install 'comfy-orchestrator[sim]' ({exc})")
    server = SimServer(host=host, port=port, profile_name=profile_name,
                       checkpoints=checkpoints or ("random-sd15.safetensors",),
                       root=Path(root) if root else None)
    with server:
        stdout.print(f"simulated ComfyUI at {server.url} ({profile_name}); files in {server.root}; Ctrl-C stops")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            stdout.print("stopping")


if __name__ == "__main__":  # pragma: no cover
    main()
