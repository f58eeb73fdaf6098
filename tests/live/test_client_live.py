"""The client's scenarios against a real ComfyUI (opt in: COMFY_URL=http://host:8188 pytest tests/live)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.client import Client
from comfy_orchestrator.errors import ExecutionFailed, Interrupted, JobLost, MissingModel, PromptRejected
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.listener import connect_websocket
from comfy_orchestrator.protocol import NodeProgress, PreviewImage
from comfy_orchestrator.provenance import png_text, read_provenance


def with_input(job: Job, node_id: str, name: str, value: Any) -> Job:
    data = job.graph.to_api()
    data[node_id]["inputs"][name] = value
    return Job(graph=Graph.from_api(data), template=job.template, params=job.params, inputs=job.inputs,
               parameter_map=job.parameter_map)


def test_run_downloads_with_provenance(live: Client, live_job: Job, tmp_path: Path) -> None:
    steps: list[int] = []
    result = live.run(live_job, out_dir=tmp_path,
                      on_event=lambda e: steps.append(e.value) if isinstance(e, NodeProgress) else None)
    assert steps == list(range(1, 9))
    (saved,) = result.files
    data = saved.read_bytes()
    assert "prompt" in png_text(data)
    record = read_provenance(data)
    assert record is not None and record["comfyui_version"] == live.comfyui_version()


def test_identical_resubmit_is_cached(live: Client, live_job: Job) -> None:
    first = live.run(live_job)
    second = live.run(live_job)
    assert len(second.cached_nodes) == len(live_job.graph) and second.outputs == first.outputs


def test_rejections(live: Client, live_job: Job) -> None:
    with pytest.raises(PromptRejected) as caught:
        live.submit(with_input(live_job, "6", "sampler_name", "dpm++ 2m karras"))
    assert caught.value.parameters == {"6.sampler_name": "sampler"}
    with pytest.raises(MissingModel):
        live.submit(with_input(live_job, "1", "ckpt_name", "surely-not-here.safetensors"))


def test_runtime_error_names_the_node(live: Client, live_job: Job) -> None:
    with pytest.raises(ExecutionFailed) as caught:
        live.run(with_input(live_job, "8", "filename_prefix", "../../outside"))
    assert caught.value.node_id == "8"


def test_interrupt_and_delete(live: Client, live_job: Job) -> None:
    running = live.submit(with_input(live_job, "6", "steps", 400))
    queued = live.submit(with_input(live_job, "6", "seed", 1))
    live.delete([queued.prompt_id])
    with pytest.raises(JobLost):
        queued.wait(timeout_s=120)
    with pytest.raises(Interrupted):
        for event in running.events():
            if isinstance(event, NodeProgress) and event.value == 2:
                running.cancel()


def test_our_socket_dropped_mid_job_is_reconciled(live: Client, live_job: Job) -> None:
    handle = live.submit(with_input(live_job, "6", "steps", 30))
    dropped = False
    for event in handle.events():
        if isinstance(event, NodeProgress) and event.value == 3 and not dropped:
            live.listener.recycle()
            dropped = True
    assert dropped and handle.wait().outputs


class DeafAfter:
    """A real websocket whose frames stop reaching the client after `frames` of them."""

    def __init__(self, socket: Any, frames: int) -> None:
        self._socket, self._left = socket, frames

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)

    def recv_data(self) -> tuple[int, bytes]:
        while True:
            frame: tuple[int, bytes] = self._socket.recv_data()
            if self._left > 0 or frame[0] == 8:
                self._left -= 1
                return frame


def test_silent_socket_falls_back_to_history(live_job: Job) -> None:
    def connect(url: str, headers: Any, timeout_s: float) -> Any:
        return DeafAfter(connect_websocket(url, headers, timeout_s), 4)

    with Client(os.environ["COMFY_URL"], token=os.environ.get("COMFY_TOKEN") or None, connect=connect,
                timeouts=Timeouts(read_s=30, silence_s=3)) as client:
        assert client.run(with_input(live_job, "6", "seed", 11)).outputs


def test_previews_when_asked(live_job: Job) -> None:
    with Client(os.environ["COMFY_URL"], token=os.environ.get("COMFY_TOKEN") or None, keep_previews=True,
                timeouts=Timeouts(read_s=30)) as client:
        handle = client.submit(with_input(live_job, "6", "seed", 12), extra_data={"preview_method": "latent2rgb"})
        handle.wait()
    assert handle.previews and all(isinstance(p, PreviewImage) and p.data for p in handle.previews)
