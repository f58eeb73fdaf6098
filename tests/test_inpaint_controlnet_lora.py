"""Inpainting, ControlNet and LoRA: the img2img guide's next steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.input_images import MaskResizedWarning
from comfy_orchestrator.templates import Templates


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    path = tmp_path / "mask.png"
    picture = Image.new("L", (96, 64), 0)
    picture.paste(255, (20, 10, 60, 40))
    picture.save(path)
    return path


@pytest.fixture
def transparent(tmp_path: Path) -> Path:
    path = tmp_path / "hole.png"
    picture = Image.new("RGBA", (96, 64), (90, 120, 200, 255))
    picture.paste((0, 0, 0, 0), (30, 20, 50, 40))
    picture.save(path)
    return path


def test_inpaint_with_a_mask_file_uses_vae_encode_for_inpaint(library: Templates, sample_image, mask) -> None:
    template = library.get("inpaint")
    job = template.job(template.params({"image": str(sample_image), "mask": str(mask), "grow_mask_by": 8}))
    graph = job.graph
    encode = graph.of_class("VAEEncodeForInpaint")[0]
    loader = graph.of_class("LoadImageMask")[0]
    assert encode.inputs["mask"] == [loader.id, 0] and encode.inputs["grow_mask_by"] == 8
    assert graph.of_class("KSampler")[0].inputs["denoise"] == 1.0
    assert set(job.inputs.values()) == {sample_image, mask}  # both uploaded
    assert job.parameter_map[f"{loader.id}.image"] == "mask"


def test_inpaint_from_the_images_alpha(library: Templates, transparent) -> None:
    template = library.get("inpaint")
    graph = template.render(template.params({"image": str(transparent)}))
    assert graph.of_class("VAEEncodeForInpaint")[0].inputs["mask"] == ["4", 1]  # LoadImage's MASK
    assert not graph.of_class("LoadImageMask")


def test_partial_inpaint_keeps_the_content_with_a_noise_mask(library: Templates, sample_image, mask) -> None:
    template = library.get("inpaint-partial")
    graph = template.render(template.params({"image": str(sample_image), "mask": str(mask), "denoise": 0.5}))
    noise_mask = graph.of_class("SetLatentNoiseMask")[0]
    assert graph[noise_mask.inputs["samples"][0]].class_type == "VAEEncode"
    assert graph.of_class("KSampler")[0].inputs["latent_image"] == [noise_mask.id, 0]
    assert graph.of_class("KSampler")[0].inputs["denoise"] == 0.5


def test_mask_edge_cases_are_clear(library: Templates, sample_image, tmp_path, mask) -> None:
    template = library.get("inpaint")
    with pytest.raises(ParameterError, match="no transparency to use as the mask"):
        template.params({"image": str(sample_image)})
    black = tmp_path / "black.png"
    Image.new("L", (96, 64), 0).save(black)
    with pytest.raises(ParameterError, match="marks nothing to repaint"):
        template.params({"image": str(sample_image), "mask": str(black)})
    with pytest.raises(ParameterError, match="has no alpha channel"):
        template.params({"image": str(sample_image), "mask": str(mask), "mask_channel": "alpha"})
    small = tmp_path / "small.png"
    Image.new("L", (32, 32), 255).save(small)
    with pytest.warns(MaskResizedWarning, match="stretches the mask"):
        template.params({"image": str(sample_image), "mask": str(small)})


def test_controlnet_txt2img_with_canny(library: Templates, second_image) -> None:
    template = library.get("controlnet")
    params = template.params({"control_image": str(second_image), "control_strength": 0.7, "end_percent": 0.8})
    graph = template.render(params)
    apply = graph.of_class("ControlNetApplyAdvanced")[0]
    assert graph[apply.inputs["image"][0]].class_type == "Canny"
    assert (apply.inputs["strength"], apply.inputs["end_percent"]) == (0.7, 0.8)
    sampler = graph.of_class("KSampler")[0]
    assert sampler.inputs["positive"] == [apply.id, 0] and sampler.inputs["negative"] == [apply.id, 1]
    assert graph[sampler.inputs["latent_image"][0]].class_type == "EmptyLatentImage"


def test_controlnets_stack_and_ready_made_images_skip_canny(library: Templates, sample_image, second_image) -> None:
    template = library.get("controlnet")
    more = [{"control_net": "depth.safetensors", "image": str(sample_image), "preprocess": "none", "strength": 0.4}]
    params = template.params({"control_image": str(second_image), "image": str(sample_image),
                              "more_controls": json.dumps(more)})
    job = template.job(params)
    graph = job.graph
    first, second = graph.of_class("ControlNetApplyAdvanced")
    assert second.inputs["positive"] == [first.id, 0] and second.inputs["negative"] == [first.id, 1]
    assert graph[second.inputs["image"][0]].class_type == "LoadImage"
    assert graph.of_class("KSampler")[0].inputs["positive"] == [second.id, 0]
    assert graph[graph.of_class("KSampler")[0].inputs["latent_image"][0]].class_type == "VAEEncode"
    assert len(graph.of_class("Canny")) == 1
    assert set(job.inputs.values()) == {sample_image, second_image}


def test_controlnet_window_must_be_ordered(library: Templates, second_image) -> None:
    with pytest.raises(ParameterError, match="start_percent 0.9 is after end_percent 0.2"):
        library.get("controlnet").params({"control_image": str(second_image), "start_percent": 0.9,
                                          "end_percent": 0.2})


@pytest.mark.parametrize("name", ["img2img", "hires-fix", "blend", "inpaint-partial", "controlnet", "variations"])
def test_loras_stack_on_every_template(library: Templates, name, sample_image, second_image, mask) -> None:
    template = library.get(name)
    values = {"lora": "style.safetensors", "lora_strength": 0.6, "more_loras": "detail.safetensors:0.3:0.1"}
    for field, path in (("image", sample_image), ("image2", second_image), ("control_image", second_image),
                        ("mask", mask)):
        if field in template.model.model_fields:
            values[field] = str(path)
    graph = template.render(template.params(values))
    first, second = graph.of_class("LoraLoader")
    assert first.inputs["model"] == ["1", 0] and first.inputs["clip"] == ["1", 1]
    assert (first.inputs["strength_model"], first.inputs["strength_clip"]) == (0.6, 0.6)
    assert second.inputs["model"] == [first.id, 0] and (second.inputs["strength_model"],
                                                        second.inputs["strength_clip"]) == (0.3, 0.1)
    for sampler in graph.of_class("KSampler"):
        assert sampler.inputs["model"] == [second.id, 0]
    for text in graph.of_class("CLIPTextEncode"):
        assert text.inputs["clip"] == [second.id, 1]
