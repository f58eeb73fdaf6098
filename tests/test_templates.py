"""Templates render every documented workflow into graphs the real server accepts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfy_orchestrator.errors import GraphInvalid, TemplateBroken, TemplateNotFound
from comfy_orchestrator.graph import Graph, is_link
from comfy_orchestrator.params import WORKFLOWS
from comfy_orchestrator.params_base import Params
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.templates import Template, Templates, describe_parameters
from comfy_orchestrator.validation import check_prompt


def values_for(template: Template, image: Path, second: Path, **extra: Any) -> dict[str, Any]:
    """The required files of a template: pictures, and a mask that marks something."""
    values: dict[str, Any] = {}
    for name, path in (("image", image), ("image2", second), ("control_image", second), ("mask", second)):
        if name in template.model.model_fields:
            values[name] = str(path)
    return {**values, **extra}


def server_schema(checkpoint: str) -> Schema:
    """The recorded schema as a server that has our checkpoint and ControlNet would list it."""
    return Schema.recorded().with_checkpoints([checkpoint]).with_choices(
        ["ControlNetLoader"], "control_net_name", ["control_v11p_sd15_canny.safetensors"])


def signatures(graph: Graph) -> Counter[str]:
    """Each node described by its class and, recursively, what feeds it: ids do not matter."""
    memo: dict[str, str] = {}

    def describe(node_id: str) -> str:
        if node_id not in memo:
            node = graph[node_id]
            links = sorted(f"{name}<-{describe(source)}#{index}" for name, (source, index) in node.links())
            memo[node_id] = f"{node.class_type}({','.join(links)})"
        return memo[node_id]

    return Counter(describe(node_id) for node_id in graph)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_workflow_renders_with_defaults_and_validates(name, library, sample_image, second_image) -> None:
    template = library.get(name)
    job = template.job(template.params(values_for(template, sample_image, second_image)))
    verdict = check_prompt(job.graph.to_api(), server_schema("v1-5-pruned-emaonly.safetensors"))
    assert verdict.ok, verdict.node_errors
    assert verdict.outputs == ("8",)
    assert job.template == name


def _edges(model: type[Params]) -> list[tuple[str, Any]]:
    cases = []
    for info in describe_parameters(model):
        if info.type in ("int", "float") and info.min is not None and info.max is not None:
            low = info.min
            high = min(info.max, 8192) if info.name in ("width", "height") else info.max
            if info.name in ("width", "height"):
                low = max(low, 8) if low else 0
            if info.name == "tile_size":
                low, high = 64, 4096
            cases += [(info.name, int(low) if info.type == "int" else low),
                      (info.name, int(high) if info.type == "int" else high)]
        if info.choices and info.name != "mask_channel":  # alpha needs a mask with alpha: tested apart
            cases += [(info.name, info.choices[0]), (info.name, info.choices[-1])]
    return cases


@pytest.mark.parametrize(("name", "parameter", "value"), [
    (name, parameter, value) for name, model in sorted(WORKFLOWS.items()) for parameter, value in _edges(model)
])
def test_edge_values_render_and_validate(name, parameter, value, library, sample_image, second_image) -> None:
    template = library.get(name)
    extra = {parameter: value}
    if parameter.startswith("lora_"):
        extra["lora"] = "detail.safetensors"  # strengths act only on a LoRA
    if name == "upscale" and parameter in ("width", "height"):
        extra["scale_by"] = 1.0  # upscale takes a factor or a size, not both
    params = template.params(values_for(template, sample_image, second_image, **extra))
    graph = template.render(params)  # validates against the recorded schema
    assert parameter in template.parameter_map(params).values() or parameter in {
        "width", "height", "upscale_method", "scale_by", "batch_size", "upscale_by", "tile_size", "tile_overlap",
        "preprocess", "grow_mask_by", "model_family"}  # these choose stages or feed derived values
    schema = server_schema(params.checkpoint).with_choices(  # type: ignore[attr-defined]
        ["LoraLoader"], "lora_name", ["detail.safetensors"])
    assert check_prompt(graph.to_api(), schema).ok


@pytest.mark.parametrize(("name", "recorded_name"), [
    ("img2img", "post_prompt_valid_a"),
    ("hires-fix", "post_prompt_c_hires_fix"),
    ("variations", "post_prompt_d_variations_repeat_latent_batch"),
    ("blend", "post_prompt_f_latent_blend"),
])
def test_graph_has_the_shape_of_the_recorded_prompt(name, recorded_name, recorded, library, sample_image, second_image) -> None:
    template = library.get(name)
    graph = template.render(template.params(values_for(template, sample_image, second_image)))
    reference = Graph.from_api(recorded(recorded_name)["request"]["body"]["prompt"])
    assert signatures(graph) == signatures(reference)


def test_resize_keeps_aspect_and_tiled_matches_recorded_e(library, sample_image, recorded) -> None:
    template = library.get("tiled")
    graph = template.render(template.params({"image": str(sample_image), "height": 512}))
    reference = Graph.from_api(recorded("post_prompt_e_imagescale_lanczos_w0_vaeencodetiled")["request"]
                               ["body"]["prompt"])
    # the recording decodes with a plain VAEDecode; our tiled workflow tiles both ends
    ours = Counter(s.replace("VAEDecodeTiled", "VAEDecode") for s in signatures(graph).elements())
    assert ours == signatures(reference)
    assert graph["9"].inputs["width"] == 0 and graph["9"].inputs["height"] == 512


def test_values_land_where_the_documented_workflow_puts_them(library, sample_image) -> None:
    template = library.get("img2img")
    params = template.params({"image": str(sample_image), "denoise": 0.35, "cfg": 7.5, "steps": 25, "seed": 7,
                              "sampler": "dpm++ 2m karras", "positive": "a fox", "negative": "fog"})
    graph = template.render(params)
    sampler = graph.of_class("KSampler")[0].inputs
    assert (sampler["denoise"], sampler["cfg"], sampler["steps"], sampler["seed"]) == (0.35, 7.5, 25, 7)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("dpmpp_2m", "karras")
    texts = {node.id: node.inputs["text"] for node in graph.of_class("CLIPTextEncode")}
    assert texts[sampler["positive"][0]] == "a fox" and texts[sampler["negative"][0]] == "fog"
    encode = graph.of_class("VAEEncode")[0]
    assert graph[encode.inputs["pixels"][0]].class_type == "LoadImage"


def test_upscale_scales_by_two_before_encoding(library, sample_image) -> None:
    template = library.get("upscale")
    graph = template.render(template.params({"image": str(sample_image)}))
    scale = graph.of_class("ImageScaleBy")[0]
    assert scale.inputs["scale_by"] == 2.0
    assert graph.of_class("VAEEncode")[0].inputs["pixels"] == [scale.id, 0]


def test_image_is_named_by_content_and_listed_for_upload(library, sample_image) -> None:
    template = library.get("img2img")
    job = template.job(template.params({"image": str(sample_image)}))
    name = job.graph.of_class("LoadImage")[0].inputs["image"]
    assert job.inputs == {name: sample_image}
    assert name.startswith("input-") and name.endswith(".png")


def test_parameter_map_points_at_the_inputs(library, sample_image) -> None:
    template = library.get("hires-fix")
    mapping = template.parameter_map(template.params({}))
    assert mapping["10.denoise"] == "denoise"
    assert mapping["6.seed"] == "seed" and mapping["10.seed"] == "seed"
    assert mapping["1.ckpt_name"] == "checkpoint"
    assert "6.denoise" not in mapping  # the first pass always runs at 1.0


def test_a_jobs_parameter_map_is_the_one_the_template_works_out(library, sample_image) -> None:
    template = library.get("img2img")
    params = template.params({"image": str(sample_image), "denoise": 0.4})
    job, again = template.job(params), template.job(params)
    image_names = {"image": next(iter(job.inputs))}
    assert dict(job.parameter_map) == template.parameter_map(params, image_names=image_names)
    assert job.parameter_for("6", "denoise") == "denoise" and job.parameter_for("6", "nothing") is None
    assert len(again.parameter_map) == len(job.parameter_map) and job == again  # read or not, the same job
    assert "6.denoise" in repr(job.parameter_map)


def test_validation_error_names_the_parameter(library, sample_image) -> None:
    template = library.get("img2img")
    params = template.params({"image": str(sample_image), "checkpoint": "missing.safetensors"})
    with pytest.raises(GraphInvalid) as caught:
        template.render(params, schema=Schema.recorded())
    assert "parameter 'checkpoint'" in str(caught.value)
    assert "random-sd15.safetensors" in str(caught.value)


SAFE_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)
HOSTILE = ['"}, "99": {"class_type": "SaveImage', "{{ 7*7 }}", "{% raw %}", "\\", "\n\t\r", "\u2028\u2029",
           "</script>", "'; DROP TABLE", "${x}", "\x00"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(text=st.one_of(SAFE_TEXT, st.sampled_from(HOSTILE)), field=st.sampled_from(["positive", "negative",
                                                                                    "filename_prefix"]))
def test_no_string_changes_the_graph_structure(text, field, library, sample_image) -> None:
    template = library.get("img2img")
    if field == "filename_prefix" and not text:
        text = "x"
    baseline = template.render(template.params({"image": str(sample_image)}))
    graph = template.render(template.params({"image": str(sample_image), field: text}))
    assert sorted(graph) == sorted(baseline)
    assert {n: graph[n].class_type for n in graph} == {n: baseline[n].class_type for n in baseline}
    assert {n: dict(graph[n].links()) for n in graph} == {n: dict(baseline[n].links()) for n in baseline}
    target = {"positive": ("2", "text"), "negative": ("3", "text"), "filename_prefix": ("8", "filename_prefix")}
    node_id, input_name = target[field]
    assert graph[node_id].inputs[input_name] == text
    changed = [(n, k) for n in graph for k, v in graph[n].inputs.items() if v != baseline[n].inputs.get(k)]
    assert set(changed) <= {(node_id, input_name)}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(checkpoint=SAFE_TEXT.filter(bool))
def test_checkpoint_text_is_one_json_string(checkpoint, library) -> None:
    template = library.get("hires-fix")
    graph = template.render(template.params({"checkpoint": checkpoint}))
    assert graph["1"].inputs == {"ckpt_name": checkpoint}
    assert all(not isinstance(v, str) or not is_link(v) for v in graph["1"].inputs.values())


def test_unknown_template_lists_the_available_ones(library) -> None:
    with pytest.raises(TemplateNotFound) as caught:
        library.get("img3img")
    assert "img2img" in str(caught.value)


def test_templates_cannot_reach_python_internals(tmp_path) -> None:
    (tmp_path / "sneaky.json.j2").write_text(
        '{"1": {"class_type": "SaveImage", "inputs": {"images": {{ image.__class__.__mro__ }}, '
        '"filename_prefix": "x"}}}')
    (tmp_path / "sneaky.params.json").write_text(json.dumps(
        {"description": "tries to escape the sandbox", "parameters": [{"name": "image", "type": "str", "default": "a"}]}))
    template = Templates.default([tmp_path]).get("sneaky")
    with pytest.raises(TemplateBroken) as caught:
        template.render(template.params({}))
    assert "unsafe" in str(caught.value) or "__class__" in str(caught.value)


def test_a_template_using_an_undeclared_name_is_refused_at_load(tmp_path) -> None:
    (tmp_path / "typo.json.j2").write_text('{"1": {"class_type": "SaveImage", "inputs": {"x": {{ denoize }}}}}')
    (tmp_path / "typo.params.json").write_text(json.dumps({"parameters": [{"name": "denoise", "type": "float",
                                                                            "default": 0.5}]}))
    with pytest.raises(TemplateBroken, match="denoize"):
        Templates.default([tmp_path]).get("typo")


def test_user_folder_is_searched_before_the_builtin_one(tmp_path, sample_image) -> None:
    builtin = Templates.default().get("img2img").source.read_text()
    (tmp_path / "img2img.json.j2").write_text(builtin.replace('"comfy-orch"', '"mine"'))
    library = Templates.default([tmp_path])
    assert library.folders[0] == tmp_path
    assert library.get("img2img").source == tmp_path / "img2img.json.j2"


def test_templates_ship_inside_the_wheel(tmp_path) -> None:
    """The wheel carries templates/ as package data, so an installed package finds them."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path), str(root)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("img2img.json.j2", "_nodes.j2", "hires_fix.json.j2", "blend.json.j2"):
        assert f"comfy_orchestrator/templates/{name}" in names
    assert "comfy_orchestrator/data/object_info.json" in names


# -- model families and a separate VAE ------------------------------------------------------------

SDXL_CHECKPOINT = "random-sdxl.safetensors"


def sdxl_schema(vaes: tuple[str, ...] = ()) -> Schema:
    """The recorded schema as a server with an SDXL checkpoint, our ControlNet and these VAE files lists it."""
    schema = server_schema(SDXL_CHECKPOINT)
    return schema.with_choices(["VAELoader"], "vae_name", vaes) if vaes else schema


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_workflow_renders_and_validates_with_an_sdxl_checkpoint(name, library, sample_image,
                                                                       second_image) -> None:
    template = library.get(name).with_families({SDXL_CHECKPOINT: "sdxl"})
    params = template.params(values_for(template, sample_image, second_image, checkpoint=SDXL_CHECKPOINT))
    assert params.model_family == "sdxl"  # type: ignore[attr-defined]
    job = template.job(params, schema=sdxl_schema())
    assert check_prompt(job.graph.to_api(), sdxl_schema()).ok
    assert job.graph["1"].inputs["ckpt_name"] == SDXL_CHECKPOINT
    sizes = {(node.class_type, key): value for node in job.graph.values()
             for key, value in node.inputs.items() if key in ("width", "height")}
    if name == "hires-fix":
        assert sizes == {("EmptyLatentImage", "width"): 1024, ("EmptyLatentImage", "height"): 1024,
                         ("LatentUpscale", "width"): 2048, ("LatentUpscale", "height"): 2048}
    if name == "resize":
        assert sizes == {("ImageScale", "width"): 0, ("ImageScale", "height"): 1024}


def test_txt2img_controlnet_picks_the_sdxl_size(library, second_image) -> None:
    template = library.get("controlnet").with_families({SDXL_CHECKPOINT: "sdxl"})
    job = template.job(template.params({"checkpoint": SDXL_CHECKPOINT, "control_image": str(second_image)}),
                       schema=sdxl_schema())
    latent = job.graph["5"]
    assert (latent.class_type, latent.inputs["width"], latent.inputs["height"]) == ("EmptyLatentImage", 1024, 1024)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_vae_adds_a_loader_that_every_encode_and_decode_uses(name, library, sample_image, second_image) -> None:
    template = library.get(name)
    plain = template.job(template.params(values_for(template, sample_image, second_image)))
    assert "VAELoader" not in {node.class_type for node in plain.graph.values()}
    job = template.job(template.params(values_for(template, sample_image, second_image, vae="sdxl_vae.safetensors")),
                       schema=sdxl_schema(("sdxl_vae.safetensors",)).with_checkpoints(["v1-5-pruned-emaonly.safetensors"]))
    loaders = [node_id for node_id, node in job.graph.items() if node.class_type == "VAELoader"]
    assert loaders == ["17"]
    assert job.graph["17"].inputs == {"vae_name": "sdxl_vae.safetensors"}
    users = {node_id: node.inputs["vae"] for node_id, node in job.graph.items() if "vae" in node.inputs}
    assert users and all(link == ["17", 0] for link in users.values()), users
    kinds = {job.graph[node_id].class_type for node_id in users}
    assert any(kind.startswith("VAEDecode") for kind in kinds)
    assert any(kind.startswith("VAEEncode") for kind in kinds) or name in ("hires-fix", "controlnet")
    assert job.parameter_map["17.vae_name"] == "vae"


def test_a_vae_the_server_lacks_is_named_as_the_parameter(library, sample_image) -> None:
    template = library.get("img2img")
    params = template.params({"image": str(sample_image), "vae": "missing_vae.safetensors"})
    schema = sdxl_schema(("sdxl_vae.safetensors",)).with_checkpoints(["v1-5-pruned-emaonly.safetensors"])
    with pytest.raises(GraphInvalid, match="parameter 'vae': Value not in list"):
        template.render(params, schema=schema)


@pytest.mark.parametrize("name", ["img2img", "hires-fix", "controlnet", "inpaint", "blend"])
def test_size_conditioning_encodes_the_prompts_with_clip_text_encode_sdxl(name, library, sample_image,
                                                                         second_image) -> None:
    template = library.get(name).with_families({SDXL_CHECKPOINT: "sdxl"})
    values = values_for(template, sample_image, second_image, checkpoint=SDXL_CHECKPOINT, size_conditioning=True,
                        positive="a lighthouse")
    if name == "inpaint":
        values["mask"] = str(second_image)
    params = template.params(values)
    job = template.job(params, schema=sdxl_schema())
    width, height = params.generation_size()  # type: ignore[attr-defined]
    for node_id in ("2", "3"):
        node = job.graph[node_id]
        assert node.class_type == "CLIPTextEncodeSDXL"
        assert (node.inputs["width"], node.inputs["height"]) == (width, height)
        assert (node.inputs["target_width"], node.inputs["target_height"]) == (width, height)
    assert job.graph["2"].inputs["text_g"] == job.graph["2"].inputs["text_l"] == "a lighthouse"
    assert job.parameter_map["2.text_g"] == "positive"


def test_optional_parameters_are_described_by_their_own_type_and_range() -> None:
    infos = {info.name: info for info in describe_parameters(WORKFLOWS["img2img"])}
    family = infos["model_family"]
    assert (family.type, family.choices, family.default, family.required) == ("choice", ("sd15", "sdxl"), None, False)
    clip = infos["lora_clip_strength"]
    assert (clip.type, clip.min, clip.max, clip.required) == ("float", -100, 100, False)
    assert infos["image"].required and not infos["vae"].required
