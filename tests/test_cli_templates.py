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
            assert p["type"] in {"int", "float", "str", "bool", "choice", "image"}


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
