"""Listener: what the websocket reader hands each prompt, over a scripted socket and the simulated server."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
import websocket

from comfy_orchestrator.client import Client
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Limits, Timeouts
from comfy_orchestrator.listener import Disconnected, FrameTooLarge, Listener, _BufferedFrames
from comfy_orchestrator.protocol import (
    Event,
    NodeExecuting,
    NodeProgress,
    ProgressState,
)
from comfy_orchestrator.retry import RetryPolicy

GREETING = json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "s1"}})


class ScriptedSocket:
    """A websocket that plays given frames, then waits until it is closed."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames = list(frames)
        self.closed = threading.Event()

    def send(self, payload: str) -> None:
        pass

    def recv_data(self) -> tuple[int, bytes]:
        if self.frames:
            return self.frames.pop(0)
        self.closed.wait()
        return websocket.ABNF.OPCODE_CLOSE, b""

    def send_close(self) -> None:
        self.closed.set()

    def abort(self) -> None:
        self.closed.set()

    def shutdown(self) -> None:
        self.closed.set()

    def settimeout(self, timeout: float | None) -> None:
        pass


def _scripted_listener(connect: Callable[..., Any]) -> Listener:
    """A listener on scripted sockets, one that waits long before reconnecting (so a test sees one socket)."""
    return Listener(server="scripted", url="ws://scripted/ws", headers={}, connect=connect,
                    timeouts=Timeouts(read_s=5), retry=RetryPolicy(first_delay_s=30), keep_previews=False,
                    name="test-listener")


def test_invalid_utf8_in_a_text_frame_closes_the_socket() -> None:
    # websocket-client's own UTF-8 check is off (it was the reader's largest cost); ours must still refuse
    sockets = [ScriptedSocket([(websocket.ABNF.OPCODE_TEXT, GREETING.encode()),
                               (websocket.ABNF.OPCODE_TEXT, b'{"type": "status", "data": "\xff\xfe"}')])]

    def connect(url: str, headers: Any, timeout_s: float) -> ScriptedSocket:
        if not sockets:
            raise ConnectionRefusedError("no more sockets")
        return sockets.pop(0)

    listener = _scripted_listener(connect)
    events = listener.subscribe("p1")
    listener.start()
    try:
        assert isinstance(events.get(timeout=10), Disconnected)
    finally:
        listener.stop()


def _drain(events: queue.SimpleQueue[Event], prompt_id: str) -> list[Event]:
    seen = []
    while True:
        event = events.get(timeout=10)
        seen.append(event)
        if isinstance(event, NodeExecuting) and event.node is None and event.prompt_id == prompt_id:
            return seen


def _post(client: Client, job: Job, seeds: dict[str, int]) -> None:
    """Queue the job under each prompt id with its seed, past the client (so its listener only listens)."""
    for prompt_id, seed in seeds.items():
        prompt = job.graph.to_api()
        prompt["6"]["inputs"]["seed"] = seed
        answer = requests.post(f"{client.url}/prompt", timeout=10, json={
            "prompt": prompt, "client_id": client.client_id, "prompt_id": prompt_id})
        assert answer.status_code == 200, answer.text


def test_progress_state_goes_only_to_prompts_that_read_every_event(client: Client, img2img_job: Job) -> None:
    client.run(img2img_job)  # uploads the input; starts the listener
    quiet_id, full_id = str(uuid.uuid4()), str(uuid.uuid4())
    quiet = client.listener.subscribe(quiet_id, every_event=False)
    full = client.listener.subscribe(full_id)
    _post(client, img2img_job, {quiet_id: 101, full_id: 102})
    quiet_events, full_events = _drain(quiet, quiet_id), _drain(full, full_id)
    assert not any(isinstance(e, ProgressState) for e in quiet_events)
    assert any(isinstance(e, NodeProgress) for e in quiet_events)  # the progress itself still arrives
    assert any(isinstance(e, ProgressState) and e.prompt_id == full_id for e in full_events)


def test_progress_state_reaches_on_event_and_a_submitted_handle(client: Client, img2img_job: Job) -> None:
    heard: list[Event] = []
    client.run(img2img_job, on_event=heard.append)
    assert any(isinstance(e, ProgressState) for e in heard)
    prompt = img2img_job.graph.to_api()
    prompt["6"]["inputs"]["seed"] = 5
    handle = client.submit(Job(graph=type(img2img_job.graph).from_api(prompt), inputs=img2img_job.inputs))
    assert any(isinstance(e, ProgressState) for e in handle.events())


def _status(remaining: int) -> tuple[int, bytes]:
    return websocket.ABNF.OPCODE_TEXT, json.dumps(
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}).encode()


def _message(kind: str, prompt_id: str) -> tuple[int, bytes]:
    return websocket.ABNF.OPCODE_TEXT, json.dumps({"type": kind, "data": {"prompt_id": prompt_id}}).encode()


def test_only_a_queue_shrinking_no_end_explains_is_announced() -> None:
    greeting = json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 3}},
                                                      "sid": "s1"}}).encode()
    frames = [(websocket.ABNF.OPCODE_TEXT, greeting),
              _message("execution_success", "a"), _status(2),  # a ended: explained
              _status(3),  # one more queued
              _message("execution_error", "b"), _status(1),  # b ended, and one more left unseen: announced
              _message("execution_interrupted", "c"), _status(0),  # explained
              _message("execution_success", "mine")]  # marks the end of the script
    socket = ScriptedSocket(frames)
    listener = _scripted_listener(lambda *_: socket)
    events = listener.subscribe("mine")
    listener.start()
    try:
        seen = []
        while not seen or seen[-1].prompt_id != "mine":
            seen.append(events.get(timeout=10))
    finally:
        listener.stop()
    assert [type(e).__name__ for e in seen] == ["QueueShrank", "PromptSucceeded"]


def test_steps_go_only_to_prompts_that_follow_them(client: Client, img2img_job: Job) -> None:
    client.run(img2img_job)  # uploads the input; starts the listener
    ends_id, steps_id = str(uuid.uuid4()), str(uuid.uuid4())
    ends = client.listener.subscribe(ends_id, every_event=False, steps=False)
    steps = client.listener.subscribe(steps_id, every_event=False)
    _post(client, img2img_job, {ends_id: 201, steps_id: 202})
    ends_events, steps_events = _drain(ends, ends_id), _drain(steps, steps_id)
    mine = [type(e).__name__ for e in ends_events if e.prompt_id == ends_id]
    assert mine == ["ExecutionStarted", "NodesCached", "PromptSucceeded", "NodeExecuting"]  # start, end, closing
    assert {"NodeProgress", "NodeExecuted"} <= {type(e).__name__ for e in steps_events if e.prompt_id == steps_id}
    assert any(isinstance(e, NodeExecuting) and e.node is not None for e in steps_events)


def test_step_frames_nobody_follows_are_dropped_unparsed(caplog: pytest.LogCaptureFixture) -> None:
    garbage = b'{"type": "progress", "data": {"value": -1, "max": "many", "prompt_id": "p1"}}'
    frames = [(websocket.ABNF.OPCODE_TEXT, GREETING.encode()), (websocket.ABNF.OPCODE_TEXT, garbage),
              _message("execution_start", "p1"), (websocket.ABNF.OPCODE_TEXT, garbage),
              _message("execution_success", "p1")]
    socket = ScriptedSocket(frames)
    listener = _scripted_listener(lambda *_: socket)
    events = listener.subscribe("p1", every_event=False, steps=False)
    listener.start()
    try:
        seen = [events.get(timeout=10), events.get(timeout=10)]
    finally:
        listener.stop()
    assert [type(e).__name__ for e in seen] == ["ExecutionStarted", "PromptSucceeded"]
    assert "malformed" not in caplog.text  # never parsed; with a step reader it is (and reported)
    socket = ScriptedSocket(frames)
    listener = _scripted_listener(lambda *_: socket)
    events = listener.subscribe("p1", every_event=False)
    listener.start()
    try:
        events.get(timeout=10)
        events.get(timeout=10)
    finally:
        listener.stop()
    assert "progress message is malformed" in caplog.text


def _server_frame(opcode: int, payload: bytes) -> bytes:
    """A frame as a server sends it: unmasked."""
    return websocket.ABNF(1, 0, 0, 0, opcode, 0, payload).format()


@pytest.mark.parametrize("piece_bytes", [1, 3, 70_000])
def test_buffered_frames_read_frames_whole_whatever_the_pieces(piece_bytes: int) -> None:
    payloads = [b"{}", b"x" * 125, b"y" * 126, b"z" * 70_000, b"last"]
    stream = bytearray(b"".join(_server_frame(websocket.ABNF.OPCODE_TEXT, payload) for payload in payloads))
    asked = []

    def recv(size: int) -> bytes:
        asked.append(size)
        piece = bytes(stream[:min(size, piece_bytes)])
        del stream[:len(piece)]
        return piece

    frames = _BufferedFrames(recv, True, Limits().websocket_frame_bytes)
    assert [frames.recv_frame().data for _ in payloads] == payloads
    assert not stream and min(asked) >= 1 << 16  # never a read of a few bytes at a time


def test_buffered_frames_refuse_an_announced_size_past_the_limit() -> None:
    stream = bytearray(_server_frame(websocket.ABNF.OPCODE_BINARY, b"b" * 5000))

    def recv(size: int) -> bytes:
        piece = bytes(stream[:size])
        del stream[:len(piece)]
        return piece

    with pytest.raises(FrameTooLarge, match="over the limit of 4 KiB"):
        _BufferedFrames(recv, True, 4096).recv_frame()
