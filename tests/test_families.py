"""Model families: a checkpoint's family from its metadata, its name or a guess; native sizes."""

from __future__ import annotations

import pytest

from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.families import family_from_metadata, find_family, native_size_note

SDXL_SPEC = {"modelspec.architecture": "stable-diffusion-xl-v1-base", "modelspec.sai_model_spec": "1.0.0"}


@pytest.mark.parametrize(("checkpoint", "metadata", "family", "source"), [
    ("anything.safetensors", SDXL_SPEC, "sdxl", "server"),
    ("anything-xl.safetensors", {"modelspec.architecture": "stable-diffusion-v1"}, "sd15", "server"),
    ("anything.safetensors", {"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd15", "server"),
    ("trained.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl", "server"),
    ("trained.safetensors", {"ss_base_model_version": "sd_v1"}, "sd15", "server"),
    ("v1-5-pruned-emaonly.safetensors", None, "sd15", "known"),
    ("sd_xl_base_1.0.safetensors", {"format": "pt"}, "sdxl", "known"),
    ("juggernautXL_v9.safetensors", None, "sdxl", "guess"),
    ("sdxl/realvis.safetensors", None, "sdxl", "guess"),
    ("ponyDiffusionV6.safetensors", None, "sdxl", "guess"),
    ("pixelart.safetensors", None, "sd15", "guess"),
    ("dreamshaper_8.safetensors", {}, "sd15", "guess"),
])
def test_family_comes_from_metadata_then_a_known_name_then_a_guess(checkpoint, metadata, family, source) -> None:
    finding = find_family(checkpoint, metadata)
    assert (finding.family, finding.source) == (family, source)
    assert bool(finding.note) == (source == "guess")
    if finding.note:
        assert checkpoint in finding.note and "--set model_family=" in finding.note


@pytest.mark.parametrize("architecture", ["stable-diffusion-xl-v1-refiner", "stable-diffusion-v3-medium", "flux-1-dev"])
def test_a_model_the_templates_cannot_run_is_refused_by_name(architecture) -> None:
    with pytest.raises(ParameterError, match=f"'odd.safetensors' is a {architecture} model"):
        family_from_metadata("odd.safetensors", {"modelspec.architecture": architecture})


@pytest.mark.parametrize(("family", "width", "height", "expected"), [
    ("sd15", 512, 512, ""), ("sd15", 512, 768, ""), ("sdxl", 1024, 1024, ""), ("sdxl", 832, 1216, ""),
    ("sd15", 1024, 1024, "far from SD1.5's native 512x512 (expect repeated subjects): try width=512 height=512, "
                         "or a SDXL checkpoint"),
    ("sdxl", 512, 512, "far from SDXL's native 1024x1024 (expect lost detail): try width=1024 height=1024, "
                       "or a SD1.5 checkpoint"),
    ("sd15", 96, 64, "far from SD1.5's native 512x512 (expect lost detail): try width=624 height=416"),
])
def test_a_size_far_from_the_native_one_is_noted(family, width, height, expected) -> None:
    note = native_size_note(family, width, height)
    assert note.endswith(expected) if expected else note == ""
    if expected:
        assert f"{width}x{height}" in note
