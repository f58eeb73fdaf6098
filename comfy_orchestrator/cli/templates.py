"""Commands over templates: list them, render one, import a saved workflow, the denoise guide."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.options import library, set_option, template_values
from comfy_orchestrator.cli.output import EXIT_BAD_INPUT, fail, format_number, line, stderr, stdout
from comfy_orchestrator.cli.values import warn_about_size, with_families

if TYPE_CHECKING:  # imported where used, so that a command loads only what it needs
    from comfy_orchestrator.templates import ParameterInfo, Template


@main.command("templates")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list instead of tables")
@click.option("--choices", "choices_of", metavar="PARAMETER", help="list every value PARAMETER may take, one a line")
@click.argument("names", nargs=-1)
@click.pass_context
def templates_command(ctx: click.Context, as_json: bool, choices_of: str | None, names: Sequence[str]) -> None:
    """List the templates and their parameters (one TEMPLATE in detail; --choices for a parameter's values)."""
    chosen = [library(ctx).get(name) for name in names] if names else list(library(ctx))
    if choices_of is not None:
        if len(chosen) != 1:
            fail("--choices needs one TEMPLATE: comfy-orch templates img2img --choices sampler", EXIT_BAD_INPUT)
        parameters = {p.name: p for p in chosen[0].parameters()}
        if choices_of not in parameters:
            fail(f"{chosen[0].name} has no parameter {choices_of!r}; it has {', '.join(parameters)}", EXIT_BAD_INPUT)
        if not parameters[choices_of].choices:
            fail(f"{chosen[0].name}'s {choices_of} is a {_kind(parameters[choices_of])}, not a choice", EXIT_BAD_INPUT)
        for choice in parameters[choices_of].choices or ():
            click.echo(str(choice))
        return
    if as_json:
        listing = [{"name": t.name, "description": t.description,
                    "parameters": [p.to_json() for p in t.parameters()]} for t in chosen]
        click.echo(json.dumps(listing, indent=2))
        return
    for template in chosen:
        _print_template(template, detailed=bool(names))


def _kind(p: ParameterInfo) -> str:
    """A parameter's type as a user reads it: 'float', 'float or none', 'list'."""
    return f"{p.type} or none" if p.optional else p.type


def _print_template(template: Template, *, detailed: bool) -> None:
    """A template's parameters, one block each (name, type, range, default; its description below).

    Blocks, not a table: they read at 80 columns and in a pipe, where a six-column table folded
    every cell into a tower.
    """
    import textwrap

    origin = "" if template.builtin else f"  ({template.source.parent})"
    if detailed:  # the heading wraps with the blocks below it
        heading = textwrap.wrap(f"{template.name} - {template.description}{origin}", max(stdout.width, 60),
                                subsequent_indent="  ")
        stdout.print(line((template.name, "bold cyan"), heading[0][len(template.name):]))
        for more in heading[1:]:
            stdout.print(more)
    else:
        stdout.print(line((template.name, "bold cyan"), f" - {template.description}", (origin, "dim")))
    if not detailed:
        names = ", ".join(p.name for p in template.parameters())
        stdout.print(line(("  parameters:", "dim"), f" {names}"))
        return
    parameters = template.parameters()
    indent = min(max(len(p.name) for p in parameters), 20) + 4
    width = max(stdout.width, 60)
    for p in parameters:
        facts = [_kind(p)]
        if p.choices and len(p.choices) <= 6:
            facts.append("one of " + ", ".join(map(str, p.choices)))
        elif p.choices:
            facts.append(f"one of {len(p.choices)} (--choices {p.name})")
        elif p.min is not None and p.max is not None:
            facts.append(f"{format_number(p.min)}..{format_number(p.max)}")
        if p.recommended:
            facts.append(f"recommended {p.recommended[0]:g}..{p.recommended[1]:g}")
        facts.append("required" if p.required else "not set by default" if p.default is None
                     else f"default {json.dumps(p.default, ensure_ascii=False)}")
        name = f"  {p.name}".ljust(indent) if len(p.name) <= indent - 4 else f"  {p.name}\n" + " " * indent
        first = textwrap.wrap(", ".join(facts), width - indent, break_on_hyphens=False) or [""]
        stdout.print(line((name, "bold"), first[0]))
        for more in first[1:]:
            stdout.print(" " * indent + more)
        for described in textwrap.wrap(p.description, width - indent, break_on_hyphens=False):
            stdout.print(line((" " * indent + described, "dim")))


@main.command()
@click.argument("template_name", metavar="TEMPLATE")
@set_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="write the JSON here")
@click.option("--strict", is_flag=True, help="refuse sizes that are not multiples of 8 instead of rounding")
@click.pass_context
def render(ctx: click.Context, template_name: str, sets: Sequence[str], output: str | None, strict: bool) -> None:
    """Render TEMPLATE into ComfyUI API-format JSON, validated offline."""
    values = template_values(sets)
    template = with_families(library(ctx).get(template_name), values)  # offline: from the name
    params = template.params(values, strict_sizes=strict)
    warn_about_size(params)
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
@click.option("--force", is_flag=True, help="replace a template of that name you imported before")
@click.pass_context
def template_import(ctx: click.Context, workflow_file: str, name: str, params: Sequence[str],
                    object_info: str | None, description: str, force: bool) -> None:
    """Turn a saved workflow (API export or the editor's format) into a template."""
    from comfy_orchestrator.schema import Schema
    from comfy_orchestrator.template_import import import_workflow
    from comfy_orchestrator.templates import default_user_folder, parse_assignments

    schema = Schema(json.loads(Path(object_info).read_text("utf-8"))) if object_info else Schema.recorded()
    folder = library(ctx).user_folder or default_user_folder()
    imported = import_workflow(Path(workflow_file).read_bytes(), name=name, folder=folder, schema=schema,
                               parameters=parse_assignments(params), description=description, replace=force)
    stdout.print(line(f"imported {imported.format}-format workflow as ", (name, "bold cyan"), f" in {folder}"))
    for proposal in imported.account:
        stdout.print(f"  proposed {proposal}")
    for param, target in imported.parameters.items():
        if not imported.account:
            stdout.print(f"  {param} = {target}")
    for note in imported.notes:
        stderr.print(line(("not carried over:", "yellow"), f" {note}"))
    stdout.print(f"render it with: comfy-orch render {name} --set NAME=VALUE")


@main.command("denoise-guide")
@click.argument("effect", required=False)
def denoise_guide(effect: str | None) -> None:
    """Show which denoise strength gives which effect (or the range of one EFFECT)."""
    from rich.table import Table

    from comfy_orchestrator.denoise_guide import DENOISE_GUIDE, denoise_band

    bands = [denoise_band(effect)] if effect else list(DENOISE_GUIDE)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("effect", "denoise", "what it does"):
        table.add_column(column)
    for band in bands:
        table.add_row(band.name, f"{band.low:g}-{band.high:g}", band.effect)
    stdout.print(table)
    if effect:
        stdout.print(f"use --set denoise={bands[0].name} (= {bands[0].middle:g}) or any value in the range")
