"""Graph reads API-format prompts and refuses malformed ones with clear messages."""

import json

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


def test_the_api_view_is_made_once_and_to_api_gives_a_copy_to_change(recorded) -> None:
    prompt = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    graph = Graph.from_api(prompt)
    view, digest = graph.api_view(), graph.digest()
    assert graph.api_view() is view and view == graph.to_api()
    mine = graph.to_api()
    assert mine is not view
    for entry in mine.values():
        entry["inputs"].clear()  # the caller's copy: the graph is left as it was
    assert graph.api_view() == Graph.from_api(prompt).to_api() and graph.digest() == digest


def test_from_json_reads_what_from_api_reads(recorded) -> None:
    prompt = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    graph = Graph.from_json(json.dumps(prompt))
    assert graph == Graph.from_api(prompt) and graph.digest() == Graph.from_api(prompt).digest()
    assert json.dumps(graph.api_view()) == json.dumps(Graph.from_api(prompt).to_api())  # the same order too
    with pytest.raises(json.JSONDecodeError):
        Graph.from_json('{"1": ')
    with pytest.raises(GraphInvalid, match="links to node '9'"):
        Graph.from_json('{"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}')


def test_a_graphs_keys_values_and_items_are_its_nodes(recorded) -> None:
    graph = Graph.from_api(recorded("post_prompt_valid_a")["request"]["body"]["prompt"])
    assert list(graph.keys()) == list(graph) and list(graph.values()) == [graph[k] for k in graph]
    assert list(graph.items()) == [(k, graph[k]) for k in graph] and ("3", graph["3"]) in graph.items()
