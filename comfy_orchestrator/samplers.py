"""Samplers and schedulers as users name them ('dpm++ 2m karras'), mapped to ComfyUI's names."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from typing import Any

from comfy_orchestrator.schema import Schema


@functools.cache
def sampler_names() -> tuple[str, ...]:
    return tuple(str(s) for s in Schema.recorded().choices("KSampler", "sampler_name"))


@functools.cache
def scheduler_names() -> tuple[str, ...]:
    return tuple(str(s) for s in Schema.recorded().choices("KSampler", "scheduler"))


_SAMPLER_ALIASES = {"euler a": "euler_ancestral", "dpm2": "dpm_2", "dpm2 a": "dpm_2_ancestral",
                    "unipc": "uni_pc", "dpm fast": "dpm_fast", "dpm adaptive": "dpm_adaptive"}


def resolve_sampler(name: str) -> tuple[str, str | None]:
    """Map a sampler as users name it ("dpm++ 2m karras") to ComfyUI's (sampler_name, scheduler).

    The scheduler is None when the name does not imply one.
    """
    text = " ".join(name.strip().lower().split())
    if text in sampler_names():
        return text, None
    scheduler = None
    for candidate in sorted(scheduler_names(), key=len, reverse=True):
        if text.endswith(" " + candidate):
            scheduler, text = candidate, text[: -len(candidate) - 1]
            break
    text = _SAMPLER_ALIASES.get(text, text)
    key = text.replace("dpm++", "dpmpp").replace(" ", "_").replace("-", "_")
    if key in sampler_names():
        return key, scheduler
    close = difflib.get_close_matches(key, sampler_names(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid: {', '.join(sampler_names())}"
    raise ValueError(f"unknown sampler {name!r}{hint}")


def split_sampler(data: Mapping[str, Any], *, has_scheduler: bool) -> dict[str, Any]:
    """Parameter values with a sampler as users name it ('dpm++ 2m karras') split into ComfyUI's sampler
    and scheduler; a name that is neither is left for the sampler field's own check to name.

    Without a scheduler parameter (`has_scheduler` false), a name that implies one is refused.
    """
    data = dict(data)
    sampler = data.get("sampler")
    if not isinstance(sampler, str):
        return data
    try:
        name, implied = resolve_sampler(sampler)
    except ValueError:
        return data
    data["sampler"] = name
    given = data.get("scheduler")
    if implied is not None:
        if not has_scheduler:
            raise ValueError(f"sampler {sampler!r} implies scheduler {implied!r}, but this template has no "
                             f"scheduler parameter; give the sampler alone ({name!r})")
        if given is not None and given != implied:
            raise ValueError(f"sampler {sampler!r} implies scheduler {implied!r}, "
                             f"but scheduler={given!r} was given")
        data["scheduler"] = implied
    return data

