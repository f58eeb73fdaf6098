"""The editor's widget layouts: the orders in which a class's widget values may have been saved."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_orchestrator.editor_widgets import CONTROL, FORCED, UPLOAD, describe_layout, fits, widget_layouts
from comfy_orchestrator.schema import Schema


def spec(required: dict[str, Any]) -> Any:
    schema = Schema({"Toy": {"input": {"required": required}, "input_order": {"required": list(required)},
                             "output": [], "output_name": [], "output_node": True, "display_name": "Toy"}})
    return schema["Toy"]


@pytest.mark.parametrize(("required", "expected"), [
    ({"seed": ["INT", {}], "steps": ["INT", {}]}, [["seed", CONTROL, "steps"]]),  # the editor's legacy seed rule
    ({"seed": ["INT", {"control_after_generate": False}]}, [["seed"]]),
    ({"mode": [["a", "b"], {"control_after_generate": True}], "model": ["MODEL", {}]}, [["mode", CONTROL]]),
    ({"image": [["a.png"], {"image_upload": True}]}, [["image", UPLOAD], ["image"]]),
    ({"count": ["INT", {"forceInput": True}], "text": ["STRING", {}]}, [["text"], [FORCED, "text"]]),
    ({"model": ["MODEL", {}]}, [[]]),
])
def test_layouts_current_first_then_older_files(required, expected) -> None:
    assert widget_layouts(spec(required)) == expected


@pytest.mark.parametrize(("layout", "text"), [
    (["seed", CONTROL, "steps"], "seed, seed's control value, steps"),
    (["image", UPLOAD], "image, the upload button's value"),
    ([FORCED, "text"], "a forceInput value, text"),
    ([], "no widgets"),
])
def test_a_layout_in_words(layout, text) -> None:
    assert describe_layout(layout) == text


@pytest.mark.parametrize(("values", "expected"), [
    ([7, "randomize", 20], True), ([7, "fixed", 20], True), ([7, 20, "fixed"], False), ([7, "often", 20], False),
])
def test_values_fit_when_each_control_position_holds_a_control_value(values, expected) -> None:
    assert fits(["seed", CONTROL, "steps"], values) is expected
