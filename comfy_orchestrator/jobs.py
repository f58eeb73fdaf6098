"""Job, Output and JobResult: what is sent to a server and what comes back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_orchestrator.graph import Graph


def content_name(path: Path) -> str:
    """The name an input file gets on a server: its stem and a hash of its bytes.

    Naming uploads by content means one image is uploaded once per server and a
    changed file under the same name never reuses the stale copy.
    """
    return name_by_content(path.read_bytes(), path.stem, path.suffix.lower() or ".png")


def name_by_content(data: bytes, stem: str, suffix: str) -> str:
    """An upload name from a readable stem and a hash of the bytes (see content_name)."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40] or "input"
    return f"{clean}-{digest}{suffix}"


@dataclass(frozen=True, repr=False)
class Job:
    """One prompt to run: the graph, where it came from, and the local files it needs."""

    graph: Graph
    template: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # JSON values of the template's parameters
    inputs: Mapping[str, Path] = field(default_factory=dict)  # server input file name -> local file to upload
    parameter_map: Mapping[str, str] = field(default_factory=dict)  # "node_id.input" -> template parameter
    label: str = ""  # a human name, such as a sweep cell's

    def __repr__(self) -> str:
        """Short: a job's graph is kilobytes, and events that carry the job are printed whole."""
        named = f"{self.label!r}, " if self.label else ""
        return f"Job({named}template={self.template!r}, id={self.id[:12]!r})"

    @property
    def id(self) -> str:
        """A deterministic id: the same graph with the same inputs gives the same id."""
        text = json.dumps([self.graph.digest(), sorted(self.inputs)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def parameter_for(self, node_id: str, input_name: str) -> str | None:
        """The template parameter that sets a node's input, if any."""
        return self.parameter_map.get(f"{node_id}.{input_name}")

    def picture_parameters(self) -> frozenset[str]:
        """The template parameters that shape the picture: those setting an input of a node another node reads.

        A node nothing reads (SaveImage) only receives the picture, so a parameter reaching
        nothing else (filename_prefix) names a file; one that reaches no node at all (a 0 size
        that means "keep", a LoRA strength with no LoRA) changes nothing.
        """
        read = {source for node in self.graph.values() for _, (source, _) in node.links()}
        return frozenset(parameter for key, parameter in self.parameter_map.items()
                         if key.rpartition(".")[0] in read)


@dataclass(frozen=True)
class Output:
    """One file a prompt produced, as the server's history lists it."""

    node_id: str
    filename: str
    subfolder: str = ""
    type: str = "output"  # "output", "temp" or "input"
    kind: str = "images"  # the key under the node's outputs: images, gifs, audio, ...


@dataclass(frozen=True)
class JobResult:
    """A finished job: where it ran, what it produced, and where the files were saved."""

    job: Job
    prompt_id: str
    server: str
    outputs: tuple[Output, ...] = ()
    files: tuple[Path, ...] = ()  # local copies, when the outputs were downloaded
    timings: Mapping[str, float] = field(default_factory=dict)  # epoch seconds: submitted, started, finished
    cached_nodes: tuple[str, ...] = ()
