"""Saved workflows become templates: `comfy-orch template import`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from comfy_orchestrator.cli import main
from comfy_orchestrator.errors import ParameterError, WorkflowImportError
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.templates import Templates, import_workflow


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
    with pytest.raises(ParameterError, match="sampler"):
        template.params({"sampler": "dpm++ 2m karras"})  # a raw ComfyUI list here: its own names only
    assert template.params({"steps": 30, "sampler": "dpmpp_2m"})


def test_without_params_the_usual_ones_are_proposed(api_workflow, tmp_path) -> None:
    imported = import_workflow(api_workflow.read_text(), name="auto", folder=tmp_path, schema=Schema.recorded())
    assert {"seed", "steps", "cfg", "denoise", "prompt", "negative_prompt", "image", "checkpoint"} <= set(
        imported.parameters)
    assert any(line.startswith("prompt = 2.text") for line in imported.account)


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
