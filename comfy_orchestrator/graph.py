"""Graph and Node: a ComfyUI API-format prompt, checked for shape."""

from __future__ import annotations

import hashlib
import json
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from comfy_orchestrator.errors import GraphInvalid

Link = tuple[str, int]


def is_link(value: Any) -> bool:
    """Whether an input value is a link [node_id, output_index] rather than a literal."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


@dataclass(frozen=True)
class Node:
    """One node: its class and its inputs (literals, or links to other nodes' outputs)."""

    id: str
    class_type: str
    inputs: Mapping[str, Any]
    title: str | None = None

    def links(self) -> Iterator[tuple[str, Link]]:
        """Yield (input name, (source node id, output index)) for each linked input."""
        for name, value in self.inputs.items():
            if is_link(value):
                yield name, (value[0], value[1])


class Graph(Mapping[str, Node]):
    """An API-format prompt: node id -> Node. Immutable."""

    def __init__(self, nodes: Mapping[str, Node]) -> None:
        self._nodes = MappingProxyType(dict(nodes))
        self._digest: str | None = None  # worked out once: a job's id and its journal entry both read it
        self._api: dict[str, Any] | None = None  # api_view(), made once

    @classmethod
    def from_api(cls, data: Any) -> Graph:
        """Read an API-format prompt ({id: {class_type, inputs}}), checking its shape and links."""
        if not isinstance(data, Mapping) or not data:
            raise GraphInvalid(["an API-format prompt is a non-empty JSON object of node id -> node"])
        problems: list[str] = []
        nodes: dict[str, Node] = {}
        for node_id, entry in data.items():  # dict first: Mapping's ABC check is slow, and JSON gives dicts
            if not isinstance(entry, (dict, Mapping)) or not isinstance(entry.get("class_type"), str):
                problems.append(f"node {node_id}: needs a string 'class_type' (is this the editor format? "
                                "use 'comfy-orch template import' or ComfyUI's Export (API))")
                continue
            inputs = entry.get("inputs", {})
            if not isinstance(inputs, (dict, Mapping)):
                problems.append(f"node {node_id}: 'inputs' must be an object")
                continue
            meta = entry.get("_meta")
            title = meta.get("title") if isinstance(meta, (dict, Mapping)) else None
            nodes[str(node_id)] = Node(str(node_id), entry["class_type"], MappingProxyType(dict(inputs)), title)
        graph = cls(nodes)
        problems += graph.link_problems()
        if problems:
            raise GraphInvalid(problems)
        return graph

    @classmethod
    def from_json(cls, text: str) -> Graph:
        """Read an API-format prompt from JSON text as from_api does (json.JSONDecodeError if it is not JSON).

        The values parsed are this graph's alone, so they serve as its api_view as they are, not copied.
        """
        data = json.loads(text)
        graph = cls.from_api(data)
        graph._api = {node_id: {"class_type": entry["class_type"], "inputs": entry.get("inputs", {})}
                      for node_id, entry in data.items()}
        return graph

    def link_problems(self) -> list[str]:
        """Links whose shape is wrong or that point at nodes the graph lacks."""
        problems = []
        for node in self._nodes.values():
            for name, value in node.inputs.items():
                if isinstance(value, (list, tuple)) and not is_link(value):
                    problems.append(f"node {node.id} input {name!r}: a link is [\"node_id\", output_index], "
                                    f"got {json.dumps(value)}")
                elif is_link(value) and value[0] not in self._nodes:
                    problems.append(f"node {node.id} input {name!r} links to node {value[0]!r}, "
                                    "which the graph lacks")
        return problems

    def __getitem__(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    # the dict's own views: Mapping's would look up every node again, through __getitem__
    def keys(self) -> KeysView[str]:
        return self._nodes.keys()

    def values(self) -> ValuesView[Node]:
        return self._nodes.values()

    def items(self) -> ItemsView[str, Node]:
        return self._nodes.items()

    def of_class(self, class_type: str) -> list[Node]:
        """The nodes of one class, in graph order."""
        return [node for node in self._nodes.values() if node.class_type == class_type]

    def to_api(self) -> dict[str, Any]:
        """The prompt as plain JSON values, ready for POST /prompt: a copy of its own, for the caller to change."""
        return {node.id: {"class_type": node.class_type, "inputs": _plain(node.inputs)} for node in self._nodes.values()}

    def api_view(self) -> Mapping[str, Any]:
        """The prompt as plain JSON values, made once and shared by every reader: never change it (to_api does).

        A sweep reads each graph three times before it runs (checked, hashed, keyed for the cache).
        """
        if self._api is None:
            self._api = self.to_api()
        return self._api

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_api(), indent=indent, ensure_ascii=False)

    def digest(self) -> str:
        """A stable hash of the graph's content, for manifests and de-duplication."""
        if self._digest is None:
            text = json.dumps(self.api_view(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._digest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and self.api_view() == other.api_view()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        return f"Graph({len(self)} nodes: {', '.join(n.class_type for n in self._nodes.values())})"


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float)) or value is None:  # most inputs, answered without Mapping's ABC check
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
