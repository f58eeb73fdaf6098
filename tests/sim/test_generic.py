"""Every node class the sim advertises runs: the faithful few, and any other one through sim.generic."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from test_server import img2img, output_pixels, run, types
from transcripts import TIMEOUT_S, Listener, reference_inputs

from comfy_orchestrator.schema import Schema
from comfy_orchestrator.sim import SimServer, generic


@pytest.fixture
def server(sim: Any) -> SimServer:
    started: SimServer = sim(1)[0]
    for name, data in reference_inputs().items():
        started.add_input(name, data)
    return started


def test_every_advertised_node_has_outputs_of_its_declared_types() -> None:
    schema = Schema.recorded()
    wrong = []
    for class_type in schema:
        node = schema[class_type]
        outputs = generic.simulate(node, {}).outputs
        if len(outputs) != len(node.outputs):
            wrong.append(f"{class_type}: {len(outputs)} outputs, not {len(node.outputs)}")
        for kind, value in zip(node.outputs, outputs):
            if not _has_type(kind, value):
                wrong.append(f"{class_type}: {value!r} is no {kind}")
    assert len(schema) > 500 and wrong == []


def _has_type(kind: Any, value: Any) -> bool:
    """Whether `value` has the shape ComfyUI gives `kind`."""
    if kind == "IMAGE":
        return bool(value.dtype == np.float32 and value.ndim == 4 and value.shape[-1] == 3)
    if kind == "LATENT":
        return bool(value["samples"].shape[1] == 4 and value["pixels"].shape[1] == value["samples"].shape[2] * 8)
    if kind == "MASK":
        return bool(value.ndim == 3)
    if kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        return isinstance(value, {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}[kind])
    if kind == "CONDITIONING":
        return isinstance(value, list) and isinstance(value[0][1], dict)
    return value is not None


def test_generic_outputs_depend_on_the_inputs_and_nothing_else() -> None:
    node = Schema.recorded()["ImageBlur"]
    picture = np.full((1, 16, 16, 3), 0.5, dtype=np.float32)
    first = generic.simulate(node, {"image": picture, "blur_radius": 1, "sigma": 1.0}).outputs[0]
    again = generic.simulate(node, {"image": picture.copy(), "blur_radius": 1, "sigma": 1.0}).outputs[0]
    other = generic.simulate(node, {"image": picture, "blur_radius": 2, "sigma": 1.0}).outputs[0]
    assert first.shape == picture.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_image_invert_and_a_generic_node_run_in_a_prompt(server: SimServer) -> None:
    _, base = run(server, img2img())
    inverted = img2img()
    inverted["9"] = {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}}
    inverted["8"]["inputs"]["images"] = ["9", 0]
    frames, entry = run(server, inverted)
    assert "execution_error" not in types(frames)
    assert np.abs(output_pixels(server, entry) - (255.0 - output_pixels(server, base))).max() <= 1.0
    blurred = img2img()
    blurred["9"] = {"class_type": "ImageBlur", "inputs": {"image": ["7", 0], "blur_radius": 3, "sigma": 1.0}}
    blurred["10"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "eps",
                                                                       "zsnr": False}}
    blurred["6"]["inputs"]["model"] = ["10", 0]
    blurred["8"]["inputs"]["images"] = ["9", 0]
    frames, entry = run(server, blurred)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert {"9", "10"} <= {f["data"]["node"] for f in frames if f.get("type") == "executing" and f["data"]["node"]}
    assert output_pixels(server, entry).shape == output_pixels(server, base).shape


def test_empty_image_has_the_asked_colour(server: SimServer) -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 2,
                                                           "color": 0x336699}},
              "8": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "empty"}}}
    _, entry = run(server, prompt)
    saved = entry["outputs"]["8"]["images"]
    assert len(saved) == 2
    pixels = output_pixels(server, entry)
    assert pixels.shape == (24, 40, 3)
    assert tuple(pixels[0, 0]) == (0x33, 0x66, 0x99)


@pytest.mark.parametrize("feature_flags", [False, True], ids=["legacy", "preview-metadata"])
def test_save_image_websocket_sends_the_saved_pictures(server: SimServer, feature_flags: bool) -> None:
    prompt = img2img()
    prompt["9"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["7", 0]}}
    listener = Listener(f"{server.ws_url}?clientId=ws-images")
    try:
        if feature_flags:
            listener.send({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            assert listener.wait(lambda frames: any(f.get("type") == "feature_flags" for f in frames))
        answer = requests.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": "ws-images"},
                               timeout=TIMEOUT_S).json()
        assert listener.wait(lambda frames: any(f.get("type") == "executing" and f["data"]["node"] is None
                                                for f in frames))
        frames, pictures = list(listener.frames), list(listener.binary)
    finally:
        listener.close()
    entry = server.history[answer["prompt_id"]]
    assert "9" not in entry["outputs"]  # nothing saved, nothing in history
    assert [f["data"]["value"] for f in frames if f.get("type") == "progress" and f["data"]["node"] == "9"] == [0]
    (frame,) = pictures
    if feature_flags:
        event, length = struct.unpack(">II", frame[:8])
        assert event == 4 and b'"image_type": "image/png"' in frame[8:8 + length]
        png = frame[8 + length:]
    else:
        assert struct.unpack(">II", frame[:8]) == (1, 2)  # PREVIEW_IMAGE, PNG
        png = frame[8:]
    sent = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    assert np.array_equal(sent, output_pixels(server, entry))  # full size, the same pixels SaveImage wrote


def test_save_image_websocket_is_never_cached(server: SimServer) -> None:
    prompt = img2img()
    prompt["8"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["7", 0]}}
    run(server, prompt)
    frames, _ = run(server, prompt)
    cached = next(f for f in frames if f.get("type") == "execution_cached")["data"]["nodes"]
    assert "8" not in cached and "7" in cached


def test_preview_image_writes_to_temp(server: SimServer) -> None:
    prompt = img2img()
    prompt["8"] = {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}
    _, entry = run(server, prompt)
    (image,) = entry["outputs"]["8"]["images"]
    assert image["type"] == "temp" and (server.temp_dir / image["subfolder"] / image["filename"]).is_file()
    assert not any(server.output_dir.iterdir())
