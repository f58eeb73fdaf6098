"""Listener: a client's one websocket; connects, reads, routes each prompt's events, reconnects.

The reader thread owns the socket. It sends feature_flags as the first frame, waits for
the server's greeting, then hands every event to the queue of the prompt it names
(events without a prompt go to all). When the socket closes it tells the waiting
prompts (`Disconnected`), reconnects with the retry policy's backoff and says so
(`Reconnected`), so that a JobHandle can read the prompt's record instead.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import websocket
from websocket import _abnf

from comfy_orchestrator.errors import (
    AuthFailed,
    ComfyError,
    ConnectionFailed,
    MalformedMessage,
    RequestTimedOut,
    ServerError,
)
from comfy_orchestrator.limits import Limits, Timeouts, describe_bytes
from comfy_orchestrator.protocol import (
    FEATURE_FLAGS_FRAME,
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    UNENCODED_PREVIEW_IMAGE,
    Event,
    FeatureFlags,
    NodeExecuted,
    NodeExecuting,
    NodeProgress,
    PreviewImage,
    ProgressState,
    PromptFailed,
    PromptInterrupted,
    PromptSucceeded,
    QueueStatus,
    parse_event,
)
from comfy_orchestrator.retry import RetryPolicy, jitter
from comfy_orchestrator.tls import Trust, certificate_rejection

__all__ = ["Connect", "Disconnected", "Listener", "QueueShrank", "Reconnected", "WebSocketLike",
           "connect_websocket"]

log = logging.getLogger(__name__)

# the first four bytes of a binary frame that carries a preview picture (big-endian event types)
_PREVIEW_TYPES = frozenset(kind.to_bytes(4, "big") for kind in
                           (PREVIEW_IMAGE, UNENCODED_PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA))
# ComfyUI's json.dumps of a progress_state message: half of a prompt's frames, and its largest
_PROGRESS_STATE_PREFIX = b'{"type": "progress_state"'
# ... and of the messages that tell a prompt's steps: a sampler's step, a node starting, a node's outputs.
# A node starting is told with its id as a string; the closing `executing` (node null) never matches.
_STEP_PREFIXES = (b'{"type": "progress", ', b'{"type": "executing", "data": {"node": "', b'{"type": "executed", ')
# What one read of the websocket asks the socket for: a whole burst of small frames at once
_READ_BYTES = 1 << 16


class WebSocketLike(Protocol):
    """What the client needs of a websocket (websocket-client's WebSocket has it)."""

    def send(self, payload: str) -> Any: ...
    def recv_data(self) -> tuple[int, bytes]: ...
    def send_close(self) -> None: ...
    def abort(self) -> None: ...
    def shutdown(self) -> None: ...
    def settimeout(self, timeout: float | None) -> None: ...


Connect = Callable[[str, Mapping[str, str], float], WebSocketLike]


def connect_websocket(url: str, headers: Mapping[str, str], timeout_s: float, *,
                      tls: ssl.SSLContext | None = None,
                      max_frame_bytes: int = Limits().websocket_frame_bytes) -> WebSocketLike:
    """Open a websocket with websocket-client; no Origin header (ComfyUI refuses foreign ones).

    A wss:// URL is verified with `tls` (the client's Trust), else with a default context; ws:// makes none.
    websocket-client puts no limit on a message's size; ours refuses one past `max_frame_bytes`
    (its fragments together) as soon as its header announces it, before reading it.
    websocket-client's own UTF-8 check of text frames is pure Python and was the reader's largest
    cost; the Listener decodes each text frame strictly anyway, so a bad one still closes the socket.
    """
    socket = websocket.create_connection(
        url, timeout=timeout_s, header=[f"{k}: {v}" for k, v in headers.items()],
        suppress_origin=True, enable_multithread=True, skip_utf8_validation=True,
        sslopt={"context": tls or ssl.create_default_context()} if url.startswith("wss:") else None)
    socket.frame_buffer = _BufferedFrames(socket._recv, socket.frame_buffer.skip_utf8_validation, max_frame_bytes)
    bounded: WebSocketLike = socket
    return bounded


class FrameTooLarge(websocket.WebSocketPayloadException):
    """A websocket message is larger than Limits.websocket_frame_bytes."""


class _BufferedFrames(_abnf.frame_buffer):
    """websocket-client's frame reader, refusing a message whose announced size is past a limit.

    It reads what the socket has (up to 64 KiB) into a buffer, where websocket-client reads
    exactly what it needs next: a frame's header, length and payload were three reads each,
    the reader's largest cost after parsing.
    """

    def __init__(self, recv: Callable[[int], bytes], skip_utf8_validation: bool, limit: int) -> None:
        super().__init__(recv, skip_utf8_validation)
        self._limit = limit
        self._message_bytes = 0  # of the fragments read so far of an unfinished message
        self._buffer = bytearray()

    def recv_strict(self, bufsize: int) -> bytes:
        """The next `bufsize` bytes of the stream, reading more when the buffer holds fewer."""
        buffer = self._buffer
        while len(buffer) < bufsize:
            buffer += self.recv(max(_READ_BYTES, min(bufsize - len(buffer), 16 * _READ_BYTES)))
        taken = bytes(buffer[:bufsize])
        del buffer[:bufsize]
        return taken

    def recv_length(self) -> None:
        super().recv_length()
        fin = self.header[0] if self.header else 1
        size = self._message_bytes + (self.length or 0)
        if size > self._limit:
            self._message_bytes = 0
            raise FrameTooLarge(f"a websocket message of {describe_bytes(size)} is over the limit of "
                                f"{describe_bytes(self._limit)} (Limits.websocket_frame_bytes)")
        self._message_bytes = 0 if fin else size


class ConnectionMarker(Event):
    """Not a server message: the reader tells waiting jobs about the connection."""


class Reconnected(ConnectionMarker):
    """The socket is open again: what was said meanwhile is lost."""


class Disconnected(ConnectionMarker):
    """The socket closed; the reader is reconnecting."""


class QueueShrank(ConnectionMarker):
    """The server's queue shrank by more than our prompts that ended: one may have been deleted.

    A prompt deleted from the queue sends nothing but the status broadcast, so a waiting
    prompt must then read its record. A prompt's end (execution_success, _error or
    _interrupted) comes before the status of its leaving the queue, so the shrinking an
    ordinary end explains needs no reading.
    """


class Listener:
    """The client's one websocket: connects, reads, routes events, reconnects with backoff."""

    def __init__(self, *, server: str, url: str, headers: Mapping[str, str], connect: Connect,
                 timeouts: Timeouts, retry: RetryPolicy, keep_previews: bool, name: str,
                 trust: Trust | None = None) -> None:
        self._server = server  # names the server in logs and errors, without credentials
        self._url = url
        self._headers = dict(headers)
        self._connect = connect
        self._trust = trust or Trust.load()
        self._timeouts = timeouts
        self._retry = retry
        self._keep_previews = keep_previews
        self._name = name
        self._lock = threading.Lock()
        self._queues: dict[str, queue.SimpleQueue[Event]] = {}
        self._every_event: set[str] = set()  # prompts whose progress_state frames someone reads
        self._step_readers: set[str] = set()  # prompts whose step messages someone reads
        self._queue_remaining: int | None = None  # as the last status said
        self._ended_since_status = 0  # our prompts that ended since that status
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
                                            name=self._name)
            self._thread.start()

    def subscribe(self, prompt_id: str, *, every_event: bool = True, steps: bool = True) -> queue.SimpleQueue[Event]:
        """A queue of the prompt's events; without `every_event`, progress_state is left out, and
        without `steps` also its steps: `progress`, a node's `executing` and `executed`.

        Nothing of ours reads progress_state (the other messages carry the progress), and a
        prompt that is only waited on, its progress read by nobody, needs only its start and
        its end: it is spared parsing and handing over half, or nine tenths, of its frames.
        While no prompt reads them, those frames are dropped unparsed.
        """
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            self._queues[prompt_id] = events
            if every_event:
                self._every_event.add(prompt_id)
            if every_event or steps:
                self._step_readers.add(prompt_id)
        return events

    def unsubscribe(self, prompt_id: str) -> None:
        with self._lock:
            self._queues.pop(prompt_id, None)
            self._every_event.discard(prompt_id)
            self._step_readers.discard(prompt_id)

    def recycle(self) -> None:
        """Close the socket so the reader reconnects: cures a socket the server stopped talking to."""
        socket = self._socket
        if socket is not None:
            log.info("%s: websocket silent while a prompt runs; reconnecting", self._server)
            self._close_socket(socket)

    def stop(self) -> None:
        self._stop.set()
        socket, thread = self._socket, self._thread
        if socket is not None:
            self._close_socket(socket)
        if thread is not None:
            thread.join(self._timeouts.read_s)
            if thread.is_alive() and socket is not None:
                socket.abort()
                thread.join(self._timeouts.read_s)

    def _close_socket(self, socket: WebSocketLike) -> None:
        try:
            socket.send_close()
        except (websocket.WebSocketException, OSError) as exc:
            log.debug("%s: close frame not sent (%s); aborting the socket", self._server, exc)
            socket.abort()

    def _open(self) -> WebSocketLike:
        """Connect, send feature_flags as the very first frame, and read the greeting."""
        try:
            socket = self._connect(self._url, self._headers, self._timeouts.read_s)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (401, 403):
                raise AuthFailed(f"the websocket upgrade answered {exc.status_code}: our credentials were "
                                 "refused", server=self._server, status=exc.status_code) from exc
            raise ServerError(f"websocket upgrade answered {exc.status_code}", server=self._server,
                              status=exc.status_code) from exc
        except websocket.WebSocketTimeoutException as exc:
            raise RequestTimedOut("websocket did not open in time", server=self._server) from exc
        except ssl.SSLError as exc:
            rejection = certificate_rejection(exc, server=self._server, trust=self._trust,
                                              timeout_s=self._timeouts.connect_s)
            if rejection is not None:
                raise rejection from exc
            raise ConnectionFailed(f"websocket TLS handshake failed ({type(exc).__name__})",
                                   server=self._server) from exc
        except (websocket.WebSocketException, OSError) as exc:
            raise ConnectionFailed(f"websocket could not connect ({type(exc).__name__})",
                                   server=self._server) from exc
        try:
            socket.send(FEATURE_FLAGS_FRAME)
            deadline = time.monotonic() + self._timeouts.read_s
            while True:  # the server speaks first: status with our sid
                socket.settimeout(max(0.01, deadline - time.monotonic()))
                event = self._receive(socket)
                if isinstance(event, QueueStatus) and event.sid is not None:
                    self._queue_remaining, self._ended_since_status = event.queue_remaining, 0
                    break
            socket.settimeout(None)
        except FrameTooLarge as exc:
            socket.shutdown()
            raise ServerError(f"during the websocket greeting, {exc}", server=self._server) from exc
        except (websocket.WebSocketException, OSError, UnicodeDecodeError) as exc:
            socket.shutdown()  # closes it: abort() alone leaves the descriptor open
            raise ConnectionFailed(f"websocket closed during the greeting ({type(exc).__name__})",
                                   server=self._server) from exc
        self._socket = socket
        return socket

    def _receive(self, socket: WebSocketLike) -> Event | None:
        """Read one frame; None for a close frame or a frame that is not ComfyUI's."""
        opcode, data = socket.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException("closed by the server")
        self.last_frame_at = time.monotonic()
        if opcode != websocket.ABNF.OPCODE_TEXT:
            if not self._keep_previews and data[:4] in _PREVIEW_TYPES:
                return None  # a preview nobody keeps: not worth parsing
        elif not self._every_event and data.startswith(_PROGRESS_STATE_PREFIX):
            return None  # nobody reads it (a set's truth is safe to read without the lock)
        elif not self._step_readers and data.startswith(_STEP_PREFIXES):
            return None  # nobody follows the steps
        frame: str | bytes = data.decode("utf-8") if opcode == websocket.ABNF.OPCODE_TEXT else data
        try:
            event = parse_event(frame)
        except MalformedMessage as exc:
            # The socket is a hint; the prompt's record decides. Report and read on.
            log.warning("%s: ignoring a malformed websocket frame: %s", self._server, exc)
            return None
        if isinstance(event, FeatureFlags):
            self.server_flags = dict(event.flags)
        return event

    def _run(self, socket: WebSocketLike) -> None:
        try:
            self._serve(socket)
        except Exception:
            # Jobs fall back to their watchdog; the next submit starts a new reader.
            log.exception("%s: websocket reader stopped on an unexpected error", self._server)
            self._broadcast(Disconnected(None))

    def _serve(self, socket: WebSocketLike) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                self._read(socket)
                socket.shutdown()
                self._socket = None
                if self._stop.is_set():
                    return
                self._broadcast(Disconnected(None))
                while True:
                    attempt += 1
                    if self._stop.wait(self._retry.delay(attempt, jitter()) if attempt > 1 else 0):
                        return
                    try:
                        socket = self._open()
                    except ComfyError as exc:
                        log.info("%s: websocket reconnect %d failed: %s", self._server, attempt, exc)
                        continue
                    attempt = 0
                    log.info("%s: websocket reconnected", self._server)
                    self._broadcast(Reconnected(None))
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
                    log.info("%s: websocket closed: %s", self._server, exc or type(exc).__name__)
                return
            if event is None or (isinstance(event, PreviewImage) and not self._keep_previews):
                continue
            if isinstance(event, QueueStatus):
                if self._shrank_unexplained(event.queue_remaining):
                    self._broadcast(QueueShrank(None))
                continue
            if isinstance(event, (PromptSucceeded, PromptFailed, PromptInterrupted)):
                self._ended_since_status += 1
            if event.prompt_id is None:
                self._broadcast(event)
            else:
                with self._lock:
                    events = self._queues.get(event.prompt_id)
                    if isinstance(event, ProgressState) and event.prompt_id not in self._every_event:
                        events = None
                    elif _is_step(event) and event.prompt_id not in self._step_readers:
                        events = None
                if events is not None:
                    events.put(event)

    def _shrank_unexplained(self, remaining: int) -> bool:
        previous, ended = self._queue_remaining, self._ended_since_status
        self._queue_remaining, self._ended_since_status = remaining, 0
        return previous is not None and previous - remaining > ended

    def _broadcast(self, event: Event) -> None:
        with self._lock:
            targets = list(self._queues.values())
        for events in targets:
            events.put(event)


def _is_step(event: Event) -> bool:
    """Whether an event tells a prompt's steps rather than its start or end."""
    return isinstance(event, (NodeProgress, NodeExecuted)) or (isinstance(event, NodeExecuting)
                                                               and event.node is not None)
