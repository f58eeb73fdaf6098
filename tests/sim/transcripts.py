"""Replaying recorded ComfyUI exchanges against a server and comparing what comes back by shape."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import requests
import websocket
from PIL import Image

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "comfyui-reference"
TIMEOUT_S = 10.0

# Values that differ between any two runs, even of the real server: ids, clocks, counters, hashes.
VOLATILE_KEYS = frozenset({
    "prompt_id", "timestamp", "sid", "create_time", "execution_start_time", "execution_end_time",
    "number", "priority", "Date", "traceback",
})


def load_http(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REFERENCE / "http" / f"{name}.json").read_text("utf-8"))
    return data


def load_ws(name: str) -> list[dict[str, Any]]:
    lines = (REFERENCE / "ws" / f"{name}.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def reference_inputs() -> dict[str, bytes]:
    """Stand-ins for the recording's uploads: same names and sizes, our own pixels."""
    out = {}
    for name, size, colour in (("ref_input_a.png", (512, 512), (180, 90, 40)),
                               ("ref_input_b.png", (512, 512), (40, 120, 200)),
                               ("ref_input_e_4x3.png", (640, 480), (90, 160, 60))):
        picture = Image.new("RGB", size, colour)
        for x in range(0, size[0], 7):
            picture.putpixel((x, (x * 3) % size[1]), (250, 250, 250))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        out[name] = buffer.getvalue()
    return out


def upload_inputs(base_url: str) -> None:
    for name, data in reference_inputs().items():
        response = requests.post(f"{base_url}/upload/image", files={"image": (name, data, "image/png")},
                                 data={"overwrite": "true"}, timeout=TIMEOUT_S)
        response.raise_for_status()


def replay_request(base_url: str, request: Mapping[str, Any]) -> requests.Response:
    """Send one recorded HTTP request as it was sent."""
    headers = dict(request.get("headers") or {})
    body = request.get("body")
    data: bytes | None = None
    if isinstance(body, dict) and set(body) == {"raw_length", "raw_head"}:
        data = body["raw_head"].encode("utf-8")[: body["raw_length"]]
    elif body is not None:
        data = json.dumps(body).encode("utf-8")
    if "Origin" in headers and "Host" not in headers:
        headers["Host"] = base_url.split("//", 1)[1]
    return requests.request(request["method"], base_url + request["path"], data=data, headers=headers,
                            timeout=TIMEOUT_S, allow_redirects=False)


def describe_binary(frame: bytes) -> dict[str, Any]:
    """What the comparison looks at in a binary frame: event type, image type, metadata, image magic."""
    event = struct.unpack(">I", frame[:4])[0]
    out: dict[str, Any] = {"event_type": event}
    if event == 1:
        out["image_type"] = struct.unpack(">I", frame[4:8])[0]
        out["image_magic"] = list(frame[8:12])
    elif event == 4:
        length = struct.unpack(">I", frame[4:8])[0]
        out["metadata"] = json.loads(frame[8:8 + length])
        out["image_magic"] = list(frame[8 + length:12 + length])
    return out


def describe_recorded_binary(entry: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"event_type": entry["event_type"]}
    if entry["event_type"] == 1:
        out["image_type"] = entry["image_type"]
    else:
        out["metadata"] = entry["metadata"]
    out["image_magic"] = entry["image_magic"]
    return out


class Listener:
    """A websocket client that collects frames in a background thread."""

    def __init__(self, url: str) -> None:
        self.frames: list[Any] = []
        self.binary: list[bytes] = []  # every binary frame whole, for tests that look at the pictures
        self.closed = False
        self._changed = threading.Condition()
        self.ws = websocket.create_connection(url, timeout=TIMEOUT_S, suppress_origin=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except (websocket.WebSocketException, OSError):
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            binary = opcode == websocket.ABNF.OPCODE_BINARY
            frame = describe_binary(data) if binary else json.loads(data)
            with self._changed:
                if binary:
                    self.binary.append(bytes(data))
                self.frames.append(frame)
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def send(self, message: Any) -> None:
        self.ws.send(json.dumps(message))

    def wait(self, predicate: Callable[[list[Any]], bool], timeout_s: float = TIMEOUT_S) -> bool:
        """Wait until `predicate(frames)` holds or the socket closes; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(self.frames):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    return predicate(self.frames)
                self._changed.wait(remaining)
            return True

    def wait_count(self, count: int, timeout_s: float = TIMEOUT_S) -> bool:
        return self.wait(lambda frames: len(frames) >= count, timeout_s)

    def close(self) -> None:
        """Drop the connection (the servers under test must cope with that anyway)."""
        if self.ws.sock is not None:
            try:
                self.ws.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
            except OSError:
                pass  # the server closed it first
        self.ws.shutdown()
        self._thread.join(TIMEOUT_S)


def compare(recorded: Any, actual: Any, path: str = "$", *, volatile: Iterable[str] = (),
            unordered: Iterable[str] = ()) -> list[str]:
    """Differences between two JSON values: keys and their order, types, and every value not volatile."""
    volatile_keys = VOLATILE_KEYS | set(volatile)
    unordered_keys = set(unordered)
    differences: list[str] = []

    def walk(a: Any, b: Any, where: str, key: str) -> None:
        if key in volatile_keys:
            if type(a) is not type(b) and not (a is None or b is None):
                differences.append(f"{where}: type {type(a).__name__} != {type(b).__name__}")
            return
        if isinstance(a, dict) and isinstance(b, dict):
            if list(a) != list(b):
                differences.append(f"{where}: keys {list(a)} != {list(b)}")
                return
            for name in a:
                walk(a[name], b[name], f"{where}.{name}", str(name))
            return
        if isinstance(a, list) and isinstance(b, list):
            if key in unordered_keys:
                a, b = sorted(a, key=json.dumps), sorted(b, key=json.dumps)
            if len(a) != len(b):
                differences.append(f"{where}: {len(a)} items != {len(b)}")
                return
            for index, (left, right) in enumerate(zip(a, b)):
                walk(left, right, f"{where}[{index}]", key)
            return
        if type(a) is not type(b):
            differences.append(f"{where}: type {type(a).__name__} ({a!r:.60}) != {type(b).__name__} ({b!r:.60})")
            return
        if a != b:
            differences.append(f"{where}: {a!r:.80} != {b!r:.80}")

    walk(recorded, actual, path, "")
    return differences


def recorded_frames(transcript: Iterable[Mapping[str, Any]]) -> list[Any]:
    frames = []
    for entry in transcript:
        if entry["dir"] != "recv":
            continue
        if entry.get("frame") == "text":
            frames.append(entry["msg"])
        elif entry.get("frame") == "binary":
            frames.append(describe_recorded_binary(entry))
    return frames
