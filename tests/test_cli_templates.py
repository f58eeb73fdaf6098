"""`comfy-orch templates`, `render` and `denoise-guide` as a user meets them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from comfy_orchestrator.cli import main
from comfy_orchestrator.params import WORKFLOWS


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_templates_json_lists_every_workflow_with_typed_parameters(runner) -> None:
    done = runner.invoke(main, ["templates", "--json"])
    assert done.exit_code == 0, done.output
    listing = json.loads(done.stdout)
    assert {t["name"] for t in listing} >= set(WORKFLOWS)
    img2img = next(t for t in listing if t["name"] == "img2img")
    params = {p["name"]: p for p in img2img["parameters"]}
    assert params["denoise"] == {**params["denoise"], "type": "float", "default": 0.5, "min": 0.0, "max": 1.0}
    assert params["image"]["type"] == "image" and params["image"]["default"] is None
    assert params["sampler"]["type"] == "choice" and "dpmpp_2m" in params["sampler"]["choices"]
    assert params["upscale_method"]["choices"] == ["lanczos", "bicubic", "nearest-exact", "bilinear", "area"]
    for entry in listing:
        for p in entry["parameters"]:
            assert set(p) >= {"name", "type", "default", "min", "max", "choices", "description"}
            assert p["type"] in {"int", "float", "str", "bool", "choice", "image", "list"}


def test_templates_shows_one_template_in_detail(runner) -> None:
    done = runner.invoke(main, ["templates", "style-transfer"])
    assert done.exit_code == 0
    assert "recommended" in done.stdout and "0.5..0.7" in done.stdout


def test_render_prints_api_json(runner, sample_image) -> None:
    done = runner.invoke(main, ["render", "img2img", "--set", f"image={sample_image}", "--set", "denoise=0.7",
                                "--set", "sampler=dpm++ 2m karras"])
    assert done.exit_code == 0, done.output
    prompt = json.loads(done.stdout)
    assert prompt["6"]["inputs"]["denoise"] == 0.7
    assert prompt["6"]["inputs"]["scheduler"] == "karras"


def test_render_writes_a_file(runner, sample_image, tmp_path) -> None:
    target = tmp_path / "prompt.json"
    done = runner.invoke(main, ["render", "hires-fix", "-o", str(target)])
    assert done.exit_code == 0
    assert json.loads(target.read_text())["9"]["inputs"]["width"] == 1024


@pytest.mark.parametrize(("args", "message"), [
    (["render", "img2img", "--set", "image={img}", "--set", "denoise=1.5"], "denoise='1.5'"),
    (["render", "img2img", "--set", "image={img}", "--set", "steps=0"], "steps='0'"),
    (["render", "img2img", "--set", "image={img}", "--set", "sampler=dpm++ 9m"], "unknown sampler"),
    (["render", "img3img"], "no template named 'img3img'"),
    (["render", "img2img", "--set", "image=nowhere.png"], "image file 'nowhere.png' does not exist"),
    (["render", "img2img", "--set", "image={img}", "--set", "width=513", "--strict"], "multiple of 8"),
    (["render", "img2img", "--set", "denoise"], "--set expects NAME=VALUE"),
    (["templates", "nope"], "no template named 'nope'"),
    (["denoise-guide", "huge"], "no effect named 'huge'"),
])
def test_bad_input_is_one_line_and_exit_2(runner, sample_image, args, message) -> None:
    done = runner.invoke(main, [a.replace("{img}", str(sample_image)) for a in args])
    assert done.exit_code == 2, done.output
    assert message in done.stderr
    assert "Traceback" not in done.output
    assert len(done.stderr.strip().splitlines()) == 1


def test_rounding_is_a_warning_not_an_error(runner, sample_image) -> None:
    done = runner.invoke(main, ["render", "img2img", "--set", f"image={sample_image}", "--set", "width=513"])
    assert done.exit_code == 0
    assert "rounded down to 512" in done.stderr
    assert json.loads(done.stdout)["9"]["inputs"]["width"] == 512


def test_denoise_guide(runner) -> None:
    done = runner.invoke(main, ["denoise-guide"])
    assert done.exit_code == 0
    for name in ("minimal", "moderate", "significant", "major", "new"):
        assert name in done.stdout
    assert "0.3-0.5" in runner.invoke(main, ["denoise-guide", "moderate"]).stdout


def test_templates_folder_comes_from_the_environment(runner, tmp_path, monkeypatch) -> None:
    """$COMFY_ORCH_TEMPLATES (read through the CLI's settings) names user folders, searched first."""
    (tmp_path / "mine.json.j2").write_text('{"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": '
                                           '{{ prefix }}}}}')
    (tmp_path / "mine.params.json").write_text(json.dumps(
        {"description": "a template of my own", "parameters": [{"name": "prefix", "type": "str", "default": "m"}]}))
    monkeypatch.setenv("COMFY_ORCH_TEMPLATES", str(tmp_path))
    done = runner.invoke(main, ["templates", "--json"])
    assert done.exit_code == 0, done.output
    assert "mine" in {t["name"] for t in json.loads(done.stdout)}
    monkeypatch.delenv("COMFY_ORCH_TEMPLATES")
    done = runner.invoke(main, ["templates", "--json"])
    assert "mine" not in {t["name"] for t in json.loads(done.stdout)}


@pytest.mark.parametrize("columns", ["80", "200"])
def test_one_template_reads_well_at_80_columns_and_in_a_pipe(runner, columns: str) -> None:
    done = runner.invoke(main, ["templates", "img2img"], env={"COLUMNS": columns})
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert max(len(text) for text in lines) <= int(columns)
    blocks = {text.split()[0]: text for text in lines if text.startswith("  ") and not text.startswith("    ")}
    assert blocks["lora_clip_strength"].split(None, 1)[1].startswith("float or none, -100..100")
    assert blocks["more_loras"].split(None, 1)[1].startswith("list")
    assert "one of 44 (--choices sampler)" in blocks["sampler"] and 'default "euler"' in blocks["sampler"]
    assert "recommended 0.3..0.7" in blocks["denoise"] and "required" in blocks["image"]
    assert "18446744073709551615" in blocks["seed"]  # never cut


def test_templates_json_says_which_parameters_take_none_and_lists(runner) -> None:
    done = runner.invoke(main, ["templates", "--json", "img2img"])
    params = {p["name"]: p for p in json.loads(done.stdout)[0]["parameters"]}
    assert params["lora_clip_strength"]["type"] == "float" and params["lora_clip_strength"]["optional"]
    assert params["more_loras"]["type"] == "list" and not params["denoise"]["optional"]


def test_choices_lists_every_value_one_a_line(runner) -> None:
    done = runner.invoke(main, ["templates", "img2img", "--choices", "sampler"])
    assert done.exit_code == 0
    assert "dpmpp_2m" in done.stdout.splitlines() and len(done.stdout.splitlines()) == 44
    assert "karras" in runner.invoke(main, ["templates", "img2img", "--choices", "scheduler"]).stdout.split()
    for args, message in ((["img2img", "--choices", "denoise"], "img2img's denoise is a float, not a choice"),
                          (["img2img", "--choices", "nope"], "img2img has no parameter 'nope'"),
                          (["--choices", "sampler"], "--choices needs one TEMPLATE")):
        refused = runner.invoke(main, ["templates", *args])
        assert refused.exit_code == 2 and message in refused.stderr
