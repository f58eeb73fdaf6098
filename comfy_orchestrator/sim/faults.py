"""Faults a test can switch on in one simulated server; thread-safe, undone by `clear()`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

HOSTILE_FILENAME = "../../x.png"


@dataclass
class RouteFault:
    """What a route does while faulty: answer `status`, or hang until cleared."""

    hang: bool
    status: int
    remaining: int | None  # None: every request; else this many more


@dataclass(frozen=True)
class NodeFault:
    """Make the next execution of a matching node raise, as a real node error would."""

    node_id: str | None
    node_type: str | None
    message: str
    exception_type: str

    def matches(self, node_id: str, node_type: str) -> bool:
        return (self.node_id is None or self.node_id == node_id) and (
            self.node_type is None or self.node_type == node_type)


class Faults:
    """The misbehaviour of one simulated server.

    Every switch takes effect at once for new work; `clear()` switches everything off and
    releases requests that hang. Routes are named without the `/api` prefix (`"/history"`
    also matches `/api/history/{id}`; `"/history/"` alone matches only by prefix).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._on_release: list[Callable[[], None]] = []
        self._on_refuse: list[Callable[[bool], None]] = []
        self._on_hold: list[Callable[[bool], None]] = []
        self._reset()

    def _reset(self) -> None:
        self.websocket_close_after: int | None = None
        self.websocket_silent_after: int | None = None
        self.routes: dict[str, RouteFault] = {}
        self.oom_pixels: int | None = None
        self.download_bytes_per_s: int | None = None
        self.hostile_filename: str | None = None
        self.prompts_to_drop = 0
        self.node_faults: list[NodeFault] = []
        self.crash_node_type: str | None = None
        self.crash_step: int | None = None
        self.refusing = False
        self.queue_held = False

    def close_websocket_after(self, messages: int) -> None:
        """Close every websocket (present and future) once it has been sent `messages` messages."""
        with self._lock:
            self.websocket_close_after = messages

    def silence_websocket_after(self, messages: int) -> None:
        """Keep every websocket open but send nothing more once it has been sent `messages` messages."""
        with self._lock:
            self.websocket_silent_after = messages

    def fail_route(self, path: str, *, status: int = 500, times: int | None = None) -> None:
        """Answer requests to `path` with `status` (ComfyUI's own 500 text), every time or `times` times."""
        with self._lock:
            self.routes[_route_key(path)] = RouteFault(hang=False, status=status, remaining=times)

    def hang_route(self, path: str, *, times: int | None = None) -> None:
        """Never answer requests to `path` (until `clear()` or the server stops)."""
        with self._lock:
            self.routes[_route_key(path)] = RouteFault(hang=True, status=0, remaining=times)

    def oom_above(self, pixels: int) -> None:
        """Fail sampling and VAE nodes with a CUDA out-of-memory error above `pixels` (width x height x batch)."""
        with self._lock:
            self.oom_pixels = pixels

    def slow_downloads(self, bytes_per_s: int) -> None:
        """Send /view bodies at this many bytes a second."""
        with self._lock:
            self.download_bytes_per_s = bytes_per_s

    def hostile_filenames(self, name: str = HOSTILE_FILENAME) -> None:
        """Report `name` (such as ../../x.png) as the file name of every saved image."""
        with self._lock:
            self.hostile_filename = name

    def drop_prompts(self, count: int = 1) -> None:
        """Accept the next `count` prompts (200 with a prompt_id) but lose them: no message, no history."""
        with self._lock:
            self.prompts_to_drop += count

    def fail_next(self, *, message: str, node_id: str | None = None, node_type: str | None = None,
                  exception_type: str = "RuntimeError") -> None:
        """Make the next run of a matching node raise `message` (an execution_error)."""
        with self._lock:
            self.node_faults.append(NodeFault(node_id, node_type, message, exception_type))

    def crash_on(self, node_type: str, *, step: int | None = None) -> None:
        """Crash the server when a node of `node_type` starts (or reaches sampler `step`)."""
        with self._lock:
            self.crash_node_type = node_type
            self.crash_step = step

    def refuse_connections(self) -> None:
        """Close the listening socket: new connections are refused until `accept_connections()`."""
        with self._lock:
            self.refusing = True
            listeners = list(self._on_refuse)
        for listener in listeners:
            listener(True)

    def accept_connections(self) -> None:
        """Listen again on the same port."""
        with self._lock:
            self.refusing = False
            listeners = list(self._on_refuse)
        for listener in listeners:
            listener(False)

    def hold_queue(self) -> None:
        """Accept prompts but start none until `release_queue()` (a client's slow start, made certain)."""
        self._set_held(True)

    def release_queue(self) -> None:
        """Start the held prompts, in queue order."""
        self._set_held(False)

    def _set_held(self, held: bool) -> None:
        with self._lock:
            self.queue_held = held
            listeners = list(self._on_hold)
        for listener in listeners:
            listener(held)

    def clear(self) -> None:
        """Switch every fault off, release hanging requests and a held queue."""
        with self._lock:
            refusing, held = self.refusing, self.queue_held
            self._reset()
            releases = list(self._on_release)
        for release in releases:
            release()
        if refusing:
            self.accept_connections()
        if held:
            self.release_queue()

    def route_fault(self, path: str) -> RouteFault | None:
        """The fault for a request path, counting it down; None when the route behaves."""
        key = _route_key(path)
        with self._lock:
            for prefix, fault in self.routes.items():
                if key == prefix or (prefix.endswith("/") and key.startswith(prefix)) or key.startswith(prefix + "/"):
                    if fault.remaining is not None:
                        if fault.remaining <= 0:
                            continue
                        fault.remaining -= 1
                    return fault
        return None

    def take_prompt_drop(self) -> bool:
        """Whether the prompt being accepted now is to be lost."""
        with self._lock:
            if self.prompts_to_drop > 0:
                self.prompts_to_drop -= 1
                return True
            return False

    def take_node_fault(self, node_id: str, node_type: str) -> NodeFault | None:
        """The planned failure of this node, if any (used once)."""
        with self._lock:
            for fault in self.node_faults:
                if fault.matches(node_id, node_type):
                    self.node_faults.remove(fault)
                    return fault
        return None

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever hanging requests are to be released."""
        with self._lock:
            self._on_release.append(callback)

    def on_refuse(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(refusing)` when connections are to be refused or accepted again."""
        with self._lock:
            self._on_refuse.append(callback)

    def on_hold(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(held)` when the queue is to be held or released."""
        with self._lock:
            self._on_hold.append(callback)

    def forget_listeners(self) -> None:
        """Drop the callbacks of a server that stopped."""
        with self._lock:
            self._on_release.clear()
            self._on_refuse.clear()
            self._on_hold.clear()


def _route_key(path: str) -> str:
    path = "/" + path.lstrip("/")
    if path == "/api" or path.startswith("/api/"):
        rest = path[4:] or "/"
        if not rest.startswith("/jobs"):
            path = rest
    return path
