"""Any other node class of the schema, run generically: small deterministic stand-ins of its declared outputs.

A real ComfyUI runs every node it advertises; the simulator runs the common ones faithfully
(nodes.py, guidance.py) and every other one here. Each output is a value of its declared type
that depends on the node's class and inputs: an IMAGE tinted from the first input picture (or a
plain one of the node's width and height), a LATENT of the same, a MASK, a CONDITIONING, a
MODEL/CLIP/VAE passed through from an input of that type, widgets' types from their inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from comfy_orchestrator.schema import NodeSchema
from comfy_orchestrator.sim import images
from comfy_orchestrator.sim.images import FloatArray
from comfy_orchestrator.sim.registry import NodeResult, SimModel

STAND_IN_SIZE = 64  # pixels a side of a picture a node makes from nothing, when it names no width or height
TINT_SHARE = 0.25  # how far a generic node moves an input picture toward its own colour
MODEL_TYPES = frozenset({"MODEL", "CLIP", "VAE", "CLIP_VISION", "CONTROL_NET", "STYLE_MODEL", "GLIGEN",
                         "UPSCALE_MODEL", "PHOTOMAKER", "LATENT_UPSCALE_MODEL", "MODEL_PATCH", "AUDIO_ENCODER"})


@dataclass(frozen=True)
class StandIn:
    """An output of a type the simulator has no picture for (SIGMAS, NOISE, VIDEO, ...): its type and origin."""

    type: str
    fingerprint: str


def fingerprint(class_type: str, inputs: Mapping[str, Any]) -> str:
    """A stable digest of a node's class and input values (pictures by their bytes)."""
    digest = hashlib.sha256(class_type.encode("utf-8"))
    for name in sorted(inputs):
        digest.update(name.encode("utf-8"))
        digest.update(_value_bytes(inputs[name]))
    return digest.hexdigest()


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return bytes(np.ascontiguousarray(value).tobytes())
    if isinstance(value, Mapping):
        return b"{" + b"".join(str(key).encode() + _value_bytes(value[key]) for key in sorted(value)) + b"}"
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_value_bytes(item) for item in value) + b"]"
    return json.dumps(value, default=repr, sort_keys=True).encode("utf-8")


def _colour(digest: str) -> FloatArray:
    return np.frombuffer(bytes.fromhex(digest[:6]), dtype=np.uint8).astype(np.float32) / 255.0


def _first(inputs: Mapping[str, Any], schema: NodeSchema, kind: str) -> Any:
    for name, spec in schema.inputs.items():
        if spec.type == kind and name in inputs:
            return inputs[name]
    return None


def _picture(inputs: Mapping[str, Any], schema: NodeSchema, digest: str) -> FloatArray:
    """The node's IMAGE: its first input picture (or latent's) moved toward its colour, or a plain one."""
    source = _first(inputs, schema, "IMAGE")
    if source is None:
        latent = _first(inputs, schema, "LATENT")
        source = latent.get("pixels") if isinstance(latent, Mapping) else None
    colour = _colour(digest)
    if isinstance(source, np.ndarray) and source.ndim == 4:
        return ((1.0 - TINT_SHARE) * source + TINT_SHARE * colour).astype(np.float32)
    width, height, batch = (_int_input(inputs, name, default) for name, default in
                            (("width", STAND_IN_SIZE), ("height", STAND_IN_SIZE), ("batch_size", 1)))
    return np.broadcast_to(colour, (max(1, batch), max(1, height), max(1, width), 3)).astype(np.float32)


def _int_input(inputs: Mapping[str, Any], name: str, default: int) -> int:
    value = inputs.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _latent(pixels: FloatArray) -> dict[str, Any]:
    cropped = images.crop_to_multiple(pixels) if pixels.shape[1] >= 8 and pixels.shape[2] >= 8 else None
    if cropped is None:
        cropped = np.full((pixels.shape[0], 8, 8, 3), 0.5, dtype=np.float32)
    return {"samples": images.encode_samples(cropped), "pixels": cropped}


def _output(kind: str, inputs: Mapping[str, Any], schema: NodeSchema, digest: str) -> Any:
    """One output of type `kind`."""
    same = _first(inputs, schema, kind)
    if kind in MODEL_TYPES:
        return same if same is not None else SimModel(schema.class_type, kind)
    if kind == "IMAGE":
        return _picture(inputs, schema, digest)
    if kind == "LATENT":
        return _latent(_picture(inputs, schema, digest))
    if kind == "MASK":
        picture = _picture(inputs, schema, digest)
        return np.full(picture.shape[:3], float(_colour(digest)[0]), dtype=np.float32)
    if kind == "CONDITIONING":
        return same if same is not None else [[_colour(digest), {"text": schema.class_type}]]
    scalars = {"INT": int(digest[:8], 16), "FLOAT": int(digest[:8], 16) / 0xFFFFFFFF,
               "STRING": f"{schema.class_type} {digest[:8]}", "BOOLEAN": False}
    if kind in scalars:
        return same if same is not None else scalars[kind]
    return StandIn(kind, digest)


def simulate(schema: NodeSchema, inputs: Mapping[str, Any]) -> NodeResult:
    """Run `schema`'s node on `inputs`: one stand-in per declared output; output nodes show nothing."""
    digest = fingerprint(schema.class_type, inputs)
    outputs = []
    for kind in schema.outputs:
        if isinstance(kind, str):
            outputs.append(_output(kind, inputs, schema, digest))
        else:  # a combo output: its choices; the first one is what it gives
            outputs.append(kind[0] if kind else "")
    return NodeResult(tuple(outputs))
