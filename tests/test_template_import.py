"""Saved workflows become templates: parameters named or proposed, `comfy-orch template import`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from comfy_orchestrator.cli import main
from comfy_orchestrator.errors import ParameterError, WorkflowImportError
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.template_import import (
    Target,
    import_workflow,
    propose_parameters,
    resolve_target,
)
from comfy_orchestrator.templates import Templates
from comfy_orchestrator.workflow_import import Converted, titles_of
from tests.test_workflow_import import SCHEMA, convert, recorded_prompt


@pytest.fixture
def api_workflow(tmp_path: Path, recorded) -> Path:
    prompt = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    prompt["3"]["inputs"]["text"] = "no {{ jinja }} {% here %} {# please #}"
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(prompt))
    return path


def test_api_export_with_named_parameters_renders_the_same_graph(api_workflow, tmp_path, sample_image) -> None:
    folder = tmp_path / "mine"
    imported = import_workflow(api_workflow.read_text(), name="mine", folder=folder, schema=Schema.recorded(),
                               parameters={"denoise": "6.inputs.denoise", "prompt": "2.text", "image": "LoadImage.image"})
    assert imported.format == "api"
    template = Templates([folder]).get("mine")
    params = template.params({"image": str(sample_image), "denoise": 0.25, "prompt": 'say "hi"'})
    graph = template.render(params)
    original = json.loads(api_workflow.read_text())
    expected = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in original.items()}
    expected["6"]["inputs"]["denoise"] = 0.25
    expected["2"]["inputs"]["text"] = 'say "hi"'
    expected["4"]["inputs"]["image"] = graph["4"].inputs["image"]
    assert graph.to_api() == expected
    assert graph["3"].inputs["text"] == "no {{ jinja }} {% here %} {# please #}"
    assert template.parameter_map(params) == {"6.denoise": "denoise", "2.text": "prompt", "4.image": "image"}


def test_declared_ranges_come_from_the_schema(api_workflow, tmp_path) -> None:
    folder = tmp_path / "mine"
    import_workflow(api_workflow.read_text(), name="steps-only", folder=folder, schema=Schema.recorded(),
                    parameters={"steps": "KSampler.steps", "sampler": "6.sampler_name"})
    template = Templates([folder]).get("steps-only")
    with pytest.raises(ParameterError, match="steps=0"):
        template.params({"steps": 0})
    with pytest.raises(ParameterError, match="implies scheduler 'karras', but this template has no scheduler"):
        template.params({"sampler": "dpm++ 2m karras"})  # no scheduler parameter to put karras in
    with pytest.raises(ParameterError, match="sampler"):
        template.params({"sampler": "dpm++ 9z"})
    assert template.params({"steps": 30, "sampler": "dpmpp_2m"})
    assert template.params({"sampler": "DPM++ 2M"}).sampler == "dpmpp_2m"  # type: ignore[attr-defined]


def test_an_imported_template_takes_sampler_names_as_users_say_them(api_workflow, tmp_path, sample_image) -> None:
    import_workflow(api_workflow.read_text(), name="auto", folder=tmp_path, schema=Schema.recorded())
    template = Templates([tmp_path]).get("auto")
    graph = template.render(template.params({"sampler": "dpm++ 2m karras", "image": str(sample_image)}))
    assert (graph["6"].inputs["sampler_name"], graph["6"].inputs["scheduler"]) == ("dpmpp_2m", "karras")
    with pytest.raises(ParameterError, match="implies scheduler 'karras', but scheduler='normal' was given"):
        template.params({"sampler": "dpm++ 2m karras", "scheduler": "normal"})


def test_width_and_height_are_proposed_where_the_sampler_s_latent_gets_its_size(tmp_path) -> None:
    hires = convert("hires_c.json")
    proposal = propose_parameters(hires.prompt, SCHEMA, hires.titles)
    assert (proposal["width"], proposal["height"]) == (("4", "width"), ("4", "height"))  # not the upscale's 1024
    img2img = convert("img2img_a.json")
    proposal = propose_parameters(img2img.prompt, SCHEMA, img2img.titles)
    assert "width" not in proposal and any(line.startswith("width, height: not proposed") for line in proposal.account)
    # a resize before encoding gives the img2img its size; an SDXL text encoder's width is not the picture's
    prompt = json.loads(json.dumps(img2img.prompt))
    prompt["9"] = {"class_type": "ImageScale", "inputs": {"image": ["4", 0], "upscale_method": "lanczos",
                                                          "width": 640, "height": 480, "crop": "disabled"}}
    prompt["5"]["inputs"]["pixels"] = ["9", 0]
    proposal = propose_parameters(prompt, SCHEMA)
    assert (proposal["width"], proposal["height"]) == (("9", "width"), ("9", "height"))
    folder = tmp_path / "hires"
    import_workflow(json.dumps(hires.prompt), name="hires-mine", folder=folder, schema=Schema.recorded())
    template = Templates([folder]).get("hires-mine")
    graph = template.render(template.params({"width": 768, "height": 640}))
    assert (graph["4"].inputs["width"], graph["4"].inputs["height"]) == (768, 640)


def test_without_params_the_usual_ones_are_proposed(api_workflow, tmp_path) -> None:
    imported = import_workflow(api_workflow.read_text(), name="auto", folder=tmp_path, schema=Schema.recorded())
    assert {"seed", "steps", "cfg", "denoise", "positive", "negative", "image", "checkpoint"} <= set(
        imported.parameters)
    assert any(line.startswith("positive = 2.text") for line in imported.account)


@pytest.mark.parametrize(("name", "message"), [("Bad Name", "lower-case"), ("img2img", "built-in")])
def test_bad_template_names(api_workflow, tmp_path, name, message) -> None:
    with pytest.raises(ParameterError, match=message):
        import_workflow(api_workflow.read_text(), name=name, folder=tmp_path, schema=Schema.recorded())


def test_a_target_that_does_not_exist_is_named(api_workflow, tmp_path) -> None:
    with pytest.raises(WorkflowImportError, match="no input 'denoize'"):
        import_workflow(api_workflow.read_text(), name="x", folder=tmp_path, schema=Schema.recorded(),
                        parameters={"denoise": "6.denoize"})


def test_cli_import_then_list_then_render(api_workflow, tmp_path, sample_image) -> None:
    runner = CliRunner()
    folder = tmp_path / "templates"
    done = runner.invoke(main, ["--templates", str(folder), "template", "import", str(api_workflow), "--name", "mine",
                                "--param", "denoise=3.inputs.denoise"])
    assert done.exit_code == 2 and "no input 'denoise'" in done.stderr  # node 3 is a CLIPTextEncode
    done = runner.invoke(main, ["--templates", str(folder), "template", "import", str(api_workflow), "--name", "mine",
                                "--param", "denoise=6.inputs.denoise", "--param", "image=4.image"])
    assert done.exit_code == 0, done.output
    listing = json.loads(runner.invoke(main, ["--templates", str(folder), "templates", "--json"]).stdout)
    mine = next(t for t in listing if t["name"] == "mine")
    assert [p["name"] for p in mine["parameters"]] == ["denoise", "image"]
    done = runner.invoke(main, ["--templates", str(folder), "render", "mine", "--set", f"image={sample_image}",
                                "--set", "denoise=0.8"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["6"]["inputs"]["denoise"] == 0.8


def test_cli_refuses_a_file_of_neither_format(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    done = CliRunner().invoke(main, ["--templates", str(tmp_path), "template", "import", str(bad), "--name", "x"])
    assert done.exit_code == 2 and "neither an editor-format workflow" in done.stderr


def test_cli_imports_the_editor_format(tmp_path, sample_image, recorded) -> None:
    """A normal Save from the editor becomes a template that renders the recorded API prompt."""
    editor_file = Path(__file__).parent / "data" / "editor" / "img2img_a.json"
    runner = CliRunner()
    done = runner.invoke(main, ["--templates", str(tmp_path), "template", "import", str(editor_file),
                                "--name", "from-editor", "--param", "denoise=KSampler.denoise"])
    assert done.exit_code == 0, done.output
    assert "imported editor-format workflow" in done.stdout
    rendered = json.loads(runner.invoke(main, ["--templates", str(tmp_path), "render", "from-editor",
                                               "--set", "denoise=0.6"]).stdout)
    reference = recorded("post_prompt_valid_a")["request"]["body"]["prompt"]
    assert {k: v["inputs"] for k, v in rendered.items()} == {k: v["inputs"] for k, v in reference.items()}


# ---------------------------------------------------------------- naming parameters


@pytest.fixture(scope="module")
def hires() -> Converted:
    return convert("hires_c.json")


@pytest.mark.parametrize(("spec", "target"), [
    ("6.denoise", ("6", "denoise")),
    ("10.inputs.denoise", ("10", "denoise")),  # the API-export form of issue 2
    ("Second Pass.denoise", ("10", "denoise")),  # a title the user gave
    ("Positive Prompt.text", ("2", "text")),
    ("Upscale Latent.width", ("9", "width")),  # a default title (the display name)
    ("LatentUpscale.width", ("9", "width")),  # the only node of its class
    ("EmptyLatentImage.inputs.height", ("4", "height")),
    ("  CheckpointLoaderSimple.ckpt_name ", ("1", "ckpt_name")),
])
def test_resolve_target(hires: Converted, spec: str, target: tuple[str, str]) -> None:
    assert resolve_target(hires.prompt, hires.titles, spec) == Target(*target)


@pytest.mark.parametrize(("spec", "message"), [
    ("KSampler.denoise", r"2 nodes have the class 'KSampler': 6 \(KSampler 'First Pass'\), "
                         r"10 \(KSampler 'Second Pass'\)"),
    ("CLIPTextEncode.text", "2 nodes have the class 'CLIPTextEncode'"),
    ("Nowhere.seed", "no node has the id, title or class 'Nowhere'; nodes: 1 'Load Checkpoint'"),
    ("6.denoize", "KSampler has no input 'denoize' set; its value inputs: seed, steps"),
    ("6.model", "input 'model' is linked from node 1"),
    ("denoise", "is not NODE.INPUT"),
    ("6.", "is not NODE.INPUT"),
])
def test_resolve_target_errors(hires: Converted, spec: str, message: str) -> None:
    with pytest.raises(WorkflowImportError, match=message):
        resolve_target(hires.prompt, hires.titles, spec)


def test_ambiguous_title_lists_the_candidates() -> None:
    blend = convert("blend_f.json")
    with pytest.raises(WorkflowImportError, match=r"2 nodes have the title 'VAE Encode': 5 \(VAEEncode "
                                                  r"'VAE Encode'\), 12 \(VAEEncode 'VAE Encode'\)"):
        resolve_target(blend.prompt, blend.titles, "VAE Encode.pixels")


def test_title_with_dots() -> None:
    prompt = {"3": {"class_type": "KSampler", "inputs": {"steps": 20}}}
    assert resolve_target(prompt, {"3": "SD v1.5 sampler"}, "SD v1.5 sampler.steps") == Target("3", "steps")


def test_resolve_target_on_an_api_prompt_uses_meta_titles() -> None:
    prompt = recorded_prompt("post_prompt_valid_a")
    prompt["2"]["_meta"] = {"title": "Positive"}
    assert resolve_target(prompt, titles_of(prompt, SCHEMA), "Positive.text") == Target("2", "text")
    assert resolve_target(prompt, titles_of(prompt, SCHEMA), "Save Image.filename_prefix") == Target("8", "filename_prefix")


def test_propose_parameters_for_img2img() -> None:
    converted = convert("img2img_a.json")
    proposal = propose_parameters(converted.prompt, SCHEMA, converted.titles)
    assert dict(proposal) == {
        "seed": ("6", "seed"), "steps": ("6", "steps"), "cfg": ("6", "cfg"),
        "sampler": ("6", "sampler_name"), "scheduler": ("6", "scheduler"), "denoise": ("6", "denoise"),
        "positive": ("2", "text"), "negative": ("3", "text"),
        "image": ("4", "image"), "checkpoint": ("1", "ckpt_name"),
    }
    assert any(line.startswith("positive = 2.text") and "feeds positive of node 6" in line
               for line in proposal.account)


def test_propose_parameters_follows_links_not_titles() -> None:
    converted = convert("img2img_a.json")
    prompt = json.loads(json.dumps(converted.prompt))
    sampler = prompt["6"]["inputs"]
    sampler["positive"], sampler["negative"] = sampler["negative"], sampler["positive"]
    proposal = propose_parameters(prompt, SCHEMA, converted.titles)
    assert proposal["positive"] == ("3", "text")  # titled "Negative Prompt", but it feeds positive
    assert proposal["negative"] == ("2", "text")


def test_propose_parameters_through_conditioning_nodes() -> None:
    prompt = recorded_prompt("post_prompt_valid_a")
    prompt["20"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}}
    prompt["6"]["inputs"]["negative"] = ["20", 0]
    proposal = propose_parameters(prompt, SCHEMA)
    assert proposal["positive"] == ("2", "text")
    assert "negative" not in proposal
    assert any("same text feeds positive and negative" in line for line in proposal.account)


def test_propose_parameters_with_two_samplers_and_two_images() -> None:
    hires = convert("hires_c.json")
    proposal = propose_parameters(hires.prompt, SCHEMA, hires.titles)
    assert proposal["seed"] == ("6", "seed")  # the first pass
    assert any("node 10 (KSampler 'Second Pass')" in line for line in proposal.account)
    blend = convert("blend_f.json")
    proposal = propose_parameters(blend.prompt, SCHEMA, blend.titles)
    assert (proposal["image"], proposal["image_2"]) == (("4", "image"), ("11", "image"))


def test_propose_parameters_skips_linked_inputs_and_says_so() -> None:
    prompt = recorded_prompt("post_prompt_valid_a")
    prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    prompt["6"]["inputs"]["seed"] = ["20", 0]
    proposal = propose_parameters(prompt, SCHEMA)
    assert "seed" not in proposal
    assert "seed: not proposed, seed of node 6 (KSampler) is linked from node 20" in proposal.account


def test_propose_parameters_without_a_sampler() -> None:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    proposal = propose_parameters(prompt, SCHEMA)
    assert dict(proposal) == {"image": ("1", "image")}
    assert proposal.account[0].startswith("no sampler")


def test_importing_onto_an_existing_name_asks_for_force(api_workflow, tmp_path) -> None:
    runner = CliRunner()
    args = ["--templates", str(tmp_path), "template", "import", str(api_workflow), "--name", "mine"]
    assert runner.invoke(main, [*args, "--param", "denoise=6.denoise"]).exit_code == 0
    before = (tmp_path / "mine.json.j2").read_text("utf-8")
    again = runner.invoke(main, [*args, "--param", "steps=6.steps"])
    assert again.exit_code == 2 and "a template 'mine' already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "mine.json.j2").read_text("utf-8") == before  # nothing overwritten
    forced = runner.invoke(main, [*args, "--param", "steps=6.steps", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "{{ steps }}" in (tmp_path / "mine.json.j2").read_text("utf-8")
