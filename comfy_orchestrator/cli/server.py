"""Commands on one server: run a job, its queue, interrupt, history; inspect an image we made."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.options import (
    connect_client,
    library,
    server_option,
    set_option,
    template_values,
    transport_options,
)
from comfy_orchestrator.cli.output import (
    EXIT_BAD_INPUT,
    fail,
    format_number,
    line,
    mark_started,
    note,
    stderr,
    stdout,
    stopped,
)
from comfy_orchestrator.cli.values import find_inputs, set_dotted, warn_about_size, with_families
from comfy_orchestrator.errors import ComfyError
from comfy_orchestrator.limits import Timeouts

if TYPE_CHECKING:  # imported where used, so that a command loads only what it needs
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.templates import Template


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
        for parameter, (upload, path) in find_inputs(record, Path(from_image), given).items():
            set_dotted(values, parameter, str(path))
            uploads[upload] = path
        if not template_name:
            graph = Graph.from_api(record["graph"])
    if template_name is None and graph is None:
        fail("name a TEMPLATE (see 'comfy-orch templates') or give --from IMAGE", EXIT_BAD_INPUT)
    values.update(template_values(sets))
    template: Template | None = None
    if graph is None:
        assert template_name is not None
        template = library(ctx).get(template_name)
        _draw_seeds(template, values)
    started = time.monotonic()
    with connect_client(server, ca_cert, allow_plain_http) as client:
        if template is None:
            assert graph is not None
            job = Job(graph=graph, inputs=uploads)
        else:
            template = with_families(template, values, client.model_family)
            params = template.params(values)
            warn_about_size(params)
            job = template.job(params)
        # the prompt id is ours before the POST: a Ctrl-C while the server takes the prompt still finds it
        prompt_id = str(uuid.uuid4())
        try:  # from here on, Ctrl-C (or SIGTERM: output.Commands) stops the prompt we started
            handle = client.submit(job, prompt_id=prompt_id)
            mark_started()
            # the bar's code loads while the server works, not before the prompt is in
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

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
            how, code = stopped(stop)
            fail(f"{how}: {_stop_prompt(client, prompt_id)}", code)
    for path in result.files:
        stdout.print(str(path))
    if not result.files:
        stderr.print("the job finished without output files")


def _draw_seeds(template: Template, values: dict[str, Any]) -> None:
    """A seed left out or given as -1 is drawn at random, as A1111 does, and said (so it can be given again)."""
    import random

    from comfy_orchestrator.sweep import DRAWN_SEED_MAX, RANDOM_SEED, SEED_PARAMETERS

    names = template.model.model_fields  # the parameters' names (without describing each, as parameters() does)
    for name in SEED_PARAMETERS:
        if name in names and str(values.get(name, RANDOM_SEED)).strip() == str(RANDOM_SEED):
            values[name] = random.SystemRandom().randint(0, DRAWN_SEED_MAX)
            note(f"{name} {values[name]} (drawn at random; --set {name}={values[name]} gives it again)")


STOPPED = {"queued": "taken off the queue", "running": "interrupted", "done": "had already finished"}


def _stop_prompt(client: Client, prompt_id: str) -> str:
    """Stop a prompt we started or were starting (off the queue if it waits, interrupted if it runs); say what
    happened."""
    stop_it = f"stop it with: comfy-orch interrupt {prompt_id} --server {client.url}"
    try:
        state, _ = client.locate(prompt_id)
        if state != "done":  # "unknown" too: the POST may still be on its way
            client.delete([prompt_id])  # first: a prompt deleted while it starts is then interrupted
            client.interrupt(prompt_id)
    except ComfyError as exc:
        return f"could not stop prompt {prompt_id} on {client.url} ({exc}); {stop_it}"
    if state == "unknown":
        return f"prompt {prompt_id} was not on {client.url} yet; should it appear, {stop_it}"
    return f"prompt {prompt_id} {STOPPED[state]} on {client.url}"


@main.group("queue", invoke_without_command=True)
@server_option
@transport_options
@click.pass_context
def queue_command(ctx: click.Context, server: str | None, ca_cert: Path | None, allow_plain_http: bool) -> None:
    """Show the server's running and waiting prompts ('queue status --broker URL': the durable queue)."""
    if ctx.invoked_subcommand is not None:
        return
    with connect_client(server, ca_cert, allow_plain_http) as client:
        listing = client.queue()
    rows = [(state, format_number(item[0]), str(item[1]), str(len(item[2])))
            for state, key in (("running", "queue_running"), ("waiting", "queue_pending"))
            for item in sorted(listing.get(key) or (), key=lambda entry: entry[0])]
    if not rows:
        stdout.print("the queue is empty")
        return
    header, *lines = _aligned([("state", "number", "prompt id", "nodes"), *rows])
    stdout.print(line((header, "bold")))
    for text in lines:
        stdout.print(text)


@main.command("interrupt")
@click.argument("prompt_id", required=False)
@click.option("--clear", is_flag=True, help="also empty the waiting list")
@server_option
@transport_options
def interrupt_command(prompt_id: str | None, clear: bool, server: str | None, ca_cert: Path | None,
                      allow_plain_http: bool) -> None:
    """Stop PROMPT_ID: off the queue if it waits, interrupted if it runs (no PROMPT_ID: the running prompt)."""
    with connect_client(server, ca_cert, allow_plain_http) as client:
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
    stdout.print(f"prompt {prompt_id} {STOPPED[state]} on {client.url}")


@main.command("history")
@click.option("--max", "max_items", type=click.IntRange(min=1), default=20, show_default=True)
@server_option
@transport_options
def history_command(max_items: int, server: str | None, ca_cert: Path | None, allow_plain_http: bool) -> None:
    """List the server's finished prompts, newest last, with their status and outputs."""
    import textwrap

    from comfy_orchestrator.protocol import outputs_from_history

    with connect_client(server, ca_cert, allow_plain_http) as client:
        entries = client.history(max_items=max_items)
    if not entries:
        stdout.print("no history")
        return
    width = max(stdout.width, 60)
    heads = _aligned([(prompt_id, (entry.get("status") or {}).get("status_str") or "?")
                      for prompt_id, entry in entries.items()])
    for head, entry in zip(heads, entries.values()):
        files = [output.filename for output in outputs_from_history(entry)]
        listed = ", ".join(files)
        if len(head) + 2 + len(listed) <= width:
            stdout.print(f"{head}  {listed}".rstrip())
            continue
        stdout.print(f"{head}  {len(files)} output{'' if len(files) == 1 else 's'}:")
        for text in textwrap.wrap(listed, width - 2, break_long_words=False, break_on_hyphens=False):
            stdout.print("  " + text)


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines of left-aligned columns two spaces apart: no cell cut (a prompt id is copied from
    here), no trailing spaces."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


@main.command("inspect")
@click.argument("image", type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="print our whole record as JSON")
def inspect_command(image: str, as_json: bool) -> None:
    """Show how an image was made: template, parameters, seeds, server, ComfyUI version."""
    from rich.table import Table

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
