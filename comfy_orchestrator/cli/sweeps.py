"""`comfy-orch sweep` and `demo`: a sweep through a farm or the queue, with progress."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.text import Text

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.options import (
    DEFAULT_GRID_FORMAT,
    broker_options,
    connect_queue,
    farm_options,
    farm_servers,
    grid_format_option,
    library,
    plain_http_option,
    set_option,
)
from comfy_orchestrator.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    fail,
    format_duration,
    line,
    line_column,
    mark_started,
    stderr,
    stdout,
    stopped,
    warn,
)
from comfy_orchestrator.cli.values import family_reader, sweep_of
from comfy_orchestrator.errors import ParameterError

if TYPE_CHECKING:  # imported where used, so that a command loads only what it needs
    from comfy_orchestrator.queue import CeleryQueue
    from comfy_orchestrator.servers import ServerConfig
    from comfy_orchestrator.sweep import Sweep
    from comfy_orchestrator.sweep_progress import SweepProgress
    from comfy_orchestrator.sweep_run import SweepReport


def _with_steps(label: str, steps: Mapping[str, tuple[int, int]]) -> str:
    """A running cell's label with its sampler step, when one is known."""
    if label not in steps:
        return label
    value, maximum = steps[label]
    return f"{label} step {value}/{maximum}"


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
    from comfy_orchestrator.sweep_run import run_sweep

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
    columns = (TextColumn("cells", style="bold", markup=False), BarColumn(bar_width=24), MofNCompleteColumn(),
               line_column())  # a short bar leaves the counts and the ETA room on one line at 80 columns
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task("", total=None, line=Text(""))

        def show(progress: SweepProgress) -> None:
            mark_started()  # the first progress comes as the prepared sweep's first prompts go out
            if size_note and said.acquire(blocking=False):  # every cell is valid by now
                warn(size_note)
            running = list(progress.running.items())
            current = "; ".join(_with_steps(label, progress.steps) for label, _ in running[:2])
            current += " ..." if len(running) > 2 else ""
            note = progress.message if queue is not None or not progress.running else ""
            text = line((f"{progress.done} done", "green"), " ", (f"{progress.failed} failed", "red"),
                        f" {len(progress.running)} running  ETA {format_duration(progress.eta_s)}  ", (current, "dim"),
                        (f"  {note[:160]}" if note else "", "yellow"))
            bar.update(task, total=progress.total, completed=progress.done + progress.failed, line=text)

        try:
            return run_sweep(sweep, out_dir, farm, queue=queue, detach=detach, max_attempts=max_attempts,
                             on_progress=show, thumbnail_px=thumbnail_px, grid_format=grid_format)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (output.Commands)
            bar.stop()
            how, code = stopped(stop)
            fail(f"{how}; run the same command again to finish the sweep in {out_dir}", code)


def _size_note(sweep: Sweep) -> str:
    """The first cell's warning about its picture's size against the model family's, or ''."""
    try:
        params = sweep.cells()[0].params  # validated once: run_sweep reuses these cells
    except ParameterError:
        return ""  # run_sweep checks every cell first and names the axis value at fault
    return params.size_note() if hasattr(params, "size_note") else ""


def print_report(report: SweepReport) -> None:
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


# A server that is up answers at once; `sweep` gives each this long before it says none answers.
SERVER_PROBE_CONNECT_S, SERVER_PROBE_READ_S = 3.0, 5.0


def _check_journal(sweep: Sweep, folder: Path) -> None:
    """Open the folder's journal, if it has one, as the run will: a broken or different one is refused now."""
    from comfy_orchestrator.journal import JOURNAL_NAME, Journal

    if (folder / JOURNAL_NAME).exists():
        with Journal.open(folder, digest=sweep.digest(), definition=sweep.definition()):
            pass


def _require_a_server(servers: Sequence[ServerConfig]) -> None:
    """Fail at once, naming each URL, when no server of a sweep answers (--wait-for-servers waits instead)."""
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.errors import AuthFailed, CertificateRejected, ComfyError
    from comfy_orchestrator.limits import Timeouts

    probe = Timeouts(connect_s=SERVER_PROBE_CONNECT_S, read_s=SERVER_PROBE_READ_S)
    problems = []
    for server in servers:
        try:
            with Client(server.url, headers=server.headers, token=server.token, ca_cert=server.ca_cert,
                        allow_plain_http=server.allow_plain_http, timeouts=probe) as client:
                client.system_stats()
            return
        except (CertificateRejected, AuthFailed):
            raise  # the set-up is wrong, not the server down: said once, as every command says it
        except ComfyError as exc:
            text = str(exc)
            problems.append(text if text.startswith(server.url) else f"{server.url}: {text}")
    fail("no server answers: " + "; ".join(problems) + "; start one, or pass --wait-for-servers SECONDS "
         "to wait for one", EXIT_FAILED)


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
@click.option("--wait-for-servers", "wait_for_servers_s", type=click.FloatRange(min=0, min_open=True), default=120.0,
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
    queue = connect_queue(broker, ca_cert) if broker is not None and not dry_run else None
    template = library(ctx).get(template_name)
    # one --ca-cert: the broker's authority with --broker, the servers' with --server/--farm
    server_ca = Path(ca_cert) if ca_cert and broker is None else None
    configs = farm_servers(servers, farm_file, ca_cert=server_ca, allow_plain_http=allow_plain_http)
    # Through the queue no server of ours is at hand: the family comes from --set or the name.
    read_family = None if dry_run or broker is not None else family_reader(configs[0])
    sweep = sweep_of(template, axes, sets, zipped=zipped, batch_seeds=batch_seeds, seed_source=seed_source,
                      read_family=read_family)
    if dry_run:
        from comfy_orchestrator.sweep_run import plan_sweep

        plan = plan_sweep(sweep, servers=len(configs))
        for cell in plan.cells[:50]:
            stdout.print(f"{cell.index:5d}  {cell.label}")
        if len(plan.cells) > 50:
            stdout.print(f"  ... {len(plan.cells) - 50} more")
        stdout.print(f"{len(plan.cells)} cells in {len(plan.jobs)} prompts on {len(configs)} server(s); "
                     f"about {format_duration(plan.estimate_s)} on a fast GPU (SD1.5, 512x512); nothing submitted")
        return
    if broker is None and ctx.get_parameter_source("wait_for_servers_s") is click.core.ParameterSource.DEFAULT:
        sweep.cells()  # a bad value is said before the servers are asked (run_sweep uses these cells)
        _check_journal(sweep, Path(out_dir))  # what the user can fix in the folder is said before the servers
        _require_a_server(configs)  # asked to wait, the farm waits; by default a sweep no server takes fails now
    report = _run_sweep_with_progress(sweep, Path(out_dir), configs, max_attempts=max_attempts,
                                      thumbnail_px=thumbnail_px, grid_format=grid_format, queue=queue, detach=detach,
                                      timeout_s=timeout_s, wait_for_servers_s=wait_for_servers_s)
    print_report(report)
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
    from comfy_orchestrator.templates import Templates

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / "sample.png"
    with resources.as_file(resources.files("comfy_orchestrator").joinpath("data/sample.png")) as shipped:
        shutil.copyfile(shipped, sample)
    template = Templates.default().get("img2img")
    sets = [f"image={sample}", "positive=a watercolor painting of a mountain lake at sunset, pine trees",
            f"checkpoint={checkpoint or DEFAULT_CHECKPOINT}", "seed=42"]
    sweep = sweep_of(template, ["denoise=0.3:0.9:0.3", "cfg=4,7,10"], sets, zipped=False, batch_seeds=False,
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
    print_report(report)
    if report.failed:
        fail(f"{report.failed} of {report.total} cells failed; see {report.manifest}", EXIT_FAILED)
    if report.page is not None:
        stdout.print(f"open {report.page} in a browser to compare the results")
