"""Schema: the recorded /object_info, read a class at a time, and its copies."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from comfy_orchestrator.schema import Schema, recorded_classes

RECORDED_TEXT = resources.files("comfy_orchestrator").joinpath("data/object_info.json").read_text("utf-8")


def test_the_recorded_file_read_a_class_at_a_time_is_the_whole_file() -> None:
    whole = json.loads(RECORDED_TEXT)
    classes = recorded_classes(RECORDED_TEXT)
    assert type(classes) is not dict  # read on use: the layout the recording has was found
    assert list(classes) == list(whole) and len(classes) == len(whole) > 500
    assert "KSampler" in classes and "NoSuchNode" not in classes
    assert dict(classes) == whole


@pytest.mark.parametrize("indent", [None, 0, 2, 1])
def test_any_layout_reads_as_the_same_classes(indent: int | None) -> None:
    tricky: dict[str, Any] = {
        "A": {"input": {"required": {"text": ["STRING", {"default": 'two\n "lines", "B": {'}]}}, "output": []},
        'Quote"d, "odd": name': {"description": "ends with a comma,", "output": ["IMAGE"]},
        "Last": {"input": {}, "output_node": True},
    }
    text = json.dumps(tricky, indent=indent)
    assert dict(recorded_classes(text)) == tricky
    assert list(recorded_classes(text + "\n")) == list(tricky)


def test_copies_of_the_recorded_schema_copy_only_the_classes_they_change() -> None:
    schema = Schema.recorded()
    offline = schema.without_file_lists()
    assert offline["CheckpointLoaderSimple"].inputs["ckpt_name"].choices is None
    assert offline.raw["CheckpointLoaderSimple"] is not schema.raw["CheckpointLoaderSimple"]
    assert offline.raw["KSampler"] is schema.raw["KSampler"]  # unchanged: shared, parsed once
    listed = offline.with_checkpoints(["mine.safetensors"])
    assert listed.checkpoints == ("mine.safetensors",) and listed.raw["KSampler"] is schema.raw["KSampler"]
    assert offline["CheckpointLoaderSimple"].inputs["ckpt_name"].choices is None
    assert schema.checkpoints == ("random-sd15.safetensors",)
    assert schema.choices("KSampler", "sampler_name")[0] == "euler"
    assert len(offline) == len(schema) and set(offline) == set(schema)
    with pytest.raises(KeyError):
        schema["NoSuchNode"]
