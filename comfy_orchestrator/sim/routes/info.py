"""The server and what it offers: root page, system stats, features, models, node classes, i18n, templates."""

from __future__ import annotations

import os
import sys
from typing import Any

from aiohttp import web

from comfy_orchestrator.sim.routes.base import (
    COMFYUI_VERSION,
    MODEL_FOLDERS,
    SERVER_FEATURES,
    RouteGroup,
    json_answer,
    queue_info,
)

ROOT_PAGE = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ComfyUI (simulated)</title></head>\n"
             "<body><p>comfy-orchestrator's simulated ComfyUI server has no frontend.</p></body></html>\n")
EXPERIMENT_HIDDEN_FOLDERS = ("configs", "custom_nodes")  # /experiment/models leaves these out
SIMULATED_VRAM_BYTES = 80 * 2**30


class InfoRoutes(RouteGroup):
    """Routes that describe the server; none of them changes anything."""

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.root), web.get("/embeddings", self.embeddings),
                web.get("/extensions", self.extensions), web.get("/models", self.model_folders),
                web.get("/models/{folder}", self.models), web.get("/view_metadata/{folder}", self.view_metadata),
                web.get("/experiment/models", self.experiment_folders),
                web.get("/experiment/models/{folder}", self.experiment_models),
                web.get("/system_stats", self.system_stats), web.get("/features", self.features),
                web.get("/prompt", self.prompt_status), web.get("/object_info", self.object_info),
                web.get("/object_info/{node_class}", self.object_info_node), web.get("/i18n", self.i18n),
                web.get("/workflow_templates", self.workflow_templates),
                web.get("/global_subgraphs", self.global_subgraphs),
                web.get("/global_subgraphs/{id}", self.global_subgraph)]

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(body=ROOT_PAGE.encode("utf-8"), headers={
            "Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0", "Content-Type": "text/html"})

    async def embeddings(self, request: web.Request) -> web.Response:
        return json_answer([])

    async def extensions(self, request: web.Request) -> web.Response:
        return json_answer([])

    async def model_folders(self, request: web.Request) -> web.Response:
        return json_answer(list(MODEL_FOLDERS))

    def _listed(self, folder: str) -> tuple[str, ...]:
        """The file names the server offers in a model folder."""
        schema = self.config.schema
        listed = {"checkpoints": self.config.checkpoints,
                  "loras": schema.choices("LoraLoader", "lora_name"),
                  "controlnet": schema.choices("ControlNetLoader", "control_net_name"),
                  "vae": [name for name in schema.choices("VAELoader", "vae_name") if name != "pixel_space"],
                  "vae_approx": self.config.vae_approx}
        return tuple(sorted(str(name) for name in listed.get(folder, ())))

    async def models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return json_answer(list(self._listed(folder)))

    async def view_metadata(self, request: web.Request) -> web.Response:
        name = request.rel_url.query.get("filename", "")
        if request.match_info["folder"] != "checkpoints" or name not in self.config.checkpoints:
            return web.Response(status=404)
        return json_answer({"note": "simulated checkpoint", "format": "pt",
                            **self.config.checkpoint_metadata.get(name, {})})

    async def experiment_folders(self, request: web.Request) -> web.Response:
        return json_answer([{"name": folder, "folders": [str(self.config.models_dir / folder)]}
                            for folder in MODEL_FOLDERS if folder not in EXPERIMENT_HIDDEN_FOLDERS])

    async def experiment_models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        since = self.config.started_at  # the simulated files exist since the server started
        return json_answer([{"name": name, "pathIndex": 0, "modified": since, "created": since, "size": 0}
                            for name in self._listed(folder)])

    async def system_stats(self, request: web.Request) -> web.Response:
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
        ram_total = page * os.sysconf("SC_PHYS_PAGES") if page else 0
        ram_free = page * os.sysconf("SC_AVPHYS_PAGES") if page else 0
        return json_answer({
            "system": {"os": sys.platform, "ram_total": ram_total, "ram_free": ram_free,
                       "comfyui_version": COMFYUI_VERSION, "required_frontend_version": "1.35.9",
                       "installed_templates_version": None, "required_templates_version": "0.7.67",
                       "python_version": sys.version, "pytorch_version": "simulated", "embedded_python": False,
                       "argv": ["comfy-orch", "sim"]},
            "devices": [{"name": "cuda:0 Simulated GPU : cudaMallocAsync", "type": "cuda", "index": 0,
                         "vram_total": SIMULATED_VRAM_BYTES, "vram_free": SIMULATED_VRAM_BYTES - 2**30,
                         "torch_vram_total": 0, "torch_vram_free": 0}],
        })

    async def features(self, request: web.Request) -> web.Response:
        return json_answer(SERVER_FEATURES)

    async def prompt_status(self, request: web.Request) -> web.Response:
        return json_answer(queue_info(self.state()))

    def _object_info(self) -> dict[str, Any]:
        input_dir = self.config.input_dir
        inputs = sorted(p.name for p in input_dir.iterdir() if p.is_file()) if input_dir.is_dir() else []
        schema = self.config.schema.with_choices(("LoadImage", "LoadImageMask"), "image", inputs)
        return dict(schema.raw)

    async def object_info(self, request: web.Request) -> web.Response:
        return json_answer(self._object_info())

    async def object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        if name not in self.config.schema:
            return json_answer({})
        return json_answer({name: self._object_info()[name]})

    async def i18n(self, request: web.Request) -> web.Response:
        return json_answer({})  # translations come from custom nodes' locales; the sim has none

    async def workflow_templates(self, request: web.Request) -> web.Response:
        return json_answer({})  # custom nodes' example workflows; the sim has none

    async def global_subgraphs(self, request: web.Request) -> web.Response:
        return json_answer({})  # custom nodes' subgraph blueprints; the sim has none

    async def global_subgraph(self, request: web.Request) -> web.Response:
        return json_answer(None)  # ComfyUI answers null for an id it does not know
