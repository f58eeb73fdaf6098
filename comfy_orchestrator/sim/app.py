"""The simulated server's HTTP routes and websocket, as ComfyUI 0.8's server.py answers them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
import os
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image, PngImagePlugin

from comfy_orchestrator.schema import Schema
from comfy_orchestrator.sim.faults import Faults
from comfy_orchestrator.sim.worker import Executor, PromptQueue, QueueItem, coerce_prompt
from comfy_orchestrator.validation import check_prompt

logger = logging.getLogger(__name__)

COMFYUI_VERSION = "0.8.0"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE,
                   "extension": {"manager": {"supports_v4": True}}}
MODEL_FOLDERS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                 "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
                 "latent_upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
                 "model_patches", "audio_encoders")
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
ROOT_PAGE = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ComfyUI (simulated)</title></head>\n"
             "<body><p>comfy-orchestrator's simulated ComfyUI server has no frontend.</p></body></html>\n")
JOB_STATUSES = ("pending", "in_progress", "completed", "failed")


@dataclass
class Socket:
    """One connected websocket and what the faults have done to it."""

    ws: web.WebSocketResponse
    transport: Any
    flags: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    silent: bool = False


class SocketHub:
    """The server's websockets by client id, and the outbox the worker thread writes into."""

    def __init__(self, loop: asyncio.AbstractEventLoop, faults: Faults) -> None:
        self.loop = loop
        self.faults = faults
        self.sockets: dict[str, Socket] = {}
        self.messages: asyncio.Queue[tuple[str | bytes, Any, str | None]] = asyncio.Queue()

    # Outbox, called from any thread
    def send(self, event: str, data: Any, sid: str | None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def send_binary(self, payload: bytes, sid: str | None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (payload, None, sid))

    def supports_preview_metadata(self, sid: str | None) -> bool:
        socket = self.sockets.get(sid) if sid is not None else None
        return bool(socket is not None and socket.flags.get("supports_preview_metadata"))

    async def publish(self) -> None:
        """Deliver queued messages in order, forever."""
        while True:
            message, data, sid = await self.messages.get()
            targets = list(self.sockets.values()) if sid is None else (
                [self.sockets[sid]] if sid in self.sockets else [])
            for socket in targets:
                await self.deliver(socket, message, data)

    async def deliver(self, socket: Socket, message: str | bytes, data: Any) -> None:
        """Send one message to one socket, unless a fault keeps it back."""
        if socket.silent or socket.ws.closed:
            return
        silent_after = self.faults.websocket_silent_after
        if silent_after is not None and socket.sent >= silent_after:
            socket.silent = True
            return
        try:
            if isinstance(message, bytes):
                await socket.ws.send_bytes(message)
            else:
                await socket.ws.send_json({"type": message, "data": data})
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("websocket send failed: %s", exc)  # the client went away; ComfyUI ignores it too
            return
        socket.sent += 1
        close_after = self.faults.websocket_close_after
        if close_after is not None and socket.sent >= close_after:
            await socket.ws.close()

    def abort_all(self) -> None:
        """Drop every websocket without a close frame, as a dying process does."""
        for socket in list(self.sockets.values()):
            if socket.transport is not None:
                socket.transport.abort()
        self.sockets.clear()


@dataclass
class SimState:
    """Everything a crash loses: queue, history, cache, sockets."""

    queue: PromptQueue
    executor: Executor
    hub: SocketHub
    number: int = 0


@dataclass
class SimConfig:
    """What the routes need to know about their server."""

    schema: Schema
    faults: Faults
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    checkpoints: tuple[str, ...]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _folder(config: SimConfig, kind: str | None) -> Path | None:
    return {"input": config.input_dir, "output": config.output_dir, "temp": config.temp_dir}.get(kind or "input")


def _annotated(name: str) -> tuple[str, str | None]:
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def _inside(folder: Path, path: Path) -> bool:
    return os.path.commonpath((os.path.abspath(folder), os.path.abspath(path))) == os.path.abspath(folder)


def build_app(config: SimConfig, state: Callable[[], SimState],
              released: Callable[[], asyncio.Event]) -> web.Application:
    """The aiohttp application: every route also under /api, as ComfyUI registers them."""
    routes = web.RouteTableDef()
    faults = config.faults

    @web.middleware
    async def fault_middleware(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        fault = faults.route_fault(request.path)
        if fault is not None:
            if fault.hang:
                await released().wait()
                raise web.HTTPServiceUnavailable()
            if fault.status == 500:
                return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
            return web.Response(status=fault.status, text=f"{fault.status}: simulated fault")
        return await handler(request)

    @web.middleware
    async def origin_middleware(request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        host, origin = request.headers.get("Host"), request.headers.get("Origin")
        if host is not None and origin is not None and origin != "null":
            host_domain = host.lower()
            parsed = urllib.parse.urlparse(origin)
            origin_domain = parsed.netloc.lower()
            host_parsed = urllib.parse.urlsplit("//" + host_domain)
            loopback = host_parsed.hostname in ("localhost", "127.0.0.1", "::1") or (
                host_parsed.hostname or "").startswith("127.")
            if parsed.port is None:
                host_domain = host_parsed.hostname or ""
            if host_parsed.port is None:
                origin_domain = parsed.hostname or ""
            if loopback and host_domain and origin_domain and host_domain != origin_domain:
                return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    @routes.get("/ws")
    async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
        current = state()
        hub = current.hub
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            hub.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        socket = Socket(ws, request.transport)
        hub.sockets[sid] = socket
        try:
            await hub.deliver(socket, "status", {"status": _queue_info(current), "sid": sid})
            last_node = current.executor.last_node_id
            if current.executor.client_id == sid and last_node is not None:
                await hub.deliver(socket, "executing", {"node": last_node})
            first = True
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(message.data)
                except json.JSONDecodeError:
                    continue  # an invalid first frame does not use up the handshake, as on the real server
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    socket.flags = dict(data.get("data") or {})
                    await hub.deliver(socket, "feature_flags", SERVER_FEATURES)
                first = False
        finally:
            # as in ComfyUI: a replaced socket closing removes its successor's entry too
            hub.sockets.pop(sid, None)
        return ws

    @routes.get("/")
    async def get_root(request: web.Request) -> web.Response:
        return web.Response(body=ROOT_PAGE.encode("utf-8"), headers={
            "Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0", "Content-Type": "text/html"})

    @routes.get("/embeddings")
    async def get_embeddings(request: web.Request) -> web.Response:
        return _json([])

    @routes.get("/extensions")
    async def get_extensions(request: web.Request) -> web.Response:
        return _json([])

    @routes.get("/models")
    async def get_model_folders(request: web.Request) -> web.Response:
        return _json(list(MODEL_FOLDERS))

    @routes.get("/models/{folder}")
    async def get_models(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        listed = {"checkpoints": config.checkpoints,
                  "loras": config.schema.choices("LoraLoader", "lora_name"),
                  "controlnet": config.schema.choices("ControlNetLoader", "control_net_name")}
        return _json(sorted(listed.get(folder, ())))

    @routes.get("/view_metadata/{folder}")
    async def view_metadata(request: web.Request) -> web.Response:
        name = request.rel_url.query.get("filename", "")
        if request.match_info["folder"] != "checkpoints" or name not in config.checkpoints:
            return web.Response(status=404)
        return _json({"note": "simulated checkpoint", "format": "pt"})

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        ram_free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
        vram = 80 * 2**30
        return _json({
            "system": {"os": sys.platform, "ram_total": ram_total, "ram_free": ram_free,
                       "comfyui_version": COMFYUI_VERSION, "required_frontend_version": "1.35.9",
                       "installed_templates_version": None, "required_templates_version": "0.7.67",
                       "python_version": sys.version, "pytorch_version": "simulated", "embedded_python": False,
                       "argv": ["comfy-orch", "sim"]},
            "devices": [{"name": "cuda:0 Simulated GPU : cudaMallocAsync", "type": "cuda", "index": 0,
                         "vram_total": vram, "vram_free": vram - 2**30, "torch_vram_total": 0,
                         "torch_vram_free": 0}],
        })

    @routes.get("/features")
    async def get_features(request: web.Request) -> web.Response:
        return _json(SERVER_FEATURES)

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return _json(_queue_info(state()))

    def object_info() -> dict[str, Any]:
        inputs = sorted(p.name for p in config.input_dir.iterdir() if p.is_file()) if config.input_dir.is_dir() else []
        schema = config.schema.with_choices(("LoadImage", "LoadImageMask"), "image", inputs)
        return dict(schema.raw)

    @routes.get("/object_info")
    async def get_object_info(request: web.Request) -> web.Response:
        return _json(object_info())

    @routes.get("/object_info/{node_class}")
    async def get_object_info_node(request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        if name not in config.schema:
            return _json({})
        return _json({name: object_info()[name]})

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        max_items = request.rel_url.query.get("max_items")
        offset = request.rel_url.query.get("offset")
        return _json(state().queue.get_history(max_items=None if max_items is None else int(max_items),
                                               offset=-1 if offset is None else int(offset)))

    @routes.get("/history/{prompt_id}")
    async def get_history_entry(request: web.Request) -> web.Response:
        return _json(state().queue.get_history(prompt_id=request.match_info["prompt_id"]))

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running, pending = state().queue.snapshot()
        return _json({"queue_running": [list(item) for item in running],
                      "queue_pending": [list(item) for item in pending]})

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        current = state()
        body = await request.json()
        if "number" in body:
            number: float | int = float(body["number"])
        else:
            number = current.number
            if body.get("front"):
                number = -number
            current.number += 1
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return _json({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))

        def input_exists(name: str) -> bool:
            bare, kind = _annotated(name)
            folder = _folder(config, kind)
            return folder is not None and (folder / bare).is_file()

        check = check_prompt(prompt, config.schema, input_exists=input_exists,
                             partial_execution_list=body.get("partial_execution_targets"))
        if check.error is not None:
            return _json({"error": check.error, "node_errors": check.node_errors}, status=400)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        extra_data["create_time"] = int(time.time() * 1000)
        item: QueueItem = (number, prompt_id, coerce_prompt(prompt, config.schema), extra_data, list(check.outputs))
        if not faults.take_prompt_drop():
            current.queue.put(item)
        return _json({"prompt_id": prompt_id, "number": number, "node_errors": check.node_errors})

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        body = await request.json()
        queue = state().queue
        if body.get("clear"):
            queue.wipe()
        for prompt_id in body.get("delete", []):
            queue.delete(prompt_id)
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def post_interrupt(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        current = state()
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id:
            running, _ = current.queue.snapshot()
            if any(item[1] == prompt_id for item in running):
                current.executor.interrupt()
        else:
            current.executor.interrupt()
        return web.Response(status=200)

    @routes.post("/free")
    async def post_free(request: web.Request) -> web.Response:
        body = await request.json()
        queue = state().queue
        if body.get("unload_models", False):
            queue.set_flag("unload_models")
        if body.get("free_memory", False):
            queue.set_flag("free_memory")
        return web.Response(status=200)

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        body = await request.json()
        queue = state().queue
        with queue.mutex:
            if body.get("clear"):
                queue.history.clear()
            for prompt_id in body.get("delete", []):
                queue.history.pop(prompt_id, None)
        return web.Response(status=200)

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        return _upload(config, await request.post())

    @routes.post("/upload/mask")
    async def upload_mask(request: web.Request) -> web.Response:
        post = await request.post()
        return _upload(config, post, original_ref=json.loads(str(post["original_ref"])))

    @routes.get("/view")
    async def view(request: web.Request) -> web.StreamResponse:
        return await _view(config, request)

    @routes.get("/api/jobs")
    async def get_jobs(request: web.Request) -> web.Response:
        return _jobs(state(), request.rel_url.query)

    @routes.get("/api/jobs/{job_id}")
    async def get_job(request: web.Request) -> web.Response:
        current = state()
        job_id = request.match_info["job_id"]
        history = current.queue.get_history(prompt_id=job_id)
        if job_id in history:
            return _json(_history_job(job_id, history[job_id], include_outputs=True))
        running, pending = current.queue.snapshot()
        for items, status in ((running, "in_progress"), (pending, "pending")):
            for item in items:
                if item[1] == job_id:
                    return _json(_queue_job(item, status))
        return _json({"error": "Job not found"}, status=404)

    app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[fault_middleware, origin_middleware])
    api_routes = web.RouteTableDef()
    for route in routes:
        if isinstance(route, web.RouteDef):
            api_routes.route(route.method, "/api" + route.path)(route.handler, **route.kwargs)
    app.add_routes(api_routes)
    app.add_routes(routes)
    app.router.add_get("/{tail:.*}", _static_not_found)  # where ComfyUI's static web root answers
    return app


async def _static_not_found(request: web.Request) -> web.StreamResponse:
    """The empty chunked 404 of ComfyUI's static file route."""
    response = web.StreamResponse(status=404, headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    await response.write_eof()
    return response


def _queue_info(state: SimState) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": state.queue.remaining()}}


def _upload(config: SimConfig, post: Mapping[str, Any], original_ref: Mapping[str, Any] | None = None) -> web.Response:
    image = post.get("image")
    kind = post.get("type") or "input"
    folder = _folder(config, str(kind))
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
    if not _inside(folder, path):
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
    return _json({"name": filename, "subfolder": subfolder, "type": kind})


def _save_mask(config: SimConfig, original_ref: Mapping[str, Any], mask_bytes: bytes, path: Path) -> None:
    """Put the uploaded image's alpha onto the original, as /upload/mask does; a bad reference writes nothing."""
    name, kind = _annotated(str(original_ref.get("filename", "")))
    if not name or name.startswith("/") or ".." in name:
        return
    folder = _folder(config, kind or str(original_ref.get("type", "output")))
    if folder is None:
        return
    subfolder = str(original_ref.get("subfolder", ""))
    if subfolder:
        if not _inside(folder, folder / subfolder):
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
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, kind = _annotated(query["filename"])
    if not filename:
        return web.Response(status=400)
    if filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    folder = _folder(config, kind or query.get("type", "output"))
    if folder is None:
        return web.Response(status=400)
    if "subfolder" in query:
        full = Path(os.path.join(folder, query["subfolder"]))
        if not _inside(folder, full):
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


def _job_times(extra_data: Mapping[str, Any]) -> tuple[Any, Any]:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
    return extra_data.get("create_time"), workflow.get("id") if isinstance(workflow, dict) else None


def _prune(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _queue_job(item: QueueItem, status: str) -> dict[str, Any]:
    create_time, workflow_id = _job_times(item[3])
    return _prune({"id": item[1], "status": status, "priority": item[0], "create_time": create_time,
                   "outputs_count": 0, "workflow_id": workflow_id})


def _history_job(prompt_id: str, entry: Mapping[str, Any], *, include_outputs: bool = False) -> dict[str, Any]:
    priority, _, prompt, extra_data, _ = entry["prompt"]
    create_time, workflow_id = _job_times(extra_data)
    status_info = entry.get("status") or {}
    status = "failed" if status_info.get("status_str") == "error" else "completed"
    outputs = entry.get("outputs", {})
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in outputs.items():
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                count += 1
                if preview is None and media_type in ("images", "video", "audio"):
                    enriched = {**item, "nodeId": node_id, "mediaType": media_type}
                    if item.get("type") == "output":
                        preview = enriched
                    elif fallback is None:
                        fallback = enriched
    start = end = error = None
    for event, data in status_info.get("messages", []):
        if event == "execution_start":
            start = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if event == "execution_error":
                error = data
    job = _prune({"id": prompt_id, "status": status, "priority": priority, "create_time": create_time,
                  "execution_start_time": start, "execution_end_time": end, "execution_error": error,
                  "outputs_count": count, "preview_output": preview or fallback, "workflow_id": workflow_id})
    if include_outputs:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def _jobs(state: SimState, query: Mapping[str, str]) -> web.Response:
    statuses = list(JOB_STATUSES)
    if query.get("status"):
        statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
        invalid = [s for s in statuses if s not in JOB_STATUSES]
        if invalid:
            return _json({"error": f"Invalid status value(s): {', '.join(invalid)}. "
                                   f"Valid values: {', '.join(JOB_STATUSES)}"}, status=400)
    sort_by = query.get("sort_by", "created_at").lower()
    sort_order = query.get("sort_order", "desc").lower()
    if sort_by not in ("created_at", "execution_duration"):
        return _json({"error": "sort_by must be 'created_at' or 'execution_duration'"}, status=400)
    if sort_order not in ("asc", "desc"):
        return _json({"error": "sort_order must be 'asc' or 'desc'"}, status=400)
    limit = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            return _json({"error": "limit must be an integer"}, status=400)
        if limit <= 0:
            return _json({"error": "limit must be a positive integer"}, status=400)
    offset = 0
    if "offset" in query:
        try:
            offset = max(0, int(query["offset"]))
        except ValueError:
            return _json({"error": "offset must be an integer"}, status=400)
    running, pending = state.queue.snapshot()
    jobs: list[dict[str, Any]] = []
    if "in_progress" in statuses:
        jobs += [_queue_job(item, "in_progress") for item in running]
    if "pending" in statuses:
        jobs += [_queue_job(item, "pending") for item in pending]
    for prompt_id, entry in state.queue.get_history().items():
        failed = (entry.get("status") or {}).get("status_str") == "error"
        if ("failed" if failed else "completed") in statuses:
            jobs.append(_history_job(prompt_id, entry))
    workflow_id = query.get("workflow_id")
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]

    def sort_key(job: Mapping[str, Any]) -> float:
        if sort_by == "execution_duration":
            start, end = job.get("execution_start_time", 0), job.get("execution_end_time", 0)
            return float(end - start) if start and end else 0.0
        return float(job.get("create_time", 0))

    jobs.sort(key=sort_key, reverse=sort_order == "desc")
    total = len(jobs)
    jobs = jobs[offset:]
    if limit is not None:
        jobs = jobs[:limit]
    return _json({"jobs": jobs, "pagination": {"offset": offset, "limit": limit, "total": total,
                                               "has_more": offset + len(jobs) < total}})
