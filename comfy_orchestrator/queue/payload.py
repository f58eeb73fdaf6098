"""What travels through the queue, as JSON: a job out to a worker, its result or failure back.

Input files do not travel with each job: a job names them by content (`jobs.content_name`) and
the submitter stores each one's bytes once in Redis. Outputs travel back inside the result, as
base64, with the name the worker's server gave them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_orchestrator.errors import ComfyError, MalformedMessage, WorkerJobFailed
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job, JobResult, Output

PAYLOAD_VERSION = 1


def job_to_json(job: Job, *, sweep_id: str, key: str) -> dict[str, Any]:
    """A job as the task's argument: its graph and provenance, and its input files by name only."""
    return {"version": PAYLOAD_VERSION, "sweep": sweep_id, "key": key, "graph": job.graph.to_api(),
            "template": job.template, "params": dict(job.params), "inputs": sorted(job.inputs),
            "parameter_map": dict(job.parameter_map), "label": job.label}


@dataclass(frozen=True)
class TaskOrder:
    """A task's argument read back: which sweep and cell, and the job (inputs still to be fetched)."""

    sweep_id: str
    key: str
    job: Job
    inputs: tuple[str, ...]


def job_from_json(data: Any, *, input_folder: Path) -> TaskOrder:
    """Read a task's argument; the job's inputs point into `input_folder` (the worker fetches them there)."""
    if not isinstance(data, Mapping) or data.get("version") != PAYLOAD_VERSION:
        raise MalformedMessage("a task's argument is not a comfy-orch job of this version", server="queue")
    try:
        inputs = tuple(str(name) for name in data["inputs"])
        for name in inputs:
            if "/" in name or "\\" in name or name.startswith("."):
                raise MalformedMessage(f"an input file name {name!r} would leave the input folder", server="queue")
        job = Job(graph=Graph.from_api(data["graph"]), template=data.get("template"),
                  params=dict(data.get("params") or {}), inputs={name: input_folder / name for name in inputs},
                  parameter_map=dict(data.get("parameter_map") or {}), label=str(data.get("label") or ""))
        return TaskOrder(str(data["sweep"]), str(data["key"]), job, inputs)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"a task's argument is malformed: {exc}", server="queue") from exc


def result_to_json(result: JobResult, *, worker: str, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """A job finished on `worker` as the task's return value, its output files inline as (name, bytes)."""
    return {"ok": True, "prompt_id": result.prompt_id, "worker": worker, "server": result.server,
            "outputs": [{"node_id": o.node_id, "filename": o.filename, "subfolder": o.subfolder, "type": o.type,
                         "kind": o.kind} for o in result.outputs],
            "files": [{"name": name, "data": base64.b64encode(data).decode("ascii")} for name, data in files],
            "timings": dict(result.timings), "cached_nodes": list(result.cached_nodes)}


def failure_to_json(error: ComfyError, *, worker: str, attempts: int, servers: tuple[str, ...]) -> dict[str, Any]:
    """A job that failed on a worker as the task's return value (Celery's own exceptions would not carry facts)."""
    return {"ok": False, "kind": type(error).__name__, "message": str(error), "retryable": bool(error.retryable),
            "worker": worker, "attempts": attempts, "servers": list(servers)}


@dataclass(frozen=True)
class TaskResult:
    """A task's return value read back on the submitter's side."""

    prompt_id: str
    worker: str
    server: str
    outputs: tuple[Output, ...]
    files: tuple[tuple[str, bytes], ...]
    timings: Mapping[str, float]
    cached_nodes: tuple[str, ...]


@dataclass(frozen=True)
class TaskFailure:
    """A task that ran and failed on a worker."""

    error: WorkerJobFailed
    attempts: int
    servers: tuple[str, ...]


def read_result(data: Any) -> TaskResult | TaskFailure:
    """Check a task's return value for shape; MalformedMessage if it is not one of ours."""
    try:
        if not isinstance(data, Mapping):
            raise TypeError("not an object")
        worker = str(data["worker"])
        if not data["ok"]:
            servers = tuple(str(s) for s in data.get("servers") or ())
            error = WorkerJobFailed(str(data["message"]), kind=str(data["kind"]),
                                    retryable=bool(data.get("retryable")), worker=worker)
            return TaskFailure(error, int(data.get("attempts") or 1), servers)
        outputs = tuple(Output(node_id=str(o["node_id"]), filename=str(o["filename"]), subfolder=str(o["subfolder"]),
                               type=str(o["type"]), kind=str(o["kind"])) for o in data["outputs"])
        files = tuple((str(f["name"]), base64.b64decode(f["data"], validate=True)) for f in data["files"])
        timings = {str(k): float(v) for k, v in dict(data.get("timings") or {}).items()}
        return TaskResult(str(data["prompt_id"]), worker, str(data["server"]), outputs, files, timings,
                          tuple(str(n) for n in data.get("cached_nodes") or ()))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise MalformedMessage(f"a task's result is malformed: {exc}", server="queue") from exc
