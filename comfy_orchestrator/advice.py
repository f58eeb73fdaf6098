"""The img2img guide's troubleshooting table, as concrete next values and the sweep that explores them.

    too much change      lower denoise to about 0.4, CFG to 6-7, use ddim
    not enough change    denoise 0.7-0.8, CFG 9-11, steps 30-40
    artifacts            sizes in multiples of 8, another VAE, lower denoise or CFG
    out of memory        scale the input down, VAEEncodeTiled, smaller batches

`advise` reads a job's current parameters and answers with remedies in numbers ("denoise 0.65 ->
0.35, 0.45, 0.55") and a `comfy-orch sweep` over them, which keeps everything else as it was.
Pure: the caller reads the parameters (from a picture's provenance or --set) and the server's VAEs.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from comfy_orchestrator.errors import ComfyError, ParameterError
from comfy_orchestrator.params import WORKFLOWS, Tiled
from comfy_orchestrator.params_base import Params

Symptom = Literal["too-much-change", "not-enough-change", "artifacts", "out-of-memory"]
SYMPTOMS: dict[str, str] = {
    "too-much-change": "the result strays too far from the input",
    "not-enough-change": "the result looks too much like the input",
    "artifacts": "the result shows artifacts (seams, blotches, odd colours)",
    "out-of-memory": "the GPU ran out of memory",
}
# parameters every suggested sweep names, so it repeats the job even where defaults change
ALWAYS_SET = ("seed", "checkpoint", "model_family")
OOM_SCALES = (0.75, 0.5)  # shares of the side length to try when a picture does not fit
MIN_TILE = 128
# VAE files ComfyUI lists that are not full VAEs for these models
NOT_A_VAE = ("pixel_space",)


@dataclass(frozen=True)
class Advice:
    """The guide's remedies for one symptom, in this job's numbers, and a sweep that explores them."""

    symptom: Symptom
    template: str
    remedies: tuple[str, ...]
    axes: tuple[str, ...]  # as --axis takes them: "denoise=0.35,0.45,0.55"
    sets: Mapping[str, str] = field(default_factory=dict)  # as --set takes them, every fixed value

    def command(self, *, out: str, server: str | None = None) -> str:
        """The `comfy-orch sweep` command line that explores the remedies."""
        words = ["comfy-orch", "sweep", self.template]
        for name, value in self.sets.items():
            words += ["--set", f"{name}={value}"]
        for axis in self.axes:
            words += ["--axis", axis]
        if server:
            words += ["--server", server]
        return shlex.join([*words, "--out", out])

    def summary(self) -> str:
        """The remedies on one line."""
        return "; ".join(self.remedies)


def advise(symptom: Symptom, template: str, params: Params, *, vaes: Sequence[str] = ()) -> Advice:
    """The guide's remedies for `symptom` given the job's `params`; `vaes` are the server's VAE files."""
    current = params.model_dump(mode="json")
    if "denoise" not in current or "cfg" not in current:
        raise ParameterError(f"template {template!r} has no denoise and cfg to adjust", parameter="denoise")
    rules = {"too-much-change": _too_much_change, "not-enough-change": _not_enough_change,
             "artifacts": _artifacts, "out-of-memory": _out_of_memory}
    remedies, axes, changed, chosen = rules[symptom](params, current, list(vaes))
    template = chosen or template
    # compared with the defaults of the template the sweep runs, so its cells repeat this job
    fields = (WORKFLOWS[chosen] if chosen else type(params)).model_fields
    axis_names = {axis.partition("=")[0] for axis in axes}
    sets = {}
    for name, value in {**current, **changed}.items():
        if name in axis_names or value is None:
            continue
        default = fields[name].default if name in fields else None
        if name in changed or name in ALWAYS_SET or value != _json(default):
            sets[name] = _text(value)
    return Advice(symptom, template, tuple(remedies), tuple(axes), sets)


Rule = tuple[list[str], list[str], dict[str, Any], str | None]


def _too_much_change(params: Params, current: Mapping[str, Any], vaes: list[str]) -> Rule:
    denoise, cfg, sampler = float(current["denoise"]), float(current["cfg"]), current.get("sampler")
    high = max(round(min(denoise - 0.1, 0.55), 2), 0.05)
    low = max(round(high - 0.2, 2), 0.05)
    denoises = _unique([low, round((low + high) / 2, 2), high])
    cfgs = _unique([6, 7] if cfg > 7 else [max(1.0, cfg - 2), max(1.0, cfg - 1)])
    remedies = [f"lower denoise from {denoise:g} to {_list(denoises)} (the guide says about 0.4)",
                f"lower CFG from {cfg:g} to {_list(cfgs)} (the guide says 6-7)"]
    changed: dict[str, Any] = {}
    if sampler is not None and sampler != "ddim":
        remedies.append(f"sample with ddim instead of {sampler}")
        changed["sampler"] = "ddim"
    return remedies, [_axis("denoise", denoises), _axis("cfg", cfgs)], changed, None


def _not_enough_change(params: Params, current: Mapping[str, Any], vaes: list[str]) -> Rule:
    denoise, cfg, steps = float(current["denoise"]), float(current["cfg"]), current.get("steps")
    low = min(max(round(denoise + 0.1, 2), 0.7), 1.0)
    denoises = _unique([low, min(round(low + 0.1, 2), 1.0)])
    cfgs = _unique([9, 11] if cfg < 9 else [min(cfg + 1, 30.0), min(cfg + 2, 30.0)])
    remedies = [f"raise denoise from {denoise:g} to {_list(denoises)} (the guide says 0.7-0.8)",
                f"raise CFG from {cfg:g} to {_list(cfgs)} (the guide says 9-11)"]
    changed: dict[str, Any] = {}
    if isinstance(steps, int) and steps < 30:
        remedies.append(f"raise steps from {steps} to 30 (the guide says 30-40)")
        changed["steps"] = 30
    return remedies, [_axis("denoise", denoises), _axis("cfg", cfgs)], changed, None


def _artifacts(params: Params, current: Mapping[str, Any], vaes: list[str]) -> Rule:
    denoise, cfg = float(current["denoise"]), float(current["cfg"])
    remedies: list[str] = []
    changed: dict[str, Any] = {}
    size = params.generation_size() if hasattr(params, "generation_size") else None
    if size and (size[0] % 8 or size[1] % 8) and "upscale_method" in current and "scale_by" not in current:
        width, height = size[0] - size[0] % 8, size[1] - size[1] % 8
        remedies.append(f"the picture is {size[0]}x{size[1]}; use multiples of 8: width={width} height={height}")
        changed.update(width=width, height=height)
    note = params.size_note() if hasattr(params, "size_note") else ""
    if note:
        remedies.append(note)
    others = [name for name in vaes if name != current.get("vae") and name not in NOT_A_VAE][:3]
    axes = []
    if others:
        remedies.append(f"try another VAE: {_list(others)}")
        axes.append(_axis("vae", others))
    else:
        remedies.append("try another VAE: --set vae=FILE (a file in the server's models/vae; "
                        "'comfy-orch advise --server URL' lists them)")
    denoises = _unique([max(round(denoise - 0.1, 2), 0.05), max(round(denoise - 0.2, 2), 0.05)])
    cfgs = _unique([max(cfg - 1, 1.0), max(cfg - 2, 1.0)])
    remedies.append(f"lower denoise from {denoise:g} to {_list(denoises)} or CFG from {cfg:g} to {_list(cfgs)}")
    return remedies, [*axes, _axis("denoise", denoises), _axis("cfg", cfgs)], changed, None


def _out_of_memory(params: Params, current: Mapping[str, Any], vaes: list[str]) -> Rule:
    remedies: list[str] = []
    axes: list[str] = []
    changed: dict[str, Any] = {}
    template: str | None = None
    batch = current.get("batch_size")
    if isinstance(batch, int) and batch > 1:
        batches = _unique([max(batch // 2, 1), max(batch // 4, 1)])
        remedies.append(f"make smaller batches: batch_size {_list(batches)} instead of {batch}")
        axes.append(_axis("batch_size", batches))
    if "tile_size" in current:
        tile = int(current["tile_size"])
        tiles = _unique([max(tile // 2 // 64 * 64, MIN_TILE), max(tile // 4 // 64 * 64, MIN_TILE)])
        remedies.append(f"encode and decode in smaller tiles: tile_size {_list(tiles)} instead of {tile}")
        axes.append(_axis("tile_size", tiles))
    elif not axes and set(current) <= set(Tiled.model_fields):  # an img2img the tiled template can run
        tiles = _unique([Tiled.model_fields["tile_size"].default, Tiled.model_fields["tile_size"].default // 2])
        remedies.append(f"encode and decode in tiles (VAEEncodeTiled): the 'tiled' template, tile_size {_list(tiles)}")
        axes.append(_axis("tile_size", tiles))
        template = "tiled"
    size = params.generation_size() if hasattr(params, "generation_size") else None
    if "scale_by" in current and float(current["scale_by"]) != 1.0:
        scales = _unique([round(float(current["scale_by"]) * share, 2) for share in OOM_SCALES])
        remedies.append(f"scale the input down: scale_by {_list(scales)} instead of {current['scale_by']:g}")
        axes.append(_axis("scale_by", scales))
    elif size and "upscale_method" in current:  # templates that resize their input first
        widths = _unique([max(64, math.floor(size[0] * share / 8) * 8) for share in OOM_SCALES])
        remedies.append(f"scale the input down from {size[0]}x{size[1]}: width {_list(widths)} "
                        "(the height follows)")
        axes.append(_axis("width", widths))
        changed["height"] = 0
    elif size and current.get("image") is None:  # txt2img: generate smaller
        width, height = (max(64, math.floor(side * OOM_SCALES[0] / 8) * 8) for side in size)
        remedies.append(f"generate smaller: width={width} height={height} instead of {size[0]}x{size[1]}")
        changed.update(width=width, height=height)
    elif size:
        width, height = (max(64, math.floor(side * OOM_SCALES[0] / 8) * 8) for side in size)
        remedies.append(f"scale the input picture down from {size[0]}x{size[1]} to about {width}x{height} "
                        "before running")
    if not remedies:
        remedies.append("the job has no size, tile or batch to lower; try a smaller checkpoint")
    return remedies, axes, changed, template


def _unique(values: Sequence[float]) -> list[float]:
    seen: list[float] = []
    for value in values:
        number = float(value)
        if number not in seen:
            seen.append(number)
    return sorted(seen)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _list(values: Sequence[float | str]) -> str:
    return ", ".join(_number(v) if isinstance(v, (int, float)) else str(v) for v in values)


def _axis(name: str, values: Sequence[float | str]) -> str:
    return f"{name}=" + ",".join(_number(v) if isinstance(v, (int, float)) else str(v) for v in values)


def _json(value: Any) -> Any:
    """A default as model_dump(mode='json') would give it."""
    return json.loads(json.dumps(value, default=str))


def _text(value: Any) -> str:
    """A value as --set takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float):
        return _number(value)
    return str(value)


def out_of_memory_advice(template: str, parameters: Mapping[str, Any]) -> str | None:
    """What an OutOfMemory error of a built-in template's job says to try next, in numbers; None if unknown."""
    model = WORKFLOWS.get(template)
    if model is None:
        return None
    try:
        advice = advise("out-of-memory", template, model.build(parameters))
    except ComfyError:  # the job's files moved or its parameters changed meaning: the general advice stands
        return None
    return f"{advice.summary()}; to try them: {advice.command(out=template + '-smaller')}"
