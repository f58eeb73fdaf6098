"""The `comfy-orch` command line: the only module that prints or exits.

Exit codes: 0 success, 1 a job or server failed, 2 bad input (a parameter, a
template, a file). Errors are one line on stderr, never a traceback.

Past 600 lines because it is one command per screen, each thin over the library: the
options, one call, and how the answer is shown.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from comfy_orchestrator.errors import (
    BrokerError,
    CertificateRejected,
    ComfyError,
    FarmFileInvalid,
    GraphInvalid,
    JournalFailed,
    ParameterError,
    SweepError,
    TemplateError,
    WorkflowImportError,
)
from comfy_orchestrator.grid import DEFAULT_GRID_FORMAT, GRID_FORMATS
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.params import DENOISE_GUIDE, FamilyFinding, Params, denoise_band, find_family
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.settings import Settings
from comfy_orchestrator.sweep import DRAWN_SEED_MAX, RANDOM_SEED, SEED_PARAMETERS
from comfy_orchestrator.template_import import import_workflow
from comfy_orchestrator.templates import (
    ParameterInfo,
    Template,
    Templates,
    default_user_folder,
    parse_assignments,
)

if TYPE_CHECKING:  # imported where used, so that a command loads only what it needs
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.farm import ServerStatus
    from comfy_orchestrator.job_handle import JobHandle
    from comfy_orchestrator.queue import CeleryQueue
    from comfy_orchestrator.servers import ServerConfig
    from comfy_orchestrator.sweep import Axis, Sweep
    from comfy_orchestrator.sweep_run import SweepReport

BAD_INPUT = (ParameterError, TemplateError, GraphInvalid, SweepError, WorkflowImportError, FarmFileInvalid,
             BrokerError, CertificateRejected, JournalFailed)  # a journal that cannot be used: a file at fault
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report them

# Text a user or a server wrote is never read as markup, emoji codes or highlighted: our own styling
# is given as (text, style) pieces of a `line`, so no bracket in a value can change or break output.
stdout = Console(soft_wrap=True, markup=False, emoji=False)
stderr = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)


def line(*parts: str | tuple[str, str]) -> Text:
    """One line of output from plain pieces and (text, style) pieces, none of it markup."""
    return Text.assemble(*parts)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line of error and exit."""
    stderr.print(line(("error:", "bold red"), " ", message))
    sys.exit(code)


class LineColumn(ProgressColumn):
    """A progress bar column showing the task's `line` field, a Text built with `line()`."""

    def render(self, task: Task) -> Text:
        shown = task.fields.get("line")
        return shown if isinstance(shown, Text) else Text(str(shown or ""))


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
    stderr.print(line(("warning:", "yellow"), " ", str(message)))


def settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # pydantic-settings fills the fields from the environment


def library(ctx: click.Context) -> Templates:
    """The templates: --templates folders, then $COMFY_ORCH_TEMPLATES's, then the per-user and built-in ones."""
    folders: Sequence[str] = ctx.find_root().params.get("templates_dir") or ()
    return Templates.default([*folders, *settings().template_folders()])


def template_values(sets: Sequence[str]) -> dict[str, str]:
    return parse_assignments(sets)


def grid_format_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --grid-format option of the commands that draw grids (sweep, demo)."""
    return click.option("--grid-format", type=click.Choice(list(GRID_FORMATS)), default=DEFAULT_GRID_FORMAT,
                        show_default=True,
                        help="the grid image's format: jpg is written 6-9x faster and smaller; png is lossless"
                        )(function)


def set_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --set NAME=VALUE option, given many times."""
    return click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                        help="a template parameter; repeat for more")(function)


def warn(text: str) -> None:
    stderr.print(line(("warning:", "yellow"), " ", text))


FamilyReader = Callable[[str], FamilyFinding]


def with_families(template: Template, values: Mapping[str, Any], read: FamilyReader = find_family,
                  axes: Sequence[Axis] = ()) -> Template:
    """The template told the model family of each checkpoint the job or sweep names, unless it is given.

    `read` asks a server (its /view_metadata); guesses from a name are said aloud.
    """
    if "model_family" not in template.model.model_fields or values.get("model_family") \
            or any(axis.name == "model_family" for axis in axes):
        return template
    names = [str(values.get("checkpoint") or template.model.model_fields["checkpoint"].default)]
    names += [str(value) for axis in axes if axis.name == "checkpoint" for value in axis.values]
    families = {}
    for name in dict.fromkeys(names):
        finding = read(name)
        if finding.note:
            warn(finding.note)
        families[name] = finding.family
    return template.with_families(families)


def warn_about_size(params: Params) -> None:
    """Say so when the picture is far from the model family's native size."""
    note = params.size_note() if hasattr(params, "size_note") else ""
    if note:
        warn(note)


def broker_options(*, required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--broker URL (default $COMFY_BROKER, so a password stays off the command line) and --ca-cert FILE."""
    def add(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option("--ca-cert", "ca_cert", type=click.Path(dir_okay=False), metavar="FILE",
                                help="trust this certificate authority (PEM): the broker's with rediss://, and "
                                     "https servers' (a farm's own CA or its proxy's tls.crt)")(function)
        return click.option("--broker", metavar="URL", envvar="COMFY_BROKER", required=required,
                            help="the queue's Redis: redis://[:PASSWORD@]HOST:6379/0, or rediss:// for TLS "
                                 "(default $COMFY_BROKER)")(function)
    return add


def _queue(broker: str, ca_cert: str | None) -> CeleryQueue:
    """A CeleryQueue on `broker`, checked now so that a bad URL or password fails before any work."""
    try:
        from comfy_orchestrator.queue import CeleryQueue
    except ImportError as exc:
        fail(f"the queue needs the [queue] extra: pip install 'comfy-orchestrator[queue]' ({exc})", EXIT_BAD_INPUT)
    queue = CeleryQueue(broker, ca_cert=ca_cert)
    queue.connect().close()
    return queue


def plain_http_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """--allow-plain-http: a token or password may cross the network in clear (warned)."""
    return click.option("--allow-plain-http", is_flag=True,
                        help="send a token or password over plain http to a host that is not loopback "
                             "(anyone on the network can read it; warned on every run)")(function)


def transport_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--ca-cert FILE and --allow-plain-http: how a command may talk to its servers."""
    return click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
                        help="trust this certificate authority (PEM) for https servers: the farm's own CA or "
                             "its proxy's self-signed tls.crt (default: $REQUESTS_CA_BUNDLE, then the "
                             "usual authorities)")(plain_http_option(function))


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


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


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
            facts.append(f"{_number(p.min)}..{_number(p.max)}")
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
              help="a checkpoint name the server offers (repeatable; default: the templates' default, "
                   "random-sd15.safetensors and random-sdxl.safetensors, whose metadata names SD1.5 and SDXL)")
@click.option("--lora", "loras", multiple=True, metavar="NAME",
              help="a LoRA file the server offers (repeatable; default detail.safetensors, style.safetensors)")
@click.option("--controlnet", "controlnets", multiple=True, metavar="NAME",
              help="a ControlNet file the server offers (repeatable; default control_v11p_sd15_canny.safetensors)")
@click.option("--vae", "vaes", multiple=True, metavar="NAME",
              help="a VAE file the server offers (repeatable; default random-vae.safetensors, sdxl_vae.safetensors)")
@click.option("--root", type=click.Path(file_okay=False), help="folder for input/, output/, temp/ and user/")
@click.option("--preview-method", default="none", show_default=True,
              type=click.Choice(["none", "auto", "latent2rgb", "taesd"]),
              help="sampler previews over the websocket, as ComfyUI's --preview-method")
@click.option("--preview-size", default=512, show_default=True, type=click.IntRange(1, 16384),
              help="previews are fitted inside this many pixels, as ComfyUI's --preview-size")
def sim(host: str, port: int, profile_name: str, checkpoints: Sequence[str], loras: Sequence[str],
        controlnets: Sequence[str], vaes: Sequence[str], root: str | None, preview_method: str,
        preview_size: int) -> None:
    """Run a simulated ComfyUI server (no GPU) until interrupted."""
    try:
        from comfy_orchestrator.sim import SimServer
    except ImportError as exc:
        fail(f"the simulated server needs the [sim] extra: pip install 'comfy-orchestrator[sim]' ({exc})")
    from comfy_orchestrator.sim.server import DEFAULT_CHECKPOINTS, DEFAULT_CONTROLNETS, DEFAULT_LORAS, DEFAULT_VAES

    server = SimServer(host=host, port=port, profile_name=profile_name,
                       checkpoints=checkpoints or DEFAULT_CHECKPOINTS,
                       loras=loras or DEFAULT_LORAS, controlnets=controlnets or DEFAULT_CONTROLNETS,
                       vaes=vaes or DEFAULT_VAES, root=Path(root) if root else None, preview_method=preview_method,
                       preview_size=preview_size)
    with server:
        stdout.print(f"simulated ComfyUI at {server.url} ({profile_name}); files in {server.root}; Ctrl-C stops")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            stdout.print("stopping")


def _sweep_of(template: Template, axes: Sequence[str], sets: Sequence[str], *, zipped: bool, batch_seeds: bool,
              seed_source: int | None, read_family: FamilyReader = find_family) -> Sweep:
    """Build a Sweep from --axis and --set (input files are recorded by name and content, not path).

    The model family of each checkpoint comes from `read_family` (a server's metadata) unless set.
    """
    import random

    from comfy_orchestrator.sweep import Sweep, parse_axis

    rng = random.Random(seed_source)
    fixed: dict[str, Any] = dict(template_values(sets))
    for parameter in template.parameters():
        if parameter.type == "image" and parameter.name in fixed:
            fixed[parameter.name] = str(Path(fixed[parameter.name]).expanduser())
    axes = list(axes)
    for name in SEED_PARAMETERS:  # --set seed=-1: a seed drawn once, kept like a drawn axis so a resume finds it
        if str(fixed.get(name, "")).strip() == str(RANDOM_SEED):
            del fixed[name]
            axes.append(f"{name}={RANDOM_SEED}")
    parsed = tuple(parse_axis(text, rng=rng, read_text=lambda name: Path(name).read_text("utf-8"))
                   for text in axes)
    template = with_families(template, fixed, read_family, parsed)
    return Sweep(template, parsed, fixed, zip=zipped, batch_seeds=batch_seeds)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _with_steps(label: str, steps: Mapping[str, tuple[int, int]]) -> str:
    """A running cell's label with its sampler step, when one is known."""
    if label not in steps:
        return label
    value, maximum = steps[label]
    return f"{label} step {value}/{maximum}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the queue is cleaned, the manifest written."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM stops the main thread as Ctrl-C does (elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_sweep_with_progress(sweep: Sweep, out_dir: Path, servers: Sequence[ServerConfig | str], *,
                             max_attempts: int, thumbnail_px: int, grid_format: str = DEFAULT_GRID_FORMAT,
                             queue: CeleryQueue | None = None, detach: bool = False, timeout_s: float | None = None,
                             wait_for_servers_s: float | None = None) -> SweepReport:
    """Run a sweep over a farm (or through a queue) with a progress bar; Ctrl-C stops it, resumable."""
    import dataclasses

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from comfy_orchestrator.farm import Farm
    from comfy_orchestrator.limits import FARM_TIMEOUTS
    from comfy_orchestrator.retry import RetryPolicy
    from comfy_orchestrator.sweep_run import SweepProgress, run_sweep

    size_note = _size_note(sweep)
    said = threading.Lock()  # taken once: the note is shown at the first progress, from whichever thread
    timeouts = FARM_TIMEOUTS
    if timeout_s is not None:
        timeouts = dataclasses.replace(timeouts, job_s=timeout_s, download_s=timeout_s)
    if wait_for_servers_s is not None:
        timeouts = dataclasses.replace(timeouts, no_server_s=wait_for_servers_s)
    # the farm tries a job no more often in one run than the cell may be tried at all
    farm = Farm(servers, timeouts=timeouts, policy=RetryPolicy(max_attempts=min(
        max_attempts, RetryPolicy.max_attempts))) if queue is None else None
    columns = (TextColumn("cells", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), LineColumn())
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task("", total=None, line=Text(""))

        def show(progress: SweepProgress) -> None:
            if size_note and said.acquire(blocking=False):  # every cell is valid by now
                warn(size_note)
            running = list(progress.running.items())
            current = "; ".join(_with_steps(label, progress.steps) for label, _ in running[:2])
            current += " ..." if len(running) > 2 else ""
            note = progress.message if queue is not None or not progress.running else ""
            text = line((f"{progress.done} done", "green"), " ", (f"{progress.failed} failed", "red"),
                        f" {len(progress.running)} running  ETA {_duration(progress.eta_s)}  ", (current, "dim"),
                        (f"  {note[:160]}" if note else "", "yellow"))
            bar.update(task, total=progress.total, completed=progress.done + progress.failed, line=text)

        try:
            with _terminate_as_interrupt():
                return run_sweep(sweep, out_dir, farm, queue=queue, detach=detach, max_attempts=max_attempts,
                                 on_progress=show, thumbnail_px=thumbnail_px, grid_format=grid_format)
        except KeyboardInterrupt as stop:
            bar.stop()
            how, code = ("terminated", EXIT_TERMINATED) if isinstance(stop, _Terminated) else ("interrupted",
                                                                                             EXIT_INTERRUPTED)
            fail(f"{how}; run the same command again to finish the sweep in {out_dir}", code)


def _size_note(sweep: Sweep) -> str:
    """The first cell's warning about its picture's size against the model family's, or ''."""
    first = {axis.name: axis.values[0] for axis in sweep.axes if axis.replaces is None}
    try:
        params = sweep.template.params({**sweep.fixed, **first})
    except ParameterError:
        return ""  # run_sweep checks every cell first and names the axis value at fault
    return params.size_note() if hasattr(params, "size_note") else ""


def _print_report(report: SweepReport) -> None:
    stdout.print(f"{report.done} of {report.total} cells done, {report.failed} failed "
                 f"({report.ran} prompts run, "
                 + (f"{report.adopted} adopted from an earlier run, " if report.adopted else "")
                 + f"{report.skipped} cells already done) in {report.elapsed_s:.1f} s")
    stdout.print(f"  images:   {report.folder / 'images'}")
    stdout.print(f"  manifest: {report.manifest} (and {report.manifest_csv.name})")
    for grid in report.grids:
        stdout.print(f"  grid:     {grid}")
    if report.page is not None:
        stdout.print(f"  page:     {report.page}")
    for index, error in list(report.failures.items())[:5]:
        stderr.print(line((f"cell {index} failed:", "red"), f" {error}"))


def farm_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --server URL (repeatable) and --farm FILE options: the servers a command runs on."""
    function = click.option("--farm", "farm_file", type=click.Path(exists=True, dir_okay=False),
                            help="a farm file (TOML)")(function)
    return click.option("--server", "servers", multiple=True, metavar="URL",
                        help="a ComfyUI server; repeat for a farm (default $COMFY_URL or http://127.0.0.1:8188; "
                             "token from $COMFY_TOKEN)")(function)


def farm_servers(servers: Sequence[str], farm_file: str | None, *, ca_cert: Path | None = None,
                 allow_plain_http: bool = False) -> list[ServerConfig]:
    """The servers --farm and --server name, $COMFY_URL without either; URLs carry $COMFY_TOKEN.

    `ca_cert` (--ca-cert) serves every URL and the farm file's servers that name none.
    """
    from comfy_orchestrator.servers import load_farm, servers_from_urls

    config = settings()
    configs = list(load_farm(farm_file, ca_cert=ca_cert)) if farm_file else []
    configs += servers_from_urls(list(servers) or ([] if farm_file else [config.comfy_url]), token=config.token(),
                                 ca_cert=ca_cert, allow_plain_http=allow_plain_http)
    return configs


@main.command("sweep")
@click.argument("template_name", metavar="TEMPLATE")
@farm_options
@click.option("--axis", "axes", multiple=True, required=True, metavar="NAME=VALUES",
              help="a swept parameter: cfg=6,8,10 | denoise=0.3:0.9:0.1 | 'denoise=0.3-0.9 [7]' | "
                   "'steps=10-30 (+5)' | seed=random:4 | positive=@prompts.txt | positive=sr:cat,dog; repeat")
@click.option("--zip", "zipped", is_flag=True, help="move the axes in step instead of making a grid")
@set_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="output folder; running again into it resumes the sweep")
@click.option("--dry-run", is_flag=True, help="print the cells, their count and a time estimate; submit nothing")
@click.option("--batch-seeds", is_flag=True,
              help="run a seed axis as one batched prompt (templates with batch_size, e.g. variations)")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1, 100),
              help="tries a failing cell gets, over this run and later resumes")
@click.option("--seed-source", type=int, help="draw seed=random:N from this generator seed, for repeatable draws")
@click.option("--thumbnail", "thumbnail_px", default=256, show_default=True, type=click.IntRange(32, 2048),
              help="grid thumbnail size in pixels")
@grid_format_option
@broker_options(required=False)
@click.option("--detach", is_flag=True, help="with --broker: queue the cells and exit; the same command again collects")
@plain_http_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="seconds one prompt may take on its server, and each of its downloads")
@click.option("--wait-for-servers", "wait_for_servers_s", type=click.FloatRange(min=0), default=120.0,
              show_default=True, help="seconds to wait while no server answers before the cells left fail")
@click.pass_context
def sweep_command(ctx: click.Context, template_name: str, servers: Sequence[str], farm_file: str | None,
                  axes: Sequence[str], zipped: bool, sets: Sequence[str], out_dir: str, dry_run: bool,
                  batch_seeds: bool, max_attempts: int, seed_source: int | None, thumbnail_px: int,
                  grid_format: str, broker: str | None, ca_cert: str | None, detach: bool,
                  allow_plain_http: bool, timeout_s: float, wait_for_servers_s: float) -> None:
    """Run TEMPLATE over a grid of parameter values; results, manifest, grid and page go to --out.

    With --broker the cells go through the durable queue to 'comfy-orch worker's on GPU boxes
    instead of to --server/--farm.
    """
    if broker is None and detach:
        fail("--detach goes with --broker redis://HOST:6379/0", EXIT_BAD_INPUT)
    if broker is not None and (servers or farm_file):
        fail("--broker sends the cells to the queue's workers, --server/--farm to servers directly: give one",
             EXIT_BAD_INPUT)
    queue = _queue(broker, ca_cert) if broker is not None and not dry_run else None
    template = library(ctx).get(template_name)
    # one --ca-cert: the broker's authority with --broker, the servers' with --server/--farm
    server_ca = Path(ca_cert) if ca_cert and broker is None else None
    configs = farm_servers(servers, farm_file, ca_cert=server_ca, allow_plain_http=allow_plain_http)
    # Through the queue no server of ours is at hand: the family comes from --set or the name.
    read_family = find_family if dry_run or broker is not None else _family_reader(configs[0])
    sweep = _sweep_of(template, axes, sets, zipped=zipped, batch_seeds=batch_seeds, seed_source=seed_source,
                      read_family=read_family)
    if dry_run:
        from comfy_orchestrator.sweep_run import plan_sweep

        plan = plan_sweep(sweep, servers=len(configs))
        for cell in plan.cells[:50]:
            stdout.print(f"{cell.index:5d}  {cell.label}")
        if len(plan.cells) > 50:
            stdout.print(f"  ... {len(plan.cells) - 50} more")
        stdout.print(f"{len(plan.cells)} cells in {len(plan.jobs)} prompts on {len(configs)} server(s); "
                     f"about {_duration(plan.estimate_s)} on a fast GPU (SD1.5, 512x512); nothing submitted")
        return
    report = _run_sweep_with_progress(sweep, Path(out_dir), configs, max_attempts=max_attempts,
                                      thumbnail_px=thumbnail_px, grid_format=grid_format, queue=queue, detach=detach,
                                      timeout_s=timeout_s, wait_for_servers_s=wait_for_servers_s)
    _print_report(report)
    if queue is not None and report.waiting:
        stdout.print(f"{report.waiting} cells wait on the queue at {queue.display}; run the same command again "
                     "to collect them")
    if report.failed:
        fail(f"{report.failed} of {report.total} cells failed; see {report.manifest}", EXIT_FAILED)


@main.command("demo")
@click.option("--out", "out_dir", default="comfy-orch-demo", show_default=True, type=click.Path(file_okay=False),
              help="output folder")
@click.option("--server", "servers", multiple=True, metavar="URL",
              help="run on these ComfyUI servers instead of a built-in simulated one")
@click.option("--checkpoint", default=None, help="checkpoint name on a real server")
@grid_format_option
def demo(out_dir: str, servers: Sequence[str], checkpoint: str | None, grid_format: str) -> None:
    """A denoise x CFG sweep of img2img over a sample picture, on a simulated server started for it."""
    import shutil
    from contextlib import ExitStack
    from importlib import resources

    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / "sample.png"
    with resources.as_file(resources.files("comfy_orchestrator").joinpath("data/sample.png")) as shipped:
        shutil.copyfile(shipped, sample)
    template = Templates.default().get("img2img")
    sets = [f"image={sample}", "positive=a watercolor painting of a mountain lake at sunset, pine trees",
            f"checkpoint={checkpoint or DEFAULT_CHECKPOINT}", "seed=42"]
    sweep = _sweep_of(template, ["denoise=0.3:0.9:0.3", "cfg=4,7,10"], sets, zipped=False, batch_seeds=False,
                      seed_source=None)
    with ExitStack() as stack:
        chosen: list[ServerConfig | str] = list(farm_servers(servers, None)) if servers else []
        if not chosen:
            try:
                from comfy_orchestrator.sim import SimServer
                from comfy_orchestrator.sim.costs import profile
            except ImportError as exc:
                fail(f"the demo's simulated server needs the [sim] extra: "
                     f"pip install 'comfy-orchestrator[sim]' ({exc})")
            # a tenth of the recorded GPU timings: real-looking progress without a long wait
            server = stack.enter_context(SimServer(costs=profile("realistic").scaled(10.0),
                                                   checkpoints=(checkpoint or DEFAULT_CHECKPOINT,)))
            stdout.print(f"started a simulated ComfyUI at {server.url} (no GPU needed)")
            chosen = [server.url]
        report = _run_sweep_with_progress(sweep, folder, chosen, max_attempts=3, thumbnail_px=256,
                                          grid_format=grid_format)
    _print_report(report)
    if report.failed:
        fail(f"{report.failed} of {report.total} cells failed; see {report.manifest}", EXIT_FAILED)
    if report.page is not None:
        stdout.print(f"open {report.page} in a browser to compare the results")


def server_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --server URL option of the commands that talk to one server: default $COMFY_URL, then the local one."""
    return click.option("--server", "server", metavar="URL", default=None,
                        help="the ComfyUI server (default: $COMFY_URL, then http://127.0.0.1:8188); "
                             "token from $COMFY_TOKEN")(function)


def _client(server: str | None, ca_cert: Path | None = None, allow_plain_http: bool = False) -> Client:
    """A client of --server, else $COMFY_URL, with $COMFY_TOKEN, trusting --ca-cert."""
    from comfy_orchestrator.client import Client

    config = settings()
    return Client(server or config.comfy_url, token=config.token(), ca_cert=ca_cert,
                  allow_plain_http=allow_plain_http)


def _family_reader(server: ServerConfig) -> FamilyReader:
    """Read model families from a sweep's first server; where it cannot answer, guess from the name."""
    def read(checkpoint: str) -> FamilyFinding:
        from comfy_orchestrator.client import Client

        named = find_family(checkpoint)
        if named.source == "known":  # an official file name: no need to ask
            return named
        try:
            with Client(server.url, headers=server.headers, token=server.token, ca_cert=server.ca_cert,
                        allow_plain_http=server.allow_plain_http) as client:
                return client.model_family(checkpoint)
        except CertificateRejected:
            raise  # the sweep cannot run either: say so once, now
        except ComfyError as exc:
            warn(f"could not read the model family of {checkpoint!r} from the server ({exc})")
            return find_family(checkpoint)

    return read


@main.command("run")
@click.argument("template_name", metavar="TEMPLATE", required=False)
@server_option
@transport_options
@set_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="outputs", show_default=True,
              help="folder for the outputs")
@click.option("--from", "from_image", type=click.Path(dir_okay=False, exists=True),
              help="run the job recorded in an image we saved again (--set overrides its parameters)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=Timeouts().job_s, show_default=True,
              help="seconds the job may take")
@click.pass_context
def run_command(ctx: click.Context, template_name: str | None, server: str | None, ca_cert: Path | None,
                allow_plain_http: bool, sets: Sequence[str], out_dir: str, from_image: str | None,
                timeout_s: float) -> None:
    """Run TEMPLATE once on a server with a progress bar; print where the outputs are."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from comfy_orchestrator.graph import Graph
    from comfy_orchestrator.jobs import Job
    from comfy_orchestrator.protocol import NodeProgress
    from comfy_orchestrator.provenance import read_provenance

    values: dict[str, Any] = {}
    graph: Graph | None = None
    uploads: dict[str, Path] = {}
    if from_image is not None:
        record = read_provenance(Path(from_image).read_bytes())
        if record is None:
            fail(f"{from_image} carries no comfy-orch provenance (was it saved by comfy-orch run?)", EXIT_BAD_INPUT)
        template_name = template_name or record.get("template")
        values = dict(record.get("parameters") or {})
        given = set(template_values(sets))
        for parameter, (upload, path) in _find_inputs(record, Path(from_image), given).items():
            _set_dotted(values, parameter, str(path))
            uploads[upload] = path
        if not template_name:
            graph = Graph.from_api(record["graph"])
    if template_name is None and graph is None:
        fail("name a TEMPLATE (see 'comfy-orch templates') or give --from IMAGE", EXIT_BAD_INPUT)
    values.update(template_values(sets))
    if graph is None:
        assert template_name is not None
        _draw_seeds(library(ctx).get(template_name), values)
    started = time.monotonic()
    with _client(server, ca_cert, allow_plain_http) as client, _terminate_as_interrupt():
        if graph is not None:
            job = Job(graph=graph, inputs=uploads)
        else:
            assert template_name is not None
            template = with_families(library(ctx).get(template_name), values, client.model_family)
            params = template.params(values)
            warn_about_size(params)
            job = template.job(params)
        handle = client.submit(job)
        try:
            with Progress(TextColumn("{task.description:>8}", markup=False), BarColumn(), TaskProgressColumn(),
                          TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn(), console=stderr,
                          transient=False) as bar:
                overall = bar.add_task("overall", total=1.0, detail=f"queued on {client.url}")
                sampler = bar.add_task("sampler", total=1, detail="", visible=False)
                for event in handle.events(timeout_s=timeout_s):
                    progress = handle.progress
                    bar.update(overall, completed=progress.fraction,
                               detail=f"node {progress.node}" if progress.node else "")
                    if isinstance(event, NodeProgress):
                        bar.update(sampler, visible=True, total=event.max, completed=event.value,
                                   detail=f"node {event.node} step {event.value}/{event.max}")
                bar.update(overall, completed=1.0, detail="done")
                # the downloads are inside --timeout too
                left_s = max(1.0, timeout_s - (time.monotonic() - started))
                result = client.save_outputs(handle.wait(), Path(out_dir), timeout_s=left_s)
        except KeyboardInterrupt as stop:
            terminated = isinstance(stop, _Terminated)
            fail(f"{'terminated' if terminated else 'interrupted'}: {_stop_prompt(client, handle)}",
                 EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    for path in result.files:
        stdout.print(str(path))
    if not result.files:
        stderr.print("the job finished without output files")


def _draw_seeds(template: Template, values: dict[str, Any]) -> None:
    """A seed left out or given as -1 is drawn at random, as A1111 does, and said (so it can be given again)."""
    import random

    names = {parameter.name for parameter in template.parameters()}
    for name in SEED_PARAMETERS:
        if name in names and str(values.get(name, RANDOM_SEED)).strip() == str(RANDOM_SEED):
            values[name] = random.SystemRandom().randint(0, DRAWN_SEED_MAX)
            stderr.print(f"{name} {values[name]} (drawn at random; --set {name}={values[name]} gives it again)")


_STOPPED = {"queued": "taken off the queue", "running": "interrupted", "done": "had already finished"}


def _stop_prompt(client: Client, handle: JobHandle) -> str:
    """Stop a prompt we started (off the queue if it waits, interrupted if it runs); say what happened."""
    try:
        state, _ = client.locate(handle.prompt_id)
        if state != "done":
            handle.cancel()
    except ComfyError as exc:
        return (f"could not stop prompt {handle.prompt_id} on {client.url} ({exc}); "
                f"stop it with: comfy-orch interrupt {handle.prompt_id} --server {client.url}")
    return f"prompt {handle.prompt_id} {_STOPPED.get(state, 'stopped')} on {client.url}"


def _find_inputs(record: Mapping[str, Any], image: Path, given: set[str]) -> dict[str, tuple[str, Path]]:
    """Each input file an image's record names (unless --set gives it), found by name and checked by content.

    It is looked for here, beside the image and in the image folder's parents, so `run --from` works
    from any folder with the files where they were: {parameter: (upload name, local path)}.
    """
    from comfy_orchestrator.jobs import name_by_content

    inputs = record.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        fail(f"{image}: its record's inputs are not a table", EXIT_BAD_INPUT)
    places = list(dict.fromkeys(path.resolve() for path in (Path.cwd(), image.parent, image.parent.parent,
                                                            image.parent.parent.parent)))
    found: dict[str, tuple[str, Path]] = {}
    for parameter, entry in inputs.items():
        if parameter in given or parameter.split(".")[0] in given:
            continue
        name, content = (entry.get("file"), entry.get("content")) if isinstance(entry, Mapping) else (None, None)
        if not isinstance(name, str) or not isinstance(content, str) or Path(name).name != name:
            fail(f"{image}: its record names input {parameter} oddly ({entry!r})", EXIT_BAD_INPUT)
        other = []
        for place in places:
            candidate = place / name
            if candidate.is_file():
                if name_by_content(candidate.read_bytes(), candidate.stem, candidate.suffix.lower() or ".png") == content:
                    nearby = Path(os.path.relpath(candidate))  # as short as it can be said from here
                    found[parameter] = (content, candidate if nearby.parts[:1] == ("..",) else nearby)
                    break
                other.append(str(candidate))
        else:
            differs = f" ({', '.join(other)} has other content)" if other else ""
            fail(f"{image} was made from {name!r} ({parameter}), which is not in {', '.join(map(str, places))}"
                 f"{differs}; give it with --set {parameter}=PATH", EXIT_BAD_INPUT)
    return found


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a nested parameter named with dots ("more_controls.0.image") in JSON values."""
    *parents, last = dotted.split(".")
    holder: Any = values
    for part in parents:
        holder = holder[int(part)] if isinstance(holder, list) else holder.setdefault(part, {})
    if isinstance(holder, list):
        holder[int(last)] = value
    else:
        holder[last] = value


@main.group("queue", invoke_without_command=True)
@server_option
@transport_options
@click.pass_context
def queue_command(ctx: click.Context, server: str | None, ca_cert: Path | None, allow_plain_http: bool) -> None:
    """Show the server's running and waiting prompts ('queue status --broker URL': the durable queue)."""
    if ctx.invoked_subcommand is not None:
        return
    with _client(server, ca_cert, allow_plain_http) as client:
        listing = client.queue()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("state", "number", "prompt id", "nodes"):
        table.add_column(column)
    for state, key in (("running", "queue_running"), ("waiting", "queue_pending")):
        for item in sorted(listing.get(key) or (), key=lambda entry: entry[0]):
            table.add_row(state, _number(item[0]), str(item[1]), str(len(item[2])))
    if table.row_count:
        stdout.print(table)
    else:
        stdout.print("the queue is empty")


@main.command("interrupt")
@click.argument("prompt_id", required=False)
@click.option("--clear", is_flag=True, help="also empty the waiting list")
@server_option
@transport_options
def interrupt_command(prompt_id: str | None, clear: bool, server: str | None, ca_cert: Path | None,
                      allow_plain_http: bool) -> None:
    """Stop PROMPT_ID: off the queue if it waits, interrupted if it runs (no PROMPT_ID: the running prompt)."""
    with _client(server, ca_cert, allow_plain_http) as client:
        if clear:
            client.clear_queue()
            stdout.print(f"queue cleared on {client.url}")
        if prompt_id is None:
            running = [str(item[1]) for item in client.queue().get("queue_running") or ()
                       if isinstance(item, (list, tuple)) and len(item) > 1]
            if not running:
                stdout.print(f"nothing is running on {client.url}")
                return
            client.interrupt(running[0])
            stdout.print(f"prompt {running[0]} interrupted on {client.url}")
            return
        state, _ = client.locate(prompt_id)
        if state == "unknown":
            fail(f"{client.url} has no prompt {prompt_id} in its queue or history", EXIT_BAD_INPUT)
        if state == "queued":
            client.delete([prompt_id])
        elif state == "running":
            client.interrupt(prompt_id)
    stdout.print(f"prompt {prompt_id} {_STOPPED[state]} on {client.url}")


@main.command("history")
@click.option("--max", "max_items", type=click.IntRange(min=1), default=20, show_default=True)
@server_option
@transport_options
def history_command(max_items: int, server: str | None, ca_cert: Path | None, allow_plain_http: bool) -> None:
    """List the server's finished prompts, newest last, with their status and outputs."""
    from comfy_orchestrator.protocol import outputs_from_history

    with _client(server, ca_cert, allow_plain_http) as client:
        entries = client.history(max_items=max_items)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("prompt id", "status", "outputs"):
        table.add_column(column)
    for prompt_id, entry in entries.items():
        status = (entry.get("status") or {}).get("status_str") or "?"
        files = ", ".join(o.filename for o in outputs_from_history(entry))
        table.add_row(prompt_id, status, files)
    if table.row_count:
        stdout.print(table)
    else:
        stdout.print("no history")


def _symptom_option(name: str, text: str) -> Callable[..., Any]:
    return click.option(f"--{name}", "symptom", flag_value=name, help=text)


@main.command("advise")
@click.argument("template_name", metavar="TEMPLATE", required=False)
@_symptom_option("too-much-change", "the result strays too far from the input")
@_symptom_option("not-enough-change", "the result looks too much like the input")
@_symptom_option("artifacts", "seams, blotches or odd colours")
@_symptom_option("out-of-memory", "the GPU ran out of memory")
@click.option("--from", "from_image", type=click.Path(dir_okay=False, exists=True),
              help="the picture that went wrong, saved by comfy-orch (its parameters are the starting point)")
@set_option
@click.option("--server", default=None, metavar="URL",
              help="read the checkpoint's family and the VAE files from this server (else guessed, none)")
@click.option("--out", "out_dir", default=None, help="the suggested sweep's folder (default: advice-SYMPTOM)")
@transport_options
@click.pass_context
def advise_command(ctx: click.Context, template_name: str | None, symptom: str | None, from_image: str | None,
                   sets: Sequence[str], server: str | None, out_dir: str | None, ca_cert: Path | None,
                   allow_plain_http: bool) -> None:
    """Turn the guide's troubleshooting into next values for this job, and the sweep that tries them."""
    from comfy_orchestrator.advice import SYMPTOMS, advise
    from comfy_orchestrator.provenance import read_provenance

    if symptom is None:
        fail("say what went wrong: " + ", ".join(f"--{name}" for name in SYMPTOMS), EXIT_BAD_INPUT)
    values: dict[str, Any] = {}
    if from_image is not None:
        record = read_provenance(Path(from_image).read_bytes())
        if record is None or not record.get("template"):
            fail(f"{from_image} carries no comfy-orch template record; name the TEMPLATE and its --set values",
                 EXIT_BAD_INPUT)
        template_name = template_name or record["template"]
        values = dict(record.get("parameters") or {})
        for parameter, (_, path) in _find_inputs(record, Path(from_image), set(template_values(sets))).items():
            _set_dotted(values, parameter, str(path))
    if template_name is None:
        fail("name a TEMPLATE (see 'comfy-orch templates') or give --from IMAGE", EXIT_BAD_INPUT)
    values.update(template_values(sets))
    template = library(ctx).get(template_name)
    vaes: tuple[str, ...] = ()
    if server is not None:
        with _client(server, ca_cert, allow_plain_http) as client:
            template = with_families(template, values, client.model_family)
            vaes = tuple(str(name) for name in client.schema().choices("VAELoader", "vae_name"))
    else:
        template = with_families(template, values)
    params = template.params(values)
    advice = advise(symptom, template.name, params, vaes=vaes)  # type: ignore[arg-type]
    out = out_dir or f"advice-{symptom}"
    # build the suggested sweep here, so a command that would not validate is never printed
    _sweep_of(library(ctx).get(advice.template).with_families(template.families), advice.axes,
              [f"{name}={value}" for name, value in advice.sets.items()], zipped=False, batch_seeds=False,
              seed_source=None).cells()
    stdout.print(line((symptom.replace("-", " "), "bold"), f" ({SYMPTOMS[symptom]}), {template.name}: "
                      f"denoise {params.denoise:g}, CFG {params.cfg:g}"))  # type: ignore[attr-defined]
    for remedy in advice.remedies:
        stdout.print(f"  - {remedy}")
    stdout.print(line(("explore them:", "bold")))
    stdout.print(advice.command(out=out, server=server))


@main.command("inspect")
@click.argument("image", type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="print our whole record as JSON")
def inspect_command(image: str, as_json: bool) -> None:
    """Show how an image was made: template, parameters, seeds, server, ComfyUI version."""
    from comfy_orchestrator.provenance import PROVENANCE_KEY, png_text, read_provenance

    data = Path(image).read_bytes()
    record = read_provenance(data)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    chunks = png_text(data)
    if record is None:
        server_chunks = ", ".join(sorted(chunks)) or "none"
        fail(f"{image} carries no {PROVENANCE_KEY} record (its text chunks: {server_chunks})", EXIT_BAD_INPUT)
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("template", "label", "server", "comfyui_version", "prompt_id", "job_id"):
        if record.get(key):
            table.add_row(key, str(record[key]))
    table.add_row("seeds", json.dumps(record.get("seeds") or {}))
    for name, value in (record.get("parameters") or {}).items():
        table.add_row(f"  {name}", json.dumps(value, ensure_ascii=False))
    table.add_row("graph", f"{len(record.get('graph') or {})} nodes")
    table.add_row("server chunks", ", ".join(sorted(k for k in chunks if k != PROVENANCE_KEY)) or "none")
    stdout.print(table)
    stdout.print(f"run it again: comfy-orch run --from {image}")


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
            stdout.print(line((status.name, "bold"), "  ", ("down", "red"), tags))
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
        if not status.up:
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
    """Show each server: up or down, queue, GPU and VRAM, checkpoints. Exits 1 if any is down."""
    import dataclasses

    from comfy_orchestrator.farm import Farm

    configs = farm_servers(servers, farm_file, ca_cert=ca_cert, allow_plain_http=allow_plain_http)
    statuses = Farm(configs).status(timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(status) for status in statuses], indent=2))
    else:
        _print_statuses(statuses)
    down = [status.name for status in statuses if not status.up]
    if down:
        fail(f"{len(down)} of {len(statuses)} server(s) down: {', '.join(down)}", EXIT_FAILED)


@main.command("worker")
@broker_options(required=True)
@farm_options
@click.option("--name", default=None, help="this worker's name in results and 'queue status' (default: the host name)")
@click.option("--lease", "lease_s", type=click.FloatRange(1.0, 3600.0), default=30.0, show_default=True,
              help="seconds after which a silent worker's cells are queued again")
def worker_command(broker: str, ca_cert: str | None, servers: Sequence[str], farm_file: str | None, name: str | None,
                   lease_s: float) -> None:
    """Run cells from the durable queue on this GPU box's ComfyUI servers, until stopped.

    Ctrl-C or SIGTERM stops taking cells and lets the running ones finish; a killed worker's
    cells go back to the queue.
    """
    _queue(broker, ca_cert)  # one clear line for a bad URL, an unreachable broker or a wrong password
    from comfy_orchestrator.queue.broker import Broker, QueueTimeouts
    from comfy_orchestrator.queue.worker import default_worker_name, run_worker

    configs = farm_servers(servers, farm_file)
    checked = Broker.parse(broker, ca_cert=ca_cert)
    name = name or default_worker_name()
    stderr.print(f"worker {name} takes cells from {checked.display} for {len(configs)} server(s): "
                 f"{', '.join(c.name for c in configs)}; Ctrl-C stops")
    level = logging.getLogger().getEffectiveLevel()
    run_worker(checked, configs, name=name, timeouts=QueueTimeouts(lease_s=lease_s),
               loglevel=logging.getLevelName(level))


@queue_command.command("status")
@broker_options(required=True)
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def queue_status(broker: str, ca_cert: str | None, as_json: bool) -> None:
    """Show the durable queue: the sweeps on it with their progress, and the workers with their servers."""
    import dataclasses
    import time

    status = _queue(broker, ca_cert).status()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(status), indent=2, default=str))
        return
    sweeps = Table(title=f"sweeps on {status.broker}", title_justify="left")
    for column in ("sweep", "title", "collected/total", "queued", "running", "to collect", "age", "submitter"):
        sweeps.add_column(column, overflow="fold")
    for sweep in status.sweeps:
        sweeps.add_row(sweep.sweep_id, sweep.title, f"{sweep.collected}/{sweep.total}", str(sweep.queued),
                       str(sweep.running), str(sweep.finished), _duration(time.time() - sweep.submitted_at),
                       sweep.submitter)
    stdout.print(sweeps if status.sweeps else "no sweeps on the queue")
    workers = Table(title="workers", title_justify="left")
    for column in ("worker", "host", "running/slots", "servers"):
        workers.add_column(column, overflow="fold")
    for worker in status.workers:
        lines = []
        for server in worker.servers:
            state = ("up", "green") if server.get("up") else (f"down {server.get('error', '')}", "red")
            loaded = f" loaded {server['loaded']}" if server.get("loaded") else ""
            checkpoints = ", ".join(str(c) for c in server.get("checkpoints", ())[:3])
            lines.append(line(f"{server.get('name')} ", state, f" {server.get('busy', 0)}/{server.get('slots', 0)}"
                              f"{loaded} ", (checkpoints, "dim")))
        workers.add_row(worker.name, worker.host, f"{worker.running}/{worker.capacity}", Text("\n").join(lines))
    stdout.print(workers if status.workers else "no worker is listening")


@queue_command.command("cancel")
@click.argument("sweep_id", metavar="SWEEP")
@broker_options(required=True)
def queue_cancel(sweep_id: str, broker: str, ca_cert: str | None) -> None:
    """Take SWEEP (an id from 'queue status') off the queue: its waiting cells go; running ones finish unheard."""
    queue = _queue(broker, ca_cert)
    known = [sweep.sweep_id for sweep in queue.status().sweeps]
    if sweep_id not in known:
        fail(f"no sweep {sweep_id!r} on {queue.display}; 'comfy-orch queue status' lists them", EXIT_BAD_INPUT)
    queue.forget(sweep_id)
    stdout.print(f"sweep {sweep_id} is off the queue; running the sweep command again queues what it lacks")


if __name__ == "__main__":  # pragma: no cover
    main()
