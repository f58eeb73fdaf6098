"""Client against the simulated server over loopback: real HTTP, real websocket, real files."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from comfy_orchestrator.client import Client, safe_filename
from comfy_orchestrator.errors import (
    Cancelled,
    ConnectionFailed,
    ExecutionFailed,
    Interrupted,
    JobLost,
    MissingModel,
    OutOfMemory,
    ParameterError,
    PromptRejected,
)
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.listener import connect_websocket
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.protocol import (
    Event,
    NodeExecuted,
    NodeProgress,
    NodesCached,
    Progress,
    PromptSucceeded,
)
from comfy_orchestrator.provenance import png_text, read_provenance
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.sim.costs import Costs
from comfy_orchestrator.transport import SharedAnswers


class RecordingSession(requests.Session):
    """A real session that also notes each request's method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.calls.append((str(method), str(url).split("/", 3)[-1].split("?")[0]))
        return super().request(method, url, *args, **kwargs)


def with_input(job: Job, node_id: str, name: str, value: Any) -> Job:
    """The same job with one node input changed (the parameter map still names it)."""
    data = job.graph.to_api()
    data[node_id]["inputs"][name] = value
    return dataclasses.replace(job, graph=Graph.from_api(data))


def test_run_saves_outputs_with_server_metadata_and_our_provenance(client: Client, img2img_job: Job,
                                                                  tmp_path: Path) -> None:
    result = client.run(img2img_job, out_dir=tmp_path / "out")
    assert len(result.outputs) == 1 and result.outputs[0].node_id == "8"
    (saved,) = result.files
    assert saved.parent == tmp_path / "out" and saved.name == result.outputs[0].filename
    data = saved.read_bytes()
    chunks = png_text(data)
    assert json.loads(chunks["prompt"])["6"]["inputs"]["seed"] == 1234  # the server's own chunk, kept
    record = read_provenance(data)
    assert record is not None
    assert record["template"] == "img2img" and record["parameters"]["denoise"] == 0.6
    assert record["seeds"] == {"6": 1234} and record["graph"] == img2img_job.graph.to_api()
    assert record["server"] == client.url and record["comfyui_version"]
    assert record["prompt_id"] == result.prompt_id
    with Image.open(saved) as image:
        image.load()  # the added chunk keeps the PNG valid
        assert image.size == (96, 64)
    assert {"submitted", "started", "finished"} <= set(result.timings)


def test_progress_counts_every_step_and_ends_at_one(client: Client, img2img_job: Job) -> None:
    seen: list[Progress] = []
    events: list[Event] = []
    handle = client.submit(img2img_job, on_progress=seen.append, on_event=events.append)
    result = handle.wait()
    steps = [e.value for e in events if isinstance(e, NodeProgress)]
    assert steps == list(range(1, 21))
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1].finished
    assert any(p.node == "6" and p.node_max == 20 for p in seen)
    assert any(isinstance(e, PromptSucceeded) for e in events)
    assert result.outputs


def test_identical_resubmit_is_served_from_cache_at_once(client: Client, img2img_job: Job) -> None:
    first = client.run(img2img_job)
    handle = client.submit(img2img_job)
    events = list(handle.events())
    second = handle.wait()
    assert len(second.cached_nodes) == len(img2img_job.graph)
    assert second.outputs == first.outputs  # cached output nodes report the old file
    assert [e.node for e in events if isinstance(e, NodeExecuted)] == ["8"]
    assert handle.progress.fraction == 1.0


def test_events_of_two_queued_jobs_stay_apart(client: Client, img2img_job: Job) -> None:
    other = with_input(img2img_job, "6", "seed", 99)
    first, second = client.submit(img2img_job), client.submit(other)
    assert first.prompt_id != second.prompt_id
    second_events = list(second.events())
    first_result = first.wait()
    assert all(e.prompt_id in (None, second.prompt_id) for e in second_events)
    assert first_result.outputs[0].filename != second.wait().outputs[0].filename


def test_front_and_extra_data_reach_the_server(client: Client, img2img_job: Job) -> None:
    client.run(img2img_job)
    handle = client.submit(with_input(img2img_job, "6", "seed", 2), front=True, extra_data={"note": "ours"})
    handle.wait()
    assert handle.number is not None and handle.number < 0  # the front of the queue
    entry = client.history_entry(handle.prompt_id)
    assert entry is not None
    extra = entry["prompt"][3]
    assert extra["note"] == "ours" and extra["client_id"] == client.client_id
    assert entry["prompt"][1] == handle.prompt_id  # our prompt id, not the server's


def test_rejection_names_template_parameters(client: Client, img2img_job: Job) -> None:
    bad = with_input(img2img_job, "6", "sampler_name", "dpm++ 2m karras")
    with pytest.raises(PromptRejected) as caught:
        client.submit(bad)
    assert caught.value.parameters == {"6.sampler_name": "sampler"}
    assert "parameter 'sampler'" in str(caught.value) and not caught.value.retryable


def test_server_rejection_is_mapped_the_same_way(comfy: Any, img2img_job: Job) -> None:
    bad = with_input(img2img_job, "6", "denoise", 1.5)
    with Client(comfy.url, validate=False, timeouts=Timeouts(read_s=5)) as unchecked, pytest.raises(PromptRejected) as caught:
        unchecked.submit(bad)
    assert caught.value.parameters == {"6.denoise": "denoise"}
    assert caught.value.node_errors["6"]["errors"][0]["type"] == "value_bigger_than_max"
    assert comfy.history == {}


def test_missing_checkpoint_is_missing_model(sim: Any, img2img_job: Job) -> None:
    (server,) = sim(checkpoints=("other.safetensors",))
    for validate in (True, False):
        with Client(server.url, validate=validate, timeouts=Timeouts(read_s=5)) as client, pytest.raises(MissingModel) as caught:
            client.submit(img2img_job)
        assert caught.value.retryable and caught.value.parameters == {"1.ckpt_name": "checkpoint"}


def test_200_answer_with_node_errors_runs_the_good_branch(comfy: Any, img2img_job: Job) -> None:
    data = img2img_job.graph.to_api()
    data["20"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "broken"}}
    data["21"] = {"class_type": "LoadImage", "inputs": {"image": "does_not_exist.png"}}
    job = dataclasses.replace(img2img_job, graph=Graph.from_api(data))
    with Client(comfy.url, timeouts=Timeouts(read_s=5)) as checked, pytest.raises(PromptRejected):
        checked.submit(job)  # checked locally: a broken branch is refused before it is sent
    with Client(comfy.url, validate=False, timeouts=Timeouts(read_s=5)) as unchecked:
        handle = unchecked.submit(job)
        assert set(handle.node_errors) == {"21"}
        assert [o.node_id for o in handle.wait().outputs] == ["8"]


def test_execution_error_names_the_node(comfy: Any, client: Client, img2img_job: Job) -> None:
    comfy.fail_next(node_type="KSampler", message="mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(ExecutionFailed) as caught:
        client.run(img2img_job)
    assert (caught.value.node_id, caught.value.node_type) == ("6", "KSampler")
    assert "mat1" in caught.value.exception_message and not isinstance(caught.value, OutOfMemory)


def test_out_of_memory_suggests_what_to_try(comfy: Any, client: Client, img2img_job: Job) -> None:
    comfy.faults.oom_above(32 * 32)
    with pytest.raises(OutOfMemory) as caught:
        client.run(img2img_job)
    assert "tiled" in str(caught.value) and "smaller" in str(caught.value)


def test_interrupt_stops_the_running_job(sim: Any, img2img_job: Job) -> None:
    (server,) = sim(checkpoints=("v1-5-pruned-emaonly.safetensors",), costs=Costs(step_s=0.02))
    long_job = with_input(img2img_job, "6", "steps", 500)
    with Client(server.url, timeouts=Timeouts(read_s=5)) as client:
        handle = client.submit(long_job)
        with pytest.raises(Cancelled) as caught:
            for event in handle.events():
                if isinstance(event, NodeProgress) and event.value == 2:
                    handle.cancel()
        assert caught.value.node_id == "6" and "cancelled (interrupted)" in str(caught.value)
        assert server.wait_idle(10)  # the socket tells of the interrupt before the server writes the record
        assert client.history_entry(handle.prompt_id)["status"]["status_str"] == "error"  # type: ignore[index]


def test_a_cancelled_waiting_job_is_reported_cancelled_and_never_runs(sim: Any, img2img_job: Job) -> None:
    (server,) = sim(checkpoints=("v1-5-pruned-emaonly.safetensors",), costs=Costs(step_s=0.02))
    with Client(server.url, timeouts=Timeouts(read_s=5, silence_s=30, job_s=20)) as client:
        running = client.submit(with_input(img2img_job, "6", "steps", 500))
        queued = client.submit(with_input(img2img_job, "6", "seed", 7))
        assert client.locate(queued.prompt_id)[0] == "queued"
        queued.cancel()
        with pytest.raises(Cancelled, match="cancelled \\(taken off the queue\\)") as caught:
            queued.wait()
        assert not caught.value.retryable
        assert client.locate(running.prompt_id)[0] == "running"  # the other prompt was left alone
        running.cancel()
        with pytest.raises(Cancelled):
            running.wait()
        assert server.wait_idle(10)
        assert queued.prompt_id not in client.history() and client.locate(queued.prompt_id)[0] == "unknown"


def test_deleted_queued_job_is_noticed_not_waited_for(sim: Any, img2img_job: Job) -> None:
    (server,) = sim(checkpoints=("v1-5-pruned-emaonly.safetensors",), costs=Costs(step_s=0.02))
    with Client(server.url, timeouts=Timeouts(read_s=5, silence_s=30, job_s=20)) as client:
        running = client.submit(with_input(img2img_job, "6", "steps", 500))
        queued = client.submit(with_input(img2img_job, "6", "seed", 7))
        assert client.locate(queued.prompt_id)[0] == "queued"
        client.delete([queued.prompt_id])
        with pytest.raises(JobLost) as caught:
            queued.wait()  # silence_s is long: the queue's shrinking gave it away
        assert caught.value.retryable
        client.clear_queue()
        client.interrupt()
        with pytest.raises(Interrupted):
            running.wait()


def test_reads_and_control_calls(client: Client, img2img_job: Job) -> None:
    result = client.run(img2img_job)
    assert result.prompt_id in client.history()
    assert list(client.history(max_items=1)) == [result.prompt_id]
    assert client.queue() == {"queue_running": [], "queue_pending": []}
    assert client.system_stats()["system"]["comfyui_version"] == client.comfyui_version()
    assert "KSampler" in client.object_info() and "KSampler" in client.schema()
    assert client.locate(result.prompt_id)[0] == "done"
    assert client.locate("never-submitted") == ("unknown", None)
    client.free()
    client.interrupt()  # idle: no effect, no error
    # The server frees between prompts, as ComfyUI's worker does: before the next one, or right after it.
    again = client.run(with_input(img2img_job, "6", "seed", 5))
    third = client.run(with_input(img2img_job, "6", "seed", 6))
    assert "1" not in again.cached_nodes or "1" not in third.cached_nodes  # /free dropped the cache


def test_object_info_is_read_once_per_client(comfy: Any, img2img_job: Job) -> None:
    session = RecordingSession()
    with Client(comfy.url, session=session, timeouts=Timeouts(read_s=5)) as client:
        client.run(img2img_job)
        client.run(with_input(img2img_job, "6", "seed", 3))
    assert session.calls.count(("GET", "object_info")) == 1


def test_servers_of_one_install_share_one_reading_of_object_info(sim: Any, img2img_job: Job) -> None:
    same = sim(2, checkpoints=(DEFAULT_CHECKPOINT,))
    other = sim(1, checkpoints=(DEFAULT_CHECKPOINT, "other.safetensors"))[0]
    shared = SharedAnswers()
    clients = [Client(server.url, shared=shared, timeouts=Timeouts(read_s=5)) for server in [*same, other]]
    try:
        first, second, third = (client.schema() for client in clients)
        assert first.raw["KSampler"] is second.raw["KSampler"]  # byte-identical answers: read once
        assert third.raw["KSampler"] is not first.raw["KSampler"]  # another install's: its own
        assert first.checkpoints == second.checkpoints == (DEFAULT_CHECKPOINT,)
        assert third.checkpoints == (DEFAULT_CHECKPOINT, "other.safetensors")
        assert {first.source, second.source, third.source} == {client.url for client in clients}
        clients[1].run(img2img_job)  # a shared reading checks and runs a job as its own did
        assert clients[0].object_info() is not clients[1].object_info()  # each caller gets a dict of its own
    finally:
        for client in clients:
            client.close()


def test_inputs_are_uploaded_once_per_server_by_content(comfy: Any, img2img_job: Job, sample_image: Path) -> None:
    first, second = RecordingSession(), RecordingSession()
    with Client(comfy.url, session=first, timeouts=Timeouts(read_s=5)) as client:
        client.run(img2img_job)
        client.run(with_input(img2img_job, "6", "seed", 3))
    with Client(comfy.url, session=second, timeouts=Timeouts(read_s=5)) as client:
        client.run(with_input(img2img_job, "6", "seed", 4))
    assert first.calls.count(("POST", "upload/image")) == 1
    assert ("POST", "upload/image") not in second.calls  # the server already has it
    (name,) = img2img_job.inputs
    assert (comfy.input_dir / name).read_bytes() == sample_image.read_bytes()


@pytest.mark.parametrize("kind", ["path", "bytes", "pil"])
def test_upload_accepts_paths_bytes_and_pil_images(client: Client, comfy: Any, sample_image: Path,
                                                   kind: str) -> None:
    with Image.open(sample_image) as picture:
        picture.load()
        source: Any = {"path": sample_image, "bytes": sample_image.read_bytes(), "pil": picture}[kind]
        name = client.upload(source)
        assert name == client.upload(source)
    with Image.open(comfy.input_dir / name) as stored, Image.open(sample_image) as original:
        assert stored.size == original.size and stored.convert("RGB").tobytes() == original.convert("RGB").tobytes()


def test_mask_upload_applies_to_its_image(client: Client, comfy: Any, sample_image: Path) -> None:
    image_name = client.upload(sample_image)
    mask = Image.new("RGBA", (96, 64), (0, 0, 0, 0))
    name = client.upload_mask(mask, original=image_name)
    with Image.open(comfy.input_dir / name) as stored:
        assert stored.mode == "RGBA"


def test_outputs_in_memory(client: Client, img2img_job: Job) -> None:
    result = client.run(img2img_job)
    image = client.fetch_image(result.outputs[0])
    assert image.size == (96, 64)
    assert client.fetch(result.outputs[0])[:4] == b"\x89PNG"


def test_saving_twice_never_overwrites(client: Client, img2img_job: Job, tmp_path: Path) -> None:
    first = client.run(img2img_job, out_dir=tmp_path)
    second = client.run(img2img_job, out_dir=tmp_path)  # cached: the same server file name
    assert first.files[0] != second.files[0] and second.files[0].name.endswith(" (1).png")
    assert first.files[0].read_bytes()[:4] == second.files[0].read_bytes()[:4] == b"\x89PNG"


def test_previews_are_kept_only_when_asked(sim: Any, img2img_job: Job) -> None:
    (comfy,) = sim(checkpoints=("v1-5-pruned-emaonly.safetensors",), preview_method="latent2rgb")  # default: none
    with Client(comfy.url, keep_previews=True, timeouts=Timeouts(read_s=5)) as keeping:
        handle = keeping.submit(img2img_job)
        handle.wait()
        assert keeping.listener.server_flags.get("supports_preview_metadata") is True
    assert len(handle.previews) == 20
    assert all(p.prompt_id == handle.prompt_id and p.node == "6" for p in handle.previews)
    with Image.open(__import__("io").BytesIO(handle.previews[0].data)) as preview:
        assert preview.format == "JPEG"
    with Client(comfy.url, timeouts=Timeouts(read_s=5)) as plain:
        quiet = plain.submit(with_input(img2img_job, "6", "seed", 77))
        quiet.wait()
    assert quiet.previews == []


def test_one_websocket_serves_many_jobs(comfy: Any, img2img_job: Job) -> None:
    opened: list[str] = []

    def connect(url: str, headers: Any, timeout_s: float) -> Any:
        opened.append(url)
        return connect_websocket(url, headers, timeout_s)

    with Client(comfy.url, connect=connect, timeouts=Timeouts(read_s=5)) as client:
        for seed in range(3):
            client.run(with_input(img2img_job, "6", "seed", seed))
    assert len(opened) == 1 and opened[0].endswith(f"/ws?clientId={client.client_id}")


def test_jobs_from_many_threads_share_one_client(client: Client, img2img_job: Job) -> None:
    results: dict[int, Any] = {}

    def run(seed: int) -> None:
        results[seed] = client.run(with_input(img2img_job, "6", "seed", seed))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [0, 1, 2, 3]
    assert len({r.outputs[0].filename for r in results.values()}) == 4


def test_cached_nodes_are_reported(client: Client, img2img_job: Job) -> None:
    client.run(img2img_job)
    events: list[Event] = []
    client.run(with_input(img2img_job, "6", "cfg", 5.0), on_event=events.append)
    cached = next(e for e in events if isinstance(e, NodesCached))
    assert set(cached.nodes) == {"1", "2", "3", "4", "5"}


@pytest.mark.parametrize(("name", "expected"), [
    ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
    ("../../x.png", "x.png"),
    ("..\\..\\evil.png", "evil.png"),
    ("/etc/passwd", "passwd"),
    ("..", "fallback"),
    ("", "fallback"),
    ("a\x00b\nc.png", "a_b_c.png"),
    ("CON.png", "_CON.png"),
    ("img_%date:yyyy-MM-dd%_00001_.png", "img_%date_yyyy-MM-dd%_00001_.png"),
    ("x" * 300 + ".png", "x" * 180 + ".png"),
])
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name, fallback="fallback") == expected


@pytest.mark.parametrize(("url", "base", "ws"), [
    ("http://127.0.0.1:8188", "http://127.0.0.1:8188", "ws://127.0.0.1:8188/ws"),
    ("https://gpu.example/comfy/", "https://gpu.example/comfy", "wss://gpu.example/comfy/ws"),
    ("ws://host:1234", "http://host:1234", "ws://host:1234/ws"),
    ("wss://host", "https://host", "wss://host/ws"),
    ("localhost:8188", "http://localhost:8188", "ws://localhost:8188/ws"),
    ("https://alice:s3cret@gpu.example", "https://gpu.example", "wss://gpu.example/ws"),
])
def test_urls(url: str, base: str, ws: str) -> None:
    client = Client(url)
    assert (client.url, client.ws_url) == (base, ws)
    assert "s3cret" not in repr(client) and "s3cret" not in client.url


def test_bad_url_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError):
        Client("ftp://host")


@pytest.mark.parametrize(("attempt", "delay_s"), [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)])
def test_retry_policy_backs_off(attempt: int, delay_s: float) -> None:
    assert RetryPolicy().delay(attempt) == delay_s


def test_proxy_environment_is_read_once_and_still_honoured(comfy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    quick = RetryPolicy(max_attempts=1)
    with Client(comfy.url, retry=quick, timeouts=Timeouts(read_s=5)) as proxied:
        assert not proxied.session.trust_env  # settled at construction, not walked again per request
        with pytest.raises(ConnectionFailed):
            proxied.queue()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with Client(comfy.url, retry=quick, timeouts=Timeouts(read_s=5)) as direct:
        monkeypatch.setenv("no_proxy", "")  # read once: a later change does not reach this client
        assert direct.queue() == {"queue_running": [], "queue_pending": []}
