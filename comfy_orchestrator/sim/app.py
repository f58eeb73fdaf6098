"""The simulated server's aiohttp application: its route groups, every route also under /api, and its middlewares."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable

from aiohttp import web

from comfy_orchestrator.sim.faults import Faults
from comfy_orchestrator.sim.routes.base import INTERNAL_ERROR_TEXT, MAX_UPLOAD_SIZE, RouteGroup, SimConfig, SimState
from comfy_orchestrator.sim.routes.files import FileRoutes
from comfy_orchestrator.sim.routes.info import InfoRoutes
from comfy_orchestrator.sim.routes.internal import InternalRoutes
from comfy_orchestrator.sim.routes.jobs import JobRoutes
from comfy_orchestrator.sim.routes.sockets import SocketRoutes
from comfy_orchestrator.sim.routes.userdata import UserdataRoutes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GROUPS: tuple[type[RouteGroup], ...] = (SocketRoutes, InfoRoutes, JobRoutes, FileRoutes, UserdataRoutes)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def fault_middleware(faults: Faults, released: Callable[[], asyncio.Event]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Answer a faulty route with its status, or hang it until the faults are cleared."""
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = faults.route_fault(request.path)
        if fault is not None:
            if fault.hang:
                await released().wait()
                raise web.HTTPServiceUnavailable()
            if fault.status == 500:
                return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
            return web.Response(status=fault.status, text=f"{fault.status}: simulated fault")
        return await handler(request)
    return middleware


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ComfyUI's guard: a loopback server refuses a browser request from another origin (403)."""
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host is not None and origin is not None and origin != "null":
        host_domain = host.lower()
        parsed = urllib.parse.urlparse(origin)
        origin_domain = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + host_domain)
        loopback = host_parsed.hostname in LOOPBACK_HOSTS or (host_parsed.hostname or "").startswith("127.")
        if parsed.port is None:
            host_domain = host_parsed.hostname or ""
        if host_parsed.port is None:
            origin_domain = parsed.hostname or ""
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def build_app(config: SimConfig, state: Callable[[], SimState],
              released: Callable[[], asyncio.Event]) -> web.Application:
    """The aiohttp application: every route also under /api, as ComfyUI registers them, and /internal."""
    routes = [route for group in GROUPS for route in group(config, state).routes()]
    app = web.Application(client_max_size=MAX_UPLOAD_SIZE,
                          middlewares=[fault_middleware(config.faults, released), origin_middleware])
    app.add_routes([web.route(route.method, "/api" + route.path, route.handler, **route.kwargs)
                    for route in routes])
    app.add_routes(routes)
    internal = web.Application()
    internal.add_routes(InternalRoutes(config, state).routes())
    app.add_subapp("/internal", internal)
    app.router.add_get("/{tail:.*}", _static_not_found)  # where ComfyUI's static web root answers
    return app


async def _static_not_found(request: web.Request) -> web.StreamResponse:
    """The empty chunked 404 of ComfyUI's static file route."""
    response = web.StreamResponse(status=404, headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    await response.write_eof()
    return response
