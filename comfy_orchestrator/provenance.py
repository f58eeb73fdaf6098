"""Provenance in PNG text chunks, pure: what we add to every image we save, and reading it back.

The server's own chunks (`prompt`, `workflow`) are kept byte for byte; ours is one
`tEXt` chunk, `comfy_orchestrator`, holding JSON: the template and its parameter
values, the rendered graph, the seeds, the server (without credentials) and its
ComfyUI version. `comfy-orch inspect` reads it and `comfy-orch run --from` reruns it.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from comfy_orchestrator.errors import ParameterError
from comfy_orchestrator.jobs import Job

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"
PROVENANCE_KEY = "comfy_orchestrator"
PROVENANCE_VERSION = 1
_SEED_INPUTS = ("seed", "noise_seed")


def text_chunk(keyword: str, text: str) -> bytes:
    """One PNG tEXt chunk (Latin-1; JSON written ASCII-only fits)."""
    body = keyword.encode("latin-1") + b"\x00" + text.encode("latin-1")
    return struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))


def seeds(graph: Mapping[str, Any]) -> dict[str, Any]:
    """The literal seed of each sampler-like node: {"6": 1001}."""
    found: dict[str, Any] = {}
    for node_id, entry in graph.items():
        for name in _SEED_INPUTS:
            value = (entry.get("inputs") or {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                found[str(node_id)] = value
    return found


def provenance_record(job: Job, *, prompt_id: str, server: str, comfyui_version: str | None) -> dict[str, Any]:
    """What we write into each saved image: enough to run the same job again."""
    graph = job.graph.to_api()
    return {
        "version": PROVENANCE_VERSION,
        "template": job.template,
        "parameters": dict(job.params),
        "label": job.label,
        "job_id": job.id,
        "graph": graph,
        "seeds": seeds(graph),
        "prompt_id": prompt_id,
        "server": server,
        "comfyui_version": comfyui_version,
    }


def provenance_chunk(record: Mapping[str, Any]) -> bytes:
    return text_chunk(PROVENANCE_KEY, json.dumps(record, ensure_ascii=True, separators=(",", ":")))


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
            found[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt" and b"\x00" in body:
            key, _, rest = body.partition(b"\x00")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\x00")
            _translated, _, text = rest.partition(b"\x00")
            found[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
        elif kind == b"IEND":
            break
    return found


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
