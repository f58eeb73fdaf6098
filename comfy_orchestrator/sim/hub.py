"""The simulated server's websockets by client id, and the outbox the worker thread writes into."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from comfy_orchestrator.sim.faults import Faults

logger = logging.getLogger(__name__)


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
        self.changed = threading.Condition()  # notified when a socket connects or goes
        self.messages: asyncio.Queue[tuple[str | bytes, Any, str | None]] = asyncio.Queue()

    # Outbox, called from any thread
    def send(self, event: str, data: Any, sid: str | None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def send_binary(self, payload: bytes, sid: str | None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (payload, None, sid))

    def add(self, sid: str, socket: Socket) -> None:
        """Register a connected socket under its client id."""
        with self.changed:
            self.sockets[sid] = socket
            self.changed.notify_all()

    def remove(self, sid: str) -> None:
        """Forget a client id's socket (as ComfyUI does when any socket of that id closes)."""
        with self.changed:
            self.sockets.pop(sid, None)
            self.changed.notify_all()

    def wait_for(self, sid: str, timeout_s: float) -> bool:
        """Wait until a socket of client id `sid` is connected; False at the deadline."""
        with self.changed:
            return self.changed.wait_for(lambda: sid in self.sockets, timeout_s)

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
