"""workflow_import: editor-format files become the prompt the editor queues."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.errors import WorkflowImportError
from comfy_orchestrator.graph import Graph, is_link
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.validation import check_prompt
from comfy_orchestrator.workflow_import import (
    Converted,
    detect_format,
    parse_workflow,
    titles_of,
    to_api,
)
from tests.conftest import recorded_exchange

EDITOR = Path(__file__).resolve().parent / "data" / "editor"
SCHEMA = Schema.recorded()

# editor file -> recorded API prompt, and how the file's subgraph ids map onto the recording's
CONVERTS_TO = [
    ("img2img_a.json", "post_prompt_valid_a", {}),
    ("hires_c.json", "post_prompt_c_hires_fix", {}),
    ("variations_d_legacy.json", "post_prompt_d_variations_repeat_latent_batch", {}),
    ("blend_f.json", "post_prompt_f_latent_blend", {}),
    ("tiled_e_subgraph.json", "post_prompt_e_imagescale_lanczos_w0_vaeencodetiled",
     {"40:9": "9", "40:5": "5"}),
]


def load(name: str) -> dict[str, Any]:
    return parse_workflow((EDITOR / name).read_text("utf-8"))


def convert(name: str) -> Converted:
    return to_api(load(name), SCHEMA)


def recorded_prompt(exchange: str) -> dict[str, Any]:
    prompt: dict[str, Any] = recorded_exchange(exchange)["request"]["body"]["prompt"]
    return prompt


def without_meta(prompt: dict[str, Any], renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """The prompt without _meta, with node ids (and links to them) renamed."""
    renamed = renamed or {}

    def rename(value: Any) -> Any:
        return [renamed.get(value[0], value[0]), value[1]] if is_link(value) else value

    return {renamed.get(node_id, node_id): {"class_type": node["class_type"],
                                            "inputs": {k: rename(v) for k, v in node["inputs"].items()}}
            for node_id, node in prompt.items()}


# ---------------------------------------------------------------- editor files -> recorded prompts


@pytest.mark.parametrize(("file", "exchange", "renamed"), CONVERTS_TO)
def test_editor_file_converts_to_the_recorded_prompt(file: str, exchange: str, renamed: dict[str, str]) -> None:
    converted = convert(file)
    assert without_meta(converted.prompt, renamed) == recorded_prompt(exchange)


@pytest.mark.parametrize(("file", "exchange", "renamed"), CONVERTS_TO)
def test_converted_prompt_validates_against_the_recorded_schema(
        file: str, exchange: str, renamed: dict[str, str]) -> None:
    converted = convert(file)
    check = check_prompt(converted.prompt, SCHEMA, input_exists=lambda name: True)
    assert check.ok, check.node_errors
    assert check.outputs == ("8",)
    assert set(Graph.from_api(converted.prompt)) == set(converted.prompt)


def test_seed_control_value_is_skipped_and_noted() -> None:
    converted = convert("img2img_a.json")
    assert converted.prompt["6"]["inputs"]["seed"] == 1001
    assert converted.prompt["6"]["inputs"]["steps"] == 20  # not "randomize": the values did not shift
    assert any("seed is set to 'randomize'" in note and "1001" in note for note in converted.notes)


def test_titles_are_the_users_labels_or_the_display_names() -> None:
    converted = convert("img2img_a.json")
    assert converted.titles["2"] == "Positive Prompt"
    assert converted.titles["4"] == "Input Image"
    assert converted.titles["1"] == "Load Checkpoint"  # never renamed: the class's display name
    assert {nid: node["_meta"]["title"] for nid, node in converted.prompt.items()} == converted.titles
    assert titles_of(converted.prompt) == converted.titles


@pytest.mark.parametrize(("file", "expected_notes"), [
    ("img2img_a.json", ["node 21 (Note) is an editor-only note"]),
    ("hires_c.json", ["node 31 (MarkdownNote) is an editor-only note"]),
    ("blend_f.json", [
        "node 14 (ImageScale) is bypassed",
        "node 15 (PreviewImage) is muted",
        "node 16 (ImageInvert) is muted",
        "node 17 (SaveImage) is left out: its required input 'images' came from node 16, which is muted",
    ]),
    ("variations_d_legacy.json", ["seed is set to 'increment'"]),
])
def test_what_was_left_out_is_noted(file: str, expected_notes: list[str]) -> None:
    notes = convert(file).notes
    for expected in expected_notes:
        assert any(expected in note for note in notes), (expected, notes)


def test_reroute_chain_and_primitive_leave_no_editor_nodes() -> None:
    prompt = convert("hires_c.json").prompt
    assert not {"Reroute", "PrimitiveNode", "MarkdownNote", "Note"} & {n["class_type"] for n in prompt.values()}
    assert prompt["6"]["inputs"]["model"] == ["1", 0]  # through Reroutes 22 and 21
    assert prompt["10"]["inputs"]["seed"] == 3003  # from PrimitiveNode 30


def test_bypassed_node_passes_its_input_through() -> None:
    prompt = convert("blend_f.json").prompt
    assert "14" not in prompt
    assert prompt["12"]["inputs"]["pixels"] == ["11", 0]


def test_subgraph_is_expanded_with_host_prefixed_ids_and_promoted_values() -> None:
    prompt = convert("tiled_e_subgraph.json").prompt
    assert "40" not in prompt
    assert prompt["40:9"]["inputs"]["image"] == ["4", 0]  # subgraph input from outside
    assert prompt["40:5"]["inputs"]["pixels"] == ["40:9", 0]  # link inside the subgraph
    assert prompt["6"]["inputs"]["latent_image"] == ["40:5", 0]  # subgraph output to outside
    assert prompt["40:5"]["inputs"]["tile_size"] == 512  # the instance's value, not the inner 256


# ---------------------------------------------------------------- detecting the format, bad files


@pytest.mark.parametrize("file", [f for f, _, _ in CONVERTS_TO])
def test_editor_files_are_detected(file: str) -> None:
    assert detect_format((EDITOR / file).read_text("utf-8")) == "editor"


def test_api_prompt_is_detected() -> None:
    prompt = recorded_prompt("post_prompt_valid_a")
    assert detect_format(prompt) == "api"
    assert detect_format(json.dumps(prompt)) == "api"


def test_to_api_refuses_an_api_prompt() -> None:
    with pytest.raises(WorkflowImportError, match="API-format prompt already"):
        to_api(recorded_prompt("post_prompt_valid_a"), SCHEMA)


@pytest.mark.parametrize(("file", "message", "node_id"), [
    ("bad_not_json.json", "not JSON", None),
    ("bad_neither_format.json", "neither an editor-format workflow .* nor an API-format prompt", None),
    ("bad_link_to_missing_node.json", "node 8: input 'images' is linked .* to node 99, which does not exist", "8"),
    ("bad_widget_count.json",
     r"node 6: KSampler has 5 widget values .* expects 7 \(seed, seed's control value, steps, cfg, "
     r"sampler_name, scheduler, denoise\)", "6"),
])
def test_bad_files_give_clear_errors(file: str, message: str, node_id: str | None) -> None:
    text = (EDITOR / file).read_text("utf-8")
    with pytest.raises(WorkflowImportError, match=message) as caught:
        to_api(parse_workflow(text), SCHEMA) if detect_format(text) == "editor" else None
    assert caught.value.node_id == node_id
    assert not caught.value.retryable


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2, 3]", "the JSON is a list, not an object"),
    ("{}", "neither an editor-format workflow"),
    ('{"workflow": {"nodes": []}, "prompt": {}}', "it wraps one"),
    (b"\xff\xfe\x00", "not JSON"),
])
def test_things_that_are_not_workflows(text: str | bytes, message: str) -> None:
    with pytest.raises(WorkflowImportError, match=message):
        detect_format(text)


# ---------------------------------------------------------------- small editor graphs, case by case


def slot(name: str, kind: str, link: int | None, widget: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": kind, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def editor_node(node_id: int, kind: str, widgets: Any = None, *, inputs: list[dict[str, Any]] | None = None,
                outputs: list[tuple[str, str]] = (), mode: int = 0, title: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "type": kind, "pos": [0, 0], "size": [300, 100], "flags": {},
                            "order": 0, "mode": mode, "inputs": inputs or [],
                            "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
                            "properties": {"Node name for S&R": kind}}
    if widgets is not None:
        node["widgets_values"] = widgets
    if title is not None:
        node["title"] = title
    return node


def workflow(*nodes: dict[str, Any], links: list[list[Any]], **extra: Any) -> dict[str, Any]:
    return {"last_node_id": 99, "last_link_id": 99, "nodes": list(nodes), "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4, **extra}


def image_to_save(*middle: dict[str, Any], links: list[list[Any]], save_from: int = 1) -> dict[str, Any]:
    """LoadImage 1 -> ... -> SaveImage 9 (link 90 from `save_from`)."""
    return workflow(
        editor_node(1, "LoadImage", ["photo.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")]),
        *middle,
        editor_node(9, "SaveImage", ["out"], inputs=[slot("images", "IMAGE", 90)]),
        links=[*links, [90, save_from, 0, 9, 0, "IMAGE"]],
    )


def test_primitive_value_goes_into_its_target_over_a_stale_widget_value() -> None:
    data = workflow(
        editor_node(1, "EmptyLatentImage", [640, 512, 1], inputs=[slot("width", "INT", 1, widget=True)],
                    outputs=[("LATENT", "LATENT")]),
        editor_node(2, "PrimitiveNode", [768, "fixed"], outputs=[("INT", "INT")], title="width"),
        editor_node(3, "SaveLatent", ["latents/x"], inputs=[slot("samples", "LATENT", 2)]),
        links=[[1, 2, 0, 1, 0, "INT"], [2, 1, 0, 3, 0, "LATENT"]],
    )
    prompt = to_api(data, SCHEMA).prompt
    assert prompt["1"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}


def test_widget_converted_to_input_takes_the_link() -> None:
    data = workflow(
        editor_node(1, "EmptyLatentImage", [512, 512, 1], inputs=[slot("batch_size", "INT", 1, widget=True)],
                    outputs=[("LATENT", "LATENT")]),
        editor_node(2, "PrimitiveInt", [4, "fixed"], outputs=[("INT", "INT")]),
        editor_node(3, "SaveLatent", ["latents/x"], inputs=[slot("samples", "LATENT", 2)]),
        links=[[1, 2, 0, 1, 0, "INT"], [2, 1, 0, 3, 0, "LATENT"]],
    )
    prompt = to_api(data, SCHEMA).prompt
    assert prompt["1"]["inputs"]["batch_size"] == ["2", 0]
    assert prompt["2"] == {"class_type": "PrimitiveInt", "inputs": {"value": 4},
                           "_meta": {"title": prompt["2"]["_meta"]["title"]}}


@pytest.mark.parametrize("widgets", [["photo.png", "image"], ["photo.png"]])
def test_load_image_with_or_without_the_upload_value(widgets: list[str]) -> None:
    data = image_to_save(links=[])
    data["nodes"][0]["widgets_values"] = widgets
    assert to_api(data, SCHEMA).prompt["1"]["inputs"] == {"image": "photo.png"}


def test_reroute_chain_through_three_reroutes() -> None:
    reroutes = [editor_node(n, "Reroute", None, inputs=[slot("", "*", n)], outputs=[("", "IMAGE")])
                for n in (2, 3, 4)]
    data = image_to_save(*reroutes, links=[[2, 1, 0, 2, 0, "IMAGE"], [3, 2, 0, 3, 0, "IMAGE"],
                                           [4, 3, 0, 4, 0, "IMAGE"]], save_from=4)
    assert to_api(data, SCHEMA).prompt["9"]["inputs"]["images"] == ["1", 0]


def test_reroutes_in_a_loop_are_an_error() -> None:
    data = image_to_save(
        editor_node(2, "Reroute", None, inputs=[slot("", "*", 3)], outputs=[("", "IMAGE")]),
        editor_node(3, "Reroute", None, inputs=[slot("", "*", 2)], outputs=[("", "IMAGE")]),
        links=[[2, 3, 0, 2, 0, "IMAGE"], [3, 2, 0, 3, 0, "IMAGE"]], save_from=3)
    with pytest.raises(WorkflowImportError, match="links loop"):
        to_api(data, SCHEMA)


def test_bypassed_node_without_an_input_of_the_type_leaves_its_consumers_out() -> None:
    # a bypassed VAEEncode has no LATENT input: the editor sends the sampler without latent_image
    data = workflow(
        editor_node(1, "CheckpointLoaderSimple", ["random-sd15.safetensors"],
                    outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
        editor_node(2, "LoadImage", ["photo.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")]),
        editor_node(3, "VAEEncode", None, inputs=[slot("pixels", "IMAGE", 1), slot("vae", "VAE", 2)],
                    outputs=[("LATENT", "LATENT")], mode=4),
        editor_node(4, "SaveLatent", ["latents/x"], inputs=[slot("samples", "LATENT", 3)]),
        editor_node(5, "PreviewImage", None, inputs=[slot("images", "IMAGE", 4)]),
        links=[[1, 2, 0, 3, 0, "IMAGE"], [2, 1, 2, 3, 1, "VAE"], [3, 3, 0, 4, 0, "LATENT"],
               [4, 2, 0, 5, 0, "IMAGE"]],
    )
    converted = to_api(data, SCHEMA)
    assert set(converted.prompt) == {"1", "2", "5"}
    assert any("node 4 (SaveLatent) is left out: its required input 'samples' is linked to nothing"
               in note for note in converted.notes)


def test_muted_node_drops_what_needs_it_but_keeps_other_outputs() -> None:
    data = image_to_save(
        editor_node(2, "ImageInvert", None, inputs=[slot("image", "IMAGE", 2)], outputs=[("IMAGE", "IMAGE")],
                    mode=2),
        editor_node(3, "PreviewImage", None, inputs=[slot("images", "IMAGE", 3)]),
        links=[[2, 1, 0, 2, 0, "IMAGE"], [3, 2, 0, 3, 0, "IMAGE"]], save_from=1)
    converted = to_api(data, SCHEMA)
    assert set(converted.prompt) == {"1", "9"}
    assert check_prompt(converted.prompt, SCHEMA, input_exists=lambda name: True).ok


def subgraph_workflow(host_mode: int) -> dict[str, Any]:
    """LoadImage 1 -> subgraph host 5 (ImageInvert 7 -> ImageFlip 8) -> SaveImage 9."""
    definition = {
        "id": "sub-1", "name": "Invert and flip", "version": 1,
        "inputNode": {"id": -10, "bounding": [0, 0, 100, 60]}, "outputNode": {"id": -20, "bounding": [0, 0, 100, 60]},
        "inputs": [{"id": "a", "name": "image", "type": "IMAGE", "linkIds": [11]},
                   {"id": "b", "name": "flip_method", "type": "COMBO", "linkIds": [13]}],
        "outputs": [{"id": "c", "name": "IMAGE", "type": "IMAGE", "linkIds": [14]}],
        "widgets": [], "groups": [],
        "nodes": [
            editor_node(7, "ImageInvert", None, inputs=[slot("image", "IMAGE", 11)], outputs=[("IMAGE", "IMAGE")]),
            editor_node(8, "ImageFlip", ["x-axis: vertically"],
                        inputs=[slot("image", "IMAGE", 12), slot("flip_method", "COMBO", 13, widget=True)],
                        outputs=[("IMAGE", "IMAGE")]),
        ],
        "links": [
            {"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "IMAGE"},
            {"id": 12, "origin_id": 7, "origin_slot": 0, "target_id": 8, "target_slot": 0, "type": "IMAGE"},
            {"id": 13, "origin_id": -10, "origin_slot": 1, "target_id": 8, "target_slot": 1, "type": "COMBO"},
            {"id": 14, "origin_id": 8, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
        ],
    }
    host = editor_node(5, "sub-1", ["y-axis: horizontally"], inputs=[slot("image", "IMAGE", 2)],
                       outputs=[("IMAGE", "IMAGE")], mode=host_mode)
    data = image_to_save(host, links=[[2, 1, 0, 5, 0, "IMAGE"]], save_from=5)
    data["definitions"] = {"subgraphs": [definition]}
    return data


def test_subgraph_promoted_combo_and_links() -> None:
    prompt = to_api(subgraph_workflow(0), SCHEMA).prompt
    assert prompt["5:7"]["inputs"] == {"image": ["1", 0]}
    assert prompt["5:8"]["inputs"] == {"image": ["5:7", 0], "flip_method": "y-axis: horizontally"}
    assert prompt["9"]["inputs"]["images"] == ["5:8", 0]


def test_bypassed_subgraph_passes_its_input_through() -> None:
    converted = to_api(subgraph_workflow(4), SCHEMA)
    assert set(converted.prompt) == {"1", "9"}
    assert converted.prompt["9"]["inputs"]["images"] == ["1", 0]


def test_muted_subgraph_mutes_its_inside_and_what_needs_it() -> None:
    converted = to_api(subgraph_workflow(2), SCHEMA)
    assert set(converted.prompt) == {"1"}
    assert any("node 9 (SaveImage) is left out" in note for note in converted.notes)


def test_nested_subgraphs_get_one_id_segment_per_level() -> None:
    data = subgraph_workflow(0)
    inner = data["definitions"]["subgraphs"][0]
    outer = {
        "id": "sub-outer", "name": "Wrapped", "version": 1,
        "inputNode": {"id": -10, "bounding": [0, 0, 100, 60]}, "outputNode": {"id": -20, "bounding": [0, 0, 100, 60]},
        "inputs": [{"id": "d", "name": "image", "type": "IMAGE", "linkIds": [21]}],
        "outputs": [{"id": "e", "name": "IMAGE", "type": "IMAGE", "linkIds": [22]}],
        "widgets": [], "groups": [],
        "nodes": [editor_node(3, "sub-1", ["x-axis: vertically"], inputs=[slot("image", "IMAGE", 21)],
                              outputs=[("IMAGE", "IMAGE")])],
        "links": [
            {"id": 21, "origin_id": -10, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "IMAGE"},
            {"id": 22, "origin_id": 3, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
        ],
    }
    data["definitions"]["subgraphs"] = [outer, inner]
    data["nodes"][1]["type"] = "sub-outer"
    data["nodes"][1]["widgets_values"] = []
    prompt = to_api(data, SCHEMA).prompt
    assert prompt["5:3:7"]["inputs"] == {"image": ["1", 0]}
    assert prompt["5:3:8"]["inputs"] == {"image": ["5:3:7", 0], "flip_method": "x-axis: vertically"}
    assert prompt["9"]["inputs"]["images"] == ["5:3:8", 0]
    assert check_prompt(prompt, SCHEMA, input_exists=lambda name: True).ok


def test_unknown_class_names_the_node_and_class() -> None:
    data = image_to_save(editor_node(2, "FancyUpscaler", [2], inputs=[slot("image", "IMAGE", 2)],
                                     outputs=[("IMAGE", "IMAGE")]),
                         links=[[2, 1, 0, 2, 0, "IMAGE"]], save_from=2)
    with pytest.raises(WorkflowImportError, match="node 2: class 'FancyUpscaler' is not in the server's schema"):
        to_api(data, SCHEMA)


def test_legacy_group_node_asks_for_a_subgraph() -> None:
    data = image_to_save(editor_node(2, "workflow>Upscale", [], inputs=[slot("image", "IMAGE", 2)],
                                     outputs=[("IMAGE", "IMAGE")]),
                         links=[[2, 1, 0, 2, 0, "IMAGE"]], save_from=2)
    with pytest.raises(WorkflowImportError, match="legacy group node"):
        to_api(data, SCHEMA)


def test_input_using_an_unlisted_link_is_an_error() -> None:
    data = image_to_save(links=[])
    data["links"] = []
    with pytest.raises(WorkflowImportError, match="node 9: input 'images' uses link 90, which"):
        to_api(data, SCHEMA)


TOY_SCHEMA = Schema({
    "Toy": {
        "input": {"required": {
            "count": ["INT", {"default": 1, "forceInput": True}],
            "mode": [["a", "b"], {"control_after_generate": True}],
            "text": ["STRING", {}],
            "flags": ["STRING", {}],
        }},
        "input_order": {"required": ["count", "mode", "text", "flags"]},
        "output": ["IMAGE"], "output_name": ["IMAGE"], "output_node": True, "display_name": "Toy",
    },
})


@pytest.mark.parametrize(("widgets", "expected"), [
    (["b", "randomize", "hi", "x"], {"mode": "b", "text": "hi", "flags": "x"}),  # today's editor
    ([3, "b", "fixed", "hi", "x"], {"mode": "b", "text": "hi", "flags": "x"}),  # legacy: forceInput kept
    ({"mode": "a", "text": "by name", "flags": "y"}, {"mode": "a", "text": "by name", "flags": "y"}),
    (["a", "fixed", "hi", ["x", "y"]], {"mode": "a", "text": "hi", "flags": {"__value__": ["x", "y"]}}),
])
def test_widget_layouts(widgets: Any, expected: dict[str, Any]) -> None:
    data = workflow(editor_node(1, "Toy", widgets, inputs=[slot("count", "INT", None)]), links=[])
    assert to_api(data, TOY_SCHEMA).prompt["1"]["inputs"] == expected


SEED_SCHEMA = Schema({
    name: {
        "input": {"required": {"seed": ["INT", {"default": 0, **flag}], "steps": ["INT", {"default": 20}]}},
        "input_order": {"required": ["seed", "steps"]},
        "output": ["LATENT"], "output_name": ["LATENT"], "output_node": True, "display_name": name,
    }
    for name, flag in (("Unflagged", {}), ("FlaggedOff", {"control_after_generate": False}))
})


@pytest.mark.parametrize(("kind", "widgets"), [
    ("Unflagged", [42, "increment", 30]),  # an INT named seed gets a control value even without the flag
    ("FlaggedOff", [42, 30]),  # ... unless the schema says it has none
])
def test_seed_control_follows_the_editors_rule(kind: str, widgets: list[Any]) -> None:
    data = workflow(editor_node(1, kind, widgets), links=[])
    assert to_api(data, SEED_SCHEMA).prompt["1"]["inputs"] == {"seed": 42, "steps": 30}


def test_bypassed_sampler_passes_its_latent_input_through() -> None:
    data = load("hires_c.json")
    next(node for node in data["nodes"] if node["id"] == 10)["mode"] = 4
    converted = to_api(data, SCHEMA)
    assert "10" not in converted.prompt
    assert converted.prompt["7"]["inputs"]["samples"] == ["9", 0]  # latent_image, its 5th input
    assert check_prompt(converted.prompt, SCHEMA, input_exists=lambda name: True).ok


def test_control_value_in_the_wrong_place_is_a_count_error() -> None:
    data = workflow(editor_node(1, "Toy", ["b", "hi", "x", "randomize"]), links=[])
    with pytest.raises(WorkflowImportError, match="Toy has 4 widget values"):
        to_api(data, TOY_SCHEMA)
