"""/internal/*: the routes ComfyUI's frontend uses (logs, folder paths, recent files), on their own sub-app.

ComfyUI mounts them at /internal only, never under /api.
"""

from __future__ import annotations

import os
import time

from aiohttp import web

from comfy_orchestrator.sim.routes.base import INTERNAL_ERROR_TEXT, MODEL_FOLDERS, RouteGroup, json_answer

TERMINAL_SIZE = {"cols": 80, "rows": 24}  # what ComfyUI reports without a terminal


class InternalRoutes(RouteGroup):
    """The frontend's internal routes; paths are relative to /internal."""

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/logs", self.logs), web.get("/logs/raw", self.raw_logs),
                web.patch("/logs/subscribe", self.subscribe_logs), web.get("/folder_paths", self.folder_paths),
                web.get("/files/{directory_type}", self.files)]

    def _entries(self) -> list[dict[str, str]]:
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.config.started_at))
        return [{"t": started, "m": f"simulated ComfyUI started; files in {self.config.input_dir.parent}\n"}]

    async def logs(self, request: web.Request) -> web.Response:
        return json_answer("".join(entry["t"] + " - " + entry["m"] for entry in self._entries()))

    async def raw_logs(self, request: web.Request) -> web.Response:
        return json_answer({"entries": self._entries(), "size": TERMINAL_SIZE})

    async def subscribe_logs(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or "clientId" not in body or "enabled" not in body:
            return web.Response(status=500, text=INTERNAL_ERROR_TEXT)  # ComfyUI's KeyError
        return web.Response(status=200)

    async def folder_paths(self, request: web.Request) -> web.Response:
        folders = {name: [str(self.config.models_dir / name)] for name in MODEL_FOLDERS}
        return json_answer(folders)

    async def files(self, request: web.Request) -> web.Response:
        kind = request.match_info["directory_type"]
        folder = {"input": self.config.input_dir, "output": self.config.output_dir,
                  "temp": self.config.temp_dir}.get(kind)
        if folder is None:
            return json_answer({"error": "Invalid directory type"}, status=400)
        entries = sorted((entry for entry in os.scandir(folder) if entry.is_file() and not entry.name.startswith(".")),
                         key=lambda entry: -entry.stat().st_mtime)
        return json_answer([entry.name for entry in entries])
