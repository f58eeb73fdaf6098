"""Templates: Jinja2 workflow templates rendered safely into validated Graphs.

Each `{{ expression }}` becomes a JSON literal, so no value can change a graph's
structure; templates run in Jinja's sandbox and an undefined name is an error.
A template folder holds `NAME.json.j2` files; a user's template also has
`NAME.params.json`, which declares its parameters (built-in ones are declared by
the models params.WORKFLOWS names). User folders are searched before the built-in one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import json
import math
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.bccache
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from pydantic import Field, create_model

from comfy_orchestrator.errors import GraphInvalid, ParameterError, TemplateBroken, TemplateNotFound
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.input_images import ImageFile
from comfy_orchestrator.jobs import Job, content_name
from comfy_orchestrator.params import WORKFLOWS
from comfy_orchestrator.params_base import DeclaredParams, Params
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.validation import check_prompt, describe_rejection

TEMPLATE_SUFFIX = ".json.j2"
DECLARATION_SUFFIX = ".params.json"
ParameterKind = Literal["int", "float", "str", "bool", "choice", "image", "list"]


def default_user_folder() -> Path:
    """Where imported templates go when no folder is named: $XDG_CONFIG_HOME/comfy-orchestrator/templates."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "comfy-orchestrator" / "templates"


def default_cache_folder() -> Path | None:
    """Where compiled templates are kept between runs: $XDG_CACHE_HOME/comfy-orchestrator/templates-<jinja2 version>
    (~/.cache when unset); None where Jinja does not say its version. Deleting it is safe: a template missing
    there is compiled again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # as MarkupSafe did, Jinja may retire __version__
        version = getattr(jinja2, "__version__", None)
    if not isinstance(version, str):
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "comfy-orchestrator" / f"templates-{version}"


def builtin_folder() -> Path:
    """The built-in templates: templates/ in a checkout, or the copy inside an installed wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "templates", package / "templates"):
        if (candidate / "_nodes.j2").is_file():
            return candidate
    raise TemplateBroken("the built-in template folder is missing from the installation", template="*")


def _json_literal(value: object) -> Markup:
    """Turn each {{ expression }} into a JSON literal; macro output passes through as it is."""
    text = _scalar_json(value)  # the usual values (and links) first, as _JSON would write them, at less cost
    if text is not None:
        return Markup(text)
    if type(value) is list and len(value) == 2:
        first, second = _scalar_json(value[0]), _scalar_json(value[1])
        if first is not None and second is not None:
            return Markup(f"[{first}, {second}]")
    if isinstance(value, Markup):
        return value
    if isinstance(value, jinja2.Undefined):
        str(value)  # raises UndefinedError naming the variable
    if isinstance(value, _Traced):
        return Markup(json.dumps(f"{_TRACE}{value.parameter}{_TRACE}"))
    return Markup(_JSON.encode(value))


def _scalar_json(value: object) -> str | None:
    """A str, int or finite float as JSON, exactly as _JSON writes it; None for anything else."""
    if type(value) is str:
        return _encode_text(value)
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return None


# json.dumps(value, ensure_ascii=False) made one of these for every {{ expression }} it wrote
_JSON = json.JSONEncoder(ensure_ascii=False)
_encode_text = json.encoder.encode_basestring  # what _JSON.encode does with a str


_TRACE = "\u0000trace\u0000"


class _Traced:
    """Mixin for values that render as a marker naming their parameter (see Template.parameter_map)."""

    parameter: str


def _traced(value: Any, parameter: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value  # flags steer structure; they have no single input to point at
    kind = type(f"Traced{type(value).__name__}", (_Traced, type(value)), {})
    traced = kind(value)
    traced.parameter = parameter
    return traced


@functools.cache
def _offline_schema() -> Schema:
    """The recorded schema with file lists opened: the recording machine's files are not ours."""
    return Schema.recorded().without_file_lists()


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter as `comfy-orch templates` lists it."""

    name: str
    type: ParameterKind
    default: Any
    description: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    recommended: tuple[float, float] | None = None
    required: bool = False
    optional: bool = False  # None is a value it takes (not set)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "required": self.required,
                "optional": self.optional,
                "min": self.min, "max": self.max,
                "choices": list(self.choices) if self.choices is not None else None,
                "description": self.description,
                "recommended": list(self.recommended) if self.recommended else None}


def describe_parameters(model: type[Params]) -> list[ParameterInfo]:
    """The parameters of a model, with types, defaults, ranges and choices."""
    from comfy_orchestrator.samplers import sampler_names, scheduler_names

    schema = model.model_json_schema()
    infos = []
    for name, field_info in model.model_fields.items():
        prop = schema["properties"].get(name, {})
        extra = field_info.json_schema_extra if isinstance(field_info.json_schema_extra, dict) else {}
        options = [prop, *prop.get("anyOf", ())]  # an optional choice lists its values inside anyOf
        choices: tuple[Any, ...] | None = next((tuple(o["enum"]) for o in options if "enum" in o), None)
        if extra.get("choices_from") == "sampler_name":
            choices = sampler_names()
        elif extra.get("choices_from") == "scheduler":
            choices = scheduler_names()
        kind: ParameterKind
        if prop.get("kind") == "image" or prop.get("format") == "path":
            kind = "image"
        elif choices is not None:
            kind = "choice"
        else:
            json_type = next((o["type"] for o in options if o.get("type") not in (None, "null")), "")
            kind = {"integer": "int", "number": "float", "boolean": "bool",  # type: ignore[assignment]
                    "array": "list"}.get(json_type, "str")
        recommended = extra.get("recommended")
        infos.append(ParameterInfo(
            name=name, type=kind, default=None if field_info.is_required() else prop.get("default"),
            description=field_info.description or "", min=_first_of(options, "minimum"), max=_first_of(options, "maximum"),
            choices=choices, recommended=tuple(recommended) if recommended else None,  # type: ignore[arg-type]
            required=field_info.is_required(),
            optional=any(option.get("type") == "null" for option in options)))
    return infos


def _first_of(options: list[dict[str, Any]], key: str) -> Any:
    """A JSON schema keyword of a field, or of the first of its anyOf alternatives that has it."""
    return next((option[key] for option in options if key in option), None)


@dataclass(frozen=True)
class Template:
    """One workflow template: its parameter model and its Jinja2 source."""

    name: str
    model: type[Params]
    source: Path
    environment: jinja2.Environment = field(repr=False)
    description: str = ""
    # checkpoint name -> model family, as a server's metadata says (see with_families)
    families: Mapping[str, str] = field(default_factory=dict, compare=False)

    def with_families(self, families: Mapping[str, str]) -> Template:
        """This template, told the model family of these checkpoints (as read from a server)."""
        return dataclasses.replace(self, families={**self.families, **families})

    @property
    def builtin(self) -> bool:
        return WORKFLOWS.get(self.model.workflow) is self.model  # loads no other workflow's model

    def parameters(self) -> list[ParameterInfo]:
        return describe_parameters(self.model)

    def params(self, values: Mapping[str, Any] | None = None, *, strict_sizes: bool = False) -> Params:
        """Validate parameter values into this template's model (ParameterError if wrong)."""
        return self.model.build(values or {}, strict_sizes=strict_sizes, families=self.families)

    def _values(self, params: Params, image_names: Mapping[str, str] | None) -> dict[str, Any]:
        names = {name: (image_names or {}).get(name) or content_name(path)
                 for name, path in params.image_fields().items()}
        return params.template_values(names)

    def _render_text(self, values: Mapping[str, Any]) -> str:
        budget = _BUDGET.set([RENDER_BUDGET])
        try:
            return self.environment.get_template(self.source.name).render(values)
        except (OverflowError, RecursionError, MemoryError) as exc:
            raise TemplateBroken(f"does more work than a template may ({type(exc).__name__}: {exc})",
                                 template=self.name) from exc
        except jinja2.UndefinedError as exc:
            raise TemplateBroken(f"uses an undefined name: {exc.message}", template=self.name) from exc
        except jinja2.TemplateError as exc:
            raise TemplateBroken(f"does not render: {exc}", template=self.name) from exc
        finally:
            _BUDGET.reset(budget)

    def render(self, params: Params, *, image_names: Mapping[str, str] | None = None,
               schema: Schema | None = None) -> Graph:
        """Render to a Graph and validate it (offline against the recorded schema by default)."""
        text = self._render_text(self._values(params, image_names))
        try:
            graph = Graph.from_json(text)
        except json.JSONDecodeError as exc:
            line = text.splitlines()[exc.lineno - 1] if exc.lineno <= len(text.splitlines()) else ""
            raise TemplateBroken(f"renders invalid JSON at line {exc.lineno}: {exc.msg}: {line.strip()[:120]}",
                                 template=self.name) from exc
        self.check(graph, params, schema=schema)
        return graph

    def check(self, graph: Graph, params: Params, *, schema: Schema | None = None) -> None:
        """Validate a rendered graph; errors name the template parameter responsible."""
        verdict = check_prompt(graph.api_view(), schema or _offline_schema())
        if verdict.ok and not verdict.node_errors:
            return
        mapping = self.parameter_map(params)
        issues = describe_rejection(verdict.error, verdict.node_errors,
                                    lambda node_id, input_name: mapping.get(f"{node_id}.{input_name}"))
        raise GraphInvalid(issues, template=self.name)

    def parameter_map(self, params: Params, *, image_names: Mapping[str, str] | None = None) -> dict[str, str]:
        """Which template parameter sets which node input: {"6.denoise": "denoise", ...}.

        Found by rendering once more with each value marked, so it holds for any
        template, including a user's, without declarations to keep in step.
        """
        fields = {name: _traced(value, name) for name, value in params}
        marked = type(params).model_construct(**fields)  # no validation: keep the marked values
        names = {name: _traced((image_names or {}).get(name) or content_name(path), name)
                 for name, path in params.image_fields().items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the serializer notices the marked subclasses
            values = marked.template_values(names)
        values.update({name: value for name, value in fields.items() if isinstance(value, _Traced)})
        data = json.loads(self._render_text(values))
        mapping = {}
        for node_id, node in data.items():
            for input_name, value in node.get("inputs", {}).items():
                if isinstance(value, str) and value.startswith(_TRACE) and value.endswith(_TRACE):
                    mapping[f"{node_id}.{input_name}"] = value[len(_TRACE):-len(_TRACE)]
        return mapping

    def job(self, params: Params, *, label: str = "", schema: Schema | None = None,
            image_names: Mapping[str, str] | None = None) -> Job:
        """A Job for this template: the graph, the parameters, and the files to upload.

        `image_names` (parameter -> content_name of its file), where the caller knows them already,
        spares reading and hashing each picture again: a sweep's hundred jobs share one.
        """
        files = params.image_fields()
        image_names = {name: (image_names or {}).get(name) or content_name(path) for name, path in files.items()}
        graph = self.render(params, image_names=image_names, schema=schema)
        inputs = {image_names[name]: path for name, path in files.items()}
        return Job(graph=graph, template=self.name, params=params.model_dump(mode="json"), inputs=inputs,
                   parameter_map=_ParameterMap(lambda: self.parameter_map(params, image_names=image_names)),
                   label=label)


class _ParameterMap(Mapping[str, str]):
    """A job's Template.parameter_map, worked out when first read.

    It takes a second render, and it is read only to name the parameter behind a rejected input
    or to head a sweep's grid: a sweep of a hundred cells starts 0.2 s sooner without it.
    """

    def __init__(self, find: Callable[[], dict[str, str]]) -> None:
        self._find: Callable[[], dict[str, str]] | None = find
        self._found: dict[str, str] = {}

    def _mapping(self) -> dict[str, str]:
        find = self._find
        if find is not None:  # two threads may both work it out: the same map, and neither waits
            self._found = find()
            self._find = None
        return self._found

    def __getitem__(self, key: str) -> str:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return repr(self._mapping())


# What one render may do: loop steps from range() and items built by * on text or lists. Our templates
# take a few hundred; a user's template that loops a billion times is refused, not run for minutes.
RENDER_BUDGET = 1_000_000
_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("render_budget", default=None)


def _spend(units: int) -> None:
    left = _BUDGET.get()
    if left is None:  # outside Template._render_text: not a user's prompt render
        return
    left[0] -= units
    if left[0] < 0:
        raise OverflowError(f"past {RENDER_BUDGET} loop steps or built items in one render")


def _bounded_range(*arguments: int) -> Iterator[int]:
    for number in range(*arguments):
        _spend(1)
        yield number


class _BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox with a budget on the work one render may do (range steps, repeated text or lists)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 1024:
            raise OverflowError(f"exponent {right} is too large")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
                    _spend(max(0, len(sequence) * times))
        return super().call_binop(context, operator, left, right)


def _environment(folders: Sequence[Path], compiled: Path | None) -> jinja2.Environment:
    environment = _BoundedSandbox(
        loader=jinja2.FileSystemLoader([str(f) for f in folders]),
        undefined=jinja2.StrictUndefined,
        autoescape=True,  # with _json_literal: values are JSON-encoded, macro output is kept
        finalize=_json_literal,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    if compiled is not None:
        environment.bytecode_cache = _CompiledTemplates(compiled, _code_fingerprint())
    return environment


def _code_fingerprint() -> str:
    """What the code Jinja compiles a template to depends on besides its source, Jinja's version (the folder's
    name) and Python's (Jinja's own check): the environment, set up in this module alone."""
    this_module = Path(__file__).stat()
    return hashlib.sha256(f"{this_module.st_size}:{this_module.st_mtime_ns}".encode()).hexdigest()[:16]


class _CompiledTemplates(jinja2.BytecodeCache):
    """Templates compiled by an earlier run, kept in `folder` (~15 ms of a command's start for the img2img one).

    A cache and never an error: a file that cannot be read or does not fit (truncated, garbage, another
    Python's) is compiled again, one that cannot be written is not kept. Only a folder of this user's that
    no one else may write to is used, as loading a file runs the code in it.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = folder, fingerprint
        self._usable: bool | None = None  # the folder checked once, when first needed

    def _path(self, bucket: jinja2.bccache.Bucket) -> Path:
        return self.folder / f"{bucket.key}-{self.fingerprint}.cache"

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if not self._folder_usable(make=False):
            return
        try:
            with self._path(bucket).open("rb") as handle:
                bucket.load_bytecode(handle)
        except Exception:  # a file that does not load, whatever the reason (missing, garbage, cut short): compiled again
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if not self._folder_usable(make=True):
            return
        path = self._path(bucket)
        partial = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.part")
        try:
            with partial.open("wb") as handle:
                bucket.write_bytecode(handle)
            os.replace(partial, path)  # whole or not there: another process may be reading it
        except OSError:
            pass  # not kept
        finally:  # a piece cut off by an error or a stop (Ctrl-C) is not left behind; a replaced one is gone
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)

    def _folder_usable(self, *, make: bool) -> bool:
        if self._usable is None or (make and not self._usable):
            try:
                if make:
                    self.folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    self.folder.mkdir(mode=0o700, exist_ok=True)
                found = self.folder.lstat()
            except OSError:
                return False
            owner = os.getuid() if hasattr(os, "getuid") else found.st_uid
            self._usable = stat.S_ISDIR(found.st_mode) and found.st_uid == owner and not found.st_mode & 0o022
        return self._usable


_DECLARED_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool, "image": ImageFile}


def model_from_declaration(name: str, declaration: Mapping[str, Any]) -> type[Params]:
    """Build a parameter model from a user template's NAME.params.json."""
    fields: dict[str, Any] = {}
    for entry in declaration.get("parameters", []):
        kind = entry.get("type", "str")
        if kind == "choice":
            annotation: Any = Literal[tuple(entry["choices"])]
        elif kind in _DECLARED_TYPES:
            annotation = _DECLARED_TYPES[kind]
        else:
            raise TemplateBroken(f"parameter {entry.get('name')!r} has unknown type {kind!r}", template=name)
        constraints = {k: entry[k] for k in ("min", "max") if entry.get(k) is not None}
        field_info = Field(
            entry["default"] if "default" in entry and entry["default"] is not None else ...,
            ge=constraints.get("min"), le=constraints.get("max"), description=entry.get("description", ""))
        fields[entry["name"]] = (annotation, field_info)
    model = create_model(f"Params_{name.replace('-', '_')}", __base__=DeclaredParams, **fields)
    model.workflow = name
    model.template = name + TEMPLATE_SUFFIX
    model.description = declaration.get("description", "")
    return model


class Templates:
    """The template library: user folders first, then the built-in templates."""

    def __init__(self, folders: Sequence[Path | str], *, compiled: Path | None = None) -> None:
        """`compiled`: a folder that keeps the templates compiled between runs (see default_cache_folder)."""
        self.folders = tuple(Path(f).expanduser() for f in folders)
        self._environment = _environment(self.folders, compiled)
        self._loaded: dict[str, Template] = {}

    @classmethod
    def default(cls, user_folders: Sequence[Path | str] = ()) -> Templates:
        """The user folders given (the CLI adds $COMFY_ORCH_TEMPLATES's), the per-user folder, the built-in one;
        compiled templates kept in default_cache_folder()."""
        return cls([*user_folders, default_user_folder(), builtin_folder()], compiled=default_cache_folder())

    @property
    def user_folder(self) -> Path | None:
        """The first user folder, where imported templates are written."""
        builtin = builtin_folder()
        return next((f for f in self.folders if f != builtin), None)

    def names(self) -> list[str]:
        found = set(WORKFLOWS)
        for folder in self.folders:
            if folder.is_dir():
                found |= {p.name[: -len(DECLARATION_SUFFIX)] for p in folder.glob("*" + DECLARATION_SUFFIX)}
        return sorted(found)

    def __iter__(self) -> Iterator[Template]:
        return (self.get(name) for name in self.names())

    def get(self, name: str) -> Template:
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def _load(self, name: str) -> Template:
        for folder in self.folders:
            declaration = folder / (name + DECLARATION_SUFFIX)
            if declaration.is_file():
                try:
                    model = model_from_declaration(name, json.loads(declaration.read_text("utf-8")))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise TemplateBroken(f"{declaration.name} is not a valid declaration: {exc}",
                                         template=name) from exc
                return self._checked(name, model, folder / (name + TEMPLATE_SUFFIX))
        if name in WORKFLOWS:
            model = WORKFLOWS[name]
            for folder in self.folders:
                if (folder / model.template).is_file():
                    return self._checked(name, model, folder / model.template)
            raise TemplateBroken(f"its file {model.template} is in no template folder", template=name)
        raise TemplateNotFound(name, available=self.names())

    def _checked(self, name: str, model: type[Params], source: Path) -> Template:
        """Load a template and check that every name it uses is one its model provides."""
        if not source.is_file():
            raise TemplateBroken(f"{source.name} is missing", template=name)
        try:
            parsed = self._environment.parse(source.read_text("utf-8"))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateBroken(f"{source.name} line {exc.lineno}: {exc.message}", template=name) from exc
        unknown = jinja2.meta.find_undeclared_variables(parsed) - model.template_variables()
        if unknown:
            raise TemplateBroken(f"uses {', '.join(sorted(unknown))}, which its parameters do not define",
                                 template=name)
        return Template(name=name, model=model, source=source, environment=self._environment,
                        description=model.description)


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ["denoise=0.6", "prompt=a cat"] into a dict; NAME=VALUE, split at the first '='."""
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"--set expects NAME=VALUE, got {pair!r}", parameter=name or None)
        values[name.strip()] = value
    return values
