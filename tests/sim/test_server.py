"""The simulated server's behaviour: pictures, caching, queue order, costs counters, and every fault."""

from __future__ import annotations

import copy
import io
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from transcripts import REFERENCE, TIMEOUT_S, Listener, reference_inputs

from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.sim import Costs, SimServer

StartSims = Callable[..., list[SimServer]]


def img2img(**changes: Any) -> dict[str, Any]:
    """The recording's prompt (a), with KSampler inputs changed."""
    body = json.loads((REFERENCE / "http" / "post_prompt_valid_a.json").read_text("utf-8"))["request"]["body"]
    prompt = copy.deepcopy(body["prompt"])
    prompt["6"]["inputs"].update(changes)
    return prompt


@pytest.fixture
def server(sim: StartSims) -> SimServer:
    started = sim(1)[0]
    for name, data in reference_inputs().items():
        started.add_input(name, data)
    return started


def submit(server: SimServer, prompt: dict[str, Any], client_id: str = "tester", **extra: Any) -> str:
    response = requests.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id, **extra},
                             timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


def finished(prompt_id: str) -> Callable[[list[Any]], bool]:
    return lambda frames: any(f.get("type") == "executing" and f["data"]["node"] is None
                              and f["data"].get("prompt_id") == prompt_id for f in frames)


def run(server: SimServer, prompt: dict[str, Any], client_id: str = "tester") -> tuple[list[Any], dict[str, Any]]:
    """Run a prompt to its end; return the frames the submitter saw and its history entry."""
    listener = Listener(f"{server.ws_url}?clientId={client_id}")
    try:
        prompt_id = submit(server, prompt, client_id)
        assert listener.wait(finished(prompt_id))
        frames = list(listener.frames)
    finally:
        listener.close()
    return frames, server.history[prompt_id]


def output_pixels(server: SimServer, entry: dict[str, Any]) -> np.ndarray:
    image = entry["outputs"]["8"]["images"][0]
    response = requests.get(f"{server.url}/view", params=image, timeout=TIMEOUT_S)
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.float32)


def types(frames: list[Any]) -> list[str]:
    return [f.get("type", f"binary{f.get('event_type')}") for f in frames]


@pytest.mark.parametrize("change", [{"seed": 7}, {"denoise": 0.9}, {"cfg": 3.0}])
def test_pictures_follow_seed_denoise_and_cfg(server: SimServer, change: dict[str, Any]) -> None:
    _, base = run(server, img2img())
    _, changed = run(server, img2img(**change))
    difference = np.abs(output_pixels(server, base) - output_pixels(server, changed)).mean()
    assert difference > 2.0  # visibly different, in 0..255 levels


def test_pictures_follow_the_input_image(server: SimServer) -> None:
    _, first = run(server, img2img())
    prompt = img2img()
    prompt["4"]["inputs"]["image"] = "ref_input_b.png"
    _, second = run(server, prompt)
    assert np.abs(output_pixels(server, first) - output_pixels(server, second)).mean() > 2.0


def test_same_prompt_gives_same_pixels_after_the_cache_is_freed(server: SimServer) -> None:
    _, first = run(server, img2img(seed=11))
    requests.post(f"{server.url}/free", json={"unload_models": True, "free_memory": True}, timeout=TIMEOUT_S)
    frames, second = run(server, img2img(seed=11))
    cached = next(f for f in frames if f.get("type") == "execution_cached")
    assert cached["data"]["nodes"] == []
    assert first["outputs"]["8"]["images"][0]["filename"] == "ref_a_00001_.png"
    assert second["outputs"]["8"]["images"][0]["filename"] == "ref_a_00002_.png"
    assert np.array_equal(output_pixels(server, first), output_pixels(server, second))


def test_saved_png_carries_the_prompt_chunk(server: SimServer) -> None:
    _, entry = run(server, img2img())
    name = entry["outputs"]["8"]["images"][0]["filename"]
    with Image.open(server.output_dir / name) as picture:
        chunk = json.loads(picture.text["prompt"])
    assert chunk["6"]["inputs"]["seed"] == 1001
    assert len(chunk["4"]["is_changed"][0]) == 64  # LoadImage carries its file hash, as on the real server


def test_cache_reuses_unchanged_nodes_and_counts_executions(server: SimServer) -> None:
    run(server, img2img())
    frames, _ = run(server, img2img(cfg=5.0))
    cached = next(f for f in frames if f.get("type") == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2", "3", "4", "5"]
    assert server.counters.node_executions["KSampler"] == 2
    assert server.counters.node_executions["CheckpointLoaderSimple"] == 1
    assert server.counters.checkpoint_loads == 1


def test_switching_checkpoints_loads_each_time(sim: StartSims) -> None:
    server = sim(1, checkpoints=["one.safetensors", "two.safetensors"])[0]
    server.add_input("ref_input_a.png", reference_inputs()["ref_input_a.png"])
    for name in ("one.safetensors", "two.safetensors", "one.safetensors"):
        prompt = img2img()
        prompt["1"]["inputs"]["ckpt_name"] = name
        run(server, prompt)
    assert server.counters.checkpoint_loads == 3
    assert server.loaded_checkpoint == "one.safetensors"


def test_queue_runs_front_and_numbered_prompts_first(sim: StartSims) -> None:
    server = sim(1, costs=Costs(step_s=0.02))[0]
    server.add_input("ref_input_a.png", reference_inputs()["ref_input_a.png"])
    listener = Listener(f"{server.ws_url}?clientId=tester")
    try:
        blocker = submit(server, img2img(steps=10000))
        assert listener.wait(lambda frames: any(f.get("type") == "progress" for f in frames))
        normal = submit(server, img2img(seed=1))
        front = submit(server, img2img(seed=2), front=True)
        numbered = submit(server, img2img(seed=3), number=-100)
        pending = requests.get(f"{server.url}/queue", timeout=TIMEOUT_S).json()["queue_pending"]
        assert sorted(item[1] for item in pending) == sorted([normal, front, numbered])
        requests.post(f"{server.url}/interrupt", json={"prompt_id": blocker}, timeout=TIMEOUT_S)
        assert listener.wait(finished(normal))
    finally:
        listener.close()
    assert list(server.history) == [blocker, numbered, front, normal]
    assert server.history[blocker]["status"]["status_str"] == "error"


# -- previews

def _previews(server: SimServer, prompt: dict[str, Any], **extra: Any) -> list[bytes]:
    """The binary frames a legacy submitter gets while `prompt` runs."""
    listener = Listener(f"{server.ws_url}?clientId=previews")
    try:
        prompt_id = submit(server, prompt, "previews", **extra)
        assert listener.wait(finished(prompt_id))
        return list(listener.binary)
    finally:
        listener.close()


def test_no_previews_unless_asked_as_comfyui_defaults(server: SimServer) -> None:
    frames, entry = run(server, img2img(steps=3))
    assert [f["data"]["value"] for f in frames if f.get("type") == "progress"] == [1, 2, 3]
    assert not any("event_type" in f for f in frames)
    assert entry["status"]["status_str"] == "success"
    assert len(_previews(server, img2img(steps=2, seed=5), extra_data={"preview_method": "latent2rgb"})) == 2


@pytest.mark.parametrize(("method", "size"), [("latent2rgb", 512), ("auto", 512), ("taesd", 512), ("latent2rgb", 200)])
def test_previews_are_jpegs_fitted_to_the_preview_size(sim: StartSims, method: str, size: int) -> None:
    server = sim(1, preview_method=method, preview_size=size)[0]
    for name, data in reference_inputs().items():
        server.add_input(name, data)
    frames = _previews(server, img2img(steps=2))
    assert len(frames) == 2 and all(frame[:8] == b"\0\0\0\1\0\0\0\1" for frame in frames)
    assert Image.open(io.BytesIO(frames[-1][8:])).size == (size, size)  # the 512 px input, as ComfyUI fits it
    assert _previews(server, img2img(steps=2, seed=9), extra_data={"preview_method": "none"}) == []


def test_latent2rgb_previews_are_latent_sized_taesd_ones_sharp(sim: StartSims) -> None:
    sharpness = {}
    for method in ("latent2rgb", "taesd"):
        server = sim(1, preview_method=method)[0]
        server.add_input("ref_input_a.png", reference_inputs()["ref_input_a.png"])
        picture = np.asarray(Image.open(io.BytesIO(_previews(server, img2img(steps=1))[0][8:])).convert("L"),
                             dtype=np.float32)
        sharpness[method] = float(np.abs(np.diff(picture, axis=1)).max())  # the input's one-pixel dots
    assert sharpness["taesd"] > 3 * sharpness["latent2rgb"], sharpness


def test_unknown_preview_method_is_refused() -> None:
    with pytest.raises(ParameterError, match="latent2rgb"):
        SimServer(preview_method="fast")


# -- faults

def test_close_websocket_after_n_messages(server: SimServer) -> None:
    server.faults.close_websocket_after(3)
    listener = Listener(f"{server.ws_url}?clientId=tester")
    try:
        submit(server, img2img())
        assert listener.wait(lambda frames: False, TIMEOUT_S) is False
        assert listener.closed
        assert len(listener.frames) == 3
    finally:
        listener.close()


def test_silent_websocket_stays_open_but_says_nothing(server: SimServer) -> None:
    server.faults.silence_websocket_after(2)
    listener = Listener(f"{server.ws_url}?clientId=tester")
    try:
        prompt_id = submit(server, img2img())
        assert server.wait_idle(TIMEOUT_S)
        assert prompt_id in server.history
        assert len(listener.frames) == 2 and not listener.closed
    finally:
        listener.close()


def test_held_queue_starts_nothing_until_released(server: SimServer) -> None:
    server.faults.hold_queue()
    listener = Listener(f"{server.ws_url}?clientId=tester")
    try:
        prompt_id = submit(server, img2img())
        queued = requests.get(f"{server.url}/queue", timeout=TIMEOUT_S).json()
        assert [item[1] for item in queued["queue_pending"]] == [prompt_id] and queued["queue_running"] == []
        assert not any(f.get("type") == "execution_start" for f in listener.frames)
        server.faults.release_queue()
        assert listener.wait(finished(prompt_id))
    finally:
        listener.close()
    assert server.history[prompt_id]["status"]["status_str"] == "success"


def test_failing_route_answers_500_then_recovers(server: SimServer) -> None:
    server.faults.fail_route("/history", times=2)
    answers = [requests.get(f"{server.url}/api/history", timeout=TIMEOUT_S) for _ in range(3)]
    assert [a.status_code for a in answers] == [500, 500, 200]
    assert answers[0].text == "500 Internal Server Error\n\nServer got itself in trouble"


def test_hanging_route_never_answers_until_cleared(server: SimServer) -> None:
    server.faults.hang_route("/queue")
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{server.url}/queue", timeout=0.3)
    server.faults.clear()
    assert requests.get(f"{server.url}/queue", timeout=TIMEOUT_S).status_code == 200


def test_refused_connections_come_back(server: SimServer) -> None:
    server.faults.refuse_connections()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/prompt", timeout=TIMEOUT_S)
    server.faults.accept_connections()
    assert requests.get(f"{server.url}/prompt", timeout=TIMEOUT_S).status_code == 200


def test_crash_mid_prompt_loses_everything_and_restarts_on_the_same_port(server: SimServer) -> None:
    run(server, img2img())
    server.faults.crash_on("KSampler", step=3)
    listener = Listener(f"{server.ws_url}?clientId=tester")
    try:
        submit(server, img2img(seed=5))
        assert server.crashed.wait(TIMEOUT_S)
        assert listener.wait(lambda frames: False, TIMEOUT_S) is False and listener.closed
        progress = [f["data"]["value"] for f in listener.frames if f.get("type") == "progress"]
        assert progress == [1, 2]
    finally:
        listener.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/history", timeout=TIMEOUT_S)
    port = server.port
    server.faults.clear()
    server.restart()
    assert server.port == port
    assert requests.get(f"{server.url}/history", timeout=TIMEOUT_S).json() == {}
    frames, entry = run(server, img2img())
    assert entry["status"]["status_str"] == "success"


def test_out_of_memory_above_the_pixel_budget(server: SimServer) -> None:
    server.faults.oom_above(256 * 256)
    frames, entry = run(server, img2img())
    error = next(f for f in frames if f.get("type") == "execution_error")["data"]
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith("CUDA out of memory. Tried to allocate")
    assert "This error means you ran out of memory on your GPU." in error["exception_message"]
    assert entry["status"]["completed"] is False


def test_slow_downloads_still_deliver_the_file(server: SimServer) -> None:
    _, entry = run(server, img2img())
    server.faults.slow_downloads(200_000)
    image = entry["outputs"]["8"]["images"][0]
    response = requests.get(f"{server.url}/view", params=image, timeout=TIMEOUT_S)
    assert response.content == (server.output_dir / image["filename"]).read_bytes()


def test_hostile_filenames_are_reported(server: SimServer) -> None:
    server.faults.hostile_filenames("../../x.png")
    frames, entry = run(server, img2img())
    executed = next(f for f in frames if f.get("type") == "executed")["data"]
    assert executed["output"]["images"][0]["filename"] == "../../x.png"
    assert entry["outputs"]["8"]["images"][0]["filename"] == "../../x.png"
    assert not (server.root.parent / "x.png").exists()


def test_dropped_prompt_is_accepted_then_never_heard_of(server: SimServer) -> None:
    server.faults.drop_prompts(1)
    listener = Listener(f"{server.ws_url}?clientId=tester")
    try:
        lost = submit(server, img2img())
        kept = submit(server, img2img(seed=3))
        assert listener.wait(finished(kept))
        assert not any(f.get("data", {}).get("prompt_id") == lost for f in listener.frames if "type" in f)
    finally:
        listener.close()
    assert lost not in server.history
    assert requests.get(f"{server.url}/history/{lost}", timeout=TIMEOUT_S).json() == {}


def test_fail_next_raises_in_the_named_node(server: SimServer) -> None:
    server.fail_next(node_type="KSampler", message="deliberate")
    frames, _ = run(server, img2img())
    error = next(f for f in frames if f.get("type") == "execution_error")["data"]
    assert (error["node_id"], error["exception_message"]) == ("6", "deliberate\n")
    frames, entry = run(server, img2img())
    assert entry["status"]["status_str"] == "success"


def test_cli_sim_serves_previews_when_asked(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "comfy_orchestrator.cli", "sim", "--port", "0", "--root", str(tmp_path),
               "--checkpoint", "random-sd15.safetensors", "--preview-method", "latent2rgb", "--preview-size", "128"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            found = re.search(r"http://127\.0\.0\.1:(\d+)", process.stdout.readline())
            assert found, "comfy-orch sim did not say where it listens"
            url = found[0]
            upload = requests.post(f"{url}/upload/image", timeout=TIMEOUT_S,
                                   files={"image": ("ref_input_a.png", reference_inputs()["ref_input_a.png"])})
            assert upload.status_code == 200
            listener = Listener(f"{url.replace('http', 'ws', 1)}/ws?clientId=cli")
            try:
                answer = requests.post(f"{url}/prompt", json={"prompt": img2img(steps=2), "client_id": "cli"},
                                       timeout=TIMEOUT_S).json()
                assert listener.wait(finished(answer["prompt_id"]))
                previews = list(listener.binary)
            finally:
                listener.close()
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=TIMEOUT_S)
    assert len(previews) == 2 and Image.open(io.BytesIO(previews[0][8:])).size == (128, 128)
    assert list((tmp_path / "output").glob("*.png"))


def test_cli_sim_command_is_registered() -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    result = CliRunner().invoke(main, ["sim", "--help"])
    assert result.exit_code == 0
    assert "--checkpoint" in result.output and "realistic" in result.output
