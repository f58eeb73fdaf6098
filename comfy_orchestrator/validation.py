"""Validate an API-format prompt against a schema exactly as a ComfyUI 0.8 server does.

`check_prompt` returns what the server's POST /prompt would answer: the top-level
`error` (None when the prompt may run), `node_errors` in the server's own shape, and
the output nodes that will run. The simulated server answers with it, and the
client checks graphs with it before it sends them, so both agree with the recording
in shared/comfyui-reference/http/post_prompt_*.json.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_orchestrator.schema import InputSpec, NodeSchema, Schema

# Nodes whose own VALIDATE_INPUTS checks these inputs (and so skips min/max/list checks).
CUSTOM_VALIDATION = {"LoadImage": "image", "LoadImageMask": "image", "LoadLatent": "latent"}
_CUSTOM_MESSAGES = {"image": "Invalid image file: {}", "latent": "Invalid latent file: {}"}
_LIST_LIMIT = 20  # longer choice lists are summarised, as the server does

NodeErrors = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class PromptCheck:
    """The server's verdict on a prompt."""

    error: dict[str, Any] | None
    node_errors: NodeErrors = field(default_factory=dict)
    outputs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def _types_match(received: Any, expected: Any) -> bool:
    """Whether a linked output's type fits an input's type, as ComfyUI compares them."""
    if received == expected or "*" in (received, expected):
        return True
    if isinstance(received, (list, tuple)) and expected == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _config(spec: InputSpec) -> list[Any]:
    """The input's config as the server echoes it: [type or choices, options]."""
    kind: Any = list(spec.choices or ()) if spec.type == "COMBO" and isinstance(spec.raw[0], list) else spec.raw[0]
    return [kind, dict(spec.options)]


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _number(value: Any) -> str:
    """Format a number as Python's str() does on the server."""
    return str(value)


class _Validator:
    """One validation pass; mirrors the server's recursive walk from each output."""

    def __init__(
        self,
        prompt: Mapping[str, Any],
        schema: Schema,
        input_exists: Callable[[str], bool] | None,
    ) -> None:
        self.prompt = prompt
        self.schema = schema
        self.input_exists = input_exists
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def node(self, node_id: Any) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        entry = self.prompt[node_id]
        inputs = entry["inputs"]
        node = self.schema[entry["class_type"]]
        errors: list[dict[str, Any]] = []
        valid = True
        custom = CUSTOM_VALIDATION.get(node.class_type)
        for name in node.input_order:
            spec = node.inputs[name]
            if name not in inputs:
                if spec.required:
                    errors.append(_error("required_input_missing", "Required input is missing", name,
                                         input_name=name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                problem, inner_valid = self._link(name, spec, value)
                if problem is not None:
                    errors.append(problem)
                valid = valid and inner_valid
                continue
            problem = self._value(node, name, spec, value, skip_limits=name == custom)
            if problem is not None:
                errors.append(problem)
        if custom is not None and custom in inputs and self.input_exists is not None:
            value = inputs[custom]
            if not isinstance(value, list) and not self.input_exists(str(value)):
                details = f"{custom} - " + _CUSTOM_MESSAGES[custom].format(value)
                errors.append(_error("custom_validation_failed", "Custom validation failed for node",
                                     details, input_name=custom))
        result = (not errors and valid, errors)
        self.validated[node_id] = result
        return result

    def _link(self, name: str, spec: InputSpec, link: list[Any]) -> tuple[dict[str, Any] | None, bool]:
        """Check one link; returns (error on this node, whether upstream validated)."""
        if len(link) != 2:
            return _error("bad_linked_input",
                          "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name, input_name=name, input_config=_config(spec), received_value=link), True
        source_id = link[0]
        source_outputs = tuple(self.schema[self.prompt[source_id]["class_type"]].outputs)
        received = source_outputs[link[1]]
        if not _types_match(received, spec.type if spec.type != "COMBO" else list(spec.choices or ())):
            return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({received}) mismatch input_type({spec.type})",
                          input_name=name, input_config=_config(spec), received_type=received,
                          linked_node=link), True
        try:
            inner_valid, _ = self.node(source_id)
        except Exception as exc:  # the server reports any failure of the inner check this way
            self.validated[source_id] = (False, [_error(
                "exception_during_inner_validation", "Exception when validating inner node", str(exc),
                input_name=name, input_config=_config(spec), exception_message=str(exc),
                exception_type=_type_name(exc), traceback=traceback.format_tb(exc.__traceback__),
                linked_node=link)])
            return None, False
        return None, inner_valid

    def _value(self, node: NodeSchema, name: str, spec: InputSpec, value: Any, *,
               skip_limits: bool) -> dict[str, Any] | None:
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        converters: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
        convert = converters.get(spec.type)
        if convert is not None:
            try:
                value = convert(value)
            except Exception as exc:
                return _error("invalid_input_type", f"Failed to convert an input value to a {spec.type} value",
                              f"{name}, {value}, {exc}", input_name=name, input_config=_config(spec),
                              received_value=value, exception_message=str(exc))
        if skip_limits:
            return None
        minimum, maximum = spec.options.get("min"), spec.options.get("max")
        if minimum is not None and value < minimum:
            return _error("value_smaller_than_min", f"Value {_number(value)} smaller than min of {_number(minimum)}",
                          name, input_name=name, input_config=_config(spec), received_value=value)
        if maximum is not None and value > maximum:
            return _error("value_bigger_than_max", f"Value {_number(value)} bigger than max of {_number(maximum)}",
                          name, input_name=name, input_config=_config(spec), received_value=value)
        if spec.type == "COMBO" and spec.choices is not None:
            choices = list(spec.choices)
            if value not in choices:
                long_list = len(choices) > _LIST_LIMIT
                listed = f"(list of length {len(choices)})" if long_list else str(choices)
                return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                              input_name=name, input_config=None if long_list else _config(spec),
                              received_value=value)
        return None


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _structure_error(prompt: Mapping[str, Any], schema: Schema) -> dict[str, Any] | None:
    for node_id, entry in prompt.items():
        if "class_type" not in entry:
            return _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                          f"Node ID '#{node_id}'")
        if entry["class_type"] not in schema:
            return _error("invalid_prompt", f"Cannot execute because node {entry['class_type']} does not exist.",
                          f"Node ID '#{node_id}'")
    return None


def output_nodes(prompt: Mapping[str, Any], schema: Schema) -> list[str]:
    """The prompt's output nodes (SaveImage and the like), in prompt order."""
    return [node_id for node_id, entry in prompt.items() if schema[entry["class_type"]].output_node]


def check_prompt(
    prompt: Mapping[str, Any],
    schema: Schema,
    *,
    input_exists: Callable[[str], bool] | None = None,
    partial_execution_list: Iterable[str] | None = None,
) -> PromptCheck:
    """Validate `prompt` as the server does; `input_exists` answers LoadImage's file check."""
    structure = _structure_error(prompt, schema)
    if structure is not None:
        return PromptCheck(structure)
    wanted = None if partial_execution_list is None else set(partial_execution_list)
    outputs = [o for o in output_nodes(prompt, schema) if wanted is None or o in wanted]
    if not outputs:
        return PromptCheck(_error("prompt_no_outputs", "Prompt has no outputs", ""))
    validator = _Validator(prompt, schema, input_exists)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: NodeErrors = {}
    for output in outputs:
        try:
            valid, reasons = validator.node(output)
        except Exception as exc:
            valid, reasons = False, [_error(
                "exception_during_validation", "Exception when validating node", str(exc),
                exception_type=_type_name(exc), traceback=traceback.format_tb(exc.__traceback__))]
            validator.validated[output] = (False, reasons)
        if valid:
            good.append(output)
            continue
        failed.append((output, reasons))
        for node_id, (node_valid, node_reasons) in validator.validated.items():
            if node_valid or not node_reasons:
                continue  # downstream of a failure, with no errors of its own
            if node_id not in node_errors:
                node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [],
                                        "class_type": prompt[node_id]["class_type"]}
            node_errors[node_id]["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failed for r in reasons)
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return PromptCheck(error, node_errors, ())
    return PromptCheck(None, node_errors, tuple(good))


@dataclass(frozen=True)
class NodeProblem:
    """One problem in a `node_errors` answer: which node and input, and the server's error entry."""

    node_id: str
    class_type: str
    input_name: str  # "" when the problem is the node's, not one input's
    error: Mapping[str, Any]


def node_problems(node_errors: Mapping[str, Any]) -> list[NodeProblem]:
    """Every problem of a `node_errors` answer (ours or a server's), tolerating missing keys."""
    problems = []
    for node_id, entry in node_errors.items():
        entry = entry if isinstance(entry, Mapping) else {}
        for error in entry.get("errors") or ():
            if isinstance(error, Mapping):
                extra = error.get("extra_info")
                input_name = str((extra if isinstance(extra, Mapping) else {}).get("input_name") or "")
                problems.append(NodeProblem(str(node_id), str(entry.get("class_type", "?")), input_name, error))
    return problems


def describe_rejection(error: Mapping[str, Any] | None, node_errors: Mapping[str, Any],
                       parameter_for: Callable[[str, str], str | None] = lambda node_id, input_name: None,
                       ) -> list[str]:
    """One line per problem, naming the template parameter responsible where `parameter_for` knows it."""
    lines = []
    for problem in node_problems(node_errors):
        parameter = parameter_for(problem.node_id, problem.input_name) if problem.input_name else None
        where = f"parameter {parameter!r}" if parameter else f"node {problem.node_id} ({problem.class_type})" + (
            f" input {problem.input_name!r}" if problem.input_name else "")
        lines.append(f"{where}: {problem.error.get('message', '')}: {problem.error.get('details', '')}".rstrip(": "))
    if not lines and error:
        lines.append(f"{error.get('message', 'rejected')} {error.get('details', '')}".strip())
    return lines
