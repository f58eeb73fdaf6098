"""The simulated server's executor and worker thread: one prompt at a time, as ComfyUI's prompt worker."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from comfy_orchestrator.schema import Schema
from comfy_orchestrator.sim import generic, guidance, images, nodes  # noqa: F401  nodes, guidance register
from comfy_orchestrator.sim.costs import Costs
from comfy_orchestrator.sim.faults import Faults
from comfy_orchestrator.sim.queue import PromptQueue, QueueItem
from comfy_orchestrator.sim.registry import (
    NEVER_CACHED,
    NODES,
    Counters,
    NodeFailure,
    NodeResult,
    ProcessingInterrupted,
    ServerCrashed,
    SimModel,
    annotated_path,
    file_hash,
)

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1  # binary event types, as ComfyUI's protocol.BinaryEventTypes
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {"image/jpeg": 1, "image/png": 2}  # the format word after a PREVIEW_IMAGE event
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")  # ComfyUI's --preview-method choices
DEFAULT_PREVIEW_SIZE = 512  # ComfyUI's --preview-size default

class Outbox(Protocol):
    """Where the worker's websocket messages go (the server's socket hub)."""

    def send(self, event: str, data: Any, sid: str | None) -> None: ...

    def send_binary(self, payload: bytes, sid: str | None) -> None: ...

    def supports_preview_metadata(self, sid: str | None) -> bool: ...


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class ExecutionList:
    """ComfyUI's topological dissolve of the graph, with its node-picking order."""

    def __init__(self, prompt: Mapping[str, Any], schema: Schema, is_cached: Callable[[str], bool]) -> None:
        self.prompt = prompt
        self.schema = schema
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, int, str]] = []
        while stack:
            unique_id = stack.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.block_count[unique_id] = 0
            self.blocking[unique_id] = {}
            for value in self.prompt[unique_id]["inputs"].values():
                if is_link(value):
                    from_id, socket = value
                    if not self.is_cached(from_id):
                        stack.append(from_id)
                    links.append((from_id, socket, unique_id))
        for from_id, socket, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = {}
                    self.block_count[to_id] += 1
                self.blocking[from_id][to_id][socket] = True

    def _is_output(self, node_id: str) -> bool:
        class_type = self.prompt[node_id]["class_type"]
        return class_type in self.schema and self.schema[class_type].output_node

    def next_node(self) -> str | None:
        ready = [node_id for node_id in self.pending if self.block_count[node_id] == 0]
        if not ready:
            return None
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(blocked) for blocked in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self.blocking[node_id]:
                if any(self._is_output(second) for second in self.blocking[blocked]):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]


def format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    if isinstance(value, np.ndarray):
        return images.image_repr(value)
    if isinstance(value, dict) and "samples" in value:
        return "{'samples': " + images.image_repr(value["samples"]) + "}"
    return str(value)


class Executor:
    """Runs one prompt: caching, node order, progress and the messages ComfyUI sends."""

    def __init__(self, *, schema: Schema, outbox: Outbox, costs: Costs, faults: Faults, counters: Counters,
                 input_dir: Path, output_dir: Path, temp_dir: Path, preview_method: str,
                 crash: Callable[[], None], preview_size: int = DEFAULT_PREVIEW_SIZE) -> None:
        self.schema = schema
        self.outbox = outbox
        self.costs = costs
        self.faults = faults
        self.counters = counters
        self.input_dir, self.output_dir, self.temp_dir = input_dir, output_dir, temp_dir
        self.preview_method = preview_method
        self.preview_size = preview_size
        self.crash_server = crash
        self.cache: dict[str, CacheEntry] = {}
        self.loaded_checkpoint: str | None = None
        self.gpu_checkpoint: str | None = None
        self.attention = threading.Event()  # set to wake a waiting node at once
        self.interrupt_requested = False
        self.crashed = False
        # per prompt
        self.prompt_id = ""
        self.prompt: dict[str, Any] = {}
        self.extra_data: dict[str, Any] = {}
        self.client_id: str | None = None
        self.node_id = ""
        self.status_messages: list[list[Any]] = []
        self.progress: dict[str, dict[str, Any]] = {}
        self.success = True
        self.history_result: dict[str, Any] = {}
        self.last_node_id: str | None = None  # told to a submitter that reconnects mid-run

    # -- control from other threads
    def interrupt(self) -> None:
        self.interrupt_requested = True
        self.attention.set()

    def crash(self) -> None:
        self.crashed = True
        self.attention.set()

    def free(self, *, unload_models: bool, free_memory: bool) -> None:
        if unload_models or free_memory:
            self.loaded_checkpoint = None
            self.gpu_checkpoint = None
        if free_memory:
            self.cache.clear()

    # -- NodeContext
    def _check(self) -> None:
        if self.crashed:
            raise ServerCrashed("the simulated server crashed")
        if self.interrupt_requested:
            raise ProcessingInterrupted("Processing interrupted")

    def spend(self, seconds: float) -> None:
        self._check()
        if seconds > 0:
            if self.attention.wait(seconds):
                self._check()

    def step(self, value: int, total: int, preview: images.FloatArray | None) -> None:
        self._check()
        if self.faults.crash_node_type == self.prompt[self.node_id]["class_type"] and self.faults.crash_step == value:
            self._crash_now()
        picture = None
        method = self._preview_method()
        if preview is not None and method != "none":
            # auto is latent2rgb in ComfyUI 0.8; taesd decodes at full size (the sim has its decoders)
            jpeg = images.preview_jpeg(preview, self.preview_size, decoded=method == "taesd")
            picture = ("image/jpeg", jpeg)
        self._progress(value, total, picture)

    def step_with_picture(self, value: int, total: int, png: bytes) -> None:
        self._check()
        self._progress(value, total, ("image/png", png))

    def _progress(self, value: int, total: int, picture: tuple[str, bytes] | None) -> None:
        """Progress as ComfyUI's hook sends it: progress_state, a metadata frame, progress, a legacy frame."""
        self._update_progress(self.node_id, value, total)
        with_metadata = self.outbox.supports_preview_metadata(self.client_id)
        if picture is not None and with_metadata:
            metadata = {"node_id": self.node_id, "prompt_id": self.prompt_id, "display_node_id": self.node_id,
                        "parent_node_id": None, "real_node_id": self.node_id, "image_type": picture[0]}
            header = json.dumps(metadata).encode("utf-8")
            self.outbox.send_binary(struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(header)) + header
                                    + picture[1], self.client_id)
        self.outbox.send("progress", {"value": value, "max": total, "prompt_id": self.prompt_id,
                                      "node": self.node_id}, self.client_id)
        if picture is not None and not with_metadata:
            self.outbox.send_binary(struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS[picture[0]]) + picture[1],
                                    self.client_id)

    def load_checkpoint(self, name: str) -> None:
        if name != self.loaded_checkpoint:
            self.spend(self.costs.checkpoint_load_s)
            self.loaded_checkpoint = name
            self.counters.checkpoint_loads += 1

    def sampler_warmup(self, model: SimModel | None = None) -> None:
        checkpoint = model.checkpoint if model is not None else self.loaded_checkpoint
        if checkpoint != self.gpu_checkpoint:
            if checkpoint != self.loaded_checkpoint:
                self.load_checkpoint(checkpoint or "")
            self.spend(self.costs.first_sample_warmup_s)
            self.gpu_checkpoint = checkpoint

    def _preview_method(self) -> str:
        """The prompt's extra_data preview_method, or the server's when it is "default" or unknown."""
        method = str(self.extra_data.get("preview_method") or "default")
        return method if method in PREVIEW_METHODS else self.preview_method

    def _crash_now(self) -> None:
        self.crashed = True
        self.crash_server()
        raise ServerCrashed("the simulated server crashed")

    # -- messages
    def _send(self, event: str, data: Any) -> None:
        self.outbox.send(event, data, self.client_id)

    def _add_message(self, event: str, data: dict[str, Any], *, broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.status_messages.append([event, data])
        if self.client_id is not None or broadcast:
            self._send(event, data)

    def _send_progress_state(self) -> None:
        nodes = {
            node_id: {"value": state["value"], "max": state["max"], "state": state["state"], "node_id": node_id,
                      "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
                      "real_node_id": node_id}
            for node_id, state in self.progress.items() if state["state"] != "pending"
        }
        self._send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})

    def _start_progress(self, node_id: str) -> None:
        self.progress[node_id] = {"state": "running", "value": 0.0, "max": 1.0}
        self._send_progress_state()

    def _update_progress(self, node_id: str, value: int, total: int) -> None:
        self.progress[node_id] = {"state": "running", "value": value, "max": total}
        self._send_progress_state()

    def _finish_progress(self, node_id: str) -> None:
        entry = self.progress.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send_progress_state()

    # -- caching
    def _signatures(self) -> dict[str, str]:
        signatures: dict[str, str] = {}

        def signature(node_id: str, seen: frozenset[str]) -> str:
            if node_id in signatures:
                return signatures[node_id]
            node = self.prompt[node_id]
            parts: list[Any] = [node["class_type"]]
            if node["class_type"] in ("LoadImage", "LoadImageMask"):
                parts.append(file_hash(annotated_path(self, str(node["inputs"].get("image", "")))))
            if node["class_type"] in NEVER_CACHED:  # IS_CHANGED answers time.time()
                parts.append(time.time_ns())
            for name in sorted(node["inputs"]):
                value = node["inputs"][name]
                if is_link(value) and value[0] in self.prompt and value[0] not in seen:
                    parts.append([name, signature(value[0], seen | {node_id}), value[1]])
                else:
                    parts.append([name, value])
            text = json.dumps(parts, sort_keys=True, default=str)
            signatures[node_id] = hashlib.sha256(text.encode("utf-8")).hexdigest()
            return signatures[node_id]

        for node_id in self.prompt:
            signature(node_id, frozenset())
        return signatures

    # -- running
    def execute(self, item: QueueItem) -> None:
        """Run one queue item; sets `success` and `history_result`."""
        _, self.prompt_id, self.prompt, extra_data, outputs = item
        self.extra_data = dict(extra_data)
        self.interrupt_requested = False
        if not self.crashed:
            self.attention.clear()
        self.client_id = self.extra_data.get("client_id")
        self.status_messages = []
        self.progress = {}
        self.counters.prompts_started += 1
        self._add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        signatures = self._signatures()
        wanted = set(signatures.values())
        self.cache = {key: entry for key, entry in self.cache.items() if key in wanted}
        cached_nodes = [node_id for node_id in self.prompt if signatures[node_id] in self.cache]
        self._add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": self.prompt_id}, broadcast=False)
        results: dict[str, tuple[Any, ...]] = {}
        ui_outputs: dict[str, dict[str, Any]] = {}
        executed: list[str] = []

        def is_cached(node_id: str) -> bool:
            return signatures[node_id] in self.cache

        plan = ExecutionList(self.prompt, self.schema, is_cached)
        for output in outputs:
            plan.add_node(output)
        self.success = True
        while (node_id := plan.next_node()) is not None:
            self.node_id = node_id
            try:
                self._execute_node(node_id, signatures, results, ui_outputs, executed)
            except ServerCrashed:
                raise
            except ProcessingInterrupted:
                self.success = False
                self._add_message("execution_interrupted", {
                    "prompt_id": self.prompt_id, "node_id": node_id,
                    "node_type": self.prompt[node_id]["class_type"], "executed": list(executed)}, broadcast=True)
                break
            except Exception as exc:
                self.success = False
                self._report_error(node_id, exc, executed)
                break
            plan.complete(node_id)
        else:
            self._add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)
        self.counters.prompts_finished += 1
        self.last_node_id = None
        self.history_result = {
            "outputs": {node_id: ui["output"] for node_id, ui in ui_outputs.items()},
            "meta": {node_id: ui["meta"] for node_id, ui in ui_outputs.items()},
        }

    def _execute_node(self, node_id: str, signatures: Mapping[str, str], results: dict[str, tuple[Any, ...]],
                      ui_outputs: dict[str, dict[str, Any]], executed: list[str]) -> None:
        node = self.prompt[node_id]
        class_type = node["class_type"]
        cached = self.cache.get(signatures[node_id])
        if cached is not None:
            if self.client_id is not None:
                output = cached.ui["output"] if cached.ui else None
                self._send("executed", {"node": node_id, "display_node": node_id, "output": output,
                                        "prompt_id": self.prompt_id})
                if cached.ui is not None:
                    ui_outputs[node_id] = cached.ui
            self._finish_progress(node_id)
            results[node_id] = cached.outputs
            return
        self._start_progress(node_id)
        kwargs = self._inputs(node, signatures, results)
        self._current_inputs = kwargs
        if self.client_id is not None:
            self.last_node_id = node_id
            self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})
        self._check()
        if self.faults.crash_node_type == class_type and self.faults.crash_step is None:
            self._crash_now()
        planned = self.faults.take_node_fault(node_id, class_type)
        if planned is not None:
            raise NodeFailure(planned.message, exception_type=planned.exception_type)
        self.counters.count_node(class_type)
        function = NODES.get(class_type)
        result: NodeResult = (function(self, **kwargs) if function is not None
                              else generic.simulate(self.schema[class_type], kwargs))
        results[node_id] = result.outputs
        ui = None
        if result.ui:
            ui = {"meta": {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id},
                  "output": result.ui}
            ui_outputs[node_id] = ui
            if self.client_id is not None:
                self._send("executed", {"node": node_id, "display_node": node_id, "output": result.ui,
                                        "prompt_id": self.prompt_id})
        self.cache[signatures[node_id]] = CacheEntry(result.outputs, ui)
        self._finish_progress(node_id)
        executed.append(node_id)

    def _inputs(self, node: Mapping[str, Any], signatures: Mapping[str, str],
                results: Mapping[str, tuple[Any, ...]]) -> dict[str, Any]:
        class_type = node["class_type"]
        declared = self.schema[class_type].inputs if class_type in self.schema else {}
        kwargs: dict[str, Any] = {}
        for name, spec in declared.items():
            if name not in node["inputs"]:
                continue
            value = node["inputs"][name]
            if is_link(value):
                from_id, socket = value
                upstream = results.get(from_id)
                if upstream is None:
                    entry = self.cache.get(signatures[from_id])
                    upstream = entry.outputs if entry is not None else ()
                kwargs[name] = upstream[socket]
            else:
                kwargs[name] = coerce(spec.type, value)
        return kwargs

    def _report_error(self, node_id: str, exc: Exception, executed: list[str]) -> None:
        if isinstance(exc, NodeFailure):
            exception_type, tips = exc.exception_type, exc.tips
        else:
            exception_type, tips = type(exc).__qualname__, ""
            logger.exception("simulated node %s failed", node_id)
        inputs = getattr(self, "_current_inputs", {})
        self._add_message("execution_error", {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"],
            "executed": list(executed),
            "exception_message": f"{exc}\n{tips}",
            "exception_type": exception_type,
            "traceback": traceback.format_tb(exc.__traceback__),
            "current_inputs": {name: [format_value(value)] for name, value in inputs.items()},
            "current_outputs": list(self.prompt),
        }, broadcast=False)


def coerce(kind: str, value: Any) -> Any:
    """The server's post-validation conversion of a widget value."""
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    try:
        if kind == "INT":
            return int(value)
        if kind == "FLOAT":
            return float(value)
        if kind == "STRING":
            return str(value)
        if kind == "BOOLEAN":
            return bool(value)
    except (TypeError, ValueError):
        return value
    return value


def coerce_prompt(prompt: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """The prompt as history shows it: widget values converted to their declared types."""
    out: dict[str, Any] = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        declared = schema[class_type].inputs if class_type in schema else {}
        inputs = {}
        for name, value in node.get("inputs", {}).items():
            spec = declared.get(name)
            inputs[name] = value if spec is None or isinstance(value, list) else coerce(spec.type, value)
        out[node_id] = {**node, "inputs": inputs}
    return out


class Worker:
    """The thread that takes prompts off the queue and runs them, until stopped or crashed."""

    def __init__(self, queue: PromptQueue, executor: Executor, outbox: Outbox) -> None:
        self.queue = queue
        self.executor = executor
        self.outbox = outbox
        self.thread = threading.Thread(target=self._run, name="comfy-sim-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.queue.stopped and not self.executor.crashed:
            taken = self.queue.get()
            if taken is not None:
                item, number = taken
                try:
                    self.executor.execute(item)
                except ServerCrashed:
                    return
                status = {"status_str": "success" if self.executor.success else "error",
                          "completed": self.executor.success, "messages": self.executor.status_messages}
                self.queue.task_done(number, self.executor.history_result, status)
                if self.executor.client_id is not None:
                    self.outbox.send("executing", {"node": None, "prompt_id": item[1]}, self.executor.client_id)
            flags = self.queue.take_flags()
            free_memory = flags.get("free_memory", False)
            self.executor.free(unload_models=flags.get("unload_models", free_memory), free_memory=free_memory)

    def stop(self, timeout_s: float) -> None:
        self.queue.stop()
        self.executor.crash()
        self.thread.join(timeout_s)
