"""The simulated LoRA, ControlNet and inpainting nodes: each template runs and its effect shows in the pixels."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from comfy_orchestrator.errors import PromptRejected
from comfy_orchestrator.farm import Farm
from comfy_orchestrator.input_images import MaskResizedWarning
from comfy_orchestrator.sim.guidance import detect_edges, lora_colour
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_run import run_sweep
from comfy_orchestrator.templates import Templates

pytest.importorskip("aiohttp")

WIDTH, HEIGHT = 96, 64
BOX = (24, 16, 64, 48)  # the masked rectangle (left, top, right, bottom)
OUTLINE = (16, 12, 80, 52)  # the rectangle whose outline the control image draws


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """A smooth gradient, so that any change shows."""
    x = np.linspace(0.1, 0.9, WIDTH, dtype=np.float32)[None, :]
    y = np.linspace(0.2, 0.8, HEIGHT, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, 0 * x + y, (x + y) / 2], axis=-1)
    path = tmp_path / "picture.png"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def box_mask(tmp_path: Path) -> Path:
    path = tmp_path / "mask.png"
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, BOX)
    mask.save(path)
    return path


@pytest.fixture
def holed(picture: Path, tmp_path: Path) -> Path:
    """`picture` with a transparent BOX: LoadImage's MASK (1 - alpha) marks it."""
    path = tmp_path / "holed.png"
    with Image.open(picture) as opened:
        rgba = opened.convert("RGBA")
    alpha = Image.new("L", (WIDTH, HEIGHT), 255)
    alpha.paste(0, BOX)
    rgba.putalpha(alpha)
    rgba.save(path)
    return path


@pytest.fixture
def outline(tmp_path: Path) -> Path:
    """A control image: a white rectangle on black, whose edges lie along OUTLINE."""
    path = tmp_path / "outline.png"
    image = Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0))
    ImageDraw.Draw(image).rectangle(OUTLINE, fill=(255, 255, 255))
    image.save(path)
    return path


def _region(left: int, top: int, right: int, bottom: int, margin: int = 0) -> np.ndarray:
    inside = np.zeros((HEIGHT, WIDTH), dtype=bool)
    inside[max(0, top - margin):bottom + margin, max(0, left - margin):right + margin] = True
    return inside


def _edge_zone() -> np.ndarray:
    """Pixels within 2 of the control rectangle's border."""
    return _region(*OUTLINE, margin=2) & ~_region(OUTLINE[0] + 3, OUTLINE[1] + 3, OUTLINE[2] - 2, OUTLINE[3] - 2)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as opened:
        return np.asarray(opened.convert("RGB"), dtype=np.float32) / 255.0


def _run(client: Any, library: Templates, workflow: str, values: dict[str, Any]) -> np.ndarray:
    template = library.get(workflow)
    result = client.run(template.job(template.params(values)))
    [output] = result.outputs
    image = client.fetch_image(output).convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0


def _change(before: np.ndarray, after: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(after - before).mean(axis=-1)[where].mean())


def test_inpaint_repaints_inside_the_grown_mask_and_keeps_the_rest(comfy: Any, client: Any, library: Templates,
                                                                    picture: Path, box_mask: Path) -> None:
    out = _run(client, library, "inpaint", {"image": str(picture), "mask": str(box_mask), "grow_mask_by": 6})
    before = _pixels(picture)
    assert _change(before, out, _region(*BOX)) > 0.1
    assert _change(before, out, ~_region(*BOX, margin=4)) < 0.005  # outside the grown mask: the input
    grown_band = _region(*BOX, margin=2) & ~_region(*BOX)
    assert _change(before, out, grown_band) > 0.1  # grow_mask_by widened the repainted area
    assert comfy.counters.node_executions["VAEEncodeForInpaint"] == 1


def test_inpaint_without_growing_stops_at_the_mask(client: Any, library: Templates, picture: Path,
                                                   box_mask: Path) -> None:
    out = _run(client, library, "inpaint", {"image": str(picture), "mask": str(box_mask), "grow_mask_by": 0})
    before = _pixels(picture)
    assert _change(before, out, _region(*BOX)) > 0.1
    assert _change(before, out, ~_region(*BOX)) < 0.005


def test_inpaint_from_the_images_transparency(comfy: Any, client: Any, library: Templates, picture: Path,
                                              holed: Path) -> None:
    out = _run(client, library, "inpaint", {"image": str(holed), "grow_mask_by": 0})
    before = _pixels(picture)
    assert _change(before, out, _region(*BOX)) > 0.1
    assert _change(before, out, ~_region(*BOX)) < 0.005
    assert "LoadImageMask" not in comfy.counters.node_executions


def test_a_mask_of_another_size_is_stretched_over_the_image(client: Any, library: Templates, picture: Path,
                                                            tmp_path: Path) -> None:
    half = tmp_path / "half.png"
    small = Image.new("L", (WIDTH // 2, HEIGHT // 2), 0)
    small.paste(255, tuple(v // 2 for v in BOX))
    small.save(half)
    with pytest.warns(MaskResizedWarning):
        out = _run(client, library, "inpaint", {"image": str(picture), "mask": str(half), "grow_mask_by": 0})
    before = _pixels(picture)
    assert _change(before, out, _region(*BOX, margin=-2)) > 0.1
    assert _change(before, out, ~_region(*BOX, margin=2)) < 0.005


def test_partial_inpaint_changes_the_masked_area_by_its_denoise(client: Any, library: Templates, picture: Path,
                                                                box_mask: Path) -> None:
    before = _pixels(picture)
    changes = []
    for denoise in (0.3, 0.8):
        out = _run(client, library, "inpaint-partial", {"image": str(picture), "mask": str(box_mask),
                                                        "denoise": denoise})
        assert _change(before, out, ~_region(*BOX)) < 0.005
        changes.append(_change(before, out, _region(*BOX)))
    assert 0.02 < changes[0] < changes[1]


def test_canny_finds_the_edges_of_a_rectangle_and_nothing_in_flat_areas() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.float32)
    left, top, right, bottom = OUTLINE
    image[top:bottom, left:right] = 1.0
    edges = detect_edges(image, 0.4, 0.8)
    near_border = _region(*OUTLINE, margin=2) & ~_region(left + 2, top + 2, right - 2, bottom - 2)
    assert edges[near_border].sum() > 0.8 * 2 * ((right - left) + (bottom - top))  # the whole outline
    assert edges[~near_border].sum() == 0
    assert edges[top + 10, left - 1:left + 2].sum() == 1  # thinned to one pixel across
    assert detect_edges(image * 0.1, 0.4, 0.8).sum() == 0  # too faint for the thresholds


def _edge_contrast(out: np.ndarray) -> float:
    """How much brighter the output is on the control image's edges than elsewhere."""
    grey = out.mean(axis=-1)
    zone = _edge_zone()
    return float(grey[zone].mean() - grey[~zone].mean())


def test_controlnet_pulls_toward_the_control_edges_by_strength(comfy: Any, client: Any, library: Templates,
                                                               picture: Path, outline: Path) -> None:
    base = {"image": str(picture), "control_image": str(outline), "denoise": 0.8, "seed": 3}
    contrast = {strength: _edge_contrast(_run(client, library, "controlnet", {**base, "control_strength": strength}))
                for strength in (0.0, 0.5, 1.0)}
    assert contrast[1.0] > contrast[0.5] + 0.05 > contrast[0.0] + 0.1
    assert comfy.counters.node_executions["Canny"] == 1  # the control image's edges are computed once, cached
    half = _run(client, library, "controlnet", {**base, "control_strength": 1.0, "end_percent": 0.5})
    assert contrast[0.0] + 0.05 < _edge_contrast(half) < contrast[1.0] - 0.05  # a shorter window pulls less


def test_controlnet_on_txt2img_with_a_ready_made_control_image(client: Any, library: Templates,
                                                               outline: Path) -> None:
    values = {"control_image": str(outline), "preprocess": "none", "width": WIDTH, "height": HEIGHT}
    free = _run(client, library, "controlnet", {**values, "control_strength": 0.0})
    steered = _run(client, library, "controlnet", {**values, "control_strength": 1.0})
    inside = _region(*OUTLINE, margin=-2)
    gain = steered.mean(axis=-1)[inside].mean() - free.mean(axis=-1)[inside].mean()
    loss = steered.mean(axis=-1)[~_region(*OUTLINE, margin=2)].mean() - free.mean(axis=-1)[
        ~_region(*OUTLINE, margin=2)].mean()
    assert gain > 0.1 and loss < -0.1  # toward white inside the rectangle, black outside


def test_lora_strength_shifts_the_picture_toward_the_loras_colour(comfy: Any, client: Any, library: Templates,
                                                                  picture: Path) -> None:
    base = {"image": str(picture), "denoise": 0.8, "seed": 5, "lora": "style.safetensors"}
    outs = {s: _run(client, library, "img2img", {**base, "lora_strength": s}) for s in (0.0, 0.5, 1.0)}
    plain = _run(client, library, "img2img", {**base, "lora": ""})
    assert np.array_equal(outs[0.0], plain)  # strength 0 leaves the model as it was
    colour = lora_colour("style.safetensors")
    distance = [float(np.abs(outs[s].mean(axis=(0, 1)) - colour).sum()) for s in (0.0, 0.5, 1.0)]
    assert distance[0] > distance[1] + 0.03 > distance[2] + 0.06
    moved = [_change(plain, outs[s], np.ones((HEIGHT, WIDTH), dtype=bool)) for s in (0.5, 1.0)]
    assert 0.02 < moved[0] < moved[1]
    other = _run(client, library, "img2img", {**base, "lora": "detail.safetensors", "lora_strength": 1.0})
    assert _change(outs[1.0], other, np.ones((HEIGHT, WIDTH), dtype=bool)) > 0.02  # each LoRA its own shift
    assert comfy.counters.node_executions["LoraLoader"] == 4  # strength 0 ran too (and returned its inputs)


@pytest.mark.parametrize("workflow", ["img2img", "inpaint", "inpaint-partial", "controlnet"])
def test_every_new_template_takes_a_lora(comfy: Any, client: Any, library: Templates, picture: Path,
                                         box_mask: Path, outline: Path, workflow: str) -> None:
    values: dict[str, Any] = {"image": str(picture), "seed": 9}
    if workflow.startswith("inpaint"):
        values["mask"] = str(box_mask)
    if workflow == "controlnet":
        values["control_image"] = str(outline)
    plain = _run(client, library, workflow, values)
    tinted = _run(client, library, workflow, {**values, "lora": "detail.safetensors", "lora_strength": 1.0})
    assert _change(plain, tinted, np.ones((HEIGHT, WIDTH), dtype=bool)) > 0.01
    assert comfy.counters.node_executions["LoraLoader"] == 1


def test_stacked_loras_add_up(client: Any, library: Templates, picture: Path) -> None:
    base = {"image": str(picture), "denoise": 0.8, "seed": 5, "lora": "style.safetensors"}
    one = _run(client, library, "img2img", base)
    two = _run(client, library, "img2img", {**base, "more_loras": ["detail.safetensors:1.0"]})
    assert _change(one, two, np.ones((HEIGHT, WIDTH), dtype=bool)) > 0.02


def test_object_info_lists_the_servers_lora_and_controlnet_files(sim: Any) -> None:
    default, custom = sim(1)[0], sim(1, loras=("mine.safetensors",), controlnets=("depth.pth",))[0]
    lora = requests.get(f"{default.url}/object_info/LoraLoader", timeout=5).json()
    assert lora["LoraLoader"]["input"]["required"]["lora_name"][0] == ["detail.safetensors", "style.safetensors"]
    info = requests.get(f"{custom.url}/object_info", timeout=5).json()
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["mine.safetensors"]
    assert info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] == ["mine.safetensors"]
    assert info["ControlNetLoader"]["input"]["required"]["control_net_name"][0] == ["depth.pth"]
    assert requests.get(f"{custom.url}/models/loras", timeout=5).json() == ["mine.safetensors"]
    assert requests.get(f"{default.url}/api/models/controlnet", timeout=5).json() == [
        "control_v11p_sd15_canny.safetensors"]


def test_the_sim_command_offers_the_given_lora_and_controlnet_files(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "comfy_orchestrator.cli", "sim", "--port", "0", "--root", str(tmp_path),
               "--lora", "a.safetensors", "--lora", "b.safetensors", "--controlnet", "edges.pth"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = re.search(r"http://[\d.]+:\d+", process.stdout.readline())
        assert url is not None
        info = requests.get(f"{url.group(0)}/object_info", timeout=5).json()
        assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["a.safetensors", "b.safetensors"]
        assert info["ControlNetLoader"]["input"]["required"]["control_net_name"][0] == ["edges.pth"]
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_an_unknown_lora_is_rejected_as_the_real_server_does(client: Any, library: Templates,
                                                              picture: Path) -> None:
    template = library.get("img2img")
    job = template.job(template.params({"image": str(picture), "lora": "missing.safetensors"}))
    with pytest.raises(PromptRejected) as caught:
        client.run(job)
    [(node_id, errors)] = caught.value.node_errors.items()
    assert errors["class_type"] == "LoraLoader"
    [error] = errors["errors"]
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "lora_name"
    assert "missing.safetensors" in error["details"] and "detail.safetensors" in error["details"]


def test_an_unknown_controlnet_is_rejected(comfy: Any, library: Templates, picture: Path, outline: Path) -> None:
    template = library.get("controlnet")
    job = template.job(template.params({"image": str(picture), "control_image": str(outline),
                                        "control_net": "missing.pth"}))
    prompt = job.graph.to_api()
    for node in prompt.values():  # the uploads the client would make, so only the ControlNet is wrong
        if node["class_type"] == "LoadImage":
            name = node["inputs"]["image"]
            comfy.add_input(name, next(p for n, p in job.inputs.items() if n == name).read_bytes())
    answer = requests.post(f"{comfy.url}/prompt", data=json.dumps({"prompt": prompt}), timeout=5)
    assert answer.status_code == 400
    [errors] = answer.json()["node_errors"].values()
    assert errors["class_type"] == "ControlNetLoader"
    assert errors["errors"][0]["type"] == "value_not_in_list"


def test_a_lora_strength_by_denoise_sweep_gives_its_labelled_grid(comfy: Any, library: Templates, picture: Path,
                                                                  tmp_path: Path) -> None:
    axes = (parse_axis("lora_strength=0,0.5,1"), parse_axis("denoise=0.3,0.6"))
    sweep = Sweep(library.get("img2img"), axes, {"image": str(picture), "seed": 42, "lora": "detail.safetensors"})
    out = tmp_path / "out"
    report = run_sweep(sweep, out, Farm([comfy.url]))
    assert (report.total, report.done, report.failed) == (6, 6, 0)
    images = sorted((out / "images").iterdir())
    assert len(images) == 6
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()]
    assert sorted((r["values"]["lora_strength"], r["values"]["denoise"]) for r in rows) == [
        (0, 0.3), (0, 0.6), (0.5, 0.3), (0.5, 0.6), (1, 0.3), (1, 0.6)]
    assert sorted(out / f for row in rows for f in row["files"]) == images
    by_cell = {(r["values"]["lora_strength"], r["values"]["denoise"]): _pixels(out / r["files"][0]) for r in rows}
    colour = lora_colour("detail.safetensors")
    for denoise in (0.3, 0.6):  # at each denoise, more LoRA strength moves the picture nearer its colour
        distance = [float(np.abs(by_cell[(s, denoise)].mean(axis=(0, 1)) - colour).sum()) for s in (0, 0.5, 1)]
        assert distance[0] > distance[1] > distance[2]
    [grid] = report.grids
    assert grid.name.endswith(".jpg") and grid.is_file()
    with Image.open(grid) as drawn:
        assert drawn.width > 3 * 64 and drawn.height > 2 * 64  # three columns and two rows of thumbnails
    assert comfy.counters.node_executions["LoraLoader"] == 3  # one per strength; denoise reuses it from cache
