"""A job's values read from the command line: model families, a template's sweep, inputs from an image's record."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_orchestrator.cli.options import template_values
from comfy_orchestrator.cli.output import EXIT_BAD_INPUT, fail, warn
from comfy_orchestrator.errors import AuthFailed, CertificateRejected, ComfyError

if TYPE_CHECKING:  # imported where used, so that a command loads only what it needs
    from comfy_orchestrator.families import FamilyFinding
    from comfy_orchestrator.params_base import Params
    from comfy_orchestrator.servers import ServerConfig
    from comfy_orchestrator.sweep import Axis, Sweep
    from comfy_orchestrator.templates import Template


FamilyReader = Callable[[str], "FamilyFinding"]


def with_families(template: Template, values: Mapping[str, Any], read: FamilyReader | None = None,
                  axes: Sequence[Axis] = ()) -> Template:
    """The template told the model family of each checkpoint the job or sweep names, unless it is given.

    `read` asks a server (its /view_metadata); without it the family is told from the name.
    Guesses from a name are said aloud.
    """
    from comfy_orchestrator.families import find_family

    read = read or find_family
    if "model_family" not in template.model.model_fields or values.get("model_family") \
            or any(axis.name == "model_family" for axis in axes):
        return template
    names = [str(values.get("checkpoint") or template.model.model_fields["checkpoint"].default)]
    names += [str(value) for axis in axes if axis.name == "checkpoint" for value in axis.values]
    families = {}
    for name in dict.fromkeys(names):
        finding = read(name)
        if finding.note:
            warn(finding.note)
        families[name] = finding.family
    return template.with_families(families)


def warn_about_size(params: Params) -> None:
    """Say so when the picture is far from the model family's native size."""
    note = params.size_note() if hasattr(params, "size_note") else ""
    if note:
        warn(note)


def sweep_of(template: Template, axes: Sequence[str], sets: Sequence[str], *, zipped: bool, batch_seeds: bool,
              seed_source: int | None, read_family: FamilyReader | None = None) -> Sweep:
    """Build a Sweep from --axis and --set (input files are recorded by name and content, not path).

    The model family of each checkpoint comes from `read_family` (a server's metadata) unless set;
    without it, from the checkpoint's name.
    """
    import random

    from comfy_orchestrator.sweep import RANDOM_SEED, SEED_PARAMETERS, Sweep, parse_axis

    rng = random.Random(seed_source)
    fixed: dict[str, Any] = dict(template_values(sets))
    # a picture's ~ is expanded; which parameters are pictures is read from the model's JSON schema, whose
    # first making costs ~14 ms on the way to the first prompt: asked only when a value starts with ~
    if any(str(value).startswith("~") for value in fixed.values()):
        for parameter in template.parameters():
            if parameter.type == "image" and parameter.name in fixed:
                fixed[parameter.name] = str(Path(fixed[parameter.name]).expanduser())
    axes = list(axes)
    for name in SEED_PARAMETERS:  # --set seed=-1: a seed drawn once, kept like a drawn axis so a resume finds it
        if str(fixed.get(name, "")).strip() == str(RANDOM_SEED):
            del fixed[name]
            axes.append(f"{name}={RANDOM_SEED}")
    parsed = tuple(parse_axis(text, rng=rng, read_text=lambda name: Path(name).read_text("utf-8"))
                   for text in axes)
    template = with_families(template, fixed, read_family, parsed)
    return Sweep(template, parsed, fixed, zip=zipped, batch_seeds=batch_seeds)


def family_reader(server: ServerConfig) -> FamilyReader:
    """Read model families from a sweep's first server; where it cannot answer, guess from the name."""
    def read(checkpoint: str) -> FamilyFinding:
        from comfy_orchestrator.client import Client
        from comfy_orchestrator.families import find_family

        named = find_family(checkpoint)
        if named.source == "known":  # an official file name: no need to ask
            return named
        try:
            with Client(server.url, headers=server.headers, token=server.token, ca_cert=server.ca_cert,
                        allow_plain_http=server.allow_plain_http) as client:
                return client.model_family(checkpoint)
        except (CertificateRejected, AuthFailed):
            raise  # the sweep cannot run either: say so once, now
        except ComfyError as exc:
            warn(f"could not read the model family of {checkpoint!r} from the server ({exc})")
            return named

    return read


def find_inputs(record: Mapping[str, Any], image: Path, given: set[str]) -> dict[str, tuple[str, Path]]:
    """Each input file an image's record names (unless --set gives it), found by name and checked by content.

    It is looked for here, beside the image and in the image folder's parents, so `run --from` works
    from any folder with the files where they were: {parameter: (upload name, local path)}.
    """
    from comfy_orchestrator.jobs import name_by_content

    inputs = record.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        fail(f"{image}: its record's inputs are not a table", EXIT_BAD_INPUT)
    places = list(dict.fromkeys(path.resolve() for path in (Path.cwd(), image.parent, image.parent.parent,
                                                            image.parent.parent.parent)))
    found: dict[str, tuple[str, Path]] = {}
    for parameter, entry in inputs.items():
        if parameter in given or parameter.split(".")[0] in given:
            continue
        name, content = (entry.get("file"), entry.get("content")) if isinstance(entry, Mapping) else (None, None)
        if not isinstance(name, str) or not isinstance(content, str) or Path(name).name != name:
            fail(f"{image}: its record names input {parameter} oddly ({entry!r})", EXIT_BAD_INPUT)
        other = []
        for place in places:
            candidate = place / name
            if candidate.is_file():
                if name_by_content(candidate.read_bytes(), candidate.stem, candidate.suffix.lower() or ".png") == content:
                    nearby = Path(os.path.relpath(candidate))  # as short as it can be said from here
                    found[parameter] = (content, candidate if nearby.parts[:1] == ("..",) else nearby)
                    break
                other.append(str(candidate))
        else:
            differs = f" ({', '.join(other)} has other content)" if other else ""
            fail(f"{image} was made from {name!r} ({parameter}), which is not in {', '.join(map(str, places))}"
                 f"{differs}; give it with --set {parameter}=PATH", EXIT_BAD_INPUT)
    return found


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a nested parameter named with dots ("more_controls.0.image") in JSON values."""
    *parents, last = dotted.split(".")
    holder: Any = values
    for part in parents:
        holder = holder[int(part)] if isinstance(holder, list) else holder.setdefault(part, {})
    if isinstance(holder, list):
        holder[int(last)] = value
    else:
        holder[last] = value
