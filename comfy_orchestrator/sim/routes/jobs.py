"""Prompts and their records: POST /prompt, the queue, history, interrupt, free, and /api/jobs."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from comfy_orchestrator.sim.queue import PromptQueue, QueueItem
from comfy_orchestrator.sim.routes.base import RouteGroup, annotated, folder_of, json_answer
from comfy_orchestrator.sim.worker import coerce_prompt
from comfy_orchestrator.validation import check_prompt

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
JOB_STATUSES = ("pending", "in_progress", "completed", "failed")


class JobRoutes(RouteGroup):
    """Routes that queue, stop, forget and report prompts."""

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/history", self.history), web.get("/history/{prompt_id}", self.history_entry),
                web.get("/queue", self.queue), web.post("/prompt", self.post_prompt),
                web.post("/queue", self.post_queue), web.post("/interrupt", self.interrupt),
                web.post("/free", self.free), web.post("/history", self.post_history),
                web.get("/api/jobs", self.jobs), web.get("/api/jobs/{job_id}", self.job)]

    async def history(self, request: web.Request) -> web.Response:
        max_items = request.rel_url.query.get("max_items")
        offset = request.rel_url.query.get("offset")
        return json_answer(self.state().queue.get_history(max_items=None if max_items is None else int(max_items),
                                                          offset=-1 if offset is None else int(offset)))

    async def history_entry(self, request: web.Request) -> web.Response:
        return json_answer(self.state().queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def queue(self, request: web.Request) -> web.Response:
        running, pending = self.state().queue.snapshot()
        return json_answer({"queue_running": [list(item) for item in running],
                            "queue_pending": [list(item) for item in pending]})

    def _input_exists(self, name: str) -> bool:
        bare, kind = annotated(name)
        folder = folder_of(self.config, kind)
        return folder is not None and (folder / bare).is_file()

    async def post_prompt(self, request: web.Request) -> web.Response:
        current = self.state()
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
            return json_answer({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        check = check_prompt(prompt, self.config.schema, input_exists=self._input_exists,
                             partial_execution_list=body.get("partial_execution_targets"))
        if check.error is not None:
            return json_answer({"error": check.error, "node_errors": check.node_errors}, status=400)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        extra_data["create_time"] = int(time.time() * 1000)
        item: QueueItem = (number, prompt_id, coerce_prompt(prompt, self.config.schema), extra_data,
                           list(check.outputs))
        if not self.config.faults.take_prompt_drop():
            current.queue.put(item)
        return json_answer({"prompt_id": prompt_id, "number": number, "node_errors": check.node_errors})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        queue = self.state().queue
        if body.get("clear"):
            queue.wipe()
        for prompt_id in body.get("delete", []):
            queue.delete(prompt_id)
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        current = self.state()
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id:
            running, _ = current.queue.snapshot()
            if any(item[1] == prompt_id for item in running):
                current.executor.interrupt()
        else:
            current.executor.interrupt()
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        body = await request.json()
        queue = self.state().queue
        if body.get("unload_models", False):
            queue.set_flag("unload_models")
        if body.get("free_memory", False):
            queue.set_flag("free_memory")
        return web.Response(status=200)

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        queue = self.state().queue
        with queue.mutex:
            if body.get("clear"):
                queue.history.clear()
            for prompt_id in body.get("delete", []):
                queue.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def jobs(self, request: web.Request) -> web.Response:
        return _jobs(self.state().queue, request.rel_url.query)

    async def job(self, request: web.Request) -> web.Response:
        queue = self.state().queue
        job_id = request.match_info["job_id"]
        history = queue.get_history(prompt_id=job_id)
        if job_id in history:
            return json_answer(_history_job(job_id, history[job_id], include_outputs=True))
        running, pending = queue.snapshot()
        for items, status in ((running, "in_progress"), (pending, "pending")):
            for item in items:
                if item[1] == job_id:
                    return json_answer(_queue_job(item, status))
        return json_answer({"error": "Job not found"}, status=404)


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


def _jobs(queue: PromptQueue, query: Mapping[str, str]) -> web.Response:
    statuses = list(JOB_STATUSES)
    if query.get("status"):
        statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
        invalid = [s for s in statuses if s not in JOB_STATUSES]
        if invalid:
            return json_answer({"error": f"Invalid status value(s): {', '.join(invalid)}. "
                                   f"Valid values: {', '.join(JOB_STATUSES)}"}, status=400)
    sort_by = query.get("sort_by", "created_at").lower()
    sort_order = query.get("sort_order", "desc").lower()
    if sort_by not in ("created_at", "execution_duration"):
        return json_answer({"error": "sort_by must be 'created_at' or 'execution_duration'"}, status=400)
    if sort_order not in ("asc", "desc"):
        return json_answer({"error": "sort_order must be 'asc' or 'desc'"}, status=400)
    limit = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            return json_answer({"error": "limit must be an integer"}, status=400)
        if limit <= 0:
            return json_answer({"error": "limit must be a positive integer"}, status=400)
    offset = 0
    if "offset" in query:
        try:
            offset = max(0, int(query["offset"]))
        except ValueError:
            return json_answer({"error": "offset must be an integer"}, status=400)
    running, pending = queue.snapshot()
    jobs: list[dict[str, Any]] = []
    if "in_progress" in statuses:
        jobs += [_queue_job(item, "in_progress") for item in running]
    if "pending" in statuses:
        jobs += [_queue_job(item, "pending") for item in pending]
    for prompt_id, entry in queue.get_history().items():
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
    return json_answer({"jobs": jobs, "pagination": {"offset": offset, "limit": limit, "total": total,
                                               "has_more": offset + len(jobs) < total}})
