"""Graph reads API-format prompts and refuses malformed ones with clear messages."""

import pytest

from comfy_orchestrator.errors import GraphInvalid
from comfy_orchestrator.graph import Graph, is_link


@pytest.mark.parametrize(("value", "expected"), [
    (["4", 0], True), (("4", 1), True), ([4, 0], False), (["4", "0"], False), (["4"], False),
    (["4", 0, 1], False), (["4", True], False), ("4", False), (None, False),
])
def test_is_link(value, expected) -> None:
    assert is_link(value) is expected


def test_round_trip_keeps_every_node(recorded) -> None:
    prompt = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    graph = Graph.from_api(prompt)
    assert graph.to_api() == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert len(graph.digest()) == 64 and graph.digest() == Graph.from_api(prompt).digest()


@pytest.mark.parametrize(("prompt", "message"), [
    ({}, "non-empty JSON object"),
    ([], "non-empty JSON object"),
    ({"1": {"inputs": {}}}, "node 1: needs a string 'class_type'"),
    ({"1": {"class_type": "SaveImage", "inputs": []}}, "'inputs' must be an object"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}, "links to node '9'"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0, 2]}}}, "a link is"),
    ({"nodes": [], "links": []}, "editor format"),
])
def test_malformed_prompts_are_refused(prompt, message) -> None:
    with pytest.raises(GraphInvalid, match=message):
        Graph.from_api(prompt)
