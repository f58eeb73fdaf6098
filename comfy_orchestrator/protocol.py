"""ComfyUI's wire format, pure: websocket frames -> typed events, one prompt's stream, history -> outputs.

Nothing here does I/O. `parse_event` turns one text or binary frame into an `Event`;
`track` follows one prompt through a stream of events and ends at the closing
`executing` with `node: null` (the server sends it after it wrote the history entry);
`outputs_from_history` reads a `/history/{id}` entry; `ProgressTracker` turns events
into overall progress that counts cached nodes and every sampler's steps.

Every answer and message is checked against the shape ComfyUI sends (the pydantic models
below, after server.py): `check_answer` turns valid JSON of the wrong shape into
MalformedMessage naming the route and the field, a server fault like any other.
"""

from __future__ import annotations

import functools
import json
import struct
import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, StrictStr, TypeAdapter, ValidationError

from comfy_orchestrator.errors import ExecutionFailed, Interrupted, MalformedMessage, OutOfMemory
from comfy_orchestrator.jobs import Output

# Binary frame event types (server.py BinaryEventTypes).
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
_IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}

FEATURE_FLAGS_FRAME = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})

# Samplers whose step count the graph states; other nodes that report progress are learnt from `max`.
_OOM_MARKERS = ("out of memory", "outofmemory", "allocation on device")
# A count a server sends (queue length, sampler step): ComfyUI's are far below this; past it is garbage.
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class ServerAnswer(BaseModel):
    """A ComfyUI answer as we read it: the fields we use are checked; others are ignored, since
    newer servers and custom nodes add their own."""

    # built at first use (`_built`), not as a command starts: most are read only after its first prompt
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)


class QueueAnswer(ServerAnswer):
    """GET /queue: each item is [number, prompt_id, prompt, extra_data, outputs_to_execute]."""

    queue_running: list[Annotated[list[Any], Field(min_length=2)]] = []
    queue_pending: list[Annotated[list[Any], Field(min_length=2)]] = []

    def state_of(self, prompt_id: str) -> str | None:
        """"running", "queued", or None where the queue does not hold the prompt."""
        for state, items in (("running", self.queue_running), ("queued", self.queue_pending)):
            if any(item[1] == prompt_id for item in items):
                return state
        return None


class HistoryStatus(ServerAnswer):
    """A history entry's status: how the prompt ended, and the messages that say why."""

    status_str: StrictStr = ""
    completed: bool = False
    messages: list[tuple[StrictStr, dict[str, Any]]] = []


class HistoryEntry(ServerAnswer):
    """One prompt's record under GET /history/{id}: its outputs by node, and its status."""

    outputs: dict[str, dict[str, Any]] = {}
    status: HistoryStatus | None = None


class SystemStats(ServerAnswer):
    """GET /system_stats: the server's versions and its devices."""

    system: dict[str, Any] = {}
    devices: list[dict[str, Any]] = []


class PromptAccepted(ServerAnswer):
    """POST /prompt's 200 answer."""

    prompt_id: StrictStr | None = None
    number: float | None = None
    node_errors: dict[str, Any] = {}


class PromptRefused(ServerAnswer):
    """POST /prompt's 400 answer: the error and each node's errors."""

    error: dict[str, Any] | str = {}
    node_errors: dict[str, Any] = {}


class UploadAnswer(ServerAnswer):
    """POST /upload/image: the name the file was stored under."""

    name: StrictStr


HISTORY = dict[str, HistoryEntry]
OBJECT_INFO = dict[str, dict[str, Any]]
Answer = TypeVar("Answer")
Model = TypeVar("Model", bound=BaseModel)
_BUILDING = threading.Lock()  # a validator is built by one thread; the others wait for it


def check_answer(shape: type[Answer], data: Any, *, route: str, server: str) -> Answer:
    """`data` read as `shape` (a model, or a type such as HISTORY); MalformedMessage naming the route and
    the first wrong field otherwise."""
    try:
        if isinstance(shape, type) and issubclass(shape, BaseModel):
            return _built(shape).model_validate(data)
        return cast(Answer, _adapter(cast(Hashable, shape)).validate_python(data))
    except ValidationError as exc:
        raise MalformedMessage(f"{route} answered an unexpected shape: {_first_error(exc, 'the answer')}",
                               server=server) from exc


def _built(model: type[Model]) -> type[Model]:
    """`model`, its validator built now if this is its first use."""
    if not model.__pydantic_complete__:
        with _BUILDING:
            if not model.__pydantic_complete__:
                model.model_rebuild()
    return model


@functools.cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    """The validator of a shape that is not a model (HISTORY, OBJECT_INFO, dict[str, Any]), made once, at first use."""
    with _BUILDING:
        return TypeAdapter(shape)


def _first_error(exc: ValidationError, whole: str) -> str:
    """pydantic's first complaint as `field: message` (`whole` names the field when it is the top level)."""
    error = exc.errors()[0]
    field_name = ".".join(str(part) for part in error["loc"]) or whole
    return f"{field_name}: {error['msg']}"


class _StatusData(ServerAnswer):
    class _Status(ServerAnswer):
        class _ExecInfo(ServerAnswer):
            queue_remaining: Count = 0

        exec_info: _ExecInfo = _ExecInfo()

    status: _Status | None = None
    sid: StrictStr | None = None


class _ProgressData(ServerAnswer):
    value: Count
    max: Count


@dataclass(frozen=True)
class Event:
    """One message from the server; `prompt_id` is None where the server sends none."""

    prompt_id: str | None


@dataclass(frozen=True)
class QueueStatus(Event):
    """The queue changed (broadcast); `sid` only in the greeting."""

    queue_remaining: int
    sid: str | None = None


@dataclass(frozen=True)
class FeatureFlags(Event):
    """The server's answer to our feature_flags frame."""

    flags: Mapping[str, Any]


@dataclass(frozen=True)
class ExecutionStarted(Event):
    """The worker took the prompt."""

    timestamp_ms: int | None = None


@dataclass(frozen=True)
class NodesCached(Event):
    """Nodes reused from the cache at start; they get no `executing`."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class NodeExecuting(Event):
    """A node started; `node` None is the closing message of a prompt (history is written)."""

    node: str | None
    display_node: str | None = None


@dataclass(frozen=True)
class NodeProgress(Event):
    """A step of a node that reports progress (a sampler: value 1..max)."""

    node: str | None
    value: int
    max: int


@dataclass(frozen=True)
class ProgressState(Event):
    """The accumulated map of non-pending nodes: id -> {value, max, state, ...}."""

    nodes: Mapping[str, Any]


@dataclass(frozen=True)
class PreviewImage(Event):
    """An image frame: a sampler preview, or a SaveImageWebsocket output (PNG)."""

    node: str | None
    media_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ProgressText(Event):
    """Text a node reports while it runs (binary type 3)."""

    node: str
    text: str


@dataclass(frozen=True)
class NodeExecuted(Event):
    """An output node finished (or was served from cache) with its UI outputs."""

    node: str
    display_node: str | None
    output: Mapping[str, Any] | None


@dataclass(frozen=True)
class PromptSucceeded(Event):
    """Every node ran; the history entry follows, announced by `executing` null."""

    timestamp_ms: int | None = None


@dataclass(frozen=True)
class PromptFailed(Event):
    """A node raised; the prompt stops (unless `exception_type` is ExecutionBlocked)."""

    node_id: str | None
    node_type: str | None
    exception_type: str
    exception_message: str
    traceback: tuple[str, ...] = ()
    executed: tuple[str, ...] = ()

    @property
    def out_of_memory(self) -> bool:
        """Whether the GPU (or host) ran out of memory, by torch's exception type or message."""
        text = f"{self.exception_type} {self.exception_message}".lower()
        return any(marker in text for marker in _OOM_MARKERS)

    def error(self, *, server: str = "") -> ExecutionFailed:
        """The exception this failure raises for the user."""
        kind = OutOfMemory if self.out_of_memory else ExecutionFailed
        return kind(self.prompt_id or "", node_id=self.node_id, node_type=self.node_type,
                    message=self.exception_message, exception_type=self.exception_type,
                    traceback=self.traceback, server=server)


@dataclass(frozen=True)
class PromptInterrupted(Event):
    """The prompt was interrupted at `node_id`."""

    node_id: str | None
    node_type: str | None
    executed: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnknownEvent(Event):
    """A message type this client does not know (custom nodes add their own)."""

    type: str
    data: Any


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _text_event(kind: str, data: Mapping[str, Any]) -> Event:
    prompt_id = _str_or_none(data.get("prompt_id"))
    match kind:
        case "status":
            status = _built(_StatusData).model_validate(data)
            remaining = status.status.exec_info.queue_remaining if status.status is not None else 0
            return QueueStatus(None, queue_remaining=remaining, sid=status.sid)
        case "feature_flags":
            return FeatureFlags(None, flags=dict(data))
        case "execution_start":
            return ExecutionStarted(prompt_id, timestamp_ms=data.get("timestamp"))
        case "execution_cached":
            return NodesCached(prompt_id, nodes=tuple(str(n) for n in data.get("nodes") or ()))
        case "executing":
            return NodeExecuting(prompt_id, node=_str_or_none(data.get("node")),
                                 display_node=_str_or_none(data.get("display_node")))
        case "progress":
            steps = _built(_ProgressData).model_validate(data)
            return NodeProgress(prompt_id, node=_str_or_none(data.get("node")), value=steps.value, max=steps.max)
        case "progress_state":
            return ProgressState(prompt_id, nodes=dict(data.get("nodes") or {}))
        case "executed":
            output = data.get("output")
            return NodeExecuted(prompt_id, node=str(data["node"]),
                                display_node=_str_or_none(data.get("display_node")),
                                output=dict(output) if isinstance(output, Mapping) else None)
        case "execution_success":
            return PromptSucceeded(prompt_id, timestamp_ms=data.get("timestamp"))
        case "execution_error":
            return PromptFailed(
                prompt_id, node_id=_str_or_none(data.get("node_id")),
                node_type=_str_or_none(data.get("node_type")),
                exception_type=str(data.get("exception_type") or ""),
                exception_message=str(data.get("exception_message") or ""),
                traceback=tuple(str(line) for line in data.get("traceback") or ()),
                executed=tuple(str(n) for n in data.get("executed") or ()))
        case "execution_interrupted":
            return PromptInterrupted(prompt_id, node_id=_str_or_none(data.get("node_id")),
                                     node_type=_str_or_none(data.get("node_type")),
                                     executed=tuple(str(n) for n in data.get("executed") or ()))
    return UnknownEvent(prompt_id, type=kind, data=data)


def _binary_event(frame: bytes) -> Event:
    if len(frame) < 4:
        raise MalformedMessage(f"binary frame of {len(frame)} bytes has no event type")
    (kind,) = struct.unpack_from(">I", frame, 0)
    if kind in (PREVIEW_IMAGE, UNENCODED_PREVIEW_IMAGE):
        if len(frame) < 8:
            raise MalformedMessage("preview frame without an image format")
        (image_format,) = struct.unpack_from(">I", frame, 4)
        media_type = _IMAGE_FORMATS.get(image_format, "application/octet-stream")
        return PreviewImage(None, node=None, media_type=media_type, data=frame[8:])
    if kind in (PREVIEW_IMAGE_WITH_METADATA, TEXT):
        if len(frame) < 8:
            raise MalformedMessage(f"binary frame type {kind} without its length field")
        (length,) = struct.unpack_from(">I", frame, 4)
        if 8 + length > len(frame):
            raise MalformedMessage(f"binary frame type {kind} announces {length} bytes, has {len(frame) - 8}")
        head, body = frame[8:8 + length], frame[8 + length:]
        if kind == TEXT:
            return ProgressText(None, node=head.decode("utf-8", "replace"), text=body.decode("utf-8", "replace"))
        try:
            meta = json.loads(head)
        except ValueError as exc:
            raise MalformedMessage(f"preview metadata is not JSON: {exc}") from exc
        if not isinstance(meta, Mapping):
            raise MalformedMessage("preview metadata is not a JSON object")
        return PreviewImage(_str_or_none(meta.get("prompt_id")), node=_str_or_none(meta.get("node_id")),
                            media_type=str(meta.get("image_type") or "image/jpeg"), data=body)
    return UnknownEvent(None, type=f"binary:{kind}", data=frame[4:])


def parse_event(frame: str | bytes) -> Event:
    """Turn one websocket frame (text or binary) into an Event; raise MalformedMessage if it is garbage."""
    if not isinstance(frame, str):
        return _binary_event(bytes(frame))
    try:
        message = json.loads(frame)
    except ValueError as exc:
        raise MalformedMessage(f"text frame is not JSON: {exc}") from exc
    # json.loads makes dicts: checking for dict is the Mapping check without the ABC's cost
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise MalformedMessage("text frame lacks a string 'type'")
    data = message.get("data")
    if not isinstance(data, dict):
        data = {}
    try:
        return _text_event(message["type"], data)
    except ValidationError as exc:
        raise MalformedMessage(f"{message['type']} message is malformed: {_first_error(exc, 'data')}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise MalformedMessage(f"{message['type']} message is malformed: {exc!r}") from exc


def track(events: Iterable[Event | None], prompt_id: str, *, server: str = "") -> Iterator[Event]:
    """Yield one prompt's events; return at its closing `executing` null, raise if it fails.

    Events without a prompt id (type-1 previews, the reconnect form of `executing`,
    progress text) are yielded while this prompt is the one running. `None` items
    (a reader's idle ticks) are skipped.
    """
    running = False
    for event in events:
        if event is None or isinstance(event, (QueueStatus, FeatureFlags)):
            continue
        if event.prompt_id is None:
            if running:
                yield event
            continue
        if event.prompt_id != prompt_id:
            running = False
            continue
        running = True
        match event:
            case PromptFailed(exception_type="ExecutionBlocked"):
                yield event  # a blocked node; the prompt goes on
            case PromptFailed():
                raise event.error(server=server)
            case PromptInterrupted():
                raise Interrupted(prompt_id, node_id=event.node_id, server=server)
            case NodeExecuting(node=None):
                return
            case _:
                yield event


def outputs_from_history(entry: Mapping[str, Any]) -> tuple[Output, ...]:
    """The files a history entry lists: every `{filename, subfolder, type}` under each node's outputs."""
    found: list[Output] = []
    for node_id, ui in (entry.get("outputs") or {}).items():
        if not isinstance(ui, Mapping):
            continue
        for kind, items in ui.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                    found.append(Output(node_id=str(node_id), filename=item["filename"],
                                        subfolder=str(item.get("subfolder") or ""),
                                        type=str(item.get("type") or "output"), kind=str(kind)))
    return tuple(found)


@dataclass(frozen=True)
class HistoryOutcome:
    """What a history entry says about how a prompt ended."""

    status: str  # "success", "error", or "" while unknown
    completed: bool
    failure: PromptFailed | None = None
    interruption: PromptInterrupted | None = None
    cached_nodes: tuple[str, ...] = ()


def outcome_from_history(entry: Mapping[str, Any], prompt_id: str) -> HistoryOutcome:
    """Read a history entry's status and the failure or interrupt its messages record."""
    status = entry.get("status") or {}
    failure = interruption = None
    cached: tuple[str, ...] = ()
    for message in status.get("messages") or ():
        if not (isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], Mapping)):
            continue
        data = dict(message[1])
        data.setdefault("prompt_id", prompt_id)
        event = _text_event(str(message[0]), data)
        if isinstance(event, PromptFailed) and event.exception_type != "ExecutionBlocked":
            failure = event
        elif isinstance(event, PromptInterrupted):
            interruption = event
        elif isinstance(event, NodesCached):
            cached = event.nodes
    return HistoryOutcome(status=str(status.get("status_str") or ""), completed=bool(status.get("completed")),
                          failure=failure, interruption=interruption, cached_nodes=cached)


def sampler_steps(graph: Mapping[str, Any]) -> dict[str, int]:
    """Steps each sampler of an API-format prompt will run (only literal inputs count)."""
    steps: dict[str, int] = {}
    for node_id, entry in graph.items():
        inputs = entry.get("inputs") or {}
        total = inputs.get("steps")
        if not isinstance(total, int) or isinstance(total, bool):
            continue
        if entry.get("class_type") == "KSamplerAdvanced":
            start, end = inputs.get("start_at_step", 0), inputs.get("end_at_step", total)
            if isinstance(start, int) and isinstance(end, int):
                total = max(0, min(end, total) - start)
        elif "denoise" in inputs and inputs["denoise"] == 0:
            total = 0  # denoise 0 returns the latent untouched
        steps[str(node_id)] = total
    return steps


@dataclass(frozen=True)
class Progress:
    """Where a prompt stands: overall units done of total, and the current node's steps."""

    done: float
    total: float
    node: str | None = None
    node_value: int = 0
    node_max: int = 0
    finished: bool = False

    @property
    def fraction(self) -> float:
        return 1.0 if self.finished or self.total <= 0 else min(1.0, self.done / self.total)


class ProgressTracker:
    """Overall progress of one prompt: each node is one unit, each sampler step one more.

    Cached nodes count as done at once. A node whose step count the graph does not
    state (a link, a custom sampler) adds its `max` when its first progress arrives.
    """

    def __init__(self, graph: Mapping[str, Any]) -> None:
        self._nodes = {str(n) for n in graph}
        self._steps = sampler_steps(graph)
        self._step_done: dict[str, int] = {}
        self._finished: set[str] = set()
        self._current: str | None = None
        self._latest = Progress(0.0, float(len(self._nodes) + sum(self._steps.values())))

    @property
    def progress(self) -> Progress:
        return self._latest

    def update(self, event: Event) -> Progress:
        """Fold one event of this prompt in; return the new progress."""
        match event:
            case NodesCached(nodes=nodes):
                self._finished.update(n for n in nodes if n in self._nodes)
                for node in nodes:
                    if node in self._steps:
                        self._step_done[node] = self._steps[node]
            case NodeExecuting(node=None):
                return self._set(finished=True)
            case NodeExecuting(node=node):
                if self._current is not None and self._current != node:
                    self._finish(self._current)
                self._current = node
            case NodeProgress(node=reported, value=value, max=maximum):
                stepping = reported or self._current
                if stepping is not None:
                    if stepping not in self._steps and stepping in self._nodes:
                        self._steps[stepping] = maximum
                    self._step_done[stepping] = max(self._step_done.get(stepping, 0), value)
                    return self._set(node=stepping, node_value=value, node_max=maximum)
            case NodeExecuted(node=node):
                self._finish(node)
            case _:
                return self._latest
        return self._set()

    def _finish(self, node: str) -> None:
        if node in self._nodes:
            self._finished.add(node)
            if node in self._steps:
                self._step_done[node] = self._steps[node]

    def _set(self, *, finished: bool = False, node: str | None = None, node_value: int = 0,
             node_max: int = 0) -> Progress:
        total = float(len(self._nodes) + sum(self._steps.values()))
        done = float(len(self._finished)) + sum(min(v, self._steps.get(n, v)) for n, v in self._step_done.items())
        if node is None and self._latest.node is not None and not finished:
            node, node_value, node_max = self._latest.node, self._latest.node_value, self._latest.node_max
        self._latest = Progress(total if finished else done, total, node, node_value, node_max, finished)
        return self._latest
