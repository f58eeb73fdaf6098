"""The durable queue's commands: a worker, `queue status`, `queue cancel`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import click

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.options import broker_options, connect_queue, farm_options, farm_servers
from comfy_orchestrator.cli.output import EXIT_BAD_INPUT, fail, format_duration, line, stderr, stdout
from comfy_orchestrator.cli.server import queue_command


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
    connect_queue(broker, ca_cert)  # one clear line for a bad URL, an unreachable broker or a wrong password
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

    from rich.table import Table
    from rich.text import Text

    status = connect_queue(broker, ca_cert).status()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(status), indent=2, default=str))
        return
    sweeps = Table(title=f"sweeps on {status.broker}", title_justify="left")
    for column in ("sweep", "title", "collected/total", "queued", "running", "to collect", "age", "submitter"):
        sweeps.add_column(column, overflow="fold")
    for sweep in status.sweeps:
        sweeps.add_row(sweep.sweep_id, sweep.title, f"{sweep.collected}/{sweep.total}", str(sweep.queued),
                       str(sweep.running), str(sweep.finished), format_duration(time.time() - sweep.submitted_at),
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
    queue = connect_queue(broker, ca_cert)
    known = [sweep.sweep_id for sweep in queue.status().sweeps]
    if sweep_id not in known:
        fail(f"no sweep {sweep_id!r} on {queue.display}; 'comfy-orch queue status' lists them", EXIT_BAD_INPUT)
    queue.forget(sweep_id)
    stdout.print(f"sweep {sweep_id} is off the queue; running the sweep command again queues what it lacks")
