"""Template import: name a saved workflow's parameters and write it as a template.

``resolve_target(prompt, titles, spec) -> Target``
    ``NODE.INPUT`` (or ``NODE.inputs.INPUT``) to (node_id, input_name); NODE is a node id,
    a title, or a class_type that exactly one node has.
``propose_parameters(prompt, schema, titles=None) -> Proposal``
    The usual parameters, named as the built-in templates name them (seed, steps, cfg,
    sampler, scheduler, denoise, width, height, positive, negative, image, checkpoint): a mapping
    name -> Target whose ``account`` says what was chosen and why.
``import_workflow(text, name=, folder=, schema=, parameters=) -> Imported``
    A saved workflow (API export or editor format, converted by workflow_import) written
    into `folder` as NAME.json.j2 and NAME.params.json, then loaded back as a Template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from comfy_orchestrator.errors import GraphInvalid, ParameterError, WorkflowImportError
from comfy_orchestrator.graph import is_link
from comfy_orchestrator.params import WORKFLOWS
from comfy_orchestrator.schema import CHECKPOINT_LOADERS, FILE_INPUTS, Schema
from comfy_orchestrator.templates import (
    DECLARATION_SUFFIX,
    TEMPLATE_SUFFIX,
    Template,
    Templates,
    builtin_folder,
)
from comfy_orchestrator.validation import check_prompt
from comfy_orchestrator.workflow_import import (
    detect_format,
    display_name,
    natural_key,
    parse_workflow,
    titles_of,
    to_api,
)

__all__ = ["Imported", "Proposal", "Target", "import_workflow", "propose_parameters", "resolve_target"]

_MARK = "\u0000parameter\u0000"  # stands where a parameter goes until the JSON text is written


class Target(NamedTuple):
    """One input of one node: where a template parameter goes."""

    node_id: str
    input_name: str

    def __str__(self) -> str:
        return f"{self.node_id}.{self.input_name}"


class Proposal(Mapping[str, Target]):
    """Proposed parameters (name -> Target) and an account of how they were chosen."""

    def __init__(self, targets: Mapping[str, Target], account: Sequence[str]) -> None:
        self._targets = dict(targets)
        self.account = tuple(account)

    def __getitem__(self, name: str) -> Target:
        return self._targets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def __repr__(self) -> str:
        return f"Proposal({self._targets!r})"


def resolve_target(prompt: Mapping[str, Mapping[str, Any]], titles: Mapping[str, str],
                   spec: str) -> Target:
    """Find the input that `spec` (NODE.INPUT, or NODE.inputs.INPUT) names."""
    node_ref, dot, input_name = spec.strip().rpartition(".")
    if not dot or not node_ref or not input_name:
        raise WorkflowImportError(
            f"parameter target {spec!r} is not NODE.INPUT (NODE: a node id, a node title or a "
            "class that one node has; e.g. 3.denoise, KSampler.denoise)")
    node_id = _find_node(prompt, titles, node_ref)
    if node_id is None and node_ref.endswith(".inputs"):
        node_id = _find_node(prompt, titles, node_ref[: -len(".inputs")])
    if node_id is None:
        listing = "; ".join(f"{nid} {titles.get(nid, '')!r} ({node['class_type']})"
                            for nid, node in prompt.items())
        raise WorkflowImportError(f"parameter target {spec!r}: no node has the id, title or class "
                                  f"{node_ref!r}; nodes: {listing}")
    inputs = prompt[node_id].get("inputs") or {}
    if input_name not in inputs:
        values = ", ".join(name for name, value in inputs.items() if not is_link(value))
        raise WorkflowImportError(
            f"parameter target {spec!r}: {prompt[node_id]['class_type']} has no input "
            f"{input_name!r} set; its value inputs: {values or 'none'}", node_id=node_id)
    if is_link(inputs[input_name]):
        source = inputs[input_name][0]
        raise WorkflowImportError(
            f"parameter target {spec!r}: input {input_name!r} is linked from node {source}, "
            "so it holds no value to make a parameter of", node_id=node_id)
    return Target(node_id, input_name)


def _find_node(prompt: Mapping[str, Mapping[str, Any]], titles: Mapping[str, str],
               ref: str) -> str | None:
    if ref in prompt:
        return ref
    for matches, what in (
        ([nid for nid in prompt if titles.get(nid) == ref], "title"),
        ([nid for nid, node in prompt.items() if node.get("class_type") == ref], "class"),
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            candidates = ", ".join(f"{nid} ({prompt[nid]['class_type']} {titles.get(nid, '')!r})"
                                   for nid in sorted(matches, key=natural_key))
            raise WorkflowImportError(f"{len(matches)} nodes have the {what} {ref!r}: "
                                      f"{candidates}; name one by its id or give it its own title")
    return None


_SAMPLER_INPUTS = (
    ("seed", ("seed", "noise_seed")),
    ("steps", ("steps",)),
    ("cfg", ("cfg",)),
    ("sampler", ("sampler_name",)),
    ("scheduler", ("scheduler",)),
    ("denoise", ("denoise",)),
)


def propose_parameters(prompt: Mapping[str, Mapping[str, Any]], schema: Schema,
                       titles: Mapping[str, str] | None = None) -> Proposal:
    """Propose the usual parameters of a workflow and say what was chosen."""
    titles = titles if titles is not None else titles_of(prompt, schema)
    targets: dict[str, Target] = {}
    account: list[str] = []

    def describe(node_id: str) -> str:
        kind = str(prompt[node_id]["class_type"])
        title = titles.get(node_id, kind)
        same = title in (kind, display_name(schema, kind))
        return f"node {node_id} ({kind})" if same else f"node {node_id} ({kind} {title!r})"

    def propose(name: str, target: Target, why: str) -> None:
        targets[name] = target
        value = prompt[target.node_id]["inputs"][target.input_name]
        account.append(f"{name} = {target} ({why}; now {value!r})")

    samplers = [nid for nid, node in prompt.items() if _is_sampler(node, schema)]
    samplers.sort(key=natural_key)
    upstream = {nid: _ancestors(prompt, nid) for nid in samplers}
    first = [nid for nid in samplers if not any(other in upstream[nid] for other in samplers)]
    if not samplers:
        account.append("no sampler (a node with positive and negative inputs and steps or a "
                       "seed): no seed, steps, cfg, sampler, scheduler, denoise or prompts proposed")
    else:
        main = (first or samplers)[0]
        others = [nid for nid in samplers if nid != main]
        if others:
            account.append(
                f"{len(samplers)} samplers: the sampler parameters are those of {describe(main)}, "
                "the first in the flow; " + ", ".join(describe(nid) for nid in others)
                + " keep their values (add --param for their inputs if needed)")
        inputs = prompt[main]["inputs"]
        for name, candidates in _SAMPLER_INPUTS:
            for input_name in candidates:
                if input_name not in inputs:
                    continue
                if is_link(inputs[input_name]):
                    account.append(f"{name}: not proposed, {input_name} of {describe(main)} is "
                                   f"linked from node {inputs[input_name][0]}")
                else:
                    propose(name, Target(main, input_name), f"{input_name} of {describe(main)}")
                break
        _propose_prompts_and_size(prompt, schema, main, describe, propose, account)
    loaders = [(nid, name) for nid, node in prompt.items() for name in _upload_inputs(node, schema)]
    for index, (node_id, input_name) in enumerate(sorted(loaders, key=lambda t: natural_key(t[0]))):
        name = "image" if index == 0 else f"image_{index + 1}"
        propose(name, Target(node_id, input_name), f"{input_name} of {describe(node_id)}")
    checkpoints = sorted((nid for nid, node in prompt.items()
                          if CHECKPOINT_LOADERS.get(str(node["class_type"])) in node.get("inputs", {})),
                         key=natural_key)
    for index, node_id in enumerate(checkpoints):
        input_name = CHECKPOINT_LOADERS[str(prompt[node_id]["class_type"])]
        if is_link(prompt[node_id]["inputs"][input_name]):
            continue
        name = "checkpoint" if index == 0 else f"checkpoint_{index + 1}"
        propose(name, Target(node_id, input_name), f"{input_name} of {describe(node_id)}")
    return Proposal(targets, account)


def _propose_prompts_and_size(prompt: Mapping[str, Mapping[str, Any]], schema: Schema, main: str,
                              describe: Callable[[str], str], propose: Callable[[str, Target, str], None],
                              account: list[str]) -> None:
    """Propose the texts feeding the main sampler's positive and negative, and the size it works at."""
    inputs = prompt[main]["inputs"]
    sources = {}
    for side in ("positive", "negative"):
        link = inputs.get(side)
        source = _text_source(prompt, schema, link) if is_link(link) else None
        sources[side] = source
        if source is None:
            account.append(f"{side} prompt: no text input found upstream of {side} of "
                           f"{describe(main)}")
    size = _size_source(prompt, schema, main)
    if size is None:
        account.append(f"width, height: not proposed, no node upstream of the latent of {describe(main)} "
                       "sets both as values")
    else:
        for side in ("width", "height"):
            propose(side, Target(size, side), f"{side} of {describe(size)}, the size {describe(main)} works at")
    if sources["positive"] is not None:
        propose("positive", sources["positive"],
                f"text of {describe(sources['positive'].node_id)}, which feeds positive of "
                f"{describe(main)}")
    negative = sources["negative"]
    if negative is not None and negative == sources["positive"]:
        account.append("negative: not proposed, the same text feeds positive and negative")
    elif negative is not None:
        propose("negative", negative,
                f"text of {describe(negative.node_id)}, which feeds negative of {describe(main)}")


def _is_sampler(node: Mapping[str, Any], schema: Schema) -> bool:
    kind = str(node.get("class_type"))
    if kind not in schema:
        return False
    declared = schema[kind].inputs
    conditioning = all(declared.get(side) is not None and declared[side].type == "CONDITIONING"
                       for side in ("positive", "negative"))
    return conditioning and any(name in declared for name in ("steps", "seed", "noise_seed"))


def _ancestors(prompt: Mapping[str, Mapping[str, Any]], node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for value in (prompt.get(stack.pop(), {}).get("inputs") or {}).values():
            if is_link(value) and value[0] not in seen:
                seen.add(value[0])
                stack.append(value[0])
    return seen


def _size_source(prompt: Mapping[str, Mapping[str, Any]], schema: Schema, sampler: str) -> str | None:
    """The nearest node upstream of the sampler, along LATENT and IMAGE links, that sets width and height.

    An empty latent (txt2img) or a resize before encoding (img2img); a text encoder's width and
    height (CLIPTextEncodeSDXL) come through CONDITIONING, so they are never taken for the picture's.
    """
    queue = [sampler]
    seen = {sampler}
    while queue:
        node_id = queue.pop(0)
        inputs = prompt[node_id].get("inputs") or {}
        if node_id != sampler and all(isinstance(inputs.get(side), int) and not isinstance(inputs.get(side), bool)
                                      for side in ("width", "height")):
            return node_id
        kind = str(prompt[node_id].get("class_type"))
        declared = schema[kind].inputs if kind in schema else {}
        for name, value in inputs.items():
            if (is_link(value) and value[0] in prompt and value[0] not in seen and name in declared
                    and declared[name].type in ("LATENT", "IMAGE")):
                seen.add(value[0])
                queue.append(value[0])
    return None


def _text_source(prompt: Mapping[str, Mapping[str, Any]], schema: Schema,
                 link: list[Any]) -> Target | None:
    """The text input that makes a conditioning: follow CONDITIONING links upstream."""
    queue = [str(link[0])]
    seen: set[str] = set()
    while queue:
        node_id = queue.pop(0)
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        node = prompt[node_id]
        inputs = node.get("inputs") or {}
        kind = str(node.get("class_type"))
        declared = schema[kind].inputs if kind in schema else {}
        texts = [name for name, value in inputs.items() if isinstance(value, str)
                 and name in declared and declared[name].type == "STRING"
                 and (name == "text" or declared[name].options.get("multiline"))]
        if texts:
            return Target(node_id, "text" if "text" in texts else texts[0])
        for name, value in inputs.items():
            if is_link(value) and name in declared and declared[name].type == "CONDITIONING":
                queue.append(value[0])
    return None


def _upload_inputs(node: Mapping[str, Any], schema: Schema) -> list[str]:
    kind = str(node.get("class_type"))
    if kind not in schema:
        return []
    inputs = node.get("inputs") or {}
    return [name for name, config in schema[kind].inputs.items()
            if config.options.get("image_upload") and name in inputs and not is_link(inputs[name])]


@dataclass(frozen=True)
class Imported:
    """The outcome of importing a saved workflow as a template."""

    template: Template
    format: str
    parameters: Mapping[str, Target]
    notes: tuple[str, ...]  # what could not be carried over, and why
    account: tuple[str, ...]  # how proposed parameters were chosen


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_JINJA_OPENERS = re.compile(r"\{(?=[{%#])")  # '{{', '{%' and '{#' start Jinja tags; JSON never needs them


def _declaration(name: str, spec: Any, value: Any, class_type: str) -> dict[str, Any]:
    """Declare a parameter from the server's description of the input it sets."""
    entry: dict[str, Any] = {"name": name, "description": f"{class_type}.{spec.name}"}
    if FILE_INPUTS.get(class_type) == spec.name == "image":
        return {**entry, "type": "image", "description": "a local picture, uploaded for you"}
    if spec.type in ("INT", "FLOAT"):
        entry.update(type=spec.type.lower(), min=spec.options.get("min"), max=spec.options.get("max"))
    elif spec.type == "BOOLEAN":
        entry["type"] = "bool"
    elif spec.type == "COMBO" and spec.choices is not None and FILE_INPUTS.get(class_type) != spec.name:
        entry.update(type="choice", choices=list(spec.choices))
    else:
        entry["type"] = "str"
    return {**entry, "default": value}


def import_workflow(text: str | bytes, *, name: str, folder: Path, schema: Schema,
                    parameters: Mapping[str, str] | None = None, description: str = "",
                    replace: bool = False) -> Imported:
    """Turn a saved workflow (API export or editor format) into a template in `folder`.

    `parameters` maps parameter names to targets (NODE.INPUT, NODE being an id, a title or a
    class one node has); without it the usual parameters are proposed. A template of that name
    already in `folder` is replaced only when `replace` is set.
    """
    if not _NAME.match(name):
        raise ParameterError(f"template name {name!r}: use lower-case letters, digits, '-' and '_'",
                             parameter="name")
    if name in WORKFLOWS:
        raise ParameterError(f"{name!r} is a built-in template; choose another name", parameter="name")
    existing = folder / (name + TEMPLATE_SUFFIX)
    if existing.exists() and not replace:
        raise ParameterError(f"a template {name!r} already exists ({existing}); pass --force to replace it, "
                             "or choose another --name", parameter="name")
    data = parse_workflow(text)
    kind = detect_format(data)
    notes: tuple[str, ...] = ()
    if kind == "editor":
        converted = to_api(data, schema)
        prompt, titles, notes = converted.prompt, converted.titles, converted.notes
    else:
        prompt, titles = {k: dict(v) for k, v in data.items()}, titles_of(data, schema)
    structure = _structure_problems(prompt, schema)
    if structure:
        raise GraphInvalid(structure, template=name)
    account: tuple[str, ...] = ()
    if parameters:
        targets = {param: resolve_target(prompt, titles, spec) for param, spec in parameters.items()}
    else:
        proposal = propose_parameters(prompt, schema, titles)
        targets, account = dict(proposal), proposal.account
    declarations = []
    marked = json.loads(json.dumps(prompt))
    for param, target in targets.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", param):
            raise ParameterError(f"parameter name {param!r} must be a Python identifier", parameter=param)
        node = prompt[target.node_id]
        spec = schema[node["class_type"]].inputs.get(target.input_name) if node["class_type"] in schema else None
        value = node["inputs"][target.input_name]
        if spec is None:
            declarations.append({"name": param, "type": "str", "default": value, "description": str(target)})
        else:
            declarations.append(_declaration(param, spec, value, node["class_type"]))
        marked[target.node_id]["inputs"][target.input_name] = f"{_MARK}{param}{_MARK}"
    body = _JINJA_OPENERS.sub(r"\\u007b", json.dumps(marked, indent=2, ensure_ascii=False))
    for param in targets:
        body = body.replace(json.dumps(f"{_MARK}{param}{_MARK}"), "{{ " + param + " }}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (name + TEMPLATE_SUFFIX)).write_text(body + "\n", encoding="utf-8")
    declaration = {"description": description or f"imported from a saved {kind}-format workflow",
                   "parameters": declarations}
    (folder / (name + DECLARATION_SUFFIX)).write_text(json.dumps(declaration, indent=2) + "\n", encoding="utf-8")
    template = Templates([folder, builtin_folder()]).get(name)
    return Imported(template, kind, targets, tuple(notes), tuple(account))


def _structure_problems(prompt: Mapping[str, Any], schema: Schema) -> list[str]:
    verdict = check_prompt(prompt, schema)
    if verdict.error and not verdict.node_errors:
        return [f"{verdict.error['message']} {verdict.error['details']}".strip()]
    return []
