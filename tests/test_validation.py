"""check_prompt answers as the real ComfyUI 0.8 server answered in the recordings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from comfy_orchestrator.schema import Schema
from comfy_orchestrator.validation import check_prompt, describe_rejection, node_problems
from tests.conftest import REFERENCE


def _validation_answers() -> list[str]:
    """Recorded POST /prompt exchanges that the server answered by validating a prompt."""
    names = []
    for path in sorted((REFERENCE / "http").glob("post*prompt*.json")):
        exchange = json.loads(path.read_text("utf-8"))
        body = exchange["request"].get("body")
        if exchange["status"] in (200, 400) and isinstance(body, dict) and "prompt" in body:
            names.append(path.stem)
    return names


RECORDED = _validation_answers()
assert RECORDED, f"no recorded POST /prompt answers in {REFERENCE / 'http'}"
# The server walks a node's inputs as a Python set, so several errors on one node come in
# an order that changes between runs; we report them in the schema's input order.
UNORDERED = {"post_prompt_400_three_errors_one_node"}


def _without_tracebacks(value: Any) -> Any:
    """Tracebacks name the server's own source lines; everything else must match."""
    if isinstance(value, dict):
        return {k: _without_tracebacks(v) for k, v in value.items() if k != "traceback"}
    if isinstance(value, list):
        return [_without_tracebacks(v) for v in value]
    return value


def _sorted_errors(node_errors: dict[str, Any]) -> dict[str, Any]:
    return {node: {**entry, "errors": sorted(entry["errors"], key=json.dumps)} for node, entry in node_errors.items()}


@pytest.mark.parametrize("name", RECORDED)
def test_matches_the_recorded_answer(name: str, recorded) -> None:
    exchange = recorded(name)
    body = exchange["request"]["body"]
    verdict = check_prompt(body["prompt"], Schema.recorded(), input_exists=lambda name: name != "does_not_exist.png")
    answer = exchange["body"]
    assert (verdict.error is None) == (exchange["status"] == 200)
    if exchange["status"] == 400:
        assert _without_tracebacks(verdict.error) == answer["error"]
    got, want = _without_tracebacks(verdict.node_errors), _without_tracebacks(answer["node_errors"])
    if name in UNORDERED:
        got, want = _sorted_errors(got), _sorted_errors(want)
    assert got == want


def test_tracebacks_are_lists_of_strings(recorded) -> None:
    body = recorded("post_prompt_400_link_to_missing_node")["request"]["body"]
    verdict = check_prompt(body["prompt"], Schema.recorded())
    trace = verdict.node_errors["6"]["errors"][0]["extra_info"]["traceback"]
    assert trace and all(isinstance(line, str) for line in trace)


@pytest.mark.parametrize(("value", "expected"), [
    (3.7, None), ("8", None), ("3.5", "invalid_input_type"), (0, "value_smaller_than_min"),
    (10001, "value_bigger_than_max"), (True, None),
])
def test_coercion_follows_the_server(value: Any, expected: str | None, recorded) -> None:
    prompt = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    prompt["6"]["inputs"]["steps"] = value
    verdict = check_prompt(prompt, Schema.recorded())
    errors = [e["type"] for e in verdict.node_errors.get("6", {}).get("errors", [])]
    assert errors == ([] if expected is None else [expected])


def test_a_good_branch_runs_beside_a_bad_one(recorded) -> None:
    body = recorded("post_prompt_200_partial_with_node_errors")["request"]["body"]
    verdict = check_prompt(body["prompt"], Schema.recorded(), input_exists=lambda name: name != "does_not_exist.png")
    assert verdict.ok and verdict.outputs and verdict.node_errors


def test_schema_with_checkpoints_lists_the_servers_files(recorded) -> None:
    prompt = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    schema = Schema.recorded().with_checkpoints(["mine.safetensors"])
    assert schema.checkpoints == ("mine.safetensors",)
    verdict = check_prompt(prompt, schema)
    assert verdict.node_errors["1"]["errors"][0]["type"] == "value_not_in_list"
    assert Schema.recorded().checkpoints == ("random-sd15.safetensors",)


def test_schema_without_file_lists_takes_any_file_and_leaves_the_recording_as_it_was(recorded) -> None:
    prompt = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    prompt["1"]["inputs"]["ckpt_name"] = "not-on-the-recording-machine.safetensors"
    assert check_prompt(prompt, Schema.recorded()).node_errors["1"]["errors"][0]["type"] == "value_not_in_list"
    offline = Schema.recorded().without_file_lists()
    assert check_prompt(prompt, offline).node_errors == {}
    assert offline.choices("LoadImage", "image") == () and offline["KSampler"] == Schema.recorded()["KSampler"]
    assert Schema.recorded().checkpoints == ("random-sd15.safetensors",)
    assert Schema.recorded().choices("LoadImage", "image") != ()


NODE_ERRORS = {
    "6": {"class_type": "KSampler", "dependent_outputs": ["9"], "errors": [
        {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "steps",
         "extra_info": {"input_name": "steps"}},
        {"type": "value_not_in_list", "message": "Value not in list", "details": "sampler_name: 'x'",
         "extra_info": {"input_name": "sampler_name"}}]},
    "9": {"class_type": "SaveImage", "errors": [{"type": "required_input_missing", "message": "Required input is "
                                                 "missing", "details": "images", "extra_info": {}}]},
}


@pytest.mark.parametrize(("parameter_of", "lines"), [
    ({}, ["node 6 (KSampler) input 'steps': Value 0 smaller than min of 1: steps",
          "node 6 (KSampler) input 'sampler_name': Value not in list: sampler_name: 'x'",
          "node 9 (SaveImage): Required input is missing: images"]),
    ({"6.steps": "steps"}, ["parameter 'steps': Value 0 smaller than min of 1: steps",
                            "node 6 (KSampler) input 'sampler_name': Value not in list: sampler_name: 'x'",
                            "node 9 (SaveImage): Required input is missing: images"]),
])
def test_node_errors_in_words_name_the_parameter_where_known(parameter_of: dict[str, str],
                                                             lines: list[str]) -> None:
    said = describe_rejection(None, NODE_ERRORS, lambda node, name: parameter_of.get(f"{node}.{name}"))
    assert said == lines


def test_a_rejection_without_node_errors_gives_its_own_message() -> None:
    error = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""}
    assert describe_rejection(error, {}) == ["Prompt has no outputs"]
    assert describe_rejection(None, {"1": "not a mapping", "2": {"errors": ["nor this"]}}) == []
    assert [p.input_name for p in node_problems(NODE_ERRORS)] == ["steps", "sampler_name", ""]
