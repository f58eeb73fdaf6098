"""Client: runs jobs on one ComfyUI server over REST and one websocket (the only network user).

Listen first, confirm after: the websocket is open (with our clientId, feature_flags
as its first frame) before the first POST /prompt, and a job is done only at the
closing `executing` with `node: null`, after which `/history/{prompt_id}` is read.
The socket is a hint: a silence watchdog and a reconnect with reconciliation fall
back to the prompt's own record, so no completion is missed and a prompt the server
lost (in neither queue nor history) raises JobLost.

Threads: one reader thread per client owns the websocket and hands each prompt's
events to that prompt's JobHandle; a handle is driven by the thread that waits on it
or iterates its events, which is also where its callbacks run.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import queue
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
import websocket
from PIL import Image

from comfy_orchestrator.errors import (
    AuthFailed,
    ComfyError,
    ConnectionFailed,
    JobLost,
    JobTimedOut,
    MalformedMessage,
    MissingModel,
    ParameterError,
    PromptRejected,
    RequestTimedOut,
    ServerError,
    UnsafeOutput,
)
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job, JobResult, Output, name_by_content
from comfy_orchestrator.protocol import (
    FEATURE_FLAGS_FRAME,
    Event,
    ExecutionStarted,
    FeatureFlags,
    NodeExecuting,
    NodesCached,
    PreviewImage,
    Progress,
    ProgressTracker,
    PromptFailed,
    QueueStatus,
    outcome_from_history,
    outputs_from_history,
    parse_event,
    track,
)
from comfy_orchestrator.provenance import PngTextAppender, provenance_chunk, provenance_record
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.validation import check_prompt

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8188"
# Inputs that name a model file: a value the server lacks means another server may have it.
MODEL_INPUTS = frozenset({"ckpt_name", "lora_name", "vae_name", "control_net_name", "unet_name", "clip_name",
                          "clip_name1", "clip_name2", "model_name", "upscale_model_name", "style_model_name",
                          "gligen_name", "hypernetwork_name", "config_name"})
_CHUNK_BYTES = 1 << 16
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')

EventCallback = Callable[[Event], None]
ProgressCallback = Callable[[Progress], None]
ImageSource = Path | str | bytes | Image.Image


@dataclass(frozen=True)
class RetryPolicy:
    """How often a call is tried and how long to rest between tries."""

    max_attempts: int = 3
    first_delay_s: float = 2.0
    max_delay_s: float = 60.0

    def delay(self, attempt: int, jitter: float = 1.0) -> float:
        """Seconds to rest after failed `attempt` (1-based)."""
        return float(min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s) * jitter)


class WebSocketLike(Protocol):
    """What the client needs of a websocket (websocket-client's WebSocket has it)."""

    def send(self, payload: str) -> Any: ...
    def recv_data(self) -> tuple[int, bytes]: ...
    def send_close(self) -> None: ...
    def abort(self) -> None: ...
    def shutdown(self) -> None: ...
    def settimeout(self, timeout: float | None) -> None: ...


Connect = Callable[[str, Mapping[str, str], float], WebSocketLike]


def connect_websocket(url: str, headers: Mapping[str, str], timeout_s: float) -> WebSocketLike:
    """Open a websocket with websocket-client; no Origin header (ComfyUI refuses foreign ones).

    websocket-client puts no limit on a frame's size, so full-size PNG frames of
    SaveImageWebsocket (hundreds of KB, more for big images) arrive whole.
    """
    socket: WebSocketLike = websocket.create_connection(
        url, timeout=timeout_s, header=[f"{k}: {v}" for k, v in headers.items()],
        suppress_origin=True, enable_multithread=True)
    return socket


def safe_filename(name: str, *, fallback: str) -> str:
    """A file name that stays inside its folder: no separators, no control characters, no dot names."""
    base = unicodedata.normalize("NFC", name.replace("\\", "/")).rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip(" .")
    if _WINDOWS_RESERVED.match(base):
        base = "_" + base
    if not base:
        base = fallback
    stem, dot, suffix = base.rpartition(".")
    if len(base.encode()) > 200:
        suffix = suffix[:16] if dot else ""
        stem = (stem if dot else base).encode()[:180].decode("utf-8", "ignore")
        base = f"{stem}.{suffix}" if suffix else stem
    return base


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without user:password, and the user and password it carried."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ParameterError(f"server URL scheme must be http, https, ws or wss, not {parts.scheme!r}",
                             parameter="server")
    if not parts.hostname:
        raise ParameterError("server URL has no host", parameter="server")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))
    user = parts.username and unquote(parts.username)
    password = parts.password and unquote(parts.password)
    return clean, user or None, password or None


class _Marker(Event):
    """Not a server message: the reader tells waiting jobs about the connection."""


class _Reconnected(_Marker):
    pass


class _Disconnected(_Marker):
    pass


class _Listener:
    """The client's one websocket: connects, reads, routes events, reconnects with backoff."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._queues: dict[str, queue.SimpleQueue[Event]] = {}
        self._stop = threading.Event()
        self._socket: WebSocketLike | None = None
        self._thread: threading.Thread | None = None
        self.last_frame_at = time.monotonic()
        self.server_flags: dict[str, Any] = {}

    def start(self) -> None:
        """Connect now (in the caller's thread, so errors reach it) unless already listening."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            socket = self._open()
            self._thread = threading.Thread(target=self._run, args=(socket,), daemon=True,
                                            name=f"comfy-ws-{self._client.client_id[:8]}")
            self._thread.start()

    def subscribe(self, prompt_id: str) -> queue.SimpleQueue[Event]:
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            self._queues[prompt_id] = events
        return events

    def unsubscribe(self, prompt_id: str) -> None:
        with self._lock:
            self._queues.pop(prompt_id, None)

    def recycle(self) -> None:
        """Close the socket so the reader reconnects: cures a socket the server stopped talking to."""
        socket = self._socket
        if socket is not None:
            log.info("%s: websocket silent while a prompt runs; reconnecting", self._client.url)
            self._close_socket(socket)

    def stop(self) -> None:
        self._stop.set()
        socket, thread = self._socket, self._thread
        if socket is not None:
            self._close_socket(socket)
        if thread is not None:
            thread.join(self._client.timeout_s)
            if thread.is_alive() and socket is not None:
                socket.abort()
                thread.join(self._client.timeout_s)

    def _close_socket(self, socket: WebSocketLike) -> None:
        try:
            socket.send_close()
        except (websocket.WebSocketException, OSError) as exc:
            log.debug("%s: close frame not sent (%s); aborting the socket", self._client.url, exc)
            socket.abort()

    def _open(self) -> WebSocketLike:
        """Connect, send feature_flags as the very first frame, and read the greeting."""
        client = self._client
        url = f"{client.ws_url}?clientId={quote(client.client_id)}"
        try:
            socket = client.connect(url, client.headers_for_websocket(), client.timeout_s)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (401, 403):
                raise AuthFailed("websocket refused our credentials", server=client.url,
                                 status=exc.status_code) from exc
            raise ServerError(f"websocket upgrade answered {exc.status_code}", server=client.url,
                              status=exc.status_code) from exc
        except websocket.WebSocketTimeoutException as exc:
            raise RequestTimedOut("websocket did not open in time", server=client.url) from exc
        except (websocket.WebSocketException, OSError) as exc:
            raise ConnectionFailed(f"websocket could not connect ({type(exc).__name__})",
                                   server=client.url) from exc
        try:
            socket.send(FEATURE_FLAGS_FRAME)
            deadline = time.monotonic() + client.timeout_s
            while True:  # the server speaks first: status with our sid
                socket.settimeout(max(0.01, deadline - time.monotonic()))
                event = self._receive(socket)
                if isinstance(event, QueueStatus) and event.sid is not None:
                    break
            socket.settimeout(None)
        except (websocket.WebSocketException, OSError, UnicodeDecodeError) as exc:
            socket.shutdown()  # closes it: abort() alone leaves the descriptor open
            raise ConnectionFailed(f"websocket closed during the greeting ({type(exc).__name__})",
                                   server=client.url) from exc
        self._socket = socket
        return socket

    def _receive(self, socket: WebSocketLike) -> Event | None:
        """Read one frame; None for a close frame or a frame that is not ComfyUI's."""
        opcode, data = socket.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException("closed by the server")
        self.last_frame_at = time.monotonic()
        frame: str | bytes = data.decode("utf-8") if opcode == websocket.ABNF.OPCODE_TEXT else data
        try:
            event = parse_event(frame)
        except MalformedMessage as exc:
            # The socket is a hint; the prompt's record decides. Report and read on.
            log.warning("%s: ignoring a malformed websocket frame: %s", self._client.url, exc)
            return None
        if isinstance(event, FeatureFlags):
            self.server_flags = dict(event.flags)
        return event

    def _run(self, socket: WebSocketLike) -> None:
        try:
            self._serve(socket)
        except Exception:
            # Jobs fall back to their watchdog; the next submit starts a new reader.
            log.exception("%s: websocket reader stopped on an unexpected error", self._client.url)
            self._broadcast(_Disconnected(None))

    def _serve(self, socket: WebSocketLike) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                self._read(socket)
                socket.shutdown()
                self._socket = None
                if self._stop.is_set():
                    return
                self._broadcast(_Disconnected(None))
                while True:
                    attempt += 1
                    if self._stop.wait(self._client.retry.delay(attempt) if attempt > 1 else 0):
                        return
                    try:
                        socket = self._open()
                    except ComfyError as exc:
                        log.info("%s: websocket reconnect %d failed: %s", self._client.url, attempt, exc)
                        continue
                    attempt = 0
                    log.info("%s: websocket reconnected", self._client.url)
                    self._broadcast(_Reconnected(None))
                    break
        finally:
            # a stop that lands while a reconnect opens a new socket leaves that one to us: close it
            socket.shutdown()
            self._socket = None

    def _read(self, socket: WebSocketLike) -> None:
        while not self._stop.is_set():
            try:
                event = self._receive(socket)
            except (websocket.WebSocketException, OSError, UnicodeDecodeError) as exc:
                if not self._stop.is_set():
                    log.info("%s: websocket closed: %s", self._client.url, exc or type(exc).__name__)
                return
            if event is None or (isinstance(event, PreviewImage) and not self._client.keep_previews):
                continue
            if event.prompt_id is None:
                self._broadcast(event)
            else:
                with self._lock:
                    events = self._queues.get(event.prompt_id)
                if events is not None:
                    events.put(event)

    def _broadcast(self, event: Event) -> None:
        with self._lock:
            targets = list(self._queues.values())
        for events in targets:
            events.put(event)


class JobHandle:
    """One submitted prompt: wait for it, iterate its events, or cancel it."""

    def __init__(self, client: Client, job: Job, prompt_id: str, events: queue.SimpleQueue[Event], *,
                 on_event: EventCallback | None, on_progress: ProgressCallback | None) -> None:
        self.client = client
        self.job = job
        self.prompt_id = prompt_id
        self.number: float | None = None
        self.node_errors: dict[str, Any] = {}  # a 200 answer's errors for branches that will not run
        self.previews: list[PreviewImage] = []
        self._events = events
        self._on_event = on_event
        self._on_progress = on_progress
        self._tracker = ProgressTracker(job.graph.to_api())
        self._drive = threading.Lock()
        self._entry: Mapping[str, Any] | None = None
        self._result: JobResult | None = None
        self._error: ComfyError | None = None
        self._cached: tuple[str, ...] = ()
        self._timings: dict[str, float] = {"submitted": time.time()}

    @property
    def progress(self) -> Progress:
        return self._tracker.progress

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def wait(self, timeout_s: float | None = None) -> JobResult:
        """Block until the prompt ends; return its result or raise what went wrong."""
        for _ in self.events(timeout_s=timeout_s):
            pass
        assert self._result is not None
        return self._result

    def events(self, *, timeout_s: float | None = None) -> Iterator[Event]:
        """Yield this prompt's events as they come; end when it is done, raise if it fails."""
        with self._drive:
            if self._error is not None:
                raise self._error
            if self._result is not None:
                return
            limit_s = self.client.job_timeout_s if timeout_s is None else timeout_s
            try:
                for event in track(self._stream(time.monotonic() + limit_s, limit_s), self.prompt_id,
                                   server=self.client.url):
                    self._note(event)
                    yield event
                self._note(NodeExecuting(self.prompt_id, None))  # track() keeps the closing message
                self._result = self._finish()
            except ComfyError as exc:
                self._error = exc
                raise
            finally:
                if self.done:
                    self.client.listener.unsubscribe(self.prompt_id)

    def cancel(self) -> None:
        """Take the prompt off the queue if it waits, interrupt it if it runs."""
        self.client.delete([self.prompt_id])
        self.client.interrupt(self.prompt_id)

    def _note(self, event: Event) -> None:
        if isinstance(event, ExecutionStarted):
            self._timings["started"] = time.time()
        elif isinstance(event, NodesCached):
            self._cached = event.nodes
        elif isinstance(event, PreviewImage):
            self.previews.append(event)
        before = self._tracker.progress
        progress = self._tracker.update(event)
        if self._on_event is not None:
            self._on_event(event)
        if self._on_progress is not None and progress != before:
            self._on_progress(progress)

    def _stream(self, deadline: float, limit_s: float) -> Iterator[Event]:
        """The raw events of this prompt, with the watchdog, reconciliation and deletion checks."""
        listener, silence_s = self.client.listener, self.client.silence_s
        checked_at = time.monotonic()
        started = False
        remaining: int | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise JobTimedOut(self.prompt_id, timeout_s=limit_s, server=self.client.url)
            quiet_since = max(listener.last_frame_at, checked_at)
            try:
                event = self._events.get(timeout=max(0.0, min(deadline - now, quiet_since + silence_s - now)))
            except queue.Empty:
                if time.monotonic() - max(listener.last_frame_at, checked_at) >= silence_s:
                    checked_at = time.monotonic()
                    log.info("%s: no websocket message for %.1f s; checking prompt %s", self.client.url,
                             silence_s, self.prompt_id)
                    yield from self._reconcile(recycle=True)
                    if self._entry is not None:
                        return
                continue
            if isinstance(event, _Reconnected):
                checked_at = time.monotonic()
                yield from self._reconcile(recycle=False)
                if self._entry is not None:
                    return
            elif isinstance(event, _Disconnected):
                log.info("%s: websocket lost while prompt %s is pending", self.client.url, self.prompt_id)
            elif isinstance(event, QueueStatus):
                # A prompt deleted from the queue sends nothing but this broadcast; look when the queue shrinks.
                if not started and remaining is not None and event.queue_remaining < remaining:
                    checked_at = time.monotonic()
                    yield from self._reconcile(recycle=False)
                    if self._entry is not None:
                        return
                remaining = event.queue_remaining
            else:
                if event.prompt_id == self.prompt_id:
                    started = True
                if isinstance(event, NodeExecuting) and event.node is None and event.prompt_id == self.prompt_id:
                    self._entry = self.client.history_entry(self.prompt_id)
                    if self._entry is None:
                        raise ServerError(f"prompt {self.prompt_id} ended but has no history entry",
                                          server=self.client.url)
                    yield event
                    return
                yield event

    def _reconcile(self, *, recycle: bool) -> Iterator[Event]:
        """Ask the server where the prompt is; on a finished record, replay its ending."""
        state, entry = self.client.locate(self.prompt_id)
        if state == "unknown":
            raise JobLost(self.prompt_id, server=self.client.url)
        if state != "done" or entry is None:
            if recycle and state == "running":
                self.client.listener.recycle()
            return
        self._entry = entry
        outcome = outcome_from_history(entry, self.prompt_id)
        log.info("%s: prompt %s found finished in history (%s)", self.client.url, self.prompt_id,
                 outcome.status or "no status")
        if outcome.failure is not None:
            yield outcome.failure
        elif outcome.interruption is not None:
            yield outcome.interruption
        elif outcome.status == "error":
            yield PromptFailed(self.prompt_id, None, None, "", "the server recorded an error without details")
        if outcome.cached_nodes:
            yield NodesCached(self.prompt_id, outcome.cached_nodes)
        yield NodeExecuting(self.prompt_id, None)

    def _finish(self) -> JobResult:
        assert self._entry is not None
        self._timings["finished"] = time.time()
        outcome = outcome_from_history(self._entry, self.prompt_id)
        return JobResult(job=self.job, prompt_id=self.prompt_id, server=self.client.url,
                         outputs=outputs_from_history(self._entry), timings=dict(self._timings),
                         cached_nodes=self._cached or outcome.cached_nodes)


class Client:
    """One ComfyUI server: submit jobs, track them, fetch outputs, upload inputs, control the queue."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        job_timeout_s: float = 3600.0,
        silence_s: float = 30.0,
        retry: RetryPolicy | None = None,
        keep_previews: bool = False,
        validate: bool = True,
        client_id: str | None = None,
        session: requests.Session | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.url, url_user, url_password = _split_credentials(url)
        self.ws_url = self.url.replace("http", "ws", 1) + "/ws"
        user, password = username or url_user, password or url_password
        self.timeout_s = timeout_s
        self.job_timeout_s = job_timeout_s
        self.silence_s = silence_s
        self.retry = retry or RetryPolicy()
        self.keep_previews = keep_previews
        self.validate = validate
        self.client_id = client_id or uuid.uuid4().hex  # random: a clientId works like a bearer token
        self.connect = connect or connect_websocket
        self._own_session = session is None
        self.session = session or requests.Session()
        self._headers = dict(headers or {})
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            pair = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {pair}"
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        self._system_stats: dict[str, Any] | None = None
        self._uploaded: set[str] = set()
        self.listener = _Listener(self)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the credentials

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the websocket and, if we made it, the HTTP session."""
        self._closed.set()
        self.listener.stop()
        if self._own_session:
            self.session.close()

    def headers_for_websocket(self) -> dict[str, str]:
        return dict(self._headers)

    # -- HTTP
    def _once(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> requests.Response:
        """One HTTP request; library errors become ours, with no URL credentials or headers in them."""
        try:
            response = self.session.request(method, self.url + path, headers=self._headers, stream=stream,
                                            timeout=(min(self.timeout_s, 10.0), self.timeout_s), **kwargs)
        except requests.Timeout as exc:
            raise RequestTimedOut(f"{method} {path.split('?')[0]} timed out after {self.timeout_s:g} s",
                                  server=self.url) from exc
        except requests.ConnectionError as exc:
            raise ConnectionFailed(f"{method} {path.split('?')[0]}: cannot connect ({type(exc).__name__}); is "
                                   "ComfyUI running there? (--server URL or $COMFY_URL; 'comfy-orch sim' "
                                   "starts a simulated one)", server=self.url) from exc
        except requests.RequestException as exc:
            raise ServerError(f"{method} {path.split('?')[0]} failed ({type(exc).__name__})",
                              server=self.url) from exc
        if response.status_code in (401, 403, 407):
            response.close()
            raise AuthFailed(f"{method} {path.split('?')[0]} answered {response.status_code}: credentials "
                             "missing or refused (a proxy in front of ComfyUI? pass a token or user/password)",
                             server=self.url, status=response.status_code)
        if response.status_code >= 500:
            text = response.text[:200].strip().replace("\n", " ")
            raise ServerError(f"{method} {path.split('?')[0]} answered {response.status_code}: {text}",
                              server=self.url, status=response.status_code)
        return response

    def _call(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> requests.Response:
        """An HTTP request retried with backoff on connection errors and 5xx, if safe to repeat."""
        attempt = 1
        while True:
            try:
                return self._once(method, path, **kwargs)
            except ComfyError as exc:
                if not (idempotent and exc.retryable) or attempt >= self.retry.max_attempts:
                    raise
                delay_s = self.retry.delay(attempt)
                log.info("%s: %s; retry %d in %.2f s", self.url, exc, attempt, delay_s)
                if self._closed.wait(delay_s):
                    raise
                attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._call(method, path, **kwargs)
        if response.status_code != 200:
            raise ServerError(f"{method} {path} answered {response.status_code}", server=self.url,
                              status=response.status_code)
        try:
            return response.json() if response.content else None
        except ValueError as exc:
            raise MalformedMessage(f"{method} {path} did not answer JSON", server=self.url) from exc

    # -- reads
    def queue(self) -> dict[str, Any]:
        """GET /queue: {"queue_running": [...], "queue_pending": [...]}."""
        answer: dict[str, Any] = self._json("GET", "/queue")
        return answer

    def history(self, max_items: int | None = None) -> dict[str, Any]:
        """GET /history (newest last), at most `max_items` entries."""
        query = f"?max_items={max_items}" if max_items is not None else ""
        answer: dict[str, Any] = self._json("GET", "/history" + query)
        return answer

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """GET /history/{prompt_id}: the one prompt's record, or None while it has none."""
        answer = self._json("GET", f"/history/{quote(prompt_id, safe='')}") or {}
        entry = answer.get(prompt_id)
        return dict(entry) if isinstance(entry, Mapping) else None

    def system_stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._json("GET", "/system_stats")
        with self._lock:
            self._system_stats = answer
        return answer

    def comfyui_version(self) -> str | None:
        """The server's ComfyUI version, from /system_stats (read once)."""
        stats = self._system_stats if self._system_stats is not None else self.system_stats()
        version = (stats.get("system") or {}).get("comfyui_version")
        return str(version) if version is not None else None

    def object_info(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._json("GET", "/object_info")
        return answer

    def schema(self, *, refresh: bool = False) -> Schema:
        """The server's node schema from /object_info, read once per client unless refreshed."""
        with self._lock:
            if self._schema is not None and not refresh:
                return self._schema
        schema = Schema(self.object_info(), source=self.url)
        with self._lock:
            self._schema = schema
        return schema

    def locate(self, prompt_id: str) -> tuple[str, dict[str, Any] | None]:
        """Where the server has the prompt: ("done", entry), ("running"|"queued", None) or ("unknown", None)."""
        entry = self.history_entry(prompt_id)
        if entry is not None:
            return "done", entry
        state = self._queue_state(prompt_id)
        if state is not None:
            return state, None
        entry = self.history_entry(prompt_id)  # it may have finished between the two reads
        return ("done", entry) if entry is not None else ("unknown", None)

    def _queue_state(self, prompt_id: str) -> str | None:
        listing = self.queue()
        for state, key in (("running", "queue_running"), ("queued", "queue_pending")):
            for item in listing.get(key) or ():
                if isinstance(item, (list, tuple)) and len(item) > 1 and item[1] == prompt_id:
                    return state
        return None

    # -- control
    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt (only if it is `prompt_id`, when given)."""
        self._call("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def delete(self, prompt_ids: Sequence[str]) -> None:
        """Take waiting prompts off the queue (a running one is not affected)."""
        self._call("POST", "/queue", json={"delete": list(prompt_ids)})

    def clear_queue(self) -> None:
        """Empty the waiting list; the running prompt goes on."""
        self._call("POST", "/queue", json={"clear": True})

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Unload models and drop the node cache."""
        self._call("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    # -- inputs
    def upload(self, source: ImageSource, *, name: str | None = None, subfolder: str = "") -> str:
        """Upload an image to the input folder under a content name; once per server. Returns the name."""
        data, stem, suffix = _image_bytes(source)
        name = name or name_by_content(data, stem, suffix)
        key = f"{subfolder}/{name}"
        with self._lock:
            if key in self._uploaded:
                return name
        if not self._has_input(name, subfolder):
            files = {"image": (name, data, "application/octet-stream")}
            answer = self._json("POST", "/upload/image", files=files,
                                data={"type": "input", "subfolder": subfolder, "overwrite": "true"})
            got = (answer or {}).get("name")
            if got != name:
                raise ServerError(f"upload of {name!r} was stored as {got!r}", server=self.url)
        with self._lock:
            self._uploaded.add(key)
        return name

    def upload_mask(self, source: ImageSource, *, original: str, name: str | None = None) -> str:
        """Upload a mask through /upload/mask: its alpha is applied to the uploaded image `original`."""
        data, stem, suffix = _image_bytes(source)
        name = name or name_by_content(data, stem, suffix)
        files = {"image": (name, data, "application/octet-stream")}
        ref = json.dumps({"filename": original, "subfolder": "", "type": "input"})
        answer = self._json("POST", "/upload/mask", files=files,
                            data={"type": "input", "overwrite": "true", "original_ref": ref})
        return str((answer or {}).get("name") or name)

    def _has_input(self, name: str, subfolder: str) -> bool:
        query = f"/view?filename={quote(name)}&type=input&subfolder={quote(subfolder)}"
        response = self._call("HEAD", query)
        response.close()
        return response.status_code == 200

    def _input_exists(self, name: str) -> bool:
        with self._lock:
            if f"/{name}" in self._uploaded:
                return True
        schema = self.schema()
        return name in schema.choices("LoadImage", "image") if "LoadImage" in schema else False

    # -- submitting
    def check(self, job: Job) -> None:
        """Validate the graph against this server's object_info; raise PromptRejected as it would."""
        verdict = check_prompt(job.graph.to_api(), self.schema(), input_exists=self._input_exists)
        if verdict.error is None and not verdict.node_errors:
            return
        raise self._rejection(job, verdict.error or {"type": "prompt_outputs_failed_validation",
                                                     "message": "a branch of the prompt failed validation",
                                                     "details": ""}, verdict.node_errors, checked_locally=True)

    def _rejection(self, job: Job, error: Mapping[str, Any], node_errors: Mapping[str, Any], *,
                   checked_locally: bool) -> PromptRejected:
        parameters: dict[str, str] = {}
        lines: list[str] = []
        missing_model = False
        for node_id, entry in node_errors.items():
            for problem in (entry or {}).get("errors") or ():
                input_name = str((problem.get("extra_info") or {}).get("input_name") or "")
                parameter = job.parameter_for(str(node_id), input_name) if input_name else None
                if parameter:
                    parameters[f"{node_id}.{input_name}"] = parameter
                if problem.get("type") == "value_not_in_list" and input_name in MODEL_INPUTS:
                    missing_model = True
                where = f"parameter {parameter!r}" if parameter else \
                    f"node {node_id} ({entry.get('class_type', '?')})" + (f" input {input_name!r}" if input_name else "")
                lines.append(f"{where}: {problem.get('message', '')}: {problem.get('details', '')}".rstrip(": "))
        if not lines:
            lines.append(f"{error.get('message', 'rejected')} {error.get('details', '')}".strip())
        prefix = "prompt rejected by local check against the server's object_info" if checked_locally \
            else "prompt rejected"
        kind = MissingModel if missing_model else PromptRejected
        if missing_model:
            prefix += " (the server lacks a model; another server may have it)"
        return kind(f"{prefix}: " + "; ".join(lines), server=self.url, error=error, node_errors=node_errors,
                    parameters=parameters)

    def submit(
        self,
        job: Job | Graph | Mapping[str, Any],
        *,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        prompt_id: str | None = None,
        on_event: EventCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobHandle:
        """Upload the job's inputs, check it, queue it under a prompt id we choose; return its handle."""
        if not isinstance(job, Job):
            job = Job(graph=job if isinstance(job, Graph) else Graph.from_api(job))
        for name, path in job.inputs.items():
            self.upload(path, name=name)
        if self.validate:
            self.check(job)
        self.listener.start()  # listen first: a cached prompt ends at once
        prompt_id = prompt_id or str(uuid.uuid4())
        events = self.listener.subscribe(prompt_id)
        handle = JobHandle(self, job, prompt_id, events, on_event=on_event, on_progress=on_progress)
        body: dict[str, Any] = {"prompt": job.graph.to_api(), "client_id": self.client_id,
                                "prompt_id": prompt_id, "extra_data": dict(extra_data or {})}
        if front:
            body["front"] = True
        try:
            answer = self._post_prompt(job, body)
        except BaseException:
            self.listener.unsubscribe(prompt_id)
            raise
        handle.number = answer.get("number")
        handle.node_errors = dict(answer.get("node_errors") or {})
        if handle.node_errors:
            log.warning("%s: prompt %s queued, but nodes %s will not run: %s", self.url, prompt_id,
                        ", ".join(handle.node_errors), self._rejection(job, {}, handle.node_errors,
                                                                         checked_locally=False))
        return handle

    def _post_prompt(self, job: Job, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /prompt; a retry after a lost answer first asks whether the prompt id got in."""
        prompt_id = str(body["prompt_id"])
        attempt = 1
        while True:
            try:
                response = self._once("POST", "/prompt", json=body)
                break
            except ComfyError as exc:
                if not exc.retryable or attempt >= self.retry.max_attempts:
                    raise
                if self._closed.wait(self.retry.delay(attempt)):
                    raise
                attempt += 1
                try:
                    state, _ = self.locate(prompt_id)
                except ComfyError as probe:
                    log.info("%s: cannot tell whether prompt %s got in: %s", self.url, prompt_id, probe)
                    continue
                if state != "unknown":
                    log.info("%s: prompt %s was accepted before the answer was lost", self.url, prompt_id)
                    return {"prompt_id": prompt_id, "number": None, "node_errors": {}}
        try:
            answer = response.json()
        except ValueError as exc:
            raise MalformedMessage(f"POST /prompt answered {response.status_code} without JSON",
                                   server=self.url) from exc
        if response.status_code == 200 and isinstance(answer, dict):
            return answer
        if response.status_code == 400 and isinstance(answer, dict):
            raise self._rejection(job, answer.get("error") or {}, answer.get("node_errors") or {},
                                  checked_locally=False)
        raise ServerError(f"POST /prompt answered {response.status_code}", server=self.url,
                          status=response.status_code)

    def run(self, job: Job | Graph | Mapping[str, Any], *, out_dir: Path | None = None,
            timeout_s: float | None = None, front: bool = False, extra_data: Mapping[str, Any] | None = None,
            on_event: EventCallback | None = None, on_progress: ProgressCallback | None = None) -> JobResult:
        """Run a job to completion; save its outputs under `out_dir` if given."""
        handle = self.submit(job, front=front, extra_data=extra_data, on_event=on_event, on_progress=on_progress)
        result = handle.wait(timeout_s)
        if out_dir is not None:
            result = self.save_outputs(result, out_dir)
        return result

    # -- outputs
    def _view(self, output: Output) -> requests.Response:
        query = (f"/view?filename={quote(output.filename)}&subfolder={quote(output.subfolder)}"
                 f"&type={quote(output.type)}")
        response = self._call("GET", query, stream=True)
        if response.status_code in (400, 403) and ("/" in output.filename or "\\" in output.filename
                                                   or ".." in output.filename or ".." in output.subfolder):
            response.close()
            raise UnsafeOutput(output.filename)
        if response.status_code != 200:
            response.close()
            raise ServerError(f"GET /view of {output.filename!r} answered {response.status_code}",
                              server=self.url, status=response.status_code)
        return response

    def fetch(self, output: Output) -> bytes:
        """One output's bytes, in memory, as the server has it."""
        with self._view(output) as response:
            return bytes(response.content)

    def fetch_image(self, output: Output) -> Image.Image:
        """One output as a loaded PIL image."""
        image = Image.open(io.BytesIO(self.fetch(output)))
        image.load()
        return image

    def save_outputs(self, result: JobResult, out_dir: Path, *, provenance: bool = True) -> JobResult:
        """Stream every output to `out_dir` under a safe, new name; PNGs get our provenance added."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        chunk = b""
        if provenance:
            chunk = provenance_chunk(provenance_record(result.job, prompt_id=result.prompt_id, server=self.url,
                                                       comfyui_version=self.comfyui_version()))
        files = [self._save(output, out_dir, chunk, index) for index, output in enumerate(result.outputs)]
        return JobResult(job=result.job, prompt_id=result.prompt_id, server=result.server, outputs=result.outputs,
                         files=result.files + tuple(files), timings=result.timings, cached_nodes=result.cached_nodes)

    def _save(self, output: Output, out_dir: Path, chunk: bytes, index: int) -> Path:
        name = safe_filename(output.filename, fallback=f"output-{output.node_id}-{index}")
        with self._view(output) as response:
            path, handle = _create_new(out_dir, name)
            appender = PngTextAppender(chunk)
            try:
                with handle:
                    for piece in response.iter_content(_CHUNK_BYTES):
                        handle.write(appender.feed(piece))
                    handle.write(appender.finish())
            except requests.RequestException as exc:
                path.unlink()
                raise ConnectionFailed(f"download of {output.filename!r} broke off ({type(exc).__name__})",
                                       server=self.url) from exc
            except BaseException:
                path.unlink()
                raise
        return path


def _create_new(folder: Path, name: str) -> tuple[Path, io.BufferedWriter]:
    """Create a file that did not exist (never follows a link, never overwrites): name, name (1), ..."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    root = folder.resolve()
    for number in range(10_000):
        candidate = name if number == 0 else f"{stem} ({number}){dot}{suffix}"
        path = root / candidate
        if path.parent != root:
            raise UnsafeOutput(name)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                                 | getattr(os, "O_BINARY", 0), 0o644)
        except FileExistsError:
            continue
        return path, os.fdopen(descriptor, "wb")
    raise UnsafeOutput(name)


def _image_bytes(source: ImageSource) -> tuple[bytes, str, str]:
    """An image's bytes, a stem and a suffix to name it by."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return buffer.getvalue(), "image", ".png"
    if isinstance(source, bytes):
        return source, "image", ".png"
    path = Path(source)
    return path.read_bytes(), path.stem, path.suffix.lower() or ".png"


