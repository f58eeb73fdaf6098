"""A job out to a worker and its result back, as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.errors import ExecutionFailed, MalformedMessage, WorkerJobFailed
from comfy_orchestrator.jobs import JobResult, Output
from comfy_orchestrator.queue.payload import (
    TaskFailure,
    TaskResult,
    failure_to_json,
    job_from_json,
    job_to_json,
    read_result,
    result_to_json,
)


def test_a_job_travels_without_its_files_and_comes_back_pointing_at_the_workers_copies(
        img2img_job: Any, tmp_path: Path) -> None:
    data = job_to_json(img2img_job, sweep_id="s1", key="cell 0")
    assert data["inputs"] == sorted(img2img_job.inputs)  # names by content only: the bytes travel once, apart

    order = job_from_json(data, input_folder=tmp_path / "inputs")

    assert (order.sweep_id, order.key) == ("s1", "cell 0")
    assert order.job.graph == img2img_job.graph and order.job.params == img2img_job.params
    assert order.job.parameter_map == img2img_job.parameter_map
    (name,) = img2img_job.inputs
    assert order.inputs == (name,) and order.job.inputs == {name: tmp_path / "inputs" / name}


@pytest.mark.parametrize("name", ["../escape.png", "a/b.png", ".hidden"])
def test_an_input_name_that_would_leave_the_folder_is_refused(img2img_job: Any, tmp_path: Path, name: str) -> None:
    data = job_to_json(img2img_job, sweep_id="s1", key="k")
    data["inputs"] = [name]
    with pytest.raises(MalformedMessage, match="would leave the input folder"):
        job_from_json(data, input_folder=tmp_path)


def test_a_result_and_a_failure_come_back_as_they_left(img2img_job: Any) -> None:
    outputs = (Output(node_id="9", filename="a.png"),)
    result = JobResult(job=img2img_job, prompt_id="p", server="gpu0", outputs=outputs,
                       files=(Path("/scratch/a.png"),), timings={"started": 1.0}, cached_nodes=("1",))
    data = result_to_json(result, worker="box", files=[("a.png", b"\x89PNG bytes")])
    back = read_result(data)
    assert isinstance(back, TaskResult)
    assert (back.worker, back.server, back.outputs, back.files) == ("box", "gpu0", outputs, (("a.png", b"\x89PNG bytes"),))

    error = ExecutionFailed("p", node_id="3", node_type="KSampler", message="boom")
    failed = read_result(failure_to_json(error, worker="box", attempts=2, servers=("gpu0", "gpu1")))
    assert isinstance(failed, TaskFailure) and isinstance(failed.error, WorkerJobFailed)
    assert (failed.error.kind, failed.error.retryable, failed.attempts) == ("ExecutionFailed", False, 2)
    assert "node 3 (KSampler)" in str(failed.error)


@pytest.mark.parametrize("data", [None, {"ok": True}, {"ok": True, "worker": "w", "prompt_id": "p", "server": "s",
                                                        "outputs": [], "files": [{"name": "a", "data": "@@"}]}])
def test_a_malformed_result_is_refused(data: Any) -> None:
    with pytest.raises(MalformedMessage):
        read_result(data)
