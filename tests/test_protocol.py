"""protocol.py against websocket frames and history entries recorded from a real ComfyUI 0.8.0."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.errors import ExecutionFailed, Interrupted, MalformedMessage, OutOfMemory
from comfy_orchestrator.jobs import Output
from comfy_orchestrator.protocol import (
    HISTORY,
    OBJECT_INFO,
    Event,
    ExecutionStarted,
    FeatureFlags,
    NodeExecuted,
    NodeExecuting,
    NodeProgress,
    NodesCached,
    PreviewImage,
    ProgressState,
    ProgressText,
    ProgressTracker,
    PromptFailed,
    PromptInterrupted,
    PromptSucceeded,
    QueueStatus,
    UnknownEvent,
    check_answer,
    outcome_from_history,
    outputs_from_history,
    parse_event,
    sampler_steps,
    track,
)

WS = Path(__file__).parent / "data" / "comfyui-reference" / "ws"
HTTP = Path(__file__).parent / "data" / "comfyui-reference" / "http"


def _binary(record: dict[str, Any]) -> bytes:
    """A recorded binary frame: the saved bytes, or one rebuilt from its header and metadata."""
    if "saved_to" in record and (WS / record["saved_to"]).exists():
        return (WS / record["saved_to"]).read_bytes()
    magic = bytes(record.get("image_magic", []))
    if record["event_type"] == 4:
        meta = json.dumps(record["metadata"]).encode()
        return struct.pack(">II", 4, len(meta)) + meta + magic
    return bytes(record["first8"]) + magic


def frames(name: str) -> list[str | bytes]:
    """Every frame the server sent in a recorded transcript, in order."""
    out: list[str | bytes] = []
    for line in (WS / name).read_text().splitlines():
        record = json.loads(line)
        if record["dir"] != "recv" or record["frame"] == "close":
            continue
        out.append(json.dumps(record["msg"]) if record["frame"] == "text" else _binary(record))
    return out


def events(name: str) -> list[Event]:
    return [parse_event(frame) for frame in frames(name)]


def submitted(name: str) -> list[str]:
    """The prompt ids the recorder's POST /prompt got back, in order."""
    ids = []
    for line in (WS / name).read_text().splitlines():
        record = json.loads(line)
        if record["dir"] == "note" and "prompt_id" in record:
            ids.append(record["prompt_id"])
    return ids


def history(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((HTTP / name).read_text())["body"]
    return body




@pytest.mark.parametrize(("frame", "expected"), [
    ('{"type":"status","data":{"status":{"exec_info":{"queue_remaining":3}},"sid":"abc"}}',
     QueueStatus(None, queue_remaining=3, sid="abc")),
    ('{"type":"status","data":{"status":{"exec_info":{"queue_remaining":0}}}}', QueueStatus(None, 0)),
    ('{"type":"execution_start","data":{"prompt_id":"p","timestamp":5}}', ExecutionStarted("p", 5)),
    ('{"type":"execution_cached","data":{"nodes":["1","2"],"prompt_id":"p","timestamp":5}}',
     NodesCached("p", ("1", "2"))),
    ('{"type":"executing","data":{"node":"6","display_node":"6","prompt_id":"p"}}', NodeExecuting("p", "6", "6")),
    ('{"type":"executing","data":{"node":"6"}}', NodeExecuting(None, "6")),
    ('{"type":"executing","data":{"node":null,"prompt_id":"p"}}', NodeExecuting("p", None)),
    ('{"type":"progress","data":{"value":3,"max":20,"prompt_id":"p","node":"6"}}', NodeProgress("p", "6", 3, 20)),
    ('{"type":"executed","data":{"node":"8","display_node":"8","output":null,"prompt_id":"p"}}',
     NodeExecuted("p", "8", "8", None)),
    ('{"type":"execution_success","data":{"prompt_id":"p","timestamp":9}}', PromptSucceeded("p", 9)),
    ('{"type":"execution_interrupted","data":{"prompt_id":"p","node_id":"6","node_type":"KSampler",'
     '"executed":["4"],"timestamp":1}}', PromptInterrupted("p", "6", "KSampler", ("4",))),
    ('{"type":"crystools.monitor","data":{"cpu":3}}', UnknownEvent(None, "crystools.monitor", {"cpu": 3})),
])
def test_text_frames_become_typed_events(frame: str, expected: Event) -> None:
    assert parse_event(frame) == expected


@pytest.mark.parametrize("frame", [
    "not json", "[1, 2]", '{"data": {}}', '{"type": "status", "data": {"status": "busy"}}',
    '{"type": "progress", "data": {"value": "x", "max": 2}}',
    b"\x00\x00", b"\x00\x00\x00\x04\x00\x00\x10\x00{}", b"\x00\x00\x00\x04\x00\x00\x00\x02[]",
    b"\x00\x00\x00\x01",
])
def test_garbage_frames_raise_malformed_message(frame: str | bytes) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_event(frame)
    assert caught.value.retryable


def test_type1_preview_frame_is_a_jpeg() -> None:
    event = parse_event((WS / "a_preview_frame_type1.bin").read_bytes())
    assert isinstance(event, PreviewImage)
    assert event.media_type == "image/jpeg" and event.prompt_id is None
    assert event.data[:3] == b"\xff\xd8\xff" and len(event.data) == 113758 - 8


def test_type4_preview_frame_carries_its_node_and_prompt() -> None:
    event = parse_event((WS / "a2_preview_frame_type4.bin").read_bytes())
    assert isinstance(event, PreviewImage)
    assert event.node == "6" and event.prompt_id == "fd4dda7d-aa85-488a-be4c-e05a180a32e3"
    assert event.media_type == "image/jpeg" and event.data[:3] == b"\xff\xd8\xff"


def test_preview_pixels_decode() -> None:
    from io import BytesIO

    from PIL import Image
    event = parse_event((WS / "a2_preview_frame_type4.bin").read_bytes())
    assert isinstance(event, PreviewImage)
    with Image.open(BytesIO(event.data)) as image:
        assert image.size == (512, 512)


def test_text_binary_frame_names_its_node() -> None:
    node = b"17"
    frame = struct.pack(">II", 3, len(node)) + node + "512 x 512 ✓".encode()
    assert parse_event(frame) == ProgressText(None, node="17", text="512 x 512 ✓")


@pytest.mark.parametrize(("transcript", "media_type", "prompt_known"), [
    ("l_save_image_websocket_legacy_client.jsonl", "image/png", False),
    ("l_save_image_websocket_feature_flags_client.jsonl", "image/png", True),
])
def test_save_image_websocket_frames_are_pngs_in_either_form(transcript: str, media_type: str,
                                                             prompt_known: bool) -> None:
    images = [e for e in events(transcript) if isinstance(e, PreviewImage) and e.media_type == media_type]
    assert images and all(e.data[:4] == b"\x89PNG" for e in images)
    assert all((e.prompt_id is not None) == prompt_known for e in images)


def test_feature_flags_reply_is_parsed() -> None:
    flags = [e for e in events("connect_feature_flags_handshake.jsonl") if isinstance(e, FeatureFlags)]
    assert flags[0].flags["supports_preview_metadata"] is True


def test_track_follows_a_whole_img2img_run() -> None:
    (prompt_id,) = submitted("a_img2img.jsonl")
    seen = list(track(events("a_img2img.jsonl"), prompt_id))
    steps = [e for e in seen if isinstance(e, NodeProgress)]
    assert [s.value for s in steps] == list(range(1, 21)) and {s.max for s in steps} == {20}
    assert [e.node for e in seen if isinstance(e, NodeExecuting)] == ["1", "4", "5", "3", "2", "6", "7", "8"]
    executed = [e for e in seen if isinstance(e, NodeExecuted)]
    assert executed[0].output == {"images": [{"filename": "ref_a_00001_.png", "subfolder": "", "type": "output"}]}
    assert sum(isinstance(e, PreviewImage) for e in seen) == 20  # type-1 frames follow our prompt
    assert isinstance(seen[-1], PromptSucceeded)


def test_track_stops_at_the_closing_executing_and_reads_no_further() -> None:
    (prompt_id,) = submitted("b2_identical_resubmit.jsonl")
    stream = iter(events("b2_identical_resubmit.jsonl") + [NodeExecuting(prompt_id, "99")])
    seen = list(track(stream, prompt_id))
    assert isinstance(seen[0], ExecutionStarted)
    assert next(stream) == NodeExecuting(prompt_id, "99")


def test_identical_resubmit_is_all_cached_and_reports_the_old_file() -> None:
    (prompt_id,) = submitted("b2_identical_resubmit.jsonl")
    seen = list(track(events("b2_identical_resubmit.jsonl"), prompt_id))
    cached = next(e for e in seen if isinstance(e, NodesCached))
    assert cached.nodes == tuple(str(n) for n in range(1, 9))
    assert not any(isinstance(e, NodeExecuting) for e in seen)
    (executed,) = [e for e in seen if isinstance(e, NodeExecuted)]
    assert executed.output is not None and executed.output["images"][0]["filename"] == "ref_a_00002_.png"


def test_execution_error_raises_with_the_node_and_traceback() -> None:
    (prompt_id,) = submitted("g_execution_error.jsonl")
    with pytest.raises(ExecutionFailed) as caught:
        list(track(events("g_execution_error.jsonl"), prompt_id, server="http://gpu-1"))
    error = caught.value
    assert not isinstance(error, OutOfMemory)
    assert (error.node_id, error.node_type, error.exception_type) == ("9", "ReferenceFailOnImage", "RuntimeError")
    assert "deliberate failure" in error.exception_message and error.traceback
    assert error.server == "http://gpu-1" and not error.retryable


def test_interrupt_raises_interrupted_at_the_sampler() -> None:
    (prompt_id,) = submitted("h_interrupt.jsonl")
    with pytest.raises(Interrupted) as caught:
        list(track(events("h_interrupt.jsonl"), prompt_id))
    assert caught.value.node_id == "6"


@pytest.mark.parametrize(("exception_type", "message", "oom"), [
    ("torch.OutOfMemoryError", "Allocation on device \n", True),
    ("RuntimeError", "CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("RuntimeError", "mat1 and mat2 shapes cannot be multiplied", False),
])
def test_out_of_memory_is_recognised_and_gives_advice(exception_type: str, message: str, oom: bool) -> None:
    failed = PromptFailed("p", node_id="7", node_type="VAEDecode", exception_type=exception_type,
                          exception_message=message)
    error = failed.error(server="s")
    assert isinstance(error, OutOfMemory) is oom
    assert ("tiled" in str(error)) is oom


def test_blocked_node_does_not_end_the_prompt() -> None:
    stream = [ExecutionStarted("p"), PromptFailed("p", "3", "X", "ExecutionBlocked", "blocked"),
              NodeExecuting("p", "4"), NodeExecuting("p", None)]
    assert len(list(track(stream, "p"))) == 3


def test_track_ignores_other_prompts_and_idle_ticks() -> None:
    ids = submitted("i_five_queued_at_once.jsonl")
    assert len(ids) == 5
    stream: list[Event | None] = []
    for event in events("i_five_queued_at_once.jsonl"):
        stream += [None, event]
    seen = list(track(stream, ids[2]))
    assert {e.prompt_id for e in seen} <= {ids[2], None}
    assert sum(isinstance(e, NodeProgress) for e in seen) == 20
    assert not any(isinstance(e, (QueueStatus, FeatureFlags)) for e in seen)


def test_reconnect_form_of_executing_is_attributed_to_the_running_prompt() -> None:
    (prompt_id,) = submitted("k_reconnect_after_same_client_id.jsonl") or ["143d9dd1-6d8c-492f-8bef-7d4794c52c59"]
    stream = [ExecutionStarted(prompt_id)] + events("k_reconnect_after_same_client_id.jsonl")
    seen = list(track(stream, prompt_id))
    assert NodeExecuting(None, "6") in seen
    assert [e.value for e in seen if isinstance(e, NodeProgress)][-1] == 60


def test_prompt_without_client_id_gets_no_closing_message() -> None:
    stream = events("j_prompt_without_client_id_seen_by_other_socket.jsonl")
    assert not any(isinstance(e, NodeExecuting) for e in stream)
    assert any(isinstance(e, NodeProgress) for e in stream)  # broadcast to everyone


def _replay_progress(transcript: str, graph: dict[str, Any]) -> list[float]:
    prompt_id = submitted(transcript)[0]
    tracker = ProgressTracker(graph)
    fractions = [tracker.update(e).fraction for e in track(events(transcript) + [NodeExecuting(prompt_id, None)],
                                                           prompt_id)]
    fractions.append(tracker.update(NodeExecuting(prompt_id, None)).fraction)
    return fractions


IMG2IMG = history("get_history_by_id.json") if HTTP.is_dir() else {}


def test_overall_progress_counts_nodes_and_steps_and_only_rises() -> None:
    graph = next(iter(IMG2IMG.values()))["prompt"][2]
    assert sampler_steps(graph) == {"6": 20}
    fractions = _replay_progress("a_img2img.jsonl", graph)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert 0 < fractions[len(fractions) // 2] < 1


def test_cached_nodes_count_as_done_at_once() -> None:
    graph = next(iter(IMG2IMG.values()))["prompt"][2]
    tracker = ProgressTracker(graph)
    progress = tracker.update(NodesCached("p", ("1", "2", "3", "4", "5")))
    assert progress.done == 5 and progress.total == 8 + 20
    progress = tracker.update(NodeProgress("p", "6", 10, 20))
    assert (progress.done, progress.node, progress.node_value, progress.node_max) == (15, "6", 10, 20)


@pytest.mark.parametrize(("graph", "steps"), [
    ({"3": {"class_type": "KSampler", "inputs": {"steps": 20, "denoise": 0.5}}}, {"3": 20}),
    ({"3": {"class_type": "KSampler", "inputs": {"steps": 20, "denoise": 0}}}, {"3": 0}),
    ({"3": {"class_type": "KSamplerAdvanced", "inputs": {"steps": 30, "start_at_step": 10,
                                                          "end_at_step": 10000}}}, {"3": 20}),
    ({"3": {"class_type": "KSampler", "inputs": {"steps": ["9", 0]}}}, {}),
    ({"6": {"class_type": "KSampler", "inputs": {"steps": 20}},
      "10": {"class_type": "KSampler", "inputs": {"steps": 12}}}, {"6": 20, "10": 12}),
])
def test_sampler_steps_of_every_sampler(graph: dict[str, Any], steps: dict[str, int]) -> None:
    assert sampler_steps(graph) == steps


def test_unknown_step_count_is_learnt_from_progress() -> None:
    tracker = ProgressTracker({"1": {"class_type": "SamplerCustom", "inputs": {}},
                               "2": {"class_type": "SaveImage", "inputs": {}}})
    assert tracker.progress.total == 2
    progress = tracker.update(NodeProgress("p", "1", 1, 8))
    assert progress.total == 10 and progress.done == 1


@pytest.mark.parametrize(("name", "expected"), [
    ("get_history_by_id.json", (Output("8", "ref_a_00001_.png", "", "output", "images"),)),
    ("get_history_execution_error.json", ()),
])
def test_history_entry_gives_its_outputs(name: str, expected: tuple[Output, ...]) -> None:
    (entry,) = history(name).values()
    assert outputs_from_history(entry) == expected


def test_history_outputs_skip_values_that_are_not_files() -> None:
    entry = {"outputs": {"9": {"text": ["hello"], "animated": [False],
                               "gifs": [{"filename": "a.webp", "subfolder": "v", "type": "output"}]}}}
    assert outputs_from_history(entry) == (Output("9", "a.webp", "v", "output", "gifs"),)


def test_history_outcome_reads_the_recorded_failure_and_interrupt() -> None:
    ((failed_id, failed),) = history("get_history_execution_error.json").items()
    outcome = outcome_from_history(failed, failed_id)
    assert outcome.status == "error" and not outcome.completed
    assert outcome.failure is not None and outcome.failure.node_id == "9"
    ((stopped_id, stopped),) = history("get_history_interrupted.json").items()
    outcome = outcome_from_history(stopped, stopped_id)
    assert outcome.interruption is not None and outcome.failure is None
    ((ok_id, ok),) = history("get_history_by_id.json").items()
    outcome = outcome_from_history(ok, ok_id)
    assert (outcome.status, outcome.completed, outcome.failure) == ("success", True, None)


def test_progress_state_holds_the_whole_map() -> None:
    states = [e for e in events("a_img2img.jsonl") if isinstance(e, ProgressState)]
    assert len(states[-1].nodes) >= len(states[0].nodes)


def _generator() -> Iterator[Event | None]:
    yield None
    yield NodeExecuting("p", None)
    raise AssertionError("track read past the end")


def test_track_never_reads_past_the_end() -> None:
    assert list(track(_generator(), "p")) == []


ANSWER_MODELS_AT_FIRST_USE = """
import threading
from comfy_orchestrator import protocol
models = [protocol.QueueAnswer, protocol.HistoryEntry, protocol.SystemStats, protocol.PromptAccepted,
          protocol.PromptRefused, protocol.UploadAnswer, protocol._StatusData, protocol._ProgressData]
print(sum(model.__pydantic_complete__ for model in models))
answers = []
threads = [threading.Thread(target=lambda: answers.append(protocol.check_answer(
    protocol.QueueAnswer, {"queue_running": [[1, "p"]]}, route="GET /queue", server="s").state_of("p")))
    for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(answers.count("running"), protocol.QueueAnswer.__pydantic_complete__)
"""


def test_answer_models_are_built_at_their_first_use_once_across_threads() -> None:
    # a command's start builds none of them; most are first read after its first prompt
    done = subprocess.run([sys.executable, "-c", ANSWER_MODELS_AT_FIRST_USE], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "8", "True"]


def test_a_shape_that_is_not_a_model_is_checked_with_its_field_named() -> None:
    assert check_answer(OBJECT_INFO, {"KSampler": {}}, route="GET /object_info", server="s") == {"KSampler": {}}
    with pytest.raises(MalformedMessage, match=r"GET /object_info answered an unexpected shape: KSampler: "):
        check_answer(OBJECT_INFO, {"KSampler": []}, route="GET /object_info", server="s")
    with pytest.raises(MalformedMessage, match=r"GET /history answered an unexpected shape: p\.status\.completed"):
        check_answer(HISTORY, {"p": {"status": {"completed": "maybe"}}}, route="GET /history", server="s")
