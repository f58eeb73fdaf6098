"""Params, the base of every template's parameters: a frozen model validated into one clear ParameterError.

The workflows' own models build on it (params_sampling.py and the rooms after it, named by
params.WORKFLOWS); DeclaredParams is the base of the models templates.py builds for imported
and hand-written templates from their declared parameters.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.samplers import split_sampler


class Params(BaseModel):
    """Base of every workflow's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    workflow: ClassVar[str] = ""
    template: ClassVar[str] = ""  # file name in a templates folder
    description: ClassVar[str] = ""
    # template variables a workflow does not expose, with the values it renders them at
    stages: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def build(cls, values: Mapping[str, Any], *, strict_sizes: bool = False,
              families: Mapping[str, str] | None = None) -> Params:
        """Validate `values` into this model, turning pydantic's errors into one ParameterError.

        `families` maps checkpoint names to their model family as a server reported it.
        """
        unknown = [name for name in values if name not in cls.model_fields]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, list(cls.model_fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParameterError(f"{cls.workflow} has no parameter {name!r}{hint} "
                                 f"(it takes: {', '.join(cls.model_fields)})", parameter=name)
        try:
            return cls.model_validate(dict(values), context={"strict_sizes": strict_sizes,
                                                              "families": dict(families or {})})
        except ValidationError as exc:
            raise _parameter_error(cls, exc) from None

    @classmethod
    def template_variables(cls) -> set[str]:
        """Every name the template may use."""
        return set(cls.model_fields) | set(cls.stages)

    def template_values(self, image_names: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The values the template renders with: stage defaults, the fields as JSON values, and
        each local image replaced by its name on the server (`image_names`, by field)."""
        values = {**self.stages, **self.model_dump(mode="json")}
        values.update({k: v for k, v in (image_names or {}).items() if k in values})
        return values

    def image_fields(self) -> dict[str, Path]:
        """The fields that name local image files, which must be uploaded to the server."""
        return {name: value for name, value in self if isinstance(value, Path)}


def _parameter_error(model: type[Params], exc: ValidationError) -> ParameterError:
    lines = []
    first = None
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if not name:  # a check across several parameters: its message names them
            lines.append(message)
            continue
        first = first or name
        field = model.model_fields.get(name)
        if error["type"] == "missing":
            what = f" ({field.description})" if field and field.description else ""
            lines.append(f"{name} is required{what}")
            continue
        hint = _range_hint(field.json_schema_extra if field else None, field.metadata if field else [])
        lines.append(f"{name}={error.get('input')!r}: {message}{hint}")
    return ParameterError(f"{model.workflow}: " + "; ".join(lines), parameter=first)


def _range_hint(extra: Any, metadata: list[Any]) -> str:
    bounds = {}
    for item in metadata:
        for key in ("ge", "le", "gt", "lt"):
            if getattr(item, key, None) is not None:
                bounds[key] = getattr(item, key)
    if "ge" in bounds and "le" in bounds:
        text = f" (allowed {bounds['ge']} to {bounds['le']}"
        if isinstance(extra, dict) and "recommended" in extra:
            low, high = extra["recommended"]
            text += f"; recommended {low} to {high}"
        return text + ")"
    return ""


class DeclaredParams(Params):
    """Base of an imported or hand-written template's parameters: takes sampler names as users say them."""

    @model_validator(mode="before")
    @classmethod
    def _friendly_sampler(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "sampler" not in cls.model_fields:
            return data
        return split_sampler(data, has_scheduler="scheduler" in cls.model_fields)

