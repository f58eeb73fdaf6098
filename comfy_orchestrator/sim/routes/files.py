"""Files in and out: POST /upload/image and /upload/mask, GET /view, as ComfyUI checks their paths."""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image, PngImagePlugin

from comfy_orchestrator.sim.routes.base import (
    INTERNAL_ERROR_TEXT,
    RouteGroup,
    SimConfig,
    annotated,
    folder_of,
    inside,
    json_answer,
)


class FileRoutes(RouteGroup):
    """Uploads into the input folder and downloads from any of the three."""

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/upload/image", self.upload_image), web.post("/upload/mask", self.upload_mask),
                web.get("/view", self.view)]

    async def upload_image(self, request: web.Request) -> web.Response:
        return _upload(self.config, await request.post())

    async def upload_mask(self, request: web.Request) -> web.Response:
        post = await request.post()
        return _upload(self.config, post, original_ref=json.loads(str(post["original_ref"])))

    async def view(self, request: web.Request) -> web.StreamResponse:
        return await _view(self.config, request)


def _upload(config: SimConfig, post: Mapping[str, Any], original_ref: Mapping[str, Any] | None = None) -> web.Response:
    image = post.get("image")
    kind = post.get("type") or "input"
    folder = folder_of(config, str(kind))
    if folder is None:
        return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
    if image is None or not hasattr(image, "file"):
        return web.Response(status=400)
    filename = image.filename
    if not filename:
        return web.Response(status=400)
    subfolder = str(post.get("subfolder", ""))
    target = Path(os.path.join(folder, os.path.normpath(subfolder)))
    path = Path(os.path.abspath(os.path.join(target, filename)))
    if not inside(folder, path):
        return web.Response(status=400)
    target.mkdir(parents=True, exist_ok=True)
    data = image.file.read()
    overwrite = post.get("overwrite")
    stem, suffix = os.path.splitext(filename)
    duplicate = False
    if overwrite not in ("true", "1"):
        counter = 1
        while path.exists():
            if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
                duplicate = True
                break
            filename = f"{stem} ({counter}){suffix}"
            path = target / filename
            counter += 1
    if not duplicate:
        if original_ref is not None:
            _save_mask(config, original_ref, data, path)
        else:
            path.write_bytes(data)
    return json_answer({"name": filename, "subfolder": subfolder, "type": kind})


def _save_mask(config: SimConfig, original_ref: Mapping[str, Any], mask_bytes: bytes, path: Path) -> None:
    """Put the uploaded image's alpha onto the original, as /upload/mask does; a bad reference writes nothing."""
    name, kind = annotated(str(original_ref.get("filename", "")))
    if not name or name.startswith("/") or ".." in name:
        return
    folder = folder_of(config, kind or str(original_ref.get("type", "output")))
    if folder is None:
        return
    subfolder = str(original_ref.get("subfolder", ""))
    if subfolder:
        if not inside(folder, folder / subfolder):
            return
        folder = folder / subfolder
    source = folder / name
    if not source.is_file():
        return
    with Image.open(source) as original:
        info = PngImagePlugin.PngInfo()
        for key, value in getattr(original, "text", {}).items():
            info.add_text(key, value)
        picture = original.convert("RGBA")
        with Image.open(BytesIO(mask_bytes)) as mask:
            picture.putalpha(mask.convert("RGBA").getchannel("A"))
        picture.save(path, compress_level=4, pnginfo=info)


async def _view(config: SimConfig, request: web.Request) -> web.StreamResponse:
    """GET /view, with its path checks, preview re-encoding and channel picks."""
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, kind = annotated(query["filename"])
    if not filename:
        return web.Response(status=400)
    if filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    folder = folder_of(config, kind or query.get("type", "output"))
    if folder is None:
        return web.Response(status=400)
    if "subfolder" in query:
        full = Path(os.path.join(folder, query["subfolder"]))
        if not inside(folder, full):
            return web.Response(status=403)
        folder = full
    filename = os.path.basename(filename)
    path = folder / filename
    if not path.is_file():
        return web.Response(status=404)
    disposition = {"Content-Disposition": f'filename="{filename}"'}
    channel = query.get("channel", "rgba")
    if "preview" in query:
        preview = query["preview"].split(";")
        image_format = preview[0] if preview[0] in ("webp", "jpeg") and "a" not in query.get("channel", "") else "webp"
        quality = int(preview[-1]) if preview[-1].isdigit() else 90
        with Image.open(path) as opened:
            picture: Image.Image = opened
            if image_format == "jpeg" or query.get("channel", "") == "rgb":
                picture = picture.convert("RGB")
            buffer = BytesIO()
            picture.save(buffer, format=image_format, quality=quality)
        return web.Response(body=buffer.getvalue(), content_type=f"image/{image_format}", headers=disposition)
    if channel in ("rgb", "a"):
        with Image.open(path) as picture:
            if channel == "rgb":
                out = picture.convert("RGB")
            else:
                alpha = picture.getchannel("A") if picture.mode == "RGBA" else Image.new("L", picture.size, 255)
                out = Image.new("RGBA", picture.size)
                out.putalpha(alpha)
            buffer = BytesIO()
            out.save(buffer, format="PNG")
        return web.Response(body=buffer.getvalue(), content_type="image/png", headers=disposition)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
        content_type = "application/octet-stream"
    rate = config.faults.download_bytes_per_s
    if rate is None:
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})
    return await _slow_download(request, path, rate, {**disposition, "Content-Type": content_type})


async def _slow_download(request: web.Request, path: Path, bytes_per_s: int,
                         headers: Mapping[str, str]) -> web.StreamResponse:
    data = path.read_bytes()
    response = web.StreamResponse(headers=headers)
    response.content_length = len(data)
    await response.prepare(request)
    chunk = max(1, bytes_per_s // 10)
    for start in range(0, len(data), chunk):
        await response.write(data[start:start + chunk])
        await asyncio.sleep(chunk / bytes_per_s)  # throttling the server's own send rate, not waiting for a result
    await response.write_eof()
    return response
