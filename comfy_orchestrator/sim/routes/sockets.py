"""GET /ws: the websocket, its status greeting and the feature-flags handshake."""

from __future__ import annotations

import json
import uuid

from aiohttp import WSMsgType, web

from comfy_orchestrator.sim.hub import Socket
from comfy_orchestrator.sim.routes.base import SERVER_FEATURES, RouteGroup, queue_info


class SocketRoutes(RouteGroup):
    """The websocket route."""

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ws", self.websocket)]

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        current = self.state()
        hub = current.hub
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if not sid:
            sid = uuid.uuid4().hex
        socket = Socket(ws, request.transport)
        hub.add(sid, socket)
        try:
            await hub.deliver(socket, "status", {"status": queue_info(current), "sid": sid})
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
            hub.remove(sid)
        return ws
