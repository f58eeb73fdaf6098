"""Sweep: axes over a template's parameters -> cells of validated Params.

An axis is written ``NAME=SPEC``:

* ``cfg=6,8,10`` or ``sampler="dpm++ 2m karras",euler`` -- a list (CSV quoting);
* ``denoise=0.3:0.9:0.1`` -- a range with both ends included, computed in decimal
  from the text so 0.3, 0.4 ... 0.9 come out exactly (``a:b`` steps by 1);
* ``denoise=0.3-0.9 [7]`` -- 7 evenly spaced values; ``steps=10-30 (+5)`` -- a step;
* ``seed=random:4`` -- 4 seeds drawn from the random generator passed in; the drawn
  values are what the axis holds, so a stored definition reproduces them; as in A1111,
  a seed of ``-1`` is drawn the same way (``seed=-1,-1,42``);
* ``seed=1-4`` -- a range of whole numbers, ends included, as A1111 writes it;
* ``positive=@prompts.txt`` -- one value a non-blank line of a file;
* ``positive=sr:cat,dog,fox`` -- search and replace: each value replaces the first
  one wherever it occurs in the prompt the other parameters give.

Axes combine as a product (a grid, the last axis changing fastest) or in step (zip).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from comfy_orchestrator.errors import ParameterError, SweepError
from comfy_orchestrator.graph import Graph, is_link
from comfy_orchestrator.jobs import Job, content_name

Value = int | float | str
T = TypeVar("T")

DRAWN_SEED_MAX = 2**32 - 1  # seed=random:N draws below this, what every UI accepts (params.SEED_MAX is ComfyUI's)
BATCH_AXIS = "batch_index"  # the axis a batched seed axis becomes: position in one prompt's batch
BATCH_PARAMETERS = ("batch_size", "amount", "batch")  # template parameters that set a batch's size
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_COUNT_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*$")
_STEP_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\(\s*\+?({_NUMBER})\s*\)\s*$")
_COLON_RANGE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*({_NUMBER})\s*)?$")
_RANDOM = re.compile(r"^\s*random\s*:\s*(\d+)\s*$")
_INT_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")
RANDOM_SEED = -1  # as in A1111: a seed of -1 means "draw one", and the drawn one is recorded
SEED_PARAMETERS = ("seed", "noise_seed")
_MAX_VALUES = 100_000
# From the recorded timings (shared reference, H200): warm img2img 0.8-1.4 s for 20 steps,
# a cold checkpoint load about 2 s, and each extra image of a batch adds about a tenth of a step.
SECONDS_PER_STEP = 0.055
PROMPT_OVERHEAD_S = 0.15
CHECKPOINT_LOAD_S = 2.0
BATCH_STEP_SHARE = 0.1


class TemplateLike(Protocol):
    """What a sweep needs of a template: its name, validated Params, and a Job for them.

    `job` is told the upload name (jobs.content_name) of each picture parameter the sweep has read already.
    """

    @property
    def name(self) -> str: ...

    def params(self, values: Mapping[str, Any]) -> BaseModel: ...

    def job(self, params: Any, *, label: str = "", image_names: Mapping[str, str] | None = None) -> Job: ...


@dataclass(frozen=True)
class Axis:
    """One swept parameter: its values, the text they came from, and for search-and-replace the word replaced."""

    name: str
    values: tuple[Value, ...]
    spec: str = ""
    replaces: str | None = None

    def __post_init__(self) -> None:
        if not self.values:
            raise SweepError(f"axis {self.name!r} has no values")
        if len(set(map(_value_key, self.values))) != len(self.values):
            raise SweepError(f"axis {self.name!r} repeats a value: {list(self.values)}")


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: its position, its axis values, and the Params it runs."""

    index: int
    values: Mapping[str, Value]
    params: BaseModel
    batch_index: int | None = None  # where the cell's image sits in a batched prompt

    @property
    def label(self) -> str:
        """A short human name: the axis values in order, a batched image by its seed ('seed=42 #2')."""
        seed = getattr(self.params, "seed", None)
        shown = shown_values(self.values, seed) if isinstance(seed, int) else self.values
        return ", ".join(f"{name}={format_value(value)}" for name, value in shown.items())

    @property
    def slug(self) -> str:
        """A file-name-safe name: the index and the axis values."""
        parts = [f"{self.index:05d}"]
        parts += [f"{file_slug(name)}-{file_slug(format_value(value))[:40]}" for name, value in self.values.items()]
        return "_".join(parts)


@dataclass(frozen=True)
class Batch:
    """One prompt to run: a single cell, or cells differing only in their batch index."""

    cells: tuple[Cell, ...]
    params: BaseModel


def batch_seed_label(seed: Value, batch_index: int) -> str:
    """How a batched image is named: its seed and its place in the batch ('42 #2' is the second of seed 42).

    ComfyUI draws a whole batch's noise from one seed, so that seed and the place say which image it is.
    """
    return f"{format_value(seed)} #{batch_index + 1}"


def shown_values(values: Mapping[str, Value], seed: Value) -> dict[str, Value]:
    """A cell's axis values as a user reads them: a batch index becomes the seed its image has."""
    return {("seed" if name == BATCH_AXIS else name):
            (batch_seed_label(seed, int(value)) if name == BATCH_AXIS else value) for name, value in values.items()}


def format_value(value: Value) -> str:
    """A value as a label: floats without drift (0.3, not 0.30000000000000004)."""
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e16 else f"{value:.1f}"
    return str(value)


def parse_number(text: str) -> int | float:
    """A number as typed: '6' -> 6, '0.3' -> 0.3."""
    decimal = _decimal(text, axis="")
    return _number(decimal)


def parse_axis(
    text: str,
    *,
    rng: random.Random | None = None,
    read_text: Callable[[str], str] | None = None,
) -> Axis:
    """Parse 'NAME=SPEC' into an Axis; `rng` draws random seeds, `read_text` reads @files."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise SweepError(f"axis {text!r}: write NAME=VALUES, e.g. cfg=6,8,10 or denoise=0.3:0.9:0.1")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
        raise SweepError(f"axis {name!r}: a parameter name is letters, digits and underscores")
    if name == BATCH_AXIS:
        raise SweepError(f"axis {name!r} is reserved for batched seeds (use --batch-seeds)")
    spec = spec.strip()
    if not spec:
        raise SweepError(f"axis {name!r} has no values")
    if spec.startswith("sr:"):
        values = _list_values(name, spec[3:], numbers=False)
        if len(values) < 2:
            raise SweepError(f"axis {name!r}: search-and-replace needs the word to find and at least one more")
        return Axis(name, tuple(values), spec, replaces=str(values[0]))
    if spec.startswith("@"):
        return Axis(name, _file_values(name, spec[1:], read_text), spec)
    if match := _RANDOM.match(spec):
        return Axis(name, _random_values(name, int(match[1]), rng), spec)
    if match := _COLON_RANGE.match(spec):
        start, stop = _decimal(match[1], name), _decimal(match[2], name)
        step = _decimal(match[3], name) if match[3] else Decimal(1 if stop >= start else -1)
        return Axis(name, _stepped(name, start, stop, step), spec)
    if match := _COUNT_RANGE.match(spec):
        start, stop, count = _decimal(match[1], name), _decimal(match[2], name), int(match[3])
        return Axis(name, _spaced(name, start, stop, count), spec)
    if match := _STEP_RANGE.match(spec):
        start, stop, step = (_decimal(match[i], name) for i in (1, 2, 3))
        return Axis(name, _stepped(name, start, stop, step), spec)
    if match := _INT_RANGE.match(spec):  # A1111's "1-4": 1, 2, 3, 4
        start, stop = _decimal(match[1], name), _decimal(match[2], name)
        return Axis(name, _stepped(name, start, stop, Decimal(1 if stop >= start else -1)), spec)
    values = _list_values(name, spec, numbers=True)
    if name in SEED_PARAMETERS and RANDOM_SEED in values:  # A1111's -1: a random seed, drawn now and kept
        drawn = iter(_random_values(name, values.count(RANDOM_SEED), rng))
        values = [next(drawn) if value == RANDOM_SEED else value for value in values]
    return Axis(name, tuple(values), spec)


def draws_seeds(axis_name: str, spec: str) -> bool:
    """Whether an axis's values are drawn at random (random:N, or -1 for a seed): a resume keeps the drawn ones."""
    if _RANDOM.match(spec):
        return True
    return axis_name in SEED_PARAMETERS and str(RANDOM_SEED) in (item.strip() for item in spec.split(","))


@dataclass(frozen=True)
class Sweep:
    """A template, its fixed parameters and its axes: the cells to run."""

    template: TemplateLike
    axes: tuple[Axis, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # kept as a read-only copy (__post_init__)
    zip: bool = False
    batch_seeds: bool = False  # run a 'seed' axis as one batched prompt per other-values combination
    # what cells() validated and _portable_fixed() found, kept: a sweep's values never change once it is made
    _cells: tuple[Cell, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _portable: Mapping[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [axis.name for axis in self.axes]
        if not names:
            raise SweepError("a sweep needs at least one axis")
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise SweepError(f"axis {duplicates[0]!r} is given more than once")
        for axis in self.axes:
            if axis.name in self.fixed and axis.replaces is None:
                raise SweepError(f"axis {axis.name!r} is also set as a fixed parameter; drop one")
        if self.zip and len({len(a.values) for a in self.axes}) > 1:
            sizes = ", ".join(f"{a.name}: {len(a.values)}" for a in self.axes)
            raise SweepError(f"zipped axes need the same number of values ({sizes})")
        if self.batch_seeds and "seed" not in names:
            raise SweepError("batching seeds needs an axis named 'seed'")
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))

    @property
    def run_axes(self) -> tuple[Axis, ...]:
        """The axes the cells vary over: with batching, 'seed' becomes the batch index."""
        if not self.batch_seeds:
            return self.axes
        return tuple(Axis(BATCH_AXIS, tuple(range(len(a.values))), f"seed {format_value(a.values[0])} batch")
                     if a.name == "seed" else a for a in self.axes)

    def __len__(self) -> int:
        sizes = [len(axis.values) for axis in self.axes]
        if self.zip:
            return sizes[0]
        total = 1
        for size in sizes:
            total *= size
        return total

    def combinations(self) -> Iterable[tuple[Value, ...]]:
        """Each cell's axis values, in cell order."""
        columns = [axis.values for axis in self.run_axes]
        return zip(*columns) if self.zip else itertools.product(*columns)

    def cells(self) -> list[Cell]:
        """Every cell with its validated Params; the first bad value raises, naming its axis.

        Validated once (each validation reads the input pictures): a later call returns the same cells,
        so a caller may check a sweep early and hand it on to run without paying twice.
        """
        if self._cells is None:
            axes = self.run_axes
            cells = []
            for index, combination in enumerate(self.combinations()):
                values = {axis.name: value for axis, value in zip(axes, combination)}
                batch_index = int(values[BATCH_AXIS]) if self.batch_seeds else None
                cells.append(Cell(index, MappingProxyType(values), self._params(values), batch_index))
            object.__setattr__(self, "_cells", tuple(cells))
        assert self._cells is not None
        return list(self._cells)

    def batches(self, cells: Sequence[Cell] | None = None) -> list[Batch]:
        """The prompts to run: one per cell, or with batching one per group of cells sharing all but the seed."""
        cells = self.cells() if cells is None else cells
        if not self.batch_seeds:
            return [Batch((cell,), cell.params) for cell in cells]
        groups: dict[tuple[Any, ...], list[Cell]] = {}
        for cell in cells:
            key = tuple(_value_key(v) for n, v in cell.values.items() if n != BATCH_AXIS)
            groups.setdefault(key, []).append(cell)
        return [Batch(tuple(group), self._batched_params(group)) for group in groups.values()]

    def definition(self) -> dict[str, Any]:
        """The sweep as JSON values: what a journal stores to recognise and rebuild it.

        A fixed input file is written by its name and content ({"file": "photo.png", "content":
        "photo-<sha256 prefix>.png"}), never its path: the same command run from another folder is
        the same sweep, and no path of this machine is kept in the journal or the grid.
        """
        fixed = self._portable_fixed()
        return {
            "template": self.template.name,
            "fixed": {k: fixed[k] for k in sorted(fixed)},
            "axes": [{"name": a.name, "spec": a.spec, "values": list(a.values), "replaces": a.replaces}
                     for a in self.axes],
            "zip": self.zip,
            "batch_seeds": self.batch_seeds,
        }

    def digest(self) -> str:
        """A hash of the definition, ignoring drawn seeds (so the same command matches its stored sweep)."""
        definition = self.definition()
        for axis in definition["axes"]:
            if draws_seeds(axis["name"], axis["spec"]):
                axis["values"] = len(axis["values"])
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_definition(cls, template: TemplateLike, definition: Mapping[str, Any]) -> Sweep:
        """Rebuild a sweep from `definition()`, with the same values (drawn seeds included)."""
        if definition.get("template") != template.name:
            raise SweepError(f"the stored sweep is of template {definition.get('template')!r}, not {template.name!r}")
        axes = tuple(Axis(a["name"], tuple(a["values"]), a["spec"], a["replaces"]) for a in definition["axes"])
        return cls(template, axes, dict(definition["fixed"]), bool(definition["zip"]),
                   bool(definition["batch_seeds"]))

    def with_stored_axes(self, definition: Mapping[str, Any]) -> Sweep:
        """This sweep with the axis values a stored definition holds (the seeds drawn when it began).

        The fixed values stay this run's: the definition names their files by content only.
        """
        return Sweep.from_definition(self.template, {**definition, "fixed": dict(self.fixed)})

    def _portable_fixed(self) -> dict[str, Any]:
        """The fixed values, with each local input file named by its file name and content (read once)."""
        if self._portable is not None:
            return dict(self._portable)
        first = next(iter(self.combinations()), None)
        if first is None:
            return dict(self.fixed)
        try:
            params = self._cells[0].params if self._cells else self._params(
                dict(zip((axis.name for axis in self.run_axes), first)))
        except ParameterError:
            return dict(self.fixed)  # a sweep whose cells are invalid never runs; cells() says why
        files: Mapping[str, Path] = getattr(params, "image_fields", dict)()
        portable = dict(self.fixed)
        for name, path in files.items():
            if name in portable:
                portable[name] = {"file": path.name, "content": content_name(path)}
        object.__setattr__(self, "_portable", MappingProxyType(portable))
        return dict(portable)

    def _merged(self, values: Mapping[str, Value]) -> dict[str, Any]:
        """One cell's parameter values before validation: fixed ones, then the axes'."""
        replacing = {axis.name: axis for axis in self.axes if axis.replaces is not None}
        merged: dict[str, Any] = dict(self.fixed)
        merged.update((n, v) for n, v in values.items() if n != BATCH_AXIS and n not in replacing)
        if self.batch_seeds:
            merged["seed"] = next(axis for axis in self.axes if axis.name == "seed").values[0]
        if replacing:
            base = self._validate(merged, values)
            for name, axis in replacing.items():
                prompt = getattr(base, name, None)
                if not isinstance(prompt, str):
                    raise SweepError(f"axis {name!r}: search-and-replace needs a text parameter")
                if axis.replaces is None or axis.replaces not in prompt:
                    raise SweepError(f"axis {name!r}: {axis.replaces!r} does not occur in the prompt {prompt!r}")
                merged[name] = prompt.replace(axis.replaces, str(values[name]))
        return merged

    def _params(self, values: Mapping[str, Value]) -> BaseModel:
        """Validate one cell's parameters; the error names the axis values that made it."""
        return self._validate(self._merged(values), values)

    def _batched_params(self, group: Sequence[Cell]) -> BaseModel:
        """The group's shared Params with the batch size set to the group's size."""
        fields = type(group[0].params).model_fields
        name = next((n for n in BATCH_PARAMETERS if n in fields), None)
        if name is None:
            raise SweepError(f"template {self.template.name!r} cannot batch seeds: it has no "
                             f"{' or '.join(BATCH_PARAMETERS)} parameter")
        return self._validate(self._merged(group[0].values) | {name: len(group)}, group[0].values)

    def _validate(self, merged: Mapping[str, Any], values: Mapping[str, Value]) -> BaseModel:
        try:
            return self.template.params(merged)
        except ParameterError as exc:
            culprit = exc.parameter if exc.parameter in values else None
            where = (f"axis {culprit}={format_value(values[culprit])!s}" if culprit is not None
                     else "cell " + ", ".join(f"{k}={format_value(v)}" for k, v in values.items()))
            raise ParameterError(f"{where}: {exc}", parameter=exc.parameter) from exc


def estimate_seconds(batches: Sequence[Batch], *, servers: int = 1) -> float:
    """A rough wall time for `batches` on SD1.5 at 512x512 on a fast GPU, spread over `servers`."""
    total = 0.0
    checkpoints = set()
    for batch in batches:
        steps = int(getattr(batch.params, "steps", 20))
        size = int(getattr(batch.params, "batch_size", 1)) if len(batch.cells) == 1 else len(batch.cells)
        total += PROMPT_OVERHEAD_S + steps * SECONDS_PER_STEP * (1.0 + BATCH_STEP_SHARE * (size - 1))
        checkpoints.add(getattr(batch.params, "checkpoint", ""))
    return CHECKPOINT_LOAD_S * len(checkpoints) + total / max(1, servers)


def cache_key(graph: Graph) -> tuple[str, str]:
    """What ComfyUI's cache can reuse between two prompts: (checkpoint part, everything before sampling).

    Nodes that neither sample nor depend on a sampler (the loader, the text encoders,
    the image load and encode) are cached between prompts when their inputs match.
    """
    readers: dict[str, list[str]] = {}
    for node_id, node in graph.items():
        for _, (source, _i) in node.links():
            readers.setdefault(source, []).append(node_id)
    downstream: set[str] = {node_id for node_id, node in graph.items() if "Sampler" in node.class_type}
    waiting = list(downstream)
    while waiting:  # what reads a sampler's output, directly or through other nodes
        for reader in readers.get(waiting.pop(), ()):
            if reader not in downstream:
                downstream.add(reader)
                waiting.append(reader)
    prefix = {node_id: [node.class_type, dict(node.inputs)] for node_id, node in sorted(graph.items())
              if node_id not in downstream}
    loaders = {node_id: entry for node_id, entry in prefix.items() if "Loader" in str(entry[0])}
    return _hash(loaders), _hash(prefix)


def order_for_cache(items: Sequence[T], key: Callable[[T], tuple[str, str]]) -> list[T]:
    """Items grouped so those sharing a checkpoint, then a cache prefix, run back to back (stable).

    `key` is asked once an item: it hashes a graph.
    """
    keys = [key(item) for item in items]
    first_seen: dict[tuple[str, str], int] = {}
    checkpoint_seen: dict[str, int] = {}
    for position, (checkpoint, prefix) in enumerate(keys):
        checkpoint_seen.setdefault(checkpoint, position)
        first_seen.setdefault((checkpoint, prefix), position)
    order = sorted(range(len(items)), key=lambda i: (checkpoint_seen[keys[i][0]], first_seen[keys[i]], i))
    return [items[i] for i in order]


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"),
                      default=lambda v: list(v) if is_link(v) else str(v))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _value_key(value: Value) -> tuple[str, Value]:
    return (type(value).__name__ if isinstance(value, str) else "number", value)


def file_slug(text: str) -> str:
    """A piece of a file name: letters, digits and . + - kept, every other run of characters one '-'."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def _decimal(text: str, axis: str) -> Decimal:
    try:
        return Decimal(text.strip())
    except InvalidOperation as exc:
        raise SweepError(f"axis {axis!r}: {text!r} is not a number") from exc


def _number(value: Decimal) -> int | float:
    """An int where the decimal is whole and written without a fraction, else the nearest float."""
    if value == value.to_integral_value() and value.as_tuple().exponent >= 0:  # type: ignore[operator]
        return int(value)
    return float(value)


def _stepped(axis: str, start: Decimal, stop: Decimal, step: Decimal) -> tuple[Value, ...]:
    if step == 0:
        raise SweepError(f"axis {axis!r}: the step is 0")
    if (stop - start) * step < 0:
        raise SweepError(f"axis {axis!r}: a step of {step} never goes from {start} to {stop}")
    count = int((stop - start) / step) + 1
    if count > _MAX_VALUES:
        raise SweepError(f"axis {axis!r}: {count} values is too many")
    whole = all(v == v.to_integral_value() and v.as_tuple().exponent >= 0  # type: ignore[operator]
                for v in (start, step))
    return tuple(int(start + i * step) if whole else float(start + i * step) for i in range(count))


def _spaced(axis: str, start: Decimal, stop: Decimal, count: int) -> tuple[Value, ...]:
    if count < 1 or count > _MAX_VALUES:
        raise SweepError(f"axis {axis!r}: [{count}] must be between 1 and {_MAX_VALUES}")
    if count == 1:
        return (_number(start),)
    step = (stop - start) / (count - 1)
    values = [start + i * step for i in range(count - 1)] + [stop]
    whole = all(v == v.to_integral_value() for v in values) and all(
        v.as_tuple().exponent >= 0 for v in (start, stop))  # type: ignore[operator]
    return tuple(int(v) if whole else float(v) for v in values)


def _random_values(axis: str, count: int, rng: random.Random | None) -> tuple[Value, ...]:
    if count < 1 or count > _MAX_VALUES:
        raise SweepError(f"axis {axis!r}: random:{count} must draw between 1 and {_MAX_VALUES} values")
    rng = rng or random.Random()
    drawn: list[Value] = []
    while len(drawn) < count:
        seed = rng.randint(0, DRAWN_SEED_MAX)
        if seed not in drawn:
            drawn.append(seed)
    return tuple(drawn)


def _list_values(axis: str, text: str, *, numbers: bool) -> list[Value]:
    try:
        fields = next(csv.reader([text], skipinitialspace=True))
    except csv.Error as exc:
        raise SweepError(f"axis {axis!r}: cannot read {text!r} as a list: {exc}") from exc
    values: list[Value] = []
    for item in fields:
        item = item.strip()
        if not item:
            raise SweepError(f"axis {axis!r}: an empty value in {text!r}")
        values.append(_guess(item) if numbers else item)
    return values


def _guess(text: str) -> Value:
    if re.fullmatch(_NUMBER, text):
        return _number(Decimal(text))
    return text


def _file_values(axis: str, name: str, read_text: Callable[[str], str] | None) -> tuple[Value, ...]:
    if read_text is None:
        raise SweepError(f"axis {axis!r}: values from a file (@{name}) need a file reader")
    try:
        text = read_text(name)
    except OSError as exc:
        raise SweepError(f"axis {axis!r}: cannot read {name!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SweepError(f"axis {axis!r}: {name!r} is not UTF-8 text (byte {exc.start}); one value a line, "
                         "as text") from exc
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise SweepError(f"axis {axis!r}: {name!r} has no non-blank lines")
    return lines
