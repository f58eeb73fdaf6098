"""The Params base: one ParameterError naming each bad value with its range, template values, image fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field, model_validator

from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.params_base import DeclaredParams, Params


class Toy(Params):
    """A made-up workflow: a required picture, a ranged number with a recommendation, a cross-field check."""

    workflow: ClassVar[str] = "toy"
    stages: ClassVar[dict[str, Any]] = {"tiled": False, "picture": "stage default"}
    picture: Path = Field(description="the picture to draw on")
    strength: float = Field(0.5, ge=0.0, le=1.0, json_schema_extra={"recommended": [0.3, 0.7]})
    steps: int = Field(10, ge=1)
    label: str = "x"

    @model_validator(mode="after")
    def _label_needs_steps(self) -> Toy:
        if self.label == "many" and self.steps < 5:
            raise ValueError("label 'many' needs steps of 5 or more")
        return self


@pytest.mark.parametrize(("values", "message", "parameter"), [
    ({"picture": "a.png", "strenght": 1}, "toy has no parameter 'strenght'; did you mean 'strength'\\? "
     "\\(it takes: picture, strength, steps, label\\)", "strenght"),
    ({}, "toy: picture is required \\(the picture to draw on\\)", "picture"),
    ({"picture": "a.png", "strength": 2}, "toy: strength=2: Input should be less than or equal to 1 "
     "\\(allowed 0.0 to 1.0; recommended 0.3 to 0.7\\)", "strength"),
    ({"picture": "a.png", "steps": 0}, "toy: steps=0: Input should be greater than or equal to 1$", "steps"),
    ({"picture": "a.png", "steps": 2, "label": "many"}, "toy: label 'many' needs steps of 5 or more$", None),
    ({"strength": "lots"}, "toy: picture is required .*; strength='lots': Input should be a valid number",
     "picture"),
])
def test_a_bad_value_is_one_error_naming_it(values, message, parameter) -> None:
    with pytest.raises(ParameterError, match=message) as caught:
        Toy.build(values)
    assert caught.value.parameter == parameter


def test_template_values_put_stages_under_fields_and_server_names_over_pictures() -> None:
    toy = Toy.build({"picture": "a.png", "steps": "12"})
    assert Toy.template_variables() == {"picture", "strength", "steps", "label", "tiled"}
    assert toy.image_fields() == {"picture": Path("a.png")}
    assert toy.template_values() == {"tiled": False, "picture": "a.png", "strength": 0.5, "steps": 12, "label": "x"}
    named = toy.template_values({"picture": "upload/a (1).png", "unknown": "ignored"})
    assert named["picture"] == "upload/a (1).png" and "unknown" not in named


def test_models_are_frozen() -> None:
    toy = Toy.build({"picture": "a.png"})
    with pytest.raises(Exception, match="frozen"):
        toy.steps = 3  # type: ignore[misc]


class Declared(DeclaredParams):
    sampler: str = "euler"
    scheduler: str = "normal"


class DeclaredWithoutScheduler(DeclaredParams):
    sampler: str = "euler"


def test_declared_params_take_sampler_names_as_users_say_them() -> None:
    params = Declared.build({"sampler": "DPM++ 2M Karras"})
    assert (params.sampler, params.scheduler) == ("dpmpp_2m", "karras")  # type: ignore[attr-defined]
    with pytest.raises(ParameterError, match="has no scheduler parameter"):
        DeclaredWithoutScheduler.build({"sampler": "dpm++ 2m karras"})
