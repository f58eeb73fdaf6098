"""JobHandle through its two seams (PromptRecords, EventFeed): when it reads the prompt's record, and what then.

The events are put in the handle's queue by the test, the record is what the test says,
so each rule is checked without a server and without waiting on a clock (silence is
only ever a silence of a few milliseconds the handle was told to wait for).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from typing import Any

import pytest

from comfy_orchestrator.errors import ExecutionFailed, JobLost, JobTimedOut
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.job_handle import JobHandle
from comfy_orchestrator.jobs import Job, Output
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.listener import Disconnected, QueueShrank, Reconnected
from comfy_orchestrator.protocol import Event, ExecutionStarted, NodeExecuting

PROMPT = "p-1"
JOB = Job(graph=Graph.from_api({"1": {"class_type": "EmptyLatentImage",
                                      "inputs": {"width": 64, "height": 64, "batch_size": 1}}}))
SUCCESS = {"status": {"status_str": "success", "completed": True, "messages": []},
           "outputs": {"9": {"images": [{"filename": "out.png", "subfolder": "", "type": "output"}]}}}
FAILURE = {"status": {"status_str": "error", "completed": False, "messages": [
    ["execution_error", {"node_id": "3", "node_type": "KSampler", "exception_message": "CUDA out of memory",
                         "exception_type": "torch.OutOfMemoryError", "traceback": [], "executed": []}]]},
    "outputs": {}}


class Records:
    """PromptRecords as the test says: where the prompt is, one answer per `locate`."""

    url = "http://stub.test"

    def __init__(self, *places: tuple[str, dict[str, Any] | None]) -> None:
        self.places = list(places)
        self.located = 0
        self.entry: dict[str, Any] | None = SUCCESS
        self.deleted: list[str] = []
        self.interrupted: list[str | None] = []

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        return self.entry

    def locate(self, prompt_id: str) -> tuple[str, dict[str, Any] | None]:
        self.located += 1
        return self.places.pop(0) if self.places else ("queued", None)

    def delete(self, prompt_ids: Sequence[str]) -> None:
        self.deleted += prompt_ids

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.interrupted.append(prompt_id)


class Feed:
    """EventFeed as the test says: the last frame's time, and whether the socket was recycled."""

    def __init__(self) -> None:
        self.last_frame_at = time.monotonic()
        self.recycled = 0
        self.unsubscribed: list[str] = []

    def recycle(self) -> None:
        self.recycled += 1

    def unsubscribe(self, prompt_id: str) -> None:
        self.unsubscribed.append(prompt_id)


def handle(records: Records, feed: Feed, *events: Event, silence_s: float = 3600.0,
           job_s: float = 3600.0) -> JobHandle:
    inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
    for event in events:
        inbox.put(event)
    return JobHandle(records, feed, JOB, PROMPT, inbox, timeouts=Timeouts(silence_s=silence_s, job_s=job_s),
                     on_event=None, on_progress=None)


def test_the_closing_message_ends_the_job_with_its_history() -> None:
    records, feed = Records(), Feed()
    result = handle(records, feed, ExecutionStarted(PROMPT), NodeExecuting(PROMPT, None)).wait()
    assert result.outputs == (Output(node_id="9", filename="out.png"),)
    assert records.located == 0  # the socket said it all: no record read
    assert feed.unsubscribed == [PROMPT]


def test_other_prompts_messages_are_not_this_ones_end() -> None:
    records, feed = Records(), Feed()
    done = handle(records, feed, NodeExecuting("someone-else", None), ExecutionStarted(PROMPT),
                  NodeExecuting(PROMPT, None))
    assert list(done.events()) == [ExecutionStarted(PROMPT)]  # the closing message is kept, not yielded
    assert done.done and done.wait().prompt_id == PROMPT


@pytest.mark.parametrize(("entry", "outcome"), [(SUCCESS, "result"), (FAILURE, ExecutionFailed)])
def test_a_reconnect_reads_the_record_and_replays_the_end(entry: dict[str, Any], outcome: object) -> None:
    records, feed = Records(("done", entry)), Feed()
    waiting = handle(records, feed, Disconnected(None), Reconnected(None))
    if outcome == "result":
        assert waiting.wait().outputs[0].filename == "out.png"
    else:
        with pytest.raises(ExecutionFailed) as caught:
            waiting.wait()
        assert caught.value.node_id == "3"
    assert records.located == 1 and feed.recycled == 0


def test_a_queue_that_shrinks_before_the_prompt_started_reads_the_record() -> None:
    # the listener says so when no end it saw explains the shrinking (tests/test_listener.py)
    records, feed = Records(("unknown", None)), Feed()  # deleted from the queue by someone else
    with pytest.raises(JobLost):
        handle(records, feed, QueueShrank(None)).wait()
    assert records.located == 1


def test_a_queue_that_shrinks_after_the_prompt_started_is_someone_elses() -> None:
    records, feed = Records(("unknown", None)), Feed()
    done = handle(records, feed, ExecutionStarted(PROMPT), QueueShrank(None), NodeExecuting(PROMPT, None))
    assert done.wait().prompt_id == PROMPT and records.located == 0


def test_silence_reads_the_record_and_a_running_prompt_gets_a_new_socket() -> None:
    records, feed = Records(("running", None), ("done", SUCCESS)), Feed()
    result = handle(records, feed, silence_s=0.01).wait()
    assert result.outputs[0].filename == "out.png"
    assert records.located == 2 and feed.recycled == 1  # once running (new socket), then found done


def test_a_job_past_its_limit_times_out() -> None:
    with pytest.raises(JobTimedOut) as caught:
        handle(Records(), Feed()).wait(timeout_s=0.01)
    assert caught.value.timeout_s == 0.01


def test_an_ended_handle_answers_again_without_asking() -> None:
    records, feed = Records(("done", FAILURE)), Feed()
    failed = handle(records, feed, Reconnected(None))
    for _ in range(2):
        with pytest.raises(ExecutionFailed):
            failed.wait()
    assert records.located == 1


def test_cancel_deletes_and_interrupts_only_this_prompt() -> None:
    records = Records()
    handle(records, Feed()).cancel()
    assert records.deleted == [PROMPT] and records.interrupted == [PROMPT]
