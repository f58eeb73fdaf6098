"""Schema: what a ComfyUI server's /object_info says about its node classes.

The recorded schema (data/object_info.json, ~570 classes) is parsed a class at a time, on first
use: a job's check needs a dozen of them, and parsing the whole file costs ~10-30 ms of a command.
"""

from __future__ import annotations

import functools
import json
import re
from collections import ChainMap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

RECORDED_VERSION = "0.8.0"
CHECKPOINT_LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name"}
# Inputs whose choices list a server's own files (models, uploaded images): they differ per server.
FILE_INPUTS = {
    **CHECKPOINT_LOADERS, "LoadImage": "image", "LoadImageMask": "image", "LoraLoader": "lora_name",
    "LoraLoaderModelOnly": "lora_name", "ControlNetLoader": "control_net_name", "VAELoader": "vae_name",
    "UpscaleModelLoader": "model_name",
}


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a node class: its type and its options."""

    name: str
    type: str  # "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", or a link type such as "LATENT"
    options: Mapping[str, Any]
    choices: tuple[Any, ...] | None  # None: any value (a list the schema leaves open)
    required: bool
    raw: Any  # the input's config exactly as object_info gives it

    @property
    def is_widget(self) -> bool:
        """Whether the value is typed in (a widget) rather than linked from another node."""
        return self.type in {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

    @property
    def minimum(self) -> float | None:
        value = self.options.get("min")
        return None if value is None else float(value)

    @property
    def maximum(self) -> float | None:
        value = self.options.get("max")
        return None if value is None else float(value)


@dataclass(frozen=True)
class NodeSchema:
    """One node class of the server."""

    class_type: str
    inputs: Mapping[str, InputSpec]
    input_order: tuple[str, ...]
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool
    has_hidden: bool
    raw: Mapping[str, Any]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name in self.input_order if self.inputs[name].required)


def _input_spec(name: str, config: Any, *, required: bool) -> InputSpec:
    kind = config[0] if isinstance(config, (list, tuple)) and config else config
    options = config[1] if isinstance(config, (list, tuple)) and len(config) > 1 else {}
    if not isinstance(options, Mapping):
        options = {}
    if isinstance(kind, (list, tuple)):
        return InputSpec(name, "COMBO", options, tuple(kind), required, config)
    if kind == "COMBO":  # the newer spelling: ["COMBO", {"options": [...]}]; no options: any value
        listed = options.get("options")
        return InputSpec(name, "COMBO", options, None if listed is None else tuple(listed), required, config)
    return InputSpec(name, str(kind), options, None, required, config)


def _node_schema(class_type: str, info: Mapping[str, Any]) -> NodeSchema:
    declared = info.get("input", {})
    inputs: dict[str, InputSpec] = {}
    order: list[str] = []
    given_order = info.get("input_order", {})
    for section in ("required", "optional"):
        configs = declared.get(section) or {}
        for name in given_order.get(section, list(configs)):
            if name in configs:
                inputs[name] = _input_spec(name, configs[name], required=section == "required")
                order.append(name)
    return NodeSchema(
        class_type=class_type,
        inputs=inputs,
        input_order=tuple(order),
        outputs=tuple(info.get("output", ())),
        output_names=tuple(info.get("output_name", ())),
        output_node=bool(info.get("output_node", False)),
        has_hidden=bool(declared.get("hidden")),
        raw=info,
    )


class Schema(Mapping[str, NodeSchema]):
    """A server's node classes, read from its /object_info answer."""

    def __init__(self, object_info: Mapping[str, Any], *, source: str = "object_info") -> None:
        self._raw: Mapping[str, Any] = dict(object_info)
        self._nodes: dict[str, NodeSchema] = {}
        self.source = source

    @classmethod
    def _sharing(cls, raw: Mapping[str, Any], *, source: str) -> Schema:
        """A schema over `raw` as it is, uncopied: for the copies made here, whose classes are parsed lazily."""
        schema = cls({}, source=source)
        schema._raw = raw
        return schema

    def _changeable(self) -> ChainMap[str, Any]:
        """The classes as a mapping whose changes go to a dict of their own, leaving these classes as they are."""
        maps = self._raw.maps if isinstance(self._raw, ChainMap) else [self._raw]
        return ChainMap({}, *maps)

    @classmethod
    def recorded(cls) -> Schema:
        """The schema recorded from a real ComfyUI 0.8.0 server, shipped with the package."""
        return _recorded_schema()

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._raw

    def __getitem__(self, class_type: str) -> NodeSchema:
        node = self._nodes.get(class_type)
        if node is None:
            node = self._nodes[class_type] = _node_schema(class_type, self._raw[class_type])
        return node

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._nodes or class_type in self._raw  # a class read once: a dict lookup

    def choices(self, class_type: str, input_name: str) -> tuple[Any, ...]:
        """The allowed values of a choice input, such as KSampler's sampler_name."""
        return self[class_type].inputs[input_name].choices or ()

    @property
    def checkpoints(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.choices("CheckpointLoaderSimple", "ckpt_name"))

    def with_choices(self, class_types: Iterable[str], input_name: str, values: Iterable[str]) -> Schema:
        """A copy whose `input_name` of each class lists `values` (a server's own files)."""
        raw = self._changeable()
        listed = list(values)
        for class_type in class_types:
            if class_type not in raw:
                continue
            info = json.loads(json.dumps(raw[class_type]))
            for section in ("required", "optional"):
                configs = info["input"].get(section) or {}
                if input_name in configs:
                    config = configs[input_name]
                    if isinstance(config[0], list):
                        config[0] = listed
                    else:
                        config[1]["options"] = listed
            raw[class_type] = info
        return Schema._sharing(raw, source=self.source)

    def without_file_lists(self) -> Schema:
        """A copy that accepts any file name: for checking offline, where the listed files are another machine's."""
        raw = self._changeable()
        for class_type, input_name in FILE_INPUTS.items():
            if input_name not in raw.get(class_type, {}).get("input", {}).get("required", {}):
                continue
            info = raw[class_type] = json.loads(json.dumps(raw[class_type]))  # only what changes is copied
            required = info["input"]["required"]
            config = required[input_name]
            options = config[1] if len(config) > 1 and isinstance(config[1], dict) else {}
            required[input_name] = ["COMBO", {k: v for k, v in options.items() if k != "options"}]
        return Schema._sharing(raw, source=self.source + " (file lists not checked)")

    def with_checkpoints(self, names: Iterable[str]) -> Schema:
        """A copy that lists `names` as the server's checkpoints."""
        return self.with_choices(CHECKPOINT_LOADERS, "ckpt_name", names)


# Each class of the recorded file starts a line with one space of indent: a string's own line breaks are
# escaped in JSON, and every deeper line is indented further.
_CLASS_START = re.compile('\n "')
_CLASS_NAME_END = ": "  # after the name's closing quote
_DECODER = json.JSONDecoder()


class _ParsedOnUse(Mapping[str, Any]):
    """object_info's classes as spans of its text, each parsed on first use and kept."""

    def __init__(self, text: str, spans: dict[str, tuple[int, int]]) -> None:
        self._text = text
        self._spans = spans
        self._parsed: dict[str, Any] = {}

    def __getitem__(self, class_type: str) -> Any:
        if class_type not in self._parsed:
            start, end = self._spans[class_type]
            self._parsed[class_type] = json.loads(self._text[start:end])
        return self._parsed[class_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._spans


def recorded_classes(text: str) -> Mapping[str, Any]:
    """The recorded object_info's classes, parsed on use; the whole text at once if it is not laid out as
    recorded (a class a line at one space of indent)."""
    starts = [found.end() - 1 for found in _CLASS_START.finditer(text)]  # at each class name's opening quote
    if not text.startswith("{") or not starts:
        parsed: Mapping[str, Any] = json.loads(text)
        return parsed
    spans = {}
    for start, following in zip(starts, [*starts[1:], None]):
        name, value = _DECODER.raw_decode(text, start)
        value += len(_CLASS_NAME_END)
        end = text.rfind(",", value, following) if following is not None else text.rfind("}")  # the comma between
        spans[name] = (value, end)
    return _ParsedOnUse(text, spans)


@functools.cache
def _recorded_schema() -> Schema:
    text = resources.files("comfy_orchestrator").joinpath("data/object_info.json").read_text("utf-8")
    return Schema._sharing(recorded_classes(text), source=f"recorded ComfyUI {RECORDED_VERSION}")
