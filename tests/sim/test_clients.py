"""Clients nobody here wrote, from the package index, run a prompt our templates built on the sim's two profiles.

Each submits through its own API, sees the prompt finish its own way, and gets the saved PNG
(not a preview) back. The sim, like ComfyUI, sends no previews unless asked, so a client that
takes every binary frame for a result (comfy-api-simplified) still gets the saved image.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import requests
from PIL import Image

from comfy_orchestrator.jobs import Job
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.sim import SimServer
from comfy_orchestrator.templates import Templates

JOB_TIMEOUT_S = 60.0
INPUT_SIZE = (96, 64)


@pytest.fixture(scope="module", params=["instant", "realistic"])
def server(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    """One server per profile for the whole module: the realistic one loads its checkpoint once."""
    with SimServer(profile_name=request.param, checkpoints=(DEFAULT_CHECKPOINT,)) as started:
        yield started


@pytest.fixture
def job(tmp_path: Path, request: pytest.FixtureRequest) -> Job:
    """The img2img template's job on a small picture, with a seed of its own for each test."""
    seed = sum(map(ord, request.node.name))
    source = tmp_path / "source.png"
    picture = Image.new("RGB", INPUT_SIZE, (40, 90, seed % 256))  # a file (and name) of its own, too
    for x in range(INPUT_SIZE[0]):
        picture.putpixel((x, x % INPUT_SIZE[1]), (250, 220, 30))
    picture.save(source)
    template = Templates.default().get("img2img")
    return template.job(template.params({"image": str(source), "steps": 4, "seed": seed}))


def upload_file(job: Job, folder: Path) -> Path:
    """The job's input picture under the name the prompt loads it by, for a client to upload."""
    ((name, path),) = job.inputs.items()
    named = folder / name
    shutil.copy(path, named)
    return named


def saved_file(server: SimServer, prompt_id: str) -> Path:
    """The one image the prompt's SaveImage wrote, as the server's history names it."""
    entry = server.history[prompt_id]
    assert entry["status"]["status_str"] == "success"
    ((image,),) = [output["images"] for output in entry["outputs"].values()]
    assert image["type"] == "output"
    return server.output_dir / image["subfolder"] / image["filename"]


def only_prompt_since(server: SimServer, before: set[str]) -> str:
    (prompt_id,) = set(server.history) - before
    return prompt_id


def test_comfy_api_simplified(server: SimServer, job: Job, tmp_path: Path) -> None:
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    api = ComfyApiWrapper(server.url)
    assert api.upload_image(upload_file(job, tmp_path), subfolder="")["type"] == "input"
    # this client finds output nodes by their title, which editor-saved API prompts carry in _meta
    prompt = {node_id: {**node, "_meta": {"title": node["class_type"]}} for node_id, node in job.graph.to_api().items()}
    before = set(server.history)
    images = api.queue_and_wait_images(ComfyWorkflowWrapper(prompt), "SaveImage")
    saved = saved_file(server, only_prompt_since(server, before))
    assert images == {saved.name: saved.read_bytes()}


def test_comfyui_autograph(server: SimServer, job: Job, tmp_path: Path) -> None:
    from autograph import ApiFlow, upload_image

    uploaded = upload_image(upload_file(job, tmp_path), server.url)
    assert uploaded["name"] in job.inputs
    submitted = ApiFlow(job.graph.to_api()).submit(server.url, wait=True, wait_timeout=int(JOB_TIMEOUT_S),
                                                   poll_interval=0.05)
    (image,) = submitted.fetch_images()
    saved = saved_file(server, submitted.prompt_id)
    assert image["ref"]["type"] == "output" and image["ref"]["filename"] == saved.name
    assert image["bytes"] == saved.read_bytes()


def test_sd_backend_client(server: SimServer, job: Job, tmp_path: Path) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("sd-backend-client needs Python 3.11 or newer")
    from sd_backend_client import ComfyUiWebservice

    service = ComfyUiWebservice(server.url)
    file = upload_file(job, tmp_path)
    assert service.upload_image(str(file), name=file.name, subfolder="").filename == file.name
    # a prompt of our own goes in through the queueing its workflow builders use
    handle = service._handle(service._queue_prompt(job.graph.to_api()))
    result = handle.wait(timeout=JOB_TIMEOUT_S, poll_interval=0.05)
    saved = saved_file(server, handle.task_id or "")
    (picture,) = result.images
    assert picture.size == INPUT_SIZE
    with Image.open(saved) as expected:
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected.convert("RGB")))


def test_comfy_script(server: SimServer, job: Job, tmp_path: Path) -> None:
    ((name, path),) = job.inputs.items()
    server.add_input(name, path.read_bytes())  # ComfyScript has no upload of its own
    prompt_path, result_path = tmp_path / "prompt.json", tmp_path / "result.json"
    prompt_path.write_text(json.dumps(job.graph.to_api()), "utf-8")
    script = Path(__file__).with_name("comfy_script_job.py")
    # ComfyScript learns of its task only after POST /prompt answers, and hears of it only on its
    # watcher's websocket: a prompt that ends before either leaves it waiting forever. A GPU is never
    # that quick; the instant sim is, so its queue starts once the task is known and the socket open.
    server.faults.hold_queue()
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        process = subprocess.Popen([sys.executable, str(script), f"{server.url}/", str(prompt_path), str(result_path)],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        for line in _lines(process, JOB_TIMEOUT_S, errors):
            queued = re.search(r"QUEUED (\S+)", line)  # ComfyScript's threads print too, even mid-line
            if queued:
                client_id = _client_of(server, queued[1])
                assert server.wait_for_client(client_id, JOB_TIMEOUT_S), f"{client_id} never opened its websocket"
                server.faults.release_queue()
        process.wait(timeout=JOB_TIMEOUT_S)
    finally:
        server.faults.release_queue()
        if process.poll() is None:  # a failed check above: the helper would wait for the prompt forever
            process.kill()
            process.wait(timeout=JOB_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == 0, errors.read_text()[-2000:]
    result: dict[str, Any] = json.loads(result_path.read_text("utf-8"))
    assert "KSampler(model, " in result["script"]  # it ran ComfyScript's own transpilation of our prompt
    saved = saved_file(server, result["prompt_id"])
    assert [image["filename"] for image in result["images"]] == [saved.name]
    assert result["sizes"] == [list(INPUT_SIZE)]


def _lines(process: subprocess.Popen[str], timeout_s: float, errors: Path) -> Iterator[str]:
    """The lines a process prints until it closes its output; fails at the deadline instead of waiting on."""
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def read(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, args=(process.stdout,), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no end of output from {process.args} in {timeout_s} s; it said:\n"
                                 f"{''.join(seen)}{errors.read_text()[-3000:]}") from None
        if line is None:
            return
        seen.append(line)
        yield line


def _client_of(server: SimServer, prompt_id: str) -> str:
    """The client id the held prompt `prompt_id` was submitted with."""
    pending = requests.get(f"{server.url}/queue", timeout=JOB_TIMEOUT_S).json()["queue_pending"]
    ids = {item[1]: item[3].get("client_id") for item in pending}
    assert isinstance(ids.get(prompt_id), str), f"{prompt_id} is not waiting with a client id: {pending}"
    return str(ids[prompt_id])


def test_our_client_on_both_profiles(server: SimServer, job: Job, tmp_path: Path) -> None:
    from comfy_orchestrator.client import Client

    with Client(server.url) as client:
        result = client.run(job, out_dir=tmp_path / "out")
    (file,) = result.files
    with Image.open(file) as got, Image.open(saved_file(server, result.prompt_id)) as expected:
        assert got.format == "PNG"
        assert np.array_equal(np.asarray(got), np.asarray(expected))
