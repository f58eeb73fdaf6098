"""Our bounded sandbox writes what Jinja's own sandbox writes, and each value as the JSON encoder writes it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from comfy_orchestrator.errors import TemplateBroken
from comfy_orchestrator.params import WORKFLOWS
from comfy_orchestrator.templates import Template, Templates, builtin_folder
from tests.test_templates import values_for

# a user's template using what a template may: its own macros and the built-in ones, a call block, a loop,
# filters, text joined with ~, a constant, a block set, and autoescaping switched off and by a variable
MIXED = """{% import "_nodes.j2" as n -%}
{% macro pair(a, b) -%}[{{ a }}, {{ b }}]{%- endmacro %}
{% macro wrap() -%}{{ caller() }}{%- endmacro %}
{% set listed %}{{ text }}{% endset -%}
{
{{ n.checkpoint("1", checkpoint) }}
"2": {"class_type": "CLIPTextEncode", "inputs": {"text": {{ text ~ " & " ~ text|upper }}, "clip": {{ pair("1", 1) }}}},
"3": {"class_type": "CLIPTextEncode", "inputs": {"text": {{ listed|length|string }}, "clip": ["1", 1]}},
"4": {"class_type": "EmptyLatentImage", "inputs": {"width": {{ [512, 768][steps % 2] }}, "height": {{ 512 }},
      "batch_size": {% call wrap() %}{{ 1 }}{% endcall %}}},
{% for i in range(2) %}"{{ 5 + i }}": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": {{ i }},
    "steps": {{ steps }}, "cfg": {{ cfg }}, "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
    "negative": ["3", 0], "latent_image": ["4", 0], "denoise": {{ [1.0, cfg / 10]|min }}}},
{% endfor -%}
{% autoescape false %}"7": {"class_type": "VAEDecode", "inputs": {"samples": {{ ["5", 0] }}, "vae": ["1", 2]}},{% endautoescape %}
{% autoescape steps > 0 %}"8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": {{ prefix }}}}{% endautoescape %}
}
"""
MIXED_DECLARATION = {"parameters": [
    {"name": "checkpoint", "type": "str", "default": "random-sd15.safetensors"},
    {"name": "text", "type": "str", "default": 'a "cat" <b> & \u00e9\u2028'},
    {"name": "steps", "type": "int", "default": 21}, {"name": "cfg", "type": "float", "default": 6.5},
    {"name": "prefix", "type": "str", "default": "mixed"}]}


def _stock_render(template: Template, values: dict[str, Any]) -> str:
    """What Jinja's own sandbox, set up as ours, renders: none of _BoundedSandbox's checks in the way."""
    ours = template.environment
    stock = SandboxedEnvironment(loader=ours.loader, undefined=jinja2.StrictUndefined, autoescape=True,
                                 finalize=ours.finalize, keep_trailing_newline=True)
    return stock.get_template(template.source.name).render(values)


def _ours(template: Template, values: dict[str, Any]) -> str:
    return template.environment.get_template(template.source.name).render(values)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_workflow_renders_as_jinjas_own_sandbox_would(name: str, sample_image: Path, second_image: Path,
                                                           tmp_path: Path) -> None:
    template = Templates([builtin_folder()]).get(name)
    params = template.params(values_for(template, sample_image, second_image, lora="x.safetensors",
                                        positive='a "lake" </script> \u00e9', cfg=6.5))
    values = params.template_values({"image": "in-0123.png"})
    assert _ours(template, values) == _stock_render(template, values)


def test_a_users_template_renders_as_jinjas_own_sandbox_would(tmp_path: Path) -> None:
    (tmp_path / "mixed.json.j2").write_text(MIXED)
    (tmp_path / "mixed.params.json").write_text(json.dumps(MIXED_DECLARATION))
    template = Templates([tmp_path, builtin_folder()]).get("mixed")
    for steps in (20, 21):
        values = template.params({"steps": steps}).template_values()
        text = _ours(template, values)
        assert text == _stock_render(template, values)
        assert json.loads(text)["2"]["inputs"]["text"] == 'a "cat" <b> & \u00e9\u2028 & A "CAT" <B> & \u00c9\u2028'
    assert template.render(template.params({})).digest()  # and it validates


@pytest.mark.parametrize("value", [
    "", "a", 'say "hi"\n\t\\', "\u00e9\u2028\u2029\x00", "</script>", 0, -5, 2**70, 0.1, -0.0, 1e300, 1e-7, 6.5,
    math.nan, math.inf, -math.inf, True, False, None, ["4", 0], ["4", 1.5], ["4", True], [1, 2, 3], [], [["a"], 1],
    ("4", 0), {"a": [1, None]}])
def test_each_value_is_written_as_the_json_encoder_writes_it(value: Any) -> None:
    environment = Templates([builtin_folder()]).get("img2img").environment
    written = environment.from_string("{{ value }}").render(value=value)
    assert written == json.JSONEncoder(ensure_ascii=False).encode(value)


@pytest.mark.parametrize("reach", ["n._body_stream", "n.checkpoint._func", "n.checkpoint.__class__",
                                   "n.__class__.__mro__"])
def test_a_template_reaching_for_a_macros_insides_is_refused(reach: str, tmp_path: Path) -> None:
    (tmp_path / "sneaky.json.j2").write_text('{% import "_nodes.j2" as n %}{"1": {"class_type": "SaveImage", '
                                             '"inputs": {"images": {{ ' + reach + ' }}, "filename_prefix": "x"}}}')
    (tmp_path / "sneaky.params.json").write_text(json.dumps({"parameters": []}))
    template = Templates([tmp_path, builtin_folder()]).get("sneaky")
    with pytest.raises(TemplateBroken, match="unsafe|undefined"):
        template.render(template.params({}))
