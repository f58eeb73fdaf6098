"""Provenance chunks: A1111's `parameters` text as other tools read it, and inputs recorded without paths."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_orchestrator.jobs import Job
from comfy_orchestrator.provenance import (
    A1111_KEY,
    a1111_parameters,
    portable_params,
    provenance_chunk,
    provenance_record,
    read_provenance,
)
from comfy_orchestrator.templates import Templates

# A1111's own parser (modules/infotext_utils.py): the last line is "Key: value, Key: "quoted, value", ...".
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict[str, str]:
    """Read a `parameters` text the way A1111 (and Civitai after it) does."""
    *lines, last = text.strip().split("\n")
    found = {"Prompt": "", "Negative prompt": ""}
    target = "Prompt"
    for line in lines:
        if line.startswith("Negative prompt:"):
            target, line = "Negative prompt", line[len("Negative prompt:"):].strip()
        found[target] = (found[target] + "\n" + line).strip()
    for key, value in A1111_PARAM.findall(last):
        found[key] = value[1:-1].replace('\\"', '"') if value.startswith('"') else value
    return found


def _saved_png(chunk: bytes) -> bytes:
    """A PNG with `chunk` put before IEND, as the client does while downloading."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[:-12] + chunk + data[-12:]


def _job(library: Templates, image: Path, **values: Any) -> Job:
    template = library.get(values.pop("template", "img2img"))
    return template.job(template.params({"image": str(image), **values}))


def test_an_img2img_image_carries_a1111_parameters_pillow_and_a1111_read(library: Templates,
                                                                           sample_image: Path) -> None:
    job = _job(library, sample_image, positive="a lake, at dusk", negative="blurry", seed=42, steps=25, cfg=7.5,
               sampler="dpm++ 2m karras", denoise=0.55)
    record = provenance_record(job, prompt_id="p", server="http://gpu-1", comfyui_version="0.8.0")
    with Image.open(io.BytesIO(_saved_png(provenance_chunk(record)))) as image:
        text = image.text[A1111_KEY]  # type: ignore[attr-defined]
    seen = parse_a1111(text)
    assert seen["Prompt"] == "a lake, at dusk" and seen["Negative prompt"] == "blurry"
    assert seen["Steps"] == "25" and seen["Sampler"] == "DPM++ 2M Karras" and seen["CFG scale"] == "7.5"
    assert seen["Seed"] == "42" and seen["Denoising strength"] == "0.55"
    assert seen["Model"] == Path(job.params["checkpoint"]).stem


def test_txt2img_gives_the_size_and_no_denoise(library: Templates) -> None:
    job = library.get("hires-fix").job(library.get("hires-fix").params({"seed": 7}))
    seen = parse_a1111(a1111_parameters(job.graph.to_api()) or "")
    assert seen["Size"] == "512x512" and seen["Seed"] == "7" and "Denoising strength" not in seen
    assert seen["Sampler"] == "Euler"


def test_a_prompt_latin1_cannot_hold_goes_into_an_itxt_chunk(library: Templates, sample_image: Path) -> None:
    job = _job(library, sample_image, positive="富士山, 桜 🌸", seed=3)
    record = provenance_record(job, prompt_id="p", server="http://gpu-1", comfyui_version=None)
    data = _saved_png(provenance_chunk(record))
    assert b"iTXtparameters" in data
    with Image.open(io.BytesIO(data)) as image:
        assert parse_a1111(image.text[A1111_KEY])["Prompt"] == "富士山, 桜 🌸"  # type: ignore[attr-defined]
    assert read_provenance(data) == record


def test_a_graph_without_a_sampler_gets_no_parameters() -> None:
    assert a1111_parameters({"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}) is None


@pytest.mark.parametrize(("params", "expected", "inputs"), [
    ({"image": "/home/me/photos/a.png", "seed": 1}, {"image": "a.png", "seed": 1},
     {"image": {"file": "a.png", "content": "a-0123.png"}}),
    ({"more_controls": [{"image": "/home/me/c.png", "strength": 1}]}, {"more_controls": [{"image": "c.png",
                                                                                          "strength": 1}]},
     {"more_controls.0.image": {"file": "c.png", "content": "c-0123.png"}}),
    ({"positive": "/home/me/photos/a.png is not an input here"}, {"positive": "/home/me/photos/a.png is not an "
                                                                               "input here"}, {}),
])
def test_portable_params_name_inputs_by_file_and_content(params: dict[str, Any], expected: dict[str, Any],
                                                         inputs: dict[str, Any]) -> None:
    uploads = {"a-0123.png": Path("/home/me/photos/a.png"), "c-0123.png": Path("/home/me/c.png")}
    assert portable_params(params, uploads) == (expected, inputs)


def test_the_record_keeps_no_path_of_this_machine(library: Templates, sample_image: Path) -> None:
    job = _job(library, sample_image)
    record = provenance_record(job, prompt_id="p", server="http://gpu-1", comfyui_version=None)
    assert str(sample_image.parent) not in repr(record)
    assert record["parameters"]["image"] == sample_image.name
    assert record["inputs"]["image"]["file"] == sample_image.name
