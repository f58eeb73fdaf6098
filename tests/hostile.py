"""A hostile ComfyUI look-alike: a proxy in front of the simulated server that answers one thing badly.

`HostileServer(upstream, mode)` forwards every request and websocket frame to a simulated
server, except what `mode` names, which it answers the way a broken or hostile server would:
markup in error text, valid JSON of the wrong shape, sizes past every limit, a trickling
download, a web page where an image belongs, credentials refused. Beside the sim's own faults
(comfy_orchestrator/sim/faults.py), which misbehave as ComfyUI itself can; these are what no
ComfyUI sends.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

MARKUP = "[/x] [bold red]boom[/] :thumbs_up: [link=file:///etc/passwd]x[/link]"
HUGE_BYTES = 2 << 30  # announced, never sent
BOMB_BYTES = 256 << 20  # inflated size of the gzip bomb (its body is ~256 KB)

# One switch per bad answer: mode -> what it breaks (the test table reads these).
MODES = {
    "prompt_500_markup": "POST /prompt answers 500 with markup in its text",
    "prompt_400_markup": "POST /prompt answers 400 with markup in the error and node error",
    "prompt_400_not_json": "POST /prompt answers 400 with a web page",
    "history_list": "GET /history/{id} answers a JSON list",
    "history_status_string": "a history entry's status is a string",
    "queue_list": "GET /queue answers a JSON list",
    "object_info_list": "GET /object_info answers a JSON list",
    "system_stats_list": "GET /system_stats answers a JSON list",
    "object_info_gzip_bomb": "GET /object_info is a 256 KB gzip body that inflates to 256 MB",
    "object_info_endless": "GET /object_info streams without end",
    "history_endless": "GET /history/{id} streams without end",
    "view_huge": "GET /view announces a 2 GB body",
    "view_endless": "GET /view streams without end and without a length",
    "view_slow": "GET /view sends one byte every 2 s",
    "view_html": "GET /view answers 200 with a web page",
    "view_pixel_bomb": "GET /view answers a 20000x20000 PNG (its header only)",
    "ws_greeting_infinite": "the websocket greeting's queue_remaining is 1e999",
    "ws_progress_infinite": "every progress message's value is 1e999",
    "ws_progress_huge_int": "every progress message's value is 10**400",
    "ws_huge_frame": "the websocket announces a 1 TB frame",
    "auth_401": "every request answers 401",
    "auth_403": "every request answers 403",
}


def pixel_bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG header that claims `width` x `height` pixels, with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    block = b"\x20" * (1 << 20)
    body = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join(body) + compressor.flush()


class HostileServer:
    """A proxy to `upstream` on a free loopback port that answers what `mode` names badly."""

    def __init__(self, upstream: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.upstream = upstream.rstrip("/")
        self.mode = mode
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._bomb = _gzip_bomb(BOMB_BYTES) if mode == "object_info_gzip_bomb" else b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("GET", "/ws", self._websocket)
        app.router.add_route("*", "/{path:.*}", self._http)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- HTTP
    async def _http(self, request: web.Request) -> web.StreamResponse:
        path, mode = request.path, self.mode
        if mode in ("auth_401", "auth_403"):
            return web.Response(status=int(mode[-3:]), text="<html>Authorization Required</html>",
                                content_type="text/html")
        if request.method == "POST" and path == "/prompt":
            if mode == "prompt_500_markup":
                return web.Response(status=500, text=f"500 Internal Server Error {MARKUP}")
            if mode == "prompt_400_markup":
                return web.json_response(status=400, data={
                    "error": {"type": "prompt_outputs_failed_validation", "message": MARKUP, "details": MARKUP},
                    "node_errors": {"3": {"class_type": "KSampler", "errors": [
                        {"type": "bad", "message": MARKUP, "details": MARKUP, "extra_info": {"input_name": "cfg"}}]}}})
            if mode == "prompt_400_not_json":
                return web.Response(status=400, text="<html>Bad Request</html>", content_type="text/html")
        if request.method == "GET":
            if path.startswith("/history/") and mode == "history_list":
                return web.json_response([])
            if path == "/queue" and mode == "queue_list":
                return web.json_response([1, 2])
            if path == "/object_info" and mode == "object_info_list":
                return web.json_response([])
            if path == "/system_stats" and mode == "system_stats_list":
                return web.json_response([])
            if path == "/object_info" and mode == "object_info_gzip_bomb":
                return web.Response(body=self._bomb, headers={"Content-Encoding": "gzip",
                                                               "Content-Type": "application/json"})
            if (path == "/object_info" and mode == "object_info_endless") or \
                    (path.startswith("/history/") and mode == "history_endless"):
                return await self._endless(request, b'{"x": "' , b"a" * (1 << 16))
            if path == "/view" and request.query.get("type") != "input":
                if mode == "view_huge":
                    response = web.StreamResponse(headers={"Content-Length": str(HUGE_BYTES),
                                                           "Content-Type": "image/png"})
                    await response.prepare(request)
                    await response.write(b"\x89PNG\r\n\x1a\n")
                    await asyncio.sleep(30)
                    return response
                if mode == "view_endless":
                    return await self._endless(request, b"\x89PNG\r\n\x1a\n", b"\x00" * (1 << 16))
                if mode == "view_slow":
                    return await self._trickle(request)
                if mode == "view_html":
                    return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
                if mode == "view_pixel_bomb":
                    return web.Response(body=pixel_bomb_png(), content_type="image/png")
        answer = await self._forward(request)
        if mode == "history_status_string" and path.startswith("/history/") and answer.status == 200:
            data = json.loads(answer.body)  # type: ignore[arg-type]
            for entry in data.values():
                entry["status"] = "oops"
            return web.json_response(data)
        return answer

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, self.upstream + request.rel_url.path_qs,
                                         data=await request.read(), headers=headers) as upstream:
            body = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "content-encoding", "content-disposition")}
            return web.Response(status=upstream.status, body=body, headers=kept)

    async def _endless(self, request: web.Request, head: bytes, piece: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(head)
        try:
            for _ in range(1 << 16):  # 4 GB at most; the client hangs up long before
                await response.write(piece)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        try:
            for byte in b"\x89PNG\r\n\x1a\n" * 100:
                await response.write(bytes([byte]))
                await asyncio.sleep(2.0)
        except (ConnectionError, RuntimeError):
            pass
        return response

    # -- websocket
    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        assert self._session is not None
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        if self.mode in ("auth_401", "auth_403"):  # the upgrade was accepted; say nothing
            await client.close()
            return client
        if self.mode == "ws_huge_frame":
            # a binary frame header announcing 1 TB, then silence
            transport = request.transport
            assert transport is not None
            transport.write(b"\x82\x7f" + struct.pack(">Q", 1 << 40))
            await asyncio.sleep(30)
            return client
        if self.mode == "ws_greeting_infinite":
            await client.send_str('{"type": "status", "data": {"status": {"exec_info": '
                                  '{"queue_remaining": 1e999}}, "sid": "hostile"}}')
        url = self.upstream.replace("http", "ws", 1) + "/ws?" + request.query_string
        async with self._session.ws_connect(url, max_msg_size=0) as upstream:
            await asyncio.gather(self._pump(client, upstream.send_str, upstream.send_bytes, upstream.close),
                                 self._pump(upstream, self._tampered(client), client.send_bytes, client.close))
        return client

    def _tampered(self, client: web.WebSocketResponse) -> Callable[[str], Awaitable[None]]:
        async def send(text: str) -> None:
            if self.mode in ("ws_progress_infinite", "ws_progress_huge_int") and '"progress"' in text:
                message = json.loads(text)
                if message.get("type") == "progress":
                    value = "1e999" if self.mode == "ws_progress_infinite" else "1" + "0" * 400
                    data = json.dumps(message["data"]).replace('"value": ', f'"value": {value}, "was": ', 1)
                    text = '{"type": "progress", "data": ' + data + "}"
            await client.send_str(text)
        return send

    @staticmethod
    async def _pump(source: Any, send_str: Callable[[str], Awaitable[None]],
                    send_bytes: Callable[[bytes], Awaitable[None]], close: Callable[[], Awaitable[Any]]) -> None:
        try:
            async for message in _messages(source):
                if message.type == aiohttp.WSMsgType.TEXT:
                    await send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await send_bytes(message.data)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            await close()


async def _messages(source: Any) -> AsyncIterator[aiohttp.WSMessage]:
    async for message in source:
        yield message
