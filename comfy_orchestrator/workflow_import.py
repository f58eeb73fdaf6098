"""Saved ComfyUI workflows: reading them, and the editor format to the API format.

Everything here is pure: it takes parsed JSON (or JSON text) and a Schema and returns data.

Public API
----------
``parse_workflow(text) -> dict``
    JSON text to a mapping; WorkflowImportError when it is not JSON or not an object.
``detect_format(data) -> "api" | "editor"``
    Which form a saved workflow has (``data`` is a mapping or JSON text);
    WorkflowImportError when it is neither.
``to_api(workflow, schema) -> Converted``
    The prompt ComfyUI's editor would queue for an editor-format workflow (the normal Save):
    ``Converted.prompt`` (node id -> {"class_type", "inputs", "_meta": {"title"}}),
    ``Converted.titles`` (node id -> title) and ``Converted.notes`` (one line for each thing
    that could not be carried over, and why). Editor rules followed: widgets_values are
    mapped onto the schema's widget inputs in order, skipping the control value after a seed
    and the "upload" value of image loaders (the layouts are editor_widgets.py's); links resolve to [node_id, output_index] through
    Reroute chains, bypassed nodes (mode 4: an input of the same type passes through),
    PrimitiveNode (its value goes into its targets) and subgraphs (inner nodes get ids
    "host:inner"); muted nodes (mode 2) are left out, and so is every node that then lacks a
    required input, since the server would refuse it; Note, MarkdownNote and groups are
    editor-only.
``titles_of(prompt, schema=None) -> dict[str, str]``
    Node titles of an API-format prompt (its ``_meta.title``, else the class's display name).

Naming a workflow's parameters and writing it as a template is template_import.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from comfy_orchestrator.editor_widgets import CONTROL, CONTROL_VALUES, FORCED, describe_layout, fits, widget_layouts
from comfy_orchestrator.errors import WorkflowImportError
from comfy_orchestrator.graph import is_link
from comfy_orchestrator.schema import NodeSchema, Schema

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
MODE_MUTED = 2
MODE_BYPASSED = 4
SUBGRAPH_INPUT_NODE = "-10"
SUBGRAPH_OUTPUT_NODE = "-20"
MAX_SUBGRAPH_DEPTH = 32

Format = Literal["api", "editor"]


@dataclass(frozen=True)
class Converted:
    """An editor-format workflow in API format, with what could not be carried over."""

    prompt: dict[str, dict[str, Any]]
    titles: dict[str, str]
    notes: tuple[str, ...]


# ---------------------------------------------------------------- reading and detecting


def parse_workflow(text: str | bytes) -> dict[str, Any]:
    """Parse a saved workflow's JSON text into a mapping."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkflowImportError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowImportError(
            f"not a ComfyUI workflow: the JSON is a {type(data).__name__}, not an object"
        )
    return data


def detect_format(data: Mapping[str, Any] | str | bytes) -> Format:
    """Say whether `data` is an API-format prompt or an editor-format workflow."""
    workflow = parse_workflow(data) if isinstance(data, (str, bytes)) else data
    if isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), (list, dict)):
        return "editor"
    if workflow and all(
        isinstance(node, Mapping) and isinstance(node.get("class_type"), str)
        and isinstance(node.get("inputs", {}), Mapping)
        for node in workflow.values()
    ):
        return "api"
    if isinstance(workflow.get("prompt"), Mapping) or isinstance(workflow.get("workflow"), Mapping):
        hint = "; it wraps one: save the workflow itself (Save, or Export (API))"
    else:
        hint = ""
    keys = ", ".join(sorted(map(str, workflow))[:8]) or "nothing"
    raise WorkflowImportError(
        "neither an editor-format workflow (an object with \"nodes\" and \"links\") nor an "
        "API-format prompt (an object of node id -> {\"class_type\", \"inputs\"}); "
        f"the file holds {keys}{hint}"
    )


def titles_of(prompt: Mapping[str, Mapping[str, Any]], schema: Schema | None = None) -> dict[str, str]:
    """Node titles of an API-format prompt: its _meta titles, else the classes' display names."""
    titles: dict[str, str] = {}
    for node_id, node in prompt.items():
        meta = node.get("_meta")
        title = meta.get("title") if isinstance(meta, Mapping) else None
        titles[node_id] = str(title) if title else display_name(schema, str(node["class_type"]))
    return titles


# ---------------------------------------------------------------- editor -> API


def to_api(workflow: Mapping[str, Any], schema: Schema) -> Converted:
    """Convert an editor-format workflow to the API-format prompt the editor would queue."""
    if detect_format(workflow) != "editor":
        raise WorkflowImportError("this is an API-format prompt already, not an editor workflow")
    return _Converter(workflow, schema).convert()


@dataclass(frozen=True)
class _Link:
    link_id: int
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: str


@dataclass(frozen=True)
class _Graph:
    """The root graph or one subgraph definition."""

    nodes: Mapping[str, Mapping[str, Any]]
    links: Mapping[int, _Link]


@dataclass(frozen=True)
class _Placed:
    """A node where it sits: in which graph, inside which subgraph instances."""

    node: Mapping[str, Any]
    graph: _Graph
    path: tuple[str, ...]
    host: _Placed | None

    @property
    def node_id(self) -> str:
        return ":".join((*self.path, str(self.node.get("id"))))

    @property
    def class_type(self) -> str:
        return str(self.node.get("type", ""))


@dataclass(frozen=True)
class _FromOutput:
    node_id: str
    slot: int


@dataclass(frozen=True)
class _FromValue:
    value: Any


_Resolved = _FromOutput | _FromValue | None


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], schema: Schema) -> None:
        self.schema = schema
        definitions = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.definitions: dict[str, Mapping[str, Any]] = {
            str(d["id"]): d for d in definitions if isinstance(d, Mapping) and "id" in d
        }
        self.subgraphs = {key: _read_graph(d) for key, d in self.definitions.items()}
        self.placed: dict[str, _Placed] = {}
        self.notes: list[str] = []
        self.unrunnable: dict[str, str] = {}  # node id -> why the server would refuse it
        self._place(_read_graph(workflow), (), None)

    def _place(self, graph: _Graph, path: tuple[str, ...], host: _Placed | None) -> None:
        if len(path) > MAX_SUBGRAPH_DEPTH:
            raise WorkflowImportError("subgraphs nest too deep (a subgraph contains itself?)",
                                      node_id=":".join(path))
        for node in graph.nodes.values():
            placed = _Placed(node, graph, path, host)
            self.placed[placed.node_id] = placed
            if placed.class_type in self.subgraphs:
                self._place(self.subgraphs[placed.class_type], (*path, str(node["id"])), placed)

    def _mode(self, placed: _Placed) -> int:
        """The node's mode; a muted or bypassed subgraph instance mutes everything inside."""
        if placed.host is not None:
            host_mode = self._mode(placed.host)
            if host_mode in (MODE_MUTED, MODE_BYPASSED):
                return host_mode
        mode = placed.node.get("mode", 0)
        return mode if isinstance(mode, int) else 0

    def _title(self, placed: _Placed) -> str:
        title = placed.node.get("title")
        if title:
            return str(title)
        definition = self.definitions.get(placed.class_type)
        if definition is not None:
            return str(definition.get("name") or placed.class_type)
        return display_name(self.schema, placed.class_type)

    def _describe(self, placed: _Placed) -> str:
        title = self._title(placed)
        if title in (placed.class_type, display_name(self.schema, placed.class_type)):
            return f"node {placed.node_id} ({placed.class_type})"
        return f"node {placed.node_id} ({placed.class_type} {title!r})"

    def convert(self) -> Converted:
        prompt: dict[str, dict[str, Any]] = {}
        titles: dict[str, str] = {}
        left_out: dict[str, str] = {}
        for node_id, placed in self.placed.items():
            kind = placed.class_type
            mode = self._mode(placed)
            if kind in NOTE_TYPES:
                self.notes.append(f"{self._describe(placed)} is an editor-only note: left out")
                continue
            if kind in ("Reroute", "PrimitiveNode"):
                self._note_primitive_control(placed)
                continue  # resolved through by the nodes they feed
            if kind in self.subgraphs and mode not in (MODE_MUTED, MODE_BYPASSED):
                continue  # its inner nodes stand in for it
            if mode == MODE_MUTED:
                left_out[node_id] = "muted"
                if placed.host is None or self._mode(placed.host) != MODE_MUTED:
                    self.notes.append(f"{self._describe(placed)} is muted: left out, as the editor does")
                continue
            if mode == MODE_BYPASSED:
                if placed.host is None or self._mode(placed.host) != MODE_BYPASSED:
                    self.notes.append(
                        f"{self._describe(placed)} is bypassed: left out, and the nodes it fed "
                        "take its input of the same type instead, as the editor does"
                    )
                continue
            if kind not in self.schema:
                raise WorkflowImportError(self._unknown_class(placed), node_id=node_id)
            prompt[node_id] = {
                "class_type": kind,
                "inputs": self._inputs(placed, self.schema[kind]),
                "_meta": {"title": self._title(placed)},
            }
            titles[node_id] = self._title(placed)
        for node_id, why in self.unrunnable.items():
            self.notes.append(f"{self._describe(self.placed[node_id])} is left out: {why}; "
                              "the server would refuse it")
            del prompt[node_id], titles[node_id]
            left_out[node_id] = "left out"
        self._drop_dangling(prompt, titles, left_out)
        ordered = sorted(prompt, key=natural_key)
        return Converted(
            prompt={k: prompt[k] for k in ordered},
            titles={k: titles[k] for k in ordered},
            notes=tuple(self.notes),
        )

    def _unknown_class(self, placed: _Placed) -> str:
        kind = placed.class_type
        if kind.startswith(("workflow>", "workflow/")):
            return (f"{kind!r} is a legacy group node; convert it to a subgraph in the editor "
                    "(or ungroup it) and save again")
        return (f"class {kind!r} is not in the server's schema ({self.schema.source}); "
                "a custom node that is not installed there?")

    def _inputs(self, placed: _Placed, spec: NodeSchema) -> dict[str, Any]:
        inputs = {name: _wrap(value) for name, value in self._widget_values(placed, spec).items()}
        for slot in placed.node.get("inputs") or []:
            if not isinstance(slot, Mapping) or slot.get("link") is None:
                continue
            widget = slot.get("widget")
            name = str(widget.get("name") if isinstance(widget, Mapping) else slot.get("name"))
            resolved = self._resolve_input(placed, slot, set())
            if isinstance(resolved, _FromOutput):
                inputs[name] = [resolved.node_id, resolved.slot]
            elif isinstance(resolved, _FromValue):
                inputs[name] = _wrap(resolved.value)
            elif name in inputs:
                self.notes.append(f"{self._describe(placed)}: input {name!r} is linked to nothing "
                                  "that gives a value; it keeps its widget value")
            elif name in spec.required:
                self.unrunnable[placed.node_id] = (
                    f"its required input {name!r} is linked to nothing that gives a value (a "
                    "bypassed node without an input of that type, or an empty reroute)")
            else:
                self.notes.append(f"{self._describe(placed)}: optional input {name!r} is linked "
                                  "to nothing that gives a value; left unset")
        return inputs

    # --- widgets

    def _widget_values(self, placed: _Placed, spec: NodeSchema) -> dict[str, Any]:
        values = placed.node.get("widgets_values")
        layouts = widget_layouts(spec)
        widget_names = [name for name in layouts[0] if name not in (None, CONTROL, FORCED)]
        if isinstance(values, Mapping):  # some nodes save their widgets by name
            return {name: values[name] for name in widget_names if name in values}
        if values is None:
            values = []
        if not isinstance(values, list):
            raise WorkflowImportError(f"widgets_values of {placed.class_type} is neither a list "
                                      "nor an object", node_id=placed.node_id)
        for layout in layouts:
            if len(layout) == len(values) and fits(layout, values):
                mapped: dict[str, Any] = {}
                for index, (name, value) in enumerate(zip(layout, values)):
                    if name == CONTROL:
                        self._note_control(placed, str(layout[index - 1]), value, values[index - 1])
                    elif name is not None and name != FORCED:
                        mapped[name] = value
                return mapped
        raise WorkflowImportError(
            f"{placed.class_type} has {len(values)} widget values {list(values)!r}, but the "
            f"schema ({self.schema.source}) expects {len(layouts[0])} "
            f"({describe_layout(layouts[0])}); saved with another version of the node?",
            node_id=placed.node_id,
        )

    def _note_control(self, placed: _Placed, name: str, control: Any, value: Any) -> None:
        if control != "fixed":
            self.notes.append(
                f"{self._describe(placed)}: {name} is set to {control!r} after each run in the "
                f"editor; the API graph keeps the saved value {value!r} (make {name} a parameter "
                "to vary it)"
            )

    def _note_primitive_control(self, placed: _Placed) -> None:
        values = placed.node.get("widgets_values")
        if placed.class_type == "PrimitiveNode" and isinstance(values, list) and len(values) > 1:
            if values[1] in CONTROL_VALUES:
                self._note_control(placed, "its value", values[1], values[0])

    def _promoted_values(self, host: _Placed) -> dict[str, Any]:
        """Values of a subgraph instance's own widgets (inputs promoted from inside)."""
        definition = self.definitions[host.class_type]
        values = host.node.get("widgets_values")
        names = [str(i.get("name")) for i in definition.get("inputs") or []
                 if isinstance(i, Mapping) and i.get("type") in WIDGET_TYPES]
        if isinstance(values, Mapping):
            return {name: values[name] for name in names if name in values}
        if not isinstance(values, list) or not values:
            return {}
        if len(values) != len(names):
            values = [v for v in values if v not in CONTROL_VALUES]
        if len(values) != len(names):
            self.notes.append(f"{self._describe(host)}: {len(values)} widget values for "
                              f"{len(names)} widget inputs ({', '.join(names)}); the nodes inside "
                              "keep their own values")
            return {}
        return dict(zip(names, values))

    # --- links

    def _resolve_input(self, placed: _Placed, slot: Mapping[str, Any], visited: set[str],
                       wanted_type: str | None = None) -> _Resolved:
        link_id = slot.get("link")
        if link_id is None:
            return None
        name = slot.get("name")
        link = placed.graph.links.get(_as_int(link_id, placed))
        if link is None:
            raise WorkflowImportError(
                f"input {name!r} uses link {link_id}, which the workflow's links do not list",
                node_id=placed.node_id,
            )
        wanted = wanted_type or str(slot.get("type") or link.type)
        if link.origin_id == SUBGRAPH_INPUT_NODE:
            if placed.host is None:
                raise WorkflowImportError(f"input {name!r} is linked to a subgraph input outside "
                                          "any subgraph", node_id=placed.node_id)
            return self._resolve_subgraph_input(placed.host, link.origin_slot, visited)
        if link.origin_id not in placed.graph.nodes:
            raise WorkflowImportError(
                f"input {name!r} is linked (link {link.link_id}) to node {link.origin_id}, "
                "which does not exist", node_id=placed.node_id,
            )
        origin = self.placed[":".join((*placed.path, link.origin_id))]
        return self._resolve_output(origin, link.origin_slot, wanted, visited)

    def _resolve_output(self, placed: _Placed, slot: int, wanted: str, visited: set[str]) -> _Resolved:
        key = f"{placed.node_id}[{slot}]"
        if key in visited:
            raise WorkflowImportError(f"links loop through output {slot} (through reroutes, "
                                      "bypassed nodes or subgraphs)", node_id=placed.node_id)
        visited.add(key)
        kind = placed.class_type
        mode = self._mode(placed)
        if mode == MODE_BYPASSED and (placed.host is None or self._mode(placed.host) != MODE_BYPASSED):
            index = _bypass_input(placed.node, slot, wanted)
            if index is None:
                return None
            return self._resolve_input(placed, placed.node["inputs"][index], visited, wanted)
        if kind in self.subgraphs and mode != MODE_MUTED:
            return self._resolve_subgraph_output(placed, slot, wanted, visited)
        if kind == "Reroute":
            slots = placed.node.get("inputs") or []
            return self._resolve_input(placed, slots[0], visited, wanted) if slots else None
        if kind == "PrimitiveNode":
            values = placed.node.get("widgets_values")
            return _FromValue(values[0]) if isinstance(values, list) and values else None
        if kind in NOTE_TYPES:
            return None
        return _FromOutput(placed.node_id, slot)  # a muted origin is removed with its links later

    def _resolve_subgraph_input(self, host: _Placed, index: int, visited: set[str]) -> _Resolved:
        declared = self.definitions[host.class_type].get("inputs") or []
        if not 0 <= index < len(declared):
            raise WorkflowImportError(f"a link inside its subgraph uses subgraph input {index}, "
                                      f"but the subgraph has {len(declared)}", node_id=host.node_id)
        name = declared[index].get("name")
        for slot in host.node.get("inputs") or []:
            if isinstance(slot, Mapping) and slot.get("name") == name and slot.get("link") is not None:
                return self._resolve_input(host, slot, visited)
        promoted = self._promoted_values(host)
        return _FromValue(promoted[name]) if name in promoted else None

    def _resolve_subgraph_output(self, host: _Placed, slot: int, wanted: str,
                                 visited: set[str]) -> _Resolved:
        inner = self.subgraphs[host.class_type]
        for link in inner.links.values():
            if link.target_id == SUBGRAPH_OUTPUT_NODE and link.target_slot == slot:
                if link.origin_id == SUBGRAPH_INPUT_NODE:
                    return self._resolve_subgraph_input(host, link.origin_slot, visited)
                origin = self.placed.get(":".join((*host.path, str(host.node["id"]), link.origin_id)))
                if origin is None:
                    raise WorkflowImportError(
                        f"subgraph output {slot} comes from node {link.origin_id}, which the "
                        "subgraph does not have", node_id=host.node_id)
                return self._resolve_output(origin, link.origin_slot, wanted, visited)
        return None

    # --- muted nodes and what depended on them

    def _drop_dangling(self, prompt: dict[str, dict[str, Any]], titles: dict[str, str],
                       left_out: dict[str, str]) -> None:
        """Remove links to nodes that are not in the prompt, as the editor does.

        A node that loses a required input this way would be refused by the server, which
        then skips that branch; leave it out too and say so.
        """
        changed = True
        while changed:
            changed = False
            for node_id in list(prompt):
                node = prompt[node_id]
                required = set(self.schema[node["class_type"]].required)
                for name, value in list(node["inputs"].items()):
                    if not is_link(value) or value[0] in prompt:
                        continue
                    source = value[0]
                    why = left_out.get(source, "left out")
                    del node["inputs"][name]
                    describe = self._describe(self.placed[node_id])
                    if name in required:
                        self.notes.append(
                            f"{describe} is left out: its required input {name!r} came from "
                            f"node {source}, which is {why}; the server would refuse it")
                        del prompt[node_id], titles[node_id]
                        left_out[node_id] = "left out"
                        changed = True
                        break
                    self.notes.append(f"{describe}: optional input {name!r} came from node "
                                      f"{source}, which is {why}; left unset")


def _bypass_input(node: Mapping[str, Any], slot: int, wanted: str) -> int | None:
    """The input a bypassed node passes to output `slot`: same index first, then by type."""
    inputs = [s for s in node.get("inputs") or [] if isinstance(s, Mapping)]
    outputs = node.get("outputs") or []
    output_type = str(outputs[slot].get("type", "*")) if slot < len(outputs) else wanted
    if wanted in ("*", ""):
        return slot if slot < len(inputs) else (0 if inputs else None)
    if slot < len(inputs):
        same = str(inputs[slot].get("type", ""))
        if _connectable(same, output_type) and _connectable(same, wanted):
            return slot
    for index, candidate in enumerate(inputs):
        if candidate.get("type") == wanted:
            return index
    for index, candidate in enumerate(inputs):
        kind = str(candidate.get("type", ""))
        if _connectable(kind, output_type) and _connectable(kind, wanted):
            return index
    return None


def _connectable(a: str, b: str) -> bool:
    """Whether slot types match as the editor sees it: equal, "*", or sharing a listed type."""
    if not a or not b or a == "*" or b == "*":
        return True
    left = {t.strip().upper() for t in a.split(",")}
    right = {t.strip().upper() for t in b.split(",")}
    return bool(left & right)


def _read_graph(graph: Mapping[str, Any]) -> _Graph:
    nodes: dict[str, Mapping[str, Any]] = {}
    for node in graph.get("nodes") or []:
        if not isinstance(node, Mapping) or "id" not in node:
            raise WorkflowImportError(f"a node without an id: {json.dumps(node)[:120]}")
        nodes[str(node["id"])] = node
    raw_links = graph.get("links") or []
    entries = raw_links.values() if isinstance(raw_links, Mapping) else raw_links
    links: dict[int, _Link] = {}
    for entry in entries:
        link = _read_link(entry)
        links[link.link_id] = link
    return _Graph(nodes, links)


def _read_link(entry: Any) -> _Link:
    try:
        if isinstance(entry, Mapping):  # the newer object form, used inside subgraphs
            return _Link(int(entry["id"]), str(entry["origin_id"]), int(entry["origin_slot"]),
                         str(entry["target_id"]), int(entry["target_slot"]), str(entry.get("type", "*")))
        link_id, origin_id, origin_slot, target_id, target_slot, kind = entry[:6]
        return _Link(int(link_id), str(origin_id), int(origin_slot), str(target_id),
                     int(target_slot), str(kind))
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkflowImportError(
            f"malformed link {json.dumps(entry)[:120]}: expected [id, from_node, from_slot, "
            "to_node, to_slot, type]") from exc


def _as_int(value: Any, placed: _Placed) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise WorkflowImportError(f"link id {value!r} is not a number",
                                  node_id=placed.node_id) from exc


def _wrap(value: Any) -> Any:
    """List values go as {"__value__": [...]} so the server does not take them for links."""
    return {"__value__": value} if isinstance(value, list) else value


def natural_key(node_id: str) -> tuple[tuple[int, str], ...]:
    """Sort key for node ids in natural order: 2 before 10, a subgraph's "40:9" after 40."""
    return tuple((int(part), "") if part.isdigit() else (1 << 62, part) for part in node_id.split(":"))


def display_name(schema: Schema | None, class_type: str) -> str:
    """The name the editor shows for a class: its display_name, else the class itself."""
    if schema is not None and class_type in schema:
        return str(schema.raw[class_type].get("display_name") or class_type)
    return class_type
