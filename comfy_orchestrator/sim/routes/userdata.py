"""The user folder: /users, /settings, /userdata and /v2/userdata, with ComfyUI's path checks.

One user, "default", as ComfyUI runs without --multi-user; files live in the sim's user/default
folder. A name that would leave that folder (`..`, an absolute path, also once %-decoded) gets 403
from /userdata and 400 from /v2/userdata, as ComfyUI's UserManager answers.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from typing import Any
from urllib import parse

from aiohttp import web

from comfy_orchestrator.sim.routes.base import RouteGroup, SimConfig, SimState, json_answer

logger = logging.getLogger(__name__)

DEFAULT_USER = "default"
SYSTEM_USER_PREFIX = "__"  # ComfyUI keeps these users' folders away from HTTP
SETTINGS_FILE = "comfy.settings.json"


def file_info(path: str, relative_to: str) -> dict[str, Any]:
    """A file's entry in full_info listings and answers."""
    return {"path": os.path.relpath(path, relative_to).replace(os.sep, "/"), "size": os.path.getsize(path),
            "modified": os.path.getmtime(path), "created": os.path.getctime(path)}


class UserdataRoutes(RouteGroup):
    """Users, their settings and their files."""

    def __init__(self, config: SimConfig, state: Callable[[], SimState]) -> None:
        super().__init__(config, state)
        self.users = {DEFAULT_USER: DEFAULT_USER}  # as ComfyUI starts without --multi-user

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/users", self.get_users), web.post("/users", self.post_users),
                web.get("/settings", self.get_settings), web.get("/settings/{id}", self.get_setting),
                web.post("/settings", self.post_settings), web.post("/settings/{id}", self.post_setting),
                web.get("/userdata", self.list_userdata), web.get("/v2/userdata", self.list_userdata_v2),
                web.get("/userdata/{file}", self.get_userdata), web.post("/userdata/{file}", self.post_userdata),
                web.delete("/userdata/{file}", self.delete_userdata),
                web.post("/userdata/{file}/move/{dest}", self.move_userdata)]

    # -- paths
    @property
    def user_root(self) -> str:
        return os.path.abspath(self.config.user_dir / DEFAULT_USER)

    def user_path(self, file: str | None, *, create_dir: bool = True) -> str | None:
        """Where `file` lies in the user's folder; None when it would leave it (UserManager's check)."""
        root_dir, user_root = os.path.abspath(self.config.user_dir), self.user_root
        if os.path.commonpath((root_dir, user_root)) != root_dir:
            return None
        path = user_root
        if file is not None:
            if "%" in file:
                file = parse.unquote(file)
            path = os.path.abspath(os.path.join(user_root, file))
            if os.path.commonpath((user_root, path)) != user_root:
                return None
        parent = os.path.split(path)[0]
        if create_dir and not os.path.exists(parent):
            os.makedirs(parent, exist_ok=True)
        return path

    def _request_path(self, request: web.Request, *, check_exists: bool = False,
                      param: str = "file") -> str | web.Response:
        file = request.match_info.get(param)
        if not file:
            return web.Response(status=400)
        path = self.user_path(file)
        if not path:
            return web.Response(status=403)
        if check_exists and not os.path.exists(path):
            return web.Response(status=404)
        return path

    # -- users
    async def get_users(self, request: web.Request) -> web.Response:
        return json_answer({"storage": "server", "migrated": os.path.exists(self.user_root)})

    async def post_users(self, request: web.Request) -> web.Response:
        username = (await request.json())["username"]
        if username in self.users.values():
            return json_answer({"error": "Duplicate username."}, status=400)
        name = str(username).strip()
        if not name:
            return json_answer({"error": "username not provided"}, status=400)
        user_id = re.sub("[^a-zA-Z0-9-_]+", "-", name)
        if name.startswith(SYSTEM_USER_PREFIX) or user_id.startswith(SYSTEM_USER_PREFIX):
            return json_answer({"error": "System User prefix not allowed"}, status=400)
        user_id = f"{user_id}_{uuid.uuid4()}"
        self.users[user_id] = name
        self.config.user_dir.mkdir(parents=True, exist_ok=True)
        (self.config.user_dir / "users.json").write_text(json.dumps(self.users), "utf-8")
        return json_answer(user_id)

    # -- settings
    def _settings(self) -> dict[str, Any]:
        path = self.user_path(SETTINGS_FILE)
        if path is None or not os.path.isfile(path):
            return {}
        try:
            with open(path, encoding="utf-8") as file:
                loaded = json.load(file)
        except (OSError, ValueError):
            logger.error("The user settings file is corrupted: %s", path)
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _save_settings(self, settings: dict[str, Any]) -> None:
        path = self.user_path(SETTINGS_FILE)
        if path is not None:
            with open(path, "w", encoding="utf-8") as file:
                file.write(json.dumps(settings, indent=4))

    async def get_settings(self, request: web.Request) -> web.Response:
        return json_answer(self._settings())

    async def get_setting(self, request: web.Request) -> web.Response:
        return json_answer(self._settings().get(request.match_info["id"]))

    async def post_settings(self, request: web.Request) -> web.Response:
        settings = self._settings()
        self._save_settings({**settings, **(await request.json())})
        return web.Response(status=200)

    async def post_setting(self, request: web.Request) -> web.Response:
        settings = self._settings()
        settings[request.match_info["id"]] = await request.json()
        self._save_settings(settings)
        return web.Response(status=200)

    # -- files
    async def list_userdata(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        directory = query.get("dir", "")
        if not directory:
            return web.Response(status=400, text="Directory not provided")
        path = self.user_path(directory)
        if not path:
            return web.Response(status=403, text="Invalid directory")
        if not os.path.exists(path):
            return web.Response(status=404, text="Directory not found")
        recurse = query.get("recurse", "").lower() == "true"
        full_info = query.get("full_info", "").lower() == "true"
        split_path = query.get("split", "").lower() == "true"
        pattern = os.path.join(glob.escape(path), "**", "*") if recurse else os.path.join(glob.escape(path), "*")
        results: list[Any] = []
        for full_path in glob.glob(pattern, recursive=recurse):
            if not os.path.isfile(full_path):
                continue
            relative = os.path.relpath(full_path, path).replace(os.sep, "/")
            if full_info:
                results.append(file_info(full_path, path))
            else:
                results.append([relative, *relative.split("/")] if split_path else relative)
        return json_answer(results)

    async def list_userdata_v2(self, request: web.Request) -> web.Response:
        requested = parse.unquote(request.rel_url.query.get("path", ""))
        base = self.user_path(None, create_dir=False)
        target = self.user_path(requested, create_dir=False) if requested else base
        if not target or not base:
            return web.Response(status=400, text="Invalid path requested")
        if not os.path.exists(target):
            if target == base:
                return json_answer([])
            return web.Response(status=404, text="Requested path not found")
        if not os.path.isdir(target):
            return web.Response(status=400, text="Requested path is not a directory")
        results: list[dict[str, Any]] = []
        for root, dirs, files in os.walk(target, topdown=True):
            for name in dirs:
                relative = os.path.relpath(os.path.join(root, name), base).replace(os.sep, "/")
                results.append({"name": name, "path": relative, "type": "directory"})
            for name in files:
                full = os.path.join(root, name)
                stats = os.stat(full)
                results.append({"name": name, "path": os.path.relpath(full, base).replace(os.sep, "/"),
                                "type": "file", "size": stats.st_size, "modified": stats.st_mtime})
        results.sort(key=lambda entry: (entry["type"] != "directory", entry["name"].lower()))
        return json_answer(results)

    async def get_userdata(self, request: web.Request) -> web.StreamResponse:
        path = self._request_path(request, check_exists=True)
        if not isinstance(path, str):
            return path
        return web.FileResponse(path)

    async def post_userdata(self, request: web.Request) -> web.Response:
        path = self._request_path(request)
        if not isinstance(path, str):
            return path
        refused = _refused_overwrite(request, path)
        if refused is not None:
            return refused
        body = await request.read()
        try:
            with open(path, "wb") as file:
                file.write(body)
        except OSError as exc:
            logger.warning("Error saving file '%s': %s", path, exc)
            return web.Response(status=400, reason="Invalid filename. Please avoid special characters like "
                                                   ":\\/*?\"<>|")
        return self._written(request, path)

    async def delete_userdata(self, request: web.Request) -> web.Response:
        path = self._request_path(request, check_exists=True)
        if not isinstance(path, str):
            return path
        os.remove(path)
        return web.Response(status=204)

    async def move_userdata(self, request: web.Request) -> web.Response:
        source = self._request_path(request, check_exists=True)
        if not isinstance(source, str):
            return source
        dest = self._request_path(request, param="dest")
        if not isinstance(dest, str):
            return dest
        refused = _refused_overwrite(request, dest)
        if refused is not None:
            return refused
        shutil.move(source, dest)
        return self._written(request, dest)

    def _written(self, request: web.Request, path: str) -> web.Response:
        """The answer to a write: the file's path in the user folder, or its full info when asked."""
        if request.query.get("full_info", "false").lower() == "true":
            return json_answer(file_info(path, self.user_root))
        return json_answer(os.path.relpath(path, self.user_root))


def _refused_overwrite(request: web.Request, path: str) -> web.Response | None:
    """409 when the request says overwrite=false and `path` exists."""
    if request.query.get("overwrite", "true") == "false" and os.path.exists(path):
        return web.Response(status=409, text="File already exists")
    return None
