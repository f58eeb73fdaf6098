"""The workflows' parameter models: documented defaults, server ranges, friendly names, sizes, families."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_orchestrator import params
from comfy_orchestrator.denoise_guide import DENOISE_GUIDE
from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.params import (
    WORKFLOWS,
    HiresFix,
    Img2Img,
    PhotoRestoration,
    SizeRoundedWarning,
)


def test_documented_defaults() -> None:
    fields = Img2Img.model_fields
    assert (fields["denoise"].default, fields["steps"].default, fields["cfg"].default) == (0.5, 20, 8.0)
    assert (fields["sampler"].default, fields["scheduler"].default) == ("euler", "normal")
    assert PhotoRestoration.model_fields["sampler"].default == "ddim"
    assert WORKFLOWS["upscale"].model_fields["scale_by"].default == 2.0
    assert WORKFLOWS["variations"].model_fields["batch_size"].default == 4
    assert HiresFix.model_fields["upscale_by"].default == 2.0


@pytest.mark.parametrize(("values", "message"), [
    ({"denoise": 1.5}, r"denoise=1.5: .*less than or equal to 1 \(allowed 0.0 to 1.0"),
    ({"denoise": -0.1}, "denoise=-0.1"),
    ({"steps": 0}, "steps=0: .*greater than or equal to 1"),
    ({"sampler": "dpm++ 9m"}, "sampler='dpm\\+\\+ 9m': unknown sampler"),
    ({"scheduler": "fast"}, "scheduler='fast': unknown scheduler; valid: simple"),
    ({"sampler": "dpm++ 2m karras", "scheduler": "normal"}, "implies scheduler 'karras'"),
    ({"upscale_method": "magic"}, "upscale_method='magic'"),
    ({"denoize": 0.3}, "no parameter 'denoize'; did you mean 'denoise'"),
    ({"seed": -1}, "seed=-1"),
    ({"denoise": "strong"}, "denoise='strong'"),
    ({"image": "missing.png"}, "image file 'missing.png' does not exist"),
])
def test_bad_values_name_the_parameter(values, message, sample_image) -> None:
    with pytest.raises(ParameterError, match=message):
        Img2Img.build({"image": str(sample_image), **values})


def test_image_is_required() -> None:
    with pytest.raises(ParameterError, match=r"image is required \(the input picture"):
        Img2Img.build({})


def test_strings_from_the_command_line_are_converted(sample_image) -> None:
    params = Img2Img.build({"image": str(sample_image), "denoise": "0.6", "steps": "25", "cfg": "7"})
    assert (params.denoise, params.steps, params.cfg) == (0.6, 25, 7.0)


def test_sizes_round_down_with_a_warning_or_fail_in_strict_mode(sample_image) -> None:
    with pytest.warns(SizeRoundedWarning, match="width=513 rounded down to 512"):
        assert Img2Img.build({"image": str(sample_image), "width": 513}).width == 512
    with pytest.raises(ParameterError, match="multiple of 8"):
        Img2Img.build({"image": str(sample_image), "width": 513}, strict_sizes=True)
    with pytest.raises(ParameterError, match="height=100"):
        HiresFix.build({"height": 100}, strict_sizes=True)


@pytest.mark.parametrize("band", DENOISE_GUIDE)
def test_denoise_guide_effects_give_their_range(band, sample_image) -> None:
    params = Img2Img.build({"image": str(sample_image), "denoise": band.name})
    assert band.low <= params.denoise <= band.high
    assert params.denoise_effect == band


def test_hires_second_pass_size_is_a_multiple_of_8() -> None:
    values = HiresFix.build({"width": 512, "height": 768, "upscale_by": 1.5}).template_values()
    assert (values["hires_width"], values["hires_height"]) == (768, 1152)


@pytest.mark.parametrize(("workflow", "fields"), [
    ("hires-fix", {"width": 1024, "height": 1024}), ("resize", {"height": 1024}),
    ("controlnet", {"width": 1024, "height": 1024}),
])
def test_sizes_a_template_picks_follow_the_family(workflow, fields, sample_image) -> None:
    model = WORKFLOWS[workflow]
    files = {name: str(sample_image) for name in ("image", "control_image") if name in model.model_fields
             and model.model_fields[name].is_required()}
    sdxl = model.build({**files, "checkpoint": "base.safetensors"}, families={"base.safetensors": "sdxl"})
    assert sdxl.model_family == "sdxl"
    assert {name: getattr(sdxl, name) for name in fields} == fields
    sd15 = model.build({**files, "checkpoint": "base.safetensors"}, families={"base.safetensors": "sd15"})
    assert {name: getattr(sd15, name) for name in fields} == {name: 512 for name in fields}
    given = model.build({**files, "checkpoint": "base.safetensors", "model_family": "sdxl",
                         **{name: 768 for name in fields}})
    assert {name: getattr(given, name) for name in fields} == {name: 768 for name in fields}


def test_the_family_the_user_gives_wins_over_the_server(sample_image) -> None:
    params = HiresFix.build({"checkpoint": "base.safetensors", "model_family": "sd15"},
                            families={"base.safetensors": "sdxl"})
    assert (params.model_family, params.width) == ("sd15", 512)


def test_a_guessed_family_is_logged_and_a_known_one_is_not(caplog) -> None:
    with caplog.at_level("WARNING", logger="comfy_orchestrator.params_sampling"):
        assert HiresFix.build({"checkpoint": "my_xl_merge.safetensors"}).model_family == "sdxl"
        assert HiresFix.build({}).model_family == "sd15"  # the default checkpoint is the official SD1.5 file
    assert [record.getMessage() for record in caplog.records] == [
        "model_family of 'my_xl_merge.safetensors' guessed from its name: sdxl (its metadata does not say; "
        "--set model_family=sd15|sdxl to be sure)"]


def test_size_conditioning_needs_sdxl(sample_image) -> None:
    with pytest.raises(ParameterError, match="size_conditioning needs an SDXL checkpoint"):
        Img2Img.build({"image": str(sample_image), "size_conditioning": True})


def test_generation_size_follows_the_resize(sample_image) -> None:
    assert Img2Img.build({"image": str(sample_image)}).generation_size() == (96, 64)
    assert Img2Img.build({"image": str(sample_image), "height": 128}).generation_size() == (192, 128)
    assert Img2Img.build({"image": str(sample_image), "width": 48}).generation_size() == (48, 32)
    assert WORKFLOWS["upscale"].build({"image": str(sample_image)}).generation_size() == (192, 128)
    note = Img2Img.build({"image": str(sample_image), "model_family": "sdxl"}).size_note()
    assert note.startswith("the picture is 96x64, far from SDXL's native 1024x1024")


def _loaded_after(code: str) -> list[str]:
    """The parameter rooms a fresh interpreter has imported after running `code`."""
    script = (f"import sys\n{code}\n"
              "print(sorted(m for m in sys.modules if m.startswith('comfy_orchestrator.params_') and m != "
              "'comfy_orchestrator.params_base'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return ast.literal_eval(done.stdout.strip())


def test_a_workflows_model_is_built_on_first_use_and_only_its_room() -> None:
    head = "from comfy_orchestrator.params import WORKFLOWS, DEFAULT_CHECKPOINT\n"
    assert _loaded_after(head + "assert 'img2img' in WORKFLOWS and len(WORKFLOWS) == len(list(WORKFLOWS)) == 13") == []
    assert _loaded_after(head + "WORKFLOWS['img2img']") == ["comfy_orchestrator.params_sampling"]
    assert _loaded_after(head + "WORKFLOWS['upscale']") == ["comfy_orchestrator.params_img2img",
                                                            "comfy_orchestrator.params_sampling"]
    assert _loaded_after(head + "from comfy_orchestrator.params import ControlSpec") == [
        "comfy_orchestrator.params_sampling", "comfy_orchestrator.params_txt2img"]


def test_every_workflow_name_finds_the_model_of_that_name() -> None:
    assert dict(WORKFLOWS) == {name: model for name, model in WORKFLOWS.items() if model.workflow == name}
    assert WORKFLOWS.get("no-such-workflow") is None and "no-such-workflow" not in WORKFLOWS
    with pytest.raises(KeyError):
        WORKFLOWS["no-such-workflow"]
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchModel'"):
        params.NoSuchModel  # noqa: B018
    exported = {name: getattr(params, name) for name in params.__all__}
    assert all(exported[model.__name__] is model for model in WORKFLOWS.values())
    assert all(getattr(value, "__module__", params.__name__).startswith(params.__name__) for value in exported.values())
