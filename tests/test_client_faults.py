"""Client under trouble: dropped and silent websockets, crashes, 500s, lost prompts, hostile names, OOM."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.client import Client
from comfy_orchestrator.errors import (
    ConnectionFailed,
    JobLost,
    JobTimedOut,
    OutOfMemory,
    ServerError,
    UnsafeOutput,
)
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.listener import connect_websocket
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.sim.costs import Costs

QUICK = RetryPolicy(max_attempts=3, first_delay_s=0.05, max_delay_s=0.2)
SLOW_STEPS = Costs(step_s=0.01)


def with_input(job: Job, node_id: str, name: str, value: Any) -> Job:
    data = job.graph.to_api()
    data[node_id]["inputs"][name] = value
    return dataclasses.replace(job, graph=Graph.from_api(data))


def slow_server(sim: Any) -> Any:
    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,), costs=SLOW_STEPS)
    return server


def test_websocket_dropped_mid_job_reconnects_and_misses_nothing(sim: Any, img2img_job: Job,
                                                                 tmp_path: Path) -> None:
    server = slow_server(sim)
    opened: list[str] = []

    def connect(url: str, headers: Any, timeout_s: float) -> Any:
        opened.append(url)
        return connect_websocket(url, headers, timeout_s)

    server.faults.close_websocket_after(15)  # every socket, after 15 messages: mid-sampling
    with Client(server.url, connect=connect, retry=QUICK, timeouts=Timeouts(read_s=5, silence_s=5)) as client:
        result = client.run(img2img_job, out_dir=tmp_path)
    assert len(opened) >= 2 and len(set(opened)) == 1  # reconnected with the same clientId
    assert [o.node_id for o in result.outputs] == ["8"] and result.files[0].is_file()


def test_silent_websocket_falls_back_to_the_record(sim: Any, img2img_job: Job) -> None:
    server = slow_server(sim)
    server.faults.silence_websocket_after(5)
    with Client(server.url, retry=QUICK, timeouts=Timeouts(read_s=5, silence_s=0.3)) as client:
        result = client.run(img2img_job)
    assert result.outputs and server.history[result.prompt_id]["status"]["completed"]


def test_failure_seen_only_in_the_record_still_raises(sim: Any, img2img_job: Job) -> None:
    server = slow_server(sim)
    server.faults.silence_websocket_after(3)
    server.faults.oom_above(32 * 32)
    with Client(server.url, retry=QUICK, timeouts=Timeouts(read_s=5, silence_s=0.3)) as client, pytest.raises(OutOfMemory) as caught:
        client.run(img2img_job)
    assert caught.value.node_id in {"5", "6"}


def test_server_crash_without_return_is_a_connection_failure(sim: Any, img2img_job: Job) -> None:
    server = slow_server(sim)
    server.faults.crash_on("KSampler", step=3)
    with Client(server.url, retry=QUICK, timeouts=Timeouts(read_s=2, silence_s=0.3)) as client:
        with pytest.raises(ConnectionFailed) as caught:
            client.run(img2img_job)
    assert caught.value.retryable and server.crashed.is_set()


def test_server_restarted_mid_job_reports_the_job_lost(sim: Any, img2img_job: Job) -> None:
    server = slow_server(sim)
    server.faults.crash_on("KSampler", step=3)

    def come_back() -> None:
        if server.crashed.wait(10):
            server.restart()

    restarter = threading.Thread(target=come_back)
    restarter.start()
    with Client(server.url, retry=RetryPolicy(max_attempts=8, first_delay_s=0.05, max_delay_s=0.3),
                timeouts=Timeouts(read_s=2, silence_s=0.5)) as client:
        with pytest.raises(JobLost) as caught:
            client.run(img2img_job)
    restarter.join(10)
    assert caught.value.retryable


def test_accepted_but_lost_prompt_is_job_lost_not_done(comfy: Any, img2img_job: Job) -> None:
    comfy.faults.drop_prompts(1)
    with Client(comfy.url, retry=QUICK, timeouts=Timeouts(read_s=5, silence_s=0.3)) as client:
        with pytest.raises(JobLost):
            client.run(img2img_job)
        assert client.run(with_input(img2img_job, "6", "seed", 2)).outputs  # the next one runs


def test_500s_on_reads_are_retried(comfy: Any, client: Client, img2img_job: Job) -> None:
    comfy.faults.fail_route("/history", times=2)
    result = client.run(img2img_job)
    assert result.outputs


def test_500s_that_persist_raise_server_error(comfy: Any, client: Client) -> None:
    comfy.faults.fail_route("/queue")
    with pytest.raises(ServerError) as caught:
        client.queue()
    assert caught.value.status == 500 and caught.value.retryable


def test_500_on_submit_is_retried_without_running_twice(comfy: Any, client: Client, img2img_job: Job) -> None:
    comfy.faults.fail_route("/prompt", times=1)
    result = client.run(img2img_job)
    assert list(comfy.history) == [result.prompt_id]


def test_hostile_output_name_never_escapes(comfy: Any, client: Client, img2img_job: Job, tmp_path: Path) -> None:
    comfy.faults.hostile_filenames("../../x.png")
    out = tmp_path / "a" / "b"
    with pytest.raises(UnsafeOutput) as caught:
        client.run(img2img_job, out_dir=out)
    assert caught.value.name == "../../x.png"
    assert not (tmp_path / "x.png").exists() and list(out.iterdir()) == []


def test_hostile_name_in_a_subfolder_is_flattened(comfy: Any, client: Client, img2img_job: Job,
                                                  tmp_path: Path) -> None:
    job = with_input(img2img_job, "8", "filename_prefix", "nested/deeper/img")
    result = client.run(job, out_dir=tmp_path)
    assert result.outputs[0].subfolder == "nested/deeper"
    assert [p.parent for p in result.files] == [tmp_path]


def test_existing_link_in_the_folder_is_not_followed(client: Client, img2img_job: Job, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "comfy-orch_00001_.png").symlink_to(target)
    result = client.run(img2img_job, out_dir=out)
    assert target.read_text() == "keep me"
    assert result.files[0].name == "comfy-orch_00001_ (1).png"


def test_refused_connection_is_connection_failed(comfy: Any, img2img_job: Job) -> None:
    comfy.faults.refuse_connections()
    with Client(comfy.url, retry=QUICK, timeouts=Timeouts(read_s=2)) as client, pytest.raises(ConnectionFailed) as caught:
        client.run(img2img_job)
    assert caught.value.retryable


def test_job_deadline_is_job_timed_out(sim: Any, img2img_job: Job) -> None:
    server = slow_server(sim)
    with Client(server.url, retry=QUICK, timeouts=Timeouts(read_s=5)) as client:
        handle = client.submit(with_input(img2img_job, "6", "steps", 2000))
        with pytest.raises(JobTimedOut) as caught:
            handle.wait(timeout_s=0.3)
        handle.cancel()
    assert caught.value.retryable and caught.value.timeout_s == 0.3


def test_hanging_route_is_request_timed_out(comfy: Any) -> None:
    comfy.faults.hang_route("/system_stats")
    with Client(comfy.url, retry=RetryPolicy(max_attempts=1), timeouts=Timeouts(read_s=0.3)) as client:
        with pytest.raises(ServerError) as caught:
            client.system_stats()
    assert type(caught.value).__name__ == "RequestTimedOut"
    comfy.faults.clear()


class GarbageFirst:
    """A real websocket that first hands over a frame ComfyUI would never send."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._sent_garbage = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)

    def recv_data(self) -> tuple[int, bytes]:
        if not self._sent_garbage and self._socket.gettimeout() is None:
            self._sent_garbage = True
            return 1, b"{not json"
        result: tuple[int, bytes] = self._socket.recv_data()
        return result


def test_malformed_frame_is_reported_and_skipped(comfy: Any, img2img_job: Job,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def connect(url: str, headers: Any, timeout_s: float) -> Any:
        return GarbageFirst(connect_websocket(url, headers, timeout_s))

    with Client(comfy.url, connect=connect, timeouts=Timeouts(read_s=5)) as client:
        assert client.run(img2img_job).outputs
    assert any("malformed websocket frame" in r.getMessage() for r in caplog.records)
