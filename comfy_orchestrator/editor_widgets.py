"""The editor's widgets: which values a saved node's widgets_values hold, in which order.

ComfyUI's editor saves a node's widget values as a list, in the order of the class's widget
inputs, with extra entries: a control value ("fixed", "randomize", ...) after a seed-like
widget, the upload button's value after an image loader's file, and in older files a value
for each forceInput input. A layout names each position; workflow_import.py maps values by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from comfy_orchestrator.schema import NodeSchema

CONTROL_VALUES = frozenset({"fixed", "randomize", "increment", "decrement"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")

CONTROL = "\x00control"  # marks the value of a control_after_generate widget in a layout
UPLOAD = None  # the image loaders' "upload" button: a value in the file, no input
FORCED = "\x00forced"  # a forceInput input's value, which older editors saved and now drop


def widget_layouts(spec: NodeSchema) -> list[list[str | None]]:
    """The orders in which the editor may have saved this class's widget values.

    First the current editor's, then one without the upload button's value (files where it is
    not written), then legacy files that also kept values for forceInput inputs.
    """
    layouts: list[list[str | None]] = []
    for keep_forced in (False, True):
        for with_upload in (True, False):
            layout: list[str | None] = []
            for name in spec.input_order:
                config = spec.inputs[name]
                if not config.is_widget:
                    continue
                forced = bool(config.options.get("forceInput"))
                if forced and not keep_forced:
                    continue
                layout.append(FORCED if forced else name)
                if has_control(name, config.type, config.options):
                    layout.append(CONTROL)
                if with_upload and any(config.options.get(flag) for flag in UPLOAD_OPTIONS):
                    layout.append(UPLOAD)
            if layout not in layouts:
                layouts.append(layout)
    return layouts


def describe_layout(layout: Sequence[str | None]) -> str:
    """A layout in words, for an error: "seed, seed's control value, steps"."""
    names = []
    for index, name in enumerate(layout):
        if name == CONTROL:
            names.append(f"{layout[index - 1]}'s control value")
        elif name == FORCED:
            names.append("a forceInput value")
        else:
            names.append("the upload button's value" if name is None else name)
    return ", ".join(names) or "no widgets"


def has_control(name: str, kind: str, options: Mapping[str, Any]) -> bool:
    """Whether the editor adds a control_after_generate widget after this one."""
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return kind == "INT" and name in ("seed", "noise_seed")  # the editor's legacy rule


def fits(layout: Sequence[str | None], values: Sequence[Any]) -> bool:
    """Whether `values` have a control value wherever `layout` expects one."""
    return all(value in CONTROL_VALUES for name, value in zip(layout, values) if name == CONTROL)
