"""Replay the exchanges recorded from a real ComfyUI 0.8 and compare every answer and message by shape.

Against the simulated server by default; against a real ComfyUI when COMFY_URL is set (`-m live`).
What may differ is listed here and nowhere else: VOLATILE_KEYS in transcripts.py (ids, clocks,
counters, hashes, tracebacks) plus the per-case keys below. Previews are compared by frame type,
image type, metadata and JPEG magic, not by their pixels or byte length.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from transcripts import (
    TIMEOUT_S,
    Listener,
    compare,
    load_http,
    load_ws,
    recorded_frames,
    replay_request,
    upload_inputs,
)

from comfy_orchestrator.sim import Costs, SimServer

LIVE_URL = os.environ.get("COMFY_URL", "").rstrip("/")
pytestmark = [pytest.mark.live] if LIVE_URL else []

# What the machine, not the protocol, decides.
MACHINE_KEYS = ("ram_total", "ram_free", "python_version", "pytorch_version", "argv", "name", "vram_total",
                "vram_free", "torch_vram_total", "torch_vram_free", "installed_templates_version")
# A real server keeps earlier outputs, so counters in file names differ there.
LIVE_KEYS = ("filename",) if LIVE_URL else ()

HTTP_CASES = {
    "get_features": (), "get_embeddings": (), "get_extensions": (), "get_models": (),
    "get_models_checkpoints": (), "get_models_unknown_folder": (), "get_object_info_unknown": (),
    "get_object_info_KSampler": (), "get_object_info_CheckpointLoaderSimple": (), "get_prompt_idle": (),
    "get_queue_idle": (), "get_history_unknown_id": (), "get_jobs_without_api_prefix": (),
    "get_api_jobs_unknown": (), "get_api_jobs_bad_status": (), "get_system_stats": MACHINE_KEYS,
    "get_system_stats_foreign_origin": (), "get_view_no_filename": (), "get_view_path_traversal": (),
    "get_view_subfolder_traversal": (), "get_view_missing_file": (), "post_interrupt_idle_nobody": (),
    "post_free_empty_body_object": (), "post_api_prompt_unknown_class": (), "get_root": ("body_text",),
    "post_prompt_400_bad_link_shape": (), "post_prompt_400_bad_sampler_name": (),
    "post_prompt_400_denoise_over_max": (), "post_prompt_400_link_bad_output_index": (),
    "post_prompt_400_link_to_missing_node": (), "post_prompt_400_link_type_mismatch": (),
    "post_prompt_400_loadimage_missing_file": (), "post_prompt_400_missing_required_input": (),
    "post_prompt_400_no_output_node": (), "post_prompt_400_no_prompt_key": (),
    "post_prompt_400_node_without_class_type": (), "post_prompt_400_steps_under_min": (),
    "post_prompt_400_three_errors_one_node": (), "post_prompt_400_unknown_checkpoint": (),
    "post_prompt_400_unknown_class_type": (), "post_prompt_400_value_not_convertible": (),
    "post_prompt_403_foreign_origin": (), "post_prompt_malformed_json": (), "post_prompt_empty_body": (),
    "post_prompt_trailing_slash": (),
}

# The recorded session, in order: each prompt finds the cache its predecessor left.
# (transcript, POST bodies in order, keys that may differ)
CHAIN: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("a_img2img", ["post_prompt_valid_a"], ()),
    ("b_cfg_changed", ["post_prompt_b_cfg_changed"], ()),
    ("b2_identical_resubmit", ["post_prompt_b2_identical_resubmit"], ()),
    ("a2_img2img_feature_flags_preview_metadata", ["post_prompt_a2_img2img_feature_flags_preview_metadata"], ()),
    ("c_hires_fix", ["post_prompt_c_hires_fix"], ()),
    ("d_variations_repeat_latent_batch", ["post_prompt_d_variations_repeat_latent_batch"], ()),
    ("e_imagescale_lanczos_w0_vaeencodetiled", ["post_prompt_e_imagescale_lanczos_w0_vaeencodetiled"], ()),
    ("f_latent_blend", ["post_prompt_f_latent_blend"], ()),
    # the tensor text in current_inputs is torch's repr; current_outputs is a set on the real server
    ("g_execution_error", ["post_prompt_g_execution_error"], ("current_inputs",)),
    ("h_interrupt", ["post_prompt_h_interrupt"], ()),
    ("h2_targeted_interrupt", ["post_prompt_h_interrupt+seed"], ()),
    ("j_prompt_without_client_id_seen_by_other_socket", ["post_prompt_j_without_client_id"], ()),
    # SaveImageWebsocket: full-size PNG frames as type 1 (format 2) to a legacy socket, as type 4 otherwise
    ("l_save_image_websocket_legacy_client", ["post_prompt_l_save_image_websocket_legacy_client"], ()),
    ("l_save_image_websocket_feature_flags_client", ["post_prompt_l_save_image_websocket_feature_flags_client"],
     ()),
]
CONNECT_CASES = ["connect_api_ws_alias", "connect_feature_flags_handshake", "connect_no_client_id"]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The server under test: a fresh simulated one, or COMFY_URL."""
    if LIVE_URL:
        upload_inputs(LIVE_URL)
        yield LIVE_URL
        return
    # sampler steps take a little time so that an interrupt lands mid-sampling, as on the GPU
    # the recording server had one checkpoint file
    # it ran with --preview-method latent2rgb (ComfyUI's default is none)
    with SimServer(costs=Costs(step_s=0.03), checkpoints=["random-sd15.safetensors"],
                   preview_method="latent2rgb") as server:
        upload_inputs(server.url)
        yield server.url


@pytest.mark.parametrize("name", list(HTTP_CASES))
def test_http_answer_matches_recording(base_url: str, name: str) -> None:
    recorded = load_http(name)
    response = replay_request(base_url, recorded["request"])
    assert response.status_code == recorded["status"], response.text[:300]
    assert response.headers.get("Content-Type") == recorded["headers"].get("Content-Type")
    volatile = HTTP_CASES[name]
    if "body" in recorded and recorded["body"] is not None:
        # the real server checks a node's inputs in set order, so their errors come in any order
        differences = compare(recorded["body"], response.json(), volatile=volatile, unordered=("errors",))
        assert differences == []
    elif "body_text" in recorded and "body_text" not in volatile:
        assert response.text == recorded["body_text"]


def _body(name: str) -> dict[str, Any]:
    if name.endswith("+seed"):  # h2 was the h prompt with another seed; its body was not stored
        body = copy.deepcopy(load_http(name[: -len("+seed")])["request"]["body"])
        body["prompt"]["6"]["inputs"]["seed"] += 1
        body["client_id"] = "ref-h2-189a0f3e"
        return body
    body: dict[str, Any] = load_http(name)["request"]["body"]
    return body


def _interrupt_body(note: str) -> dict[str, Any] | None:
    if "prompt_id=<running>" in note:
        return {"prompt_id": "<running>"}
    if "prompt_id=" in note:
        return {"prompt_id": note.split("prompt_id=", 1)[1].split(" ", 1)[0]}
    return None


def replay_transcript(base_url: str, transcript: list[dict[str, Any]], bodies: list[dict[str, Any]]) -> list[Any]:
    """Drive the server as the recorder did, then return every frame the socket received."""
    listener: Listener | None = None
    sent_prompt_ids: list[str] = []
    received_so_far = 0
    try:
        for entry in transcript:
            if entry["dir"] == "recv":
                received_so_far += entry.get("frame") in ("text", "binary")  # not the close at the end
                continue
            if entry["dir"] == "send":
                assert listener is not None
                listener.send(entry["msg"])
                continue
            note = entry["note"]
            if note.startswith("connected "):
                path = note.split(" ", 1)[1]
                listener = Listener(base_url.replace("http", "ws", 1) + path)
            elif note.startswith("POST /prompt"):
                response = requests.post(f"{base_url}/prompt", json=bodies[len(sent_prompt_ids)], timeout=TIMEOUT_S)
                assert response.status_code == 200, response.text
                sent_prompt_ids.append(response.json()["prompt_id"])
            elif note.startswith("POST /interrupt"):
                assert listener is not None
                assert listener.wait_count(received_so_far)
                body = _interrupt_body(note)
                if body is not None and body["prompt_id"] == "<running>":
                    body["prompt_id"] = sent_prompt_ids[-1]
                requests.post(f"{base_url}/interrupt", data=None if body is None else json.dumps(body),
                              timeout=TIMEOUT_S)
        assert listener is not None
        listener.wait_count(received_so_far)
        if sent_prompt_ids:
            finished = requests.get(f"{base_url}/history/{sent_prompt_ids[-1]}", timeout=TIMEOUT_S).json()
            assert finished or listener.wait_count(received_so_far), "the prompt did not finish"
        return list(listener.frames)
    finally:
        if listener is not None:
            listener.close()


@pytest.mark.parametrize("name", CONNECT_CASES)
def test_connect_matches_recording(base_url: str, name: str) -> None:
    transcript = load_ws(name)
    frames = replay_transcript(base_url, transcript, [])
    assert compare(recorded_frames(transcript), frames) == []


@pytest.mark.parametrize(("name", "posts", "volatile"), CHAIN, ids=[case[0] for case in CHAIN])
def test_prompt_run_matches_recording(base_url: str, name: str, posts: list[str], volatile: tuple[str, ...]) -> None:
    transcript = load_ws(name)
    frames = replay_transcript(base_url, transcript, [_body(post) for post in posts])
    recorded = recorded_frames(transcript)
    recorded_types = [frame.get("type", frame.get("event_type")) for frame in recorded]
    actual_types = [frame.get("type", frame.get("event_type")) for frame in frames]
    assert actual_types == recorded_types
    assert compare(recorded, frames, volatile=volatile + LIVE_KEYS, unordered=("current_outputs",)) == []
