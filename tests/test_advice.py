"""The guide's troubleshooting as concrete next values, and the sweep that explores them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from PIL import Image

from comfy_orchestrator.advice import advise, out_of_memory_advice
from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.params import WORKFLOWS
from comfy_orchestrator.sweep import parse_axis


def params(workflow: str, image: Path, **values: object):  # type: ignore[no-untyped-def]
    files = {name: str(image) for name in ("image", "image2", "control_image") if name in WORKFLOWS[workflow].model_fields}
    return WORKFLOWS[workflow].build({**files, "seed": 7, **values})


def test_too_much_change_lowers_denoise_and_cfg_and_picks_ddim(sample_image) -> None:
    advice = advise("too-much-change", "img2img", params("img2img", sample_image, denoise=0.65, cfg=9))
    assert advice.axes == ("denoise=0.35,0.45,0.55", "cfg=6,7")
    assert advice.sets["sampler"] == "ddim"
    assert advice.remedies == ("lower denoise from 0.65 to 0.35, 0.45, 0.55 (the guide says about 0.4)",
                               "lower CFG from 9 to 6, 7 (the guide says 6-7)",
                               "sample with ddim instead of euler")


def test_not_enough_change_raises_denoise_cfg_and_steps(sample_image) -> None:
    advice = advise("not-enough-change", "img2img", params("img2img", sample_image, denoise=0.5, cfg=8, steps=20))
    assert advice.axes == ("denoise=0.7,0.8", "cfg=9,11")
    assert advice.sets["steps"] == "30"
    already = advise("not-enough-change", "img2img", params("img2img", sample_image, denoise=0.85, cfg=10, steps=35))
    assert already.axes == ("denoise=0.95,1", "cfg=11,12") and "steps" in already.sets  # kept, not raised
    assert already.sets["steps"] == "35"


def test_artifacts_try_the_servers_other_vaes_and_sizes_in_multiples_of_8(tmp_path) -> None:
    odd = tmp_path / "odd.png"
    Image.new("RGB", (515, 509), (20, 30, 40)).save(odd)
    advice = advise("artifacts", "img2img", params("img2img", odd, denoise=0.6, cfg=8),
                    vaes=["pixel_space", "sdxl_vae.safetensors", "ft_mse.safetensors"])
    assert advice.axes == ("vae=sdxl_vae.safetensors,ft_mse.safetensors", "denoise=0.4,0.5", "cfg=6,7")
    assert (advice.sets["width"], advice.sets["height"]) == ("512", "504")
    assert "use multiples of 8: width=512 height=504" in advice.summary()
    without = advise("artifacts", "img2img", params("img2img", odd, denoise=0.6, cfg=8))
    assert without.axes == ("denoise=0.4,0.5", "cfg=6,7")
    assert "--set vae=FILE" in without.summary()


def test_artifacts_name_a_size_far_from_the_family(sample_image) -> None:
    advice = advise("artifacts", "img2img", params("img2img", sample_image, model_family="sdxl"))
    assert "far from SDXL's native 1024x1024" in advice.summary()


@pytest.mark.parametrize(("workflow", "values", "template", "axes", "sets"), [
    ("variations", {"batch_size": 8}, "variations", ("batch_size=2,4", "width=64,72"), {"height": "0"}),
    ("img2img", {}, "tiled", ("tile_size=256,512", "width=64,72"), {"height": "0"}),
    ("style-transfer", {}, "tiled", ("tile_size=256,512", "width=64,72"), {"denoise": "0.6", "cfg": "9"}),
    ("tiled", {"tile_size": 1024}, "tiled", ("tile_size=256,512", "width=64,72"), {}),
    ("upscale", {}, "upscale", ("scale_by=1,1.5",), {}),
    ("hires-fix", {"model_family": "sdxl"}, "hires-fix", (), {"width": "768", "height": "768"}),
])
def test_out_of_memory_names_the_next_batch_tile_and_scale(workflow, values, template, axes, sets,
                                                           sample_image) -> None:
    advice = advise("out-of-memory", workflow, params(workflow, sample_image, **values))
    assert advice.template == template
    assert advice.axes == axes
    assert {name: advice.sets[name] for name in sets} == sets


def test_the_sweep_repeats_the_job_but_for_the_remedies(sample_image) -> None:
    job = params("style-transfer", sample_image, positive="a harbour at dusk", checkpoint="base.safetensors",
                 model_family="sdxl", vae="sdxl_vae.safetensors")
    advice = advise("too-much-change", "style-transfer", job)
    assert advice.sets == {"positive": "a harbour at dusk", "checkpoint": "base.safetensors", "seed": "7",
                           "sampler": "ddim", "model_family": "sdxl", "vae": "sdxl_vae.safetensors",
                           "image": str(sample_image)}
    words = shlex.split(advice.command(out="out dir", server="http://gpu:8188"))
    assert words[:3] == ["comfy-orch", "sweep", "style-transfer"]
    assert words[-4:] == ["--server", "http://gpu:8188", "--out", "out dir"]
    assert "positive=a harbour at dusk" in words
    axes = [parse_axis(words[i + 1]) for i, word in enumerate(words) if word == "--axis"]
    assert [(axis.name, axis.values) for axis in axes] == [("denoise", (0.3, 0.4, 0.5)), ("cfg", (6, 7))]


def test_a_template_without_denoise_and_cfg_gets_no_advice(sample_image) -> None:
    from comfy_orchestrator.params_base import Params

    class Plain(Params):
        workflow = "plain"

    with pytest.raises(ParameterError, match="has no denoise and cfg"):
        advise("artifacts", "plain", Plain.build({}))


def test_out_of_memory_advice_for_a_failed_job(sample_image) -> None:
    job = params("variations", sample_image, batch_size=4).model_dump(mode="json")
    text = out_of_memory_advice("variations", job)
    assert text is not None
    assert text.startswith("make smaller batches: batch_size 1, 2 instead of 4; scale the input down from 96x64")
    assert "comfy-orch sweep variations" in text and "--axis batch_size=1,2" in text
    assert out_of_memory_advice("my-own-template", job) is None
    assert out_of_memory_advice("variations", {**job, "image": "/gone.png"}) is None  # the general advice stands
