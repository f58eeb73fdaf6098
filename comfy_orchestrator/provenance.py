"""Provenance in PNG text chunks, pure: what we add to every image we save, and reading it back.

The server's own chunks (`prompt`, `workflow`) are kept byte for byte; we add two.
`comfy_orchestrator` holds JSON: the template and its parameter values, the rendered
graph, the seeds, the server (without credentials) and its ComfyUI version, and each
local input file by name and content (never its path), so the record can be shared and
`comfy-orch run --from` finds the file again wherever it is run. `parameters` is the
text A1111 writes, so Civitai and other tools read the prompt, seed, steps, sampler,
CFG scale, denoise and model.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Limits, describe_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"
PROVENANCE_KEY = "comfy_orchestrator"
PROVENANCE_VERSION = 1
_SEED_INPUTS = ("seed", "noise_seed")


def text_chunk(keyword: str, text: str) -> bytes:
    """One PNG tEXt chunk (Latin-1; JSON written ASCII-only fits)."""
    body = keyword.encode("latin-1") + b"\x00" + text.encode("latin-1")
    return struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))


A1111_KEY = "parameters"
_SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
# ComfyUI's sampler names as A1111 shows them; a scheduler other than 'normal' is appended ("DPM++ 2M Karras")
A1111_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive", "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "ddim": "DDIM", "uni_pc": "UniPC", "uni_pc_bh2": "UniPC", "lcm": "LCM", "ddpm": "DDPM", "deis": "DEIS",
    "ipndm": "IPNDM", "restart": "Restart",
}
A1111_SCHEDULERS = {"karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
                    "simple": "Simple", "ddim_uniform": "DDIM Uniform", "beta": "Beta"}


def itxt_chunk(keyword: str, text: str) -> bytes:
    """One PNG iTXt chunk: UTF-8 text, uncompressed (for prompts Latin-1 cannot hold)."""
    body = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8")
    return struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))


def seeds(graph: Mapping[str, Any]) -> dict[str, Any]:
    """The literal seed of each sampler-like node: {"6": 1001}."""
    found: dict[str, Any] = {}
    for node_id, entry in graph.items():
        for name in _SEED_INPUTS:
            value = (entry.get("inputs") or {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                found[str(node_id)] = value
    return found


def portable_params(params: Mapping[str, Any], inputs: Mapping[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`params` with each local input file's path replaced by its file name, and those inputs.

    The inputs are {parameter: {"file": "photo.png", "content": "photo-<sha256 prefix>.png"}}, where a
    nested parameter is dotted ("more_controls.0.image"): enough to find the file again by name and
    check it by content, with no path of this machine in anything meant to be shared.
    """
    by_path = {str(path): (upload, path) for upload, path in inputs.items()}
    found: dict[str, Any] = {}

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, str) and value in by_path:
            upload, path = by_path[value]
            found[where] = {"file": path.name, "content": upload}
            return path.name
        if isinstance(value, (str, int, float)) or value is None:  # most values: no need for Mapping's slow check
            return value
        if isinstance(value, Mapping):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}.{i}") for i, v in enumerate(value)]
        return value

    return walk(dict(params), ""), found


def provenance_record(job: Job, *, prompt_id: str, server: str, comfyui_version: str | None) -> dict[str, Any]:
    """What we write into each saved image: enough to run the same job again."""
    graph = job.graph.to_api()
    parameters, inputs = portable_params(job.params, job.inputs)
    return {
        "version": PROVENANCE_VERSION,
        "template": job.template,
        "parameters": parameters,
        "inputs": inputs,
        "label": job.label,
        "job_id": job.id,
        "graph": graph,
        "seeds": seeds(graph),
        "prompt_id": prompt_id,
        "server": server,
        "comfyui_version": comfyui_version,
    }


def provenance_chunk(record: Mapping[str, Any]) -> bytes:
    """Our record's chunk, then A1111's `parameters` (tEXt, or iTXt for text Latin-1 cannot hold)."""
    ours = text_chunk(PROVENANCE_KEY, json.dumps(record, ensure_ascii=True, separators=(",", ":")))
    theirs = a1111_parameters(record.get("graph") or {})
    if theirs is None:
        return ours
    try:
        return ours + text_chunk(A1111_KEY, theirs)
    except UnicodeEncodeError:
        return ours + itxt_chunk(A1111_KEY, theirs)


def a1111_parameters(graph: Mapping[str, Any]) -> str | None:
    """The `parameters` text A1111 writes, from a graph's first sampler; None if the graph has none.

    'PROMPT\nNegative prompt: NEGATIVE\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 8, Seed: 42,
    Size: 512x512, Model: v1-5-pruned-emaonly, Denoising strength: 0.5'. Values are read from the graph
    (literals only), so it holds for imported templates and graphs run with --from alike.
    """
    sampler = next((node for _, node in sorted(graph.items(), key=lambda item: _node_order(item[0]))
                    if isinstance(node, Mapping) and node.get("class_type") in _SAMPLER_NODES), None)
    if sampler is None:
        return None
    inputs: Mapping[str, Any] = sampler.get("inputs") or {}
    positive = _prompt_text(graph, inputs.get("positive"))
    negative = _prompt_text(graph, inputs.get("negative"))
    settings: list[tuple[str, Any]] = [("Steps", inputs.get("steps"))]
    name = inputs.get("sampler_name")
    if isinstance(name, str):
        shown = A1111_SAMPLERS.get(name, name)
        scheduler = inputs.get("scheduler")
        if isinstance(scheduler, str) and scheduler != "normal":
            shown += " " + A1111_SCHEDULERS.get(scheduler, scheduler)
        settings.append(("Sampler", shown))
    settings += [("CFG scale", inputs.get("cfg")), ("Seed", inputs.get("seed", inputs.get("noise_seed"))),
                 ("Size", _latent_size(graph, inputs.get("latent_image"))), ("Model", _checkpoint(graph))]
    denoise = inputs.get("denoise")
    if isinstance(denoise, (int, float)) and denoise < 1:
        settings.append(("Denoising strength", denoise))
    line = ", ".join(f"{key}: {_a1111_value(value)}" for key, value in settings
                     if value is not None and not isinstance(value, (list, dict)))
    text = positive or ""
    if negative:
        text += f"\nNegative prompt: {negative}"
    return f"{text}\n{line}"


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _a1111_value(value: Any) -> str:
    """A value as A1111 writes it: numbers plain, text quoted when a comma or quote would split it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _linked(graph: Mapping[str, Any], link: Any) -> Mapping[str, Any] | None:
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in graph:
        node = graph[str(link[0])]
        return node if isinstance(node, Mapping) else None
    return None


def _prompt_text(graph: Mapping[str, Any], link: Any, depth: int = 0) -> str | None:
    """The literal text of the prompt a conditioning input comes from, following conditioning nodes."""
    node = _linked(graph, link)
    if node is None or depth > 20:
        return None
    inputs: Mapping[str, Any] = node.get("inputs") or {}
    text = inputs.get("text", inputs.get("text_g"))
    if isinstance(text, str):
        return text
    for key in ("conditioning", "positive", "conditioning_to", "conditioning_1"):
        if key in inputs:  # ControlNet and other conditioning nodes pass the prompt through
            return _prompt_text(graph, inputs[key], depth + 1)
    return None


def _latent_size(graph: Mapping[str, Any], link: Any) -> str | None:
    node = _linked(graph, link)
    inputs: Mapping[str, Any] = (node or {}).get("inputs") or {}
    width, height = inputs.get("width"), inputs.get("height")
    return f"{width}x{height}" if isinstance(width, int) and isinstance(height, int) and width and height else None


def _checkpoint(graph: Mapping[str, Any]) -> str | None:
    for node in graph.values():
        name = (node.get("inputs") or {}).get("ckpt_name") if isinstance(node, Mapping) else None
        if isinstance(name, str):
            return name.rsplit("/", 1)[-1].rsplit(".", 1)[0]  # A1111 shows the file's stem
    return None


def png_text(data: bytes) -> dict[str, str]:
    """Every tEXt, zTXt and iTXt chunk of a PNG: keyword -> text."""
    if not data.startswith(PNG_SIGNATURE):
        raise ParameterError("not a PNG file (no PNG signature)", parameter="image")
    found: dict[str, str] = {}
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt" and b"\x00" in body:
            key, _, text = body.partition(b"\x00")
            found[key.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"zTXt" and b"\x00" in body:
            key, _, rest = body.partition(b"\x00")
            found[key.decode("latin-1")] = _inflate(rest[1:], key).decode("latin-1")
        elif kind == b"iTXt" and b"\x00" in body:
            key, _, rest = body.partition(b"\x00")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\x00")
            _translated, _, text = rest.partition(b"\x00")
            found[key.decode("latin-1")] = (_inflate(text, key) if compressed else text).decode("utf-8", "replace")
        elif kind == b"IEND":
            break
    return found


def _inflate(data: bytes, key: bytes, limit: int = Limits().text_chunk_bytes) -> bytes:
    """A compressed text chunk's text, refused past `limit` bytes (a small chunk can inflate to gigabytes)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ParameterError(f"the image's {key.decode('latin-1')!r} text chunk is corrupt ({exc})",
                             parameter="image") from exc
    if len(text) > limit or inflater.unconsumed_tail:
        raise ParameterError(f"the image's {key.decode('latin-1')!r} text chunk inflates past "
                             f"{describe_bytes(limit)} (Limits.text_chunk_bytes)", parameter="image")
    return text


# The fields of our record that `inspect` and `run --from` read, with the JSON type each must have.
_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "template": (str, type(None)), "parameters": (dict, type(None)), "seeds": (dict, type(None)),
    "graph": (dict, type(None)), "label": (str, type(None)), "server": (str, type(None)),
    "prompt_id": (str, type(None)), "job_id": (str, type(None)), "comfyui_version": (str, type(None)),
}


def read_provenance(data: bytes) -> dict[str, Any] | None:
    """Our record from a PNG's bytes, or None if the image has none."""
    text = png_text(data).get(PROVENANCE_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ParameterError(f"the image's {PROVENANCE_KEY} chunk is not JSON: {exc}", parameter="image") from exc
    if not isinstance(record, dict):
        raise ParameterError(f"the image's {PROVENANCE_KEY} chunk is not a JSON object", parameter="image")
    for name, kinds in _RECORD_TYPES.items():
        if not isinstance(record.get(name), kinds):
            raise ParameterError(f"the image's {PROVENANCE_KEY} record has a {name!r} of the wrong type "
                                 f"({type(record[name]).__name__}); was it edited?", parameter="image")
    return record


class PngTextAppender:
    """Streams a PNG through, adding chunks just before IEND; other bytes pass unchanged.

    Feed it the download in pieces; it holds back the last 12 bytes (where IEND
    sits) until `finish`. A body that is not a PNG passes through untouched.
    """

    def __init__(self, chunks: bytes) -> None:
        self._chunks = chunks
        self._held = b""
        self._first = True
        self.is_png = False

    def feed(self, piece: bytes) -> bytes:
        data = self._held + piece
        if self._first and len(data) >= len(PNG_SIGNATURE):
            self._first = False
            self.is_png = data.startswith(PNG_SIGNATURE)
        out, self._held = data[:-len(IEND_CHUNK)], data[-len(IEND_CHUNK):]
        return out

    def finish(self) -> bytes:
        if self.is_png and self._held == IEND_CHUNK:
            return self._chunks + self._held
        return self._held
