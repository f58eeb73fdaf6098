"""Client: runs jobs on one ComfyUI server over REST (transport.py) and one websocket (listener.py).

Listen first, confirm after: the websocket is open (with our clientId, feature_flags
as its first frame) before the first POST /prompt, and a job is done only at the
closing `executing` with `node: null`, after which `/history/{prompt_id}` is read.
The socket is a hint: a silence watchdog and a reconnect with reconciliation fall
back to the prompt's own record, so no completion is missed and a prompt the server
lost (in neither queue nor history) raises JobLost.

Threads: one reader thread per client (listener.py) owns the websocket and hands each
prompt's events to that prompt's JobHandle (job_handle.py); a handle is driven by the
thread that waits on it or iterates its events, which is also where its callbacks run.
Client.run follows only a prompt's start and end unless a callback asks for its steps.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from PIL import Image

from comfy_orchestrator.errors import (
    ComfyError,
    MissingModel,
    ParameterError,
    PromptRejected,
    ServerError,
    UnsafeOutput,
)
from comfy_orchestrator.families import FamilyFinding, find_family
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.input_images import open_picture
from comfy_orchestrator.job_handle import EventCallback, JobHandle, ProgressCallback
from comfy_orchestrator.jobs import Job, JobResult, Output, name_by_content
from comfy_orchestrator.limits import Limits, Timeouts
from comfy_orchestrator.listener import Connect, Listener, WebSocketLike, connect_websocket
from comfy_orchestrator.protocol import (
    HISTORY,
    OBJECT_INFO,
    PromptAccepted,
    PromptRefused,
    QueueAnswer,
    SystemStats,
    UploadAnswer,
    check_answer,
)
from comfy_orchestrator.provenance import PngTextAppender, provenance_chunk, provenance_record
from comfy_orchestrator.retry import RetryPolicy, call_with_retries
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.transport import Answer, SharedAnswers, Transport
from comfy_orchestrator.validation import check_prompt, describe_rejection, node_problems

if TYPE_CHECKING:
    import requests

__all__ = ["DEFAULT_URL", "MODEL_INPUTS", "Client", "ImageSource", "open_image", "safe_filename"]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8188"
# Inputs that name a model file: a value the server lacks means another server may have it.
MODEL_INPUTS = frozenset({"ckpt_name", "lora_name", "vae_name", "control_net_name", "unet_name", "clip_name",
                          "clip_name1", "clip_name2", "model_name", "upscale_model_name", "style_model_name",
                          "gligen_name", "hypernetwork_name", "config_name"})
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')

ImageSource = Path | str | bytes | Image.Image


def safe_filename(name: str, *, fallback: str) -> str:
    """A file name that stays inside its folder: no separators, no control characters, no dot names."""
    base = unicodedata.normalize("NFC", name.replace("\\", "/")).rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip(" .")
    if _WINDOWS_RESERVED.match(base):
        base = "_" + base
    if not base:
        base = fallback
    stem, dot, suffix = base.rpartition(".")
    if len(base.encode()) > 200:
        suffix = suffix[:16] if dot else ""
        stem = (stem if dot else base).encode()[:180].decode("utf-8", "ignore")
        base = f"{stem}.{suffix}" if suffix else stem
    return base


class Client:
    """One ComfyUI server: submit jobs, track them, fetch outputs, upload inputs, control the queue."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts = Timeouts(),
        limits: Limits = Limits(),
        retry: RetryPolicy | None = None,
        keep_previews: bool = False,
        validate: bool = True,
        client_id: str | None = None,
        session: requests.Session | None = None,
        connect: Connect | None = None,
        ca_cert: str | Path | None = None,
        allow_plain_http: bool = False,
        shared: SharedAnswers | None = None,
    ) -> None:
        """`ca_cert` is a PEM file of the authority that signed the server's certificate (else
        $REQUESTS_CA_BUNDLE, else the usual ones); certificates are always verified, for HTTP and
        the websocket alike. Credentials are refused over plain http to a host that is not
        loopback unless `allow_plain_http`, which then warns each time a client is made. Clients handed
        one `shared` read an /object_info answer byte-identical to one another read before from it."""
        self.retry = retry or RetryPolicy()
        self._closed = threading.Event()
        self.transport = Transport(url, token=token, username=username, password=password, headers=headers,
                                   timeouts=timeouts, limits=limits, retry=self.retry, session=session,
                                   ca_cert=ca_cert, allow_plain_http=allow_plain_http,
                                   closed=self._closed)
        self.url = self.transport.url
        self.ws_url = self.url.replace("http", "ws", 1) + "/ws"
        self.trust = self.transport.trust
        self.credentials = self.transport.credentials
        self.timeouts = timeouts
        self.limits = limits
        self.keep_previews = keep_previews
        self.validate = validate
        self.client_id = client_id or uuid.uuid4().hex  # random: a clientId works like a bearer token
        self.connect = connect or self._connect_websocket
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        self._shared = shared
        self._system_stats: dict[str, Any] | None = None
        self._uploaded: set[str] = set()
        self.listener = Listener(server=self.url, url=f"{self.ws_url}?clientId={quote(self.client_id)}",
                                 headers=self.transport.headers, connect=self.connect, trust=self.trust,
                                 timeouts=timeouts, retry=self.retry, keep_previews=keep_previews,
                                 name=f"comfy-ws-{self.client_id[:8]}")

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the credentials

    @property
    def session(self) -> requests.Session:
        """requests' session for the calls it makes (most go straight to urllib3: transport.py)."""
        return self.transport.session

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the websocket and the HTTP connections (and the session, if we made it)."""
        self._closed.set()
        self.listener.stop()
        self.transport.close()

    def _connect_websocket(self, url: str, headers: Mapping[str, str], timeout_s: float) -> WebSocketLike:
        """The websocket, verified with the client's Trust (wss only: its context is made at first use)."""
        return connect_websocket(url, headers, timeout_s, tls=self.trust.context if url.startswith("wss:") else None,
                                 max_frame_bytes=self.limits.websocket_frame_bytes)

    # -- reads
    def queue(self) -> dict[str, Any]:
        """GET /queue: {"queue_running": [...], "queue_pending": [...]}."""
        answer = self.transport.json("GET", "/queue")
        check_answer(QueueAnswer, answer, route="GET /queue", server=self.url)
        return dict(answer)

    def history(self, max_items: int | None = None) -> dict[str, Any]:
        """GET /history (newest last), at most `max_items` entries."""
        query = f"?max_items={max_items}" if max_items is not None else ""
        answer = self.transport.json("GET", "/history" + query)
        answer = {} if answer is None else answer
        check_answer(HISTORY, answer, route="GET /history", server=self.url)
        return dict(answer)

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """GET /history/{prompt_id}: the one prompt's record, or None while it has none."""
        answer = self.transport.json("GET", f"/history/{quote(prompt_id, safe='')}")
        answer = {} if answer is None else answer
        check_answer(HISTORY, answer, route="GET /history/{id}", server=self.url)
        entry = answer.get(prompt_id)
        return dict(entry) if isinstance(entry, Mapping) else None

    def system_stats(self) -> dict[str, Any]:
        answer = self.transport.json("GET", "/system_stats")
        check_answer(SystemStats, answer, route="GET /system_stats", server=self.url)
        with self._lock:
            self._system_stats = dict(answer)
        return dict(answer)

    def comfyui_version(self) -> str | None:
        """The server's ComfyUI version, from /system_stats (read once)."""
        stats = self._system_stats if self._system_stats is not None else self.system_stats()
        version = (stats.get("system") or {}).get("comfyui_version")
        return str(version) if version is not None else None

    def object_info(self) -> dict[str, Any]:
        """GET /object_info, checked: every node class the server has."""
        body = self.transport.json_bytes("GET", "/object_info")
        if self._shared is None:
            return self._object_info(body)
        return dict(self._shared.read("GET /object_info", body, self._object_info))

    def _object_info(self, body: bytes) -> dict[str, Any]:
        answer = self.transport.loads(body, "GET /object_info")
        check_answer(OBJECT_INFO, answer, route="GET /object_info", server=self.url)
        return dict(answer)

    def model_metadata(self, folder: str, filename: str) -> dict[str, str] | None:
        """GET /view_metadata/{folder}: a safetensors model file's metadata; None when it has none.

        ComfyUI answers 404 both for a file it lacks and for a file without metadata.
        """
        path = f"/view_metadata/{quote(folder, safe='')}?filename={quote(filename, safe='')}"
        with self.transport.call("GET", path) as response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise ServerError(f"GET /view_metadata/{folder} answered {response.status_code}", server=self.url,
                                  status=response.status_code)
            answer = self.transport.parse_json(response, f"GET /view_metadata/{folder}")
        metadata = check_answer(dict[str, Any], answer, route=f"GET /view_metadata/{folder}", server=self.url)
        return {str(key): str(value) for key, value in metadata.items()}

    def model_family(self, checkpoint: str) -> FamilyFinding:
        """A checkpoint's model family: from its metadata on this server, else its name (a guess, said so)."""
        return find_family(checkpoint, self.model_metadata("checkpoints", checkpoint))

    def schema(self, *, refresh: bool = False) -> Schema:
        """The server's node schema from /object_info, read once per client unless refreshed."""
        with self._lock:
            if self._schema is not None and not refresh:
                return self._schema
        schema = Schema(self.object_info(), source=self.url)
        with self._lock:
            self._schema = schema
        return schema

    def locate(self, prompt_id: str) -> tuple[str, dict[str, Any] | None]:
        """Where the server has the prompt: ("done", entry), ("running"|"queued", None) or ("unknown", None)."""
        entry = self.history_entry(prompt_id)
        if entry is not None:
            return "done", entry
        state = self._queue_state(prompt_id)
        if state is not None:
            return state, None
        entry = self.history_entry(prompt_id)  # it may have finished between the two reads
        return ("done", entry) if entry is not None else ("unknown", None)

    def _queue_state(self, prompt_id: str) -> str | None:
        """Where GET /queue holds the prompt: "running", "queued", or None; the answer checked once."""
        answer = self.transport.json("GET", "/queue")
        return check_answer(QueueAnswer, answer, route="GET /queue", server=self.url).state_of(prompt_id)

    # -- control
    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt (only if it is `prompt_id`, when given)."""
        self.transport.send("POST", "/interrupt", json_body={"prompt_id": prompt_id} if prompt_id else {})

    def delete(self, prompt_ids: Sequence[str]) -> None:
        """Take waiting prompts off the queue (a running one is not affected)."""
        self.transport.send("POST", "/queue", json_body={"delete": list(prompt_ids)})

    def clear_queue(self) -> None:
        """Empty the waiting list; the running prompt goes on."""
        self.transport.send("POST", "/queue", json_body={"clear": True})

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Unload models and drop the node cache."""
        self.transport.send("POST", "/free", json_body={"unload_models": unload_models, "free_memory": free_memory})

    # -- inputs
    def upload(self, source: ImageSource, *, name: str | None = None, subfolder: str = "") -> str:
        """Upload an image to the input folder under a content name; once per server. Returns the name."""
        data, stem, suffix = _image_bytes(source)
        name = name or name_by_content(data, stem, suffix)
        key = f"{subfolder}/{name}"
        with self._lock:
            if key in self._uploaded:
                return name
        if not self._has_input(name, subfolder):
            files = {"image": (name, data, "application/octet-stream")}
            answer = self.transport.json("POST", "/upload/image", files=files,
                                         form={"type": "input", "subfolder": subfolder, "overwrite": "true"})
            got = check_answer(UploadAnswer, answer, route="POST /upload/image", server=self.url).name
            if got != name:
                raise ServerError(f"upload of {name!r} was stored as {got!r}", server=self.url)
        with self._lock:
            self._uploaded.add(key)
        return name

    def upload_mask(self, source: ImageSource, *, original: str, name: str | None = None) -> str:
        """Upload a mask through /upload/mask: its alpha is applied to the uploaded image `original`."""
        data, stem, suffix = _image_bytes(source)
        name = name or name_by_content(data, stem, suffix)
        files = {"image": (name, data, "application/octet-stream")}
        ref = json.dumps({"filename": original, "subfolder": "", "type": "input"})
        answer = self.transport.json("POST", "/upload/mask", files=files,
                                     form={"type": "input", "overwrite": "true", "original_ref": ref})
        return str((answer or {}).get("name") or name)

    def _has_input(self, name: str, subfolder: str) -> bool:
        query = f"/view?filename={quote(name)}&type=input&subfolder={quote(subfolder)}"
        return self.transport.send("HEAD", query) == 200

    def _input_exists(self, name: str) -> bool:
        with self._lock:
            if f"/{name}" in self._uploaded:
                return True
        schema = self.schema()
        return name in schema.choices("LoadImage", "image") if "LoadImage" in schema else False

    # -- submitting
    def check(self, job: Job) -> None:
        """Validate the graph against this server's object_info; raise PromptRejected as it would."""
        self._check(job, job.graph.to_api())

    def _check(self, job: Job, prompt: Mapping[str, Any]) -> None:
        verdict = check_prompt(prompt, self.schema(), input_exists=self._input_exists)
        if verdict.error is None and not verdict.node_errors:
            return
        raise self._rejection(job, verdict.error or {"type": "prompt_outputs_failed_validation",
                                                     "message": "a branch of the prompt failed validation",
                                                     "details": ""}, verdict.node_errors, checked_locally=True)

    def _rejection(self, job: Job, error: Mapping[str, Any], node_errors: Mapping[str, Any], *,
                   checked_locally: bool) -> PromptRejected:
        parameters = {f"{p.node_id}.{p.input_name}": parameter for p in node_problems(node_errors)
                      if p.input_name and (parameter := job.parameter_for(p.node_id, p.input_name))}
        missing_model = any(p.error.get("type") == "value_not_in_list" and p.input_name in MODEL_INPUTS
                            for p in node_problems(node_errors))
        lines = describe_rejection(error, node_errors, job.parameter_for) or ["rejected"]
        prefix = "prompt rejected by local check against the server's object_info" if checked_locally \
            else "prompt rejected"
        kind = MissingModel if missing_model else PromptRejected
        if missing_model:
            prefix += " (the server lacks a model; another server may have it)"
        return kind(f"{prefix}: " + "; ".join(lines), server=self.url, error=error, node_errors=node_errors,
                    parameters=parameters)

    def submit(
        self,
        job: Job | Graph | Mapping[str, Any],
        *,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        prompt_id: str | None = None,
        on_event: EventCallback | None = None,
        on_progress: ProgressCallback | None = None,
        every_event: bool = True,
        steps: bool = True,
    ) -> JobHandle:
        """Upload the job's inputs, check it, queue it under a prompt id we choose; return its handle.

        `every_event=False` is for a handle that will only be waited on: its progress_state
        messages (half of a prompt's frames, read by nothing of ours) are dropped unread,
        unless `on_event` asks for every event. `steps=False` (with `every_event=False`) also
        drops its steps (`progress`, each node's `executing` and `executed`) unless a callback
        is given: for a handle whose progress nobody reads.
        """
        if not isinstance(job, Job):
            job = Job(graph=job if isinstance(job, Graph) else Graph.from_api(job))
        for name, path in job.inputs.items():
            self.upload(path, name=name)
        prompt = job.graph.to_api()  # once: the check and the body share it
        if self.validate:
            self._check(job, prompt)
        self.listener.start()  # listen first: a cached prompt ends at once
        prompt_id = prompt_id or str(uuid.uuid4())
        wants_steps = steps or on_event is not None or on_progress is not None
        events = self.listener.subscribe(prompt_id, every_event=every_event or on_event is not None, steps=wants_steps)
        handle = JobHandle(self, self.listener, job, prompt_id, events, timeouts=self.timeouts,
                           on_event=on_event, on_progress=on_progress, prompt=prompt)
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id,
                                "prompt_id": prompt_id, "extra_data": dict(extra_data or {})}
        if front:
            body["front"] = True
        try:
            answer = self._post_prompt(job, body)
        except BaseException:
            self.listener.unsubscribe(prompt_id)
            raise
        handle.number = answer.get("number")
        handle.node_errors = dict(answer.get("node_errors") or {})
        if handle.node_errors:
            log.warning("%s: prompt %s queued, but nodes %s will not run: %s", self.url, prompt_id,
                        ", ".join(handle.node_errors), self._rejection(job, {}, handle.node_errors,
                                                                         checked_locally=False))
        return handle

    def _post_prompt(self, job: Job, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /prompt; a retry after a lost answer first asks whether the prompt id got in."""
        prompt_id = str(body["prompt_id"])

        def post(attempt: int) -> Answer | None:
            if attempt > 1 and self._got_in(prompt_id):
                return None
            return self.transport.once("POST", "/prompt", json_body=body)

        response = call_with_retries(post, self.retry, rest=self._closed.wait, on_retry=self.transport.log_retry)
        if response is None:
            log.info("%s: prompt %s was accepted before the answer was lost", self.url, prompt_id)
            return {"prompt_id": prompt_id, "number": None, "node_errors": {}}
        with response:
            if response.status_code not in (200, 400):
                raise ServerError(f"POST /prompt answered {response.status_code}", server=self.url,
                                  status=response.status_code)
            answer = self.transport.parse_json(response, f"POST /prompt ({response.status_code})")
        if response.status_code == 200:
            return check_answer(PromptAccepted, answer, route="POST /prompt", server=self.url).model_dump()
        refusal = check_answer(PromptRefused, answer, route="POST /prompt (400)", server=self.url)
        error = refusal.error if isinstance(refusal.error, dict) else {"message": refusal.error}
        raise self._rejection(job, error, refusal.node_errors, checked_locally=False)

    def _got_in(self, prompt_id: str) -> bool:
        """Whether a prompt whose POST answer was lost is on the server; False when that cannot be told."""
        try:
            state, _ = self.locate(prompt_id)
        except ComfyError as exc:
            log.info("%s: cannot tell whether prompt %s got in: %s", self.url, prompt_id, exc)
            return False
        return state != "unknown"

    def run(self, job: Job | Graph | Mapping[str, Any], *, out_dir: Path | str | None = None,
            timeout_s: float | None = None, front: bool = False, extra_data: Mapping[str, Any] | None = None,
            on_event: EventCallback | None = None, on_progress: ProgressCallback | None = None) -> JobResult:
        """Run a job to completion; save its outputs under `out_dir` if given."""
        handle = self.submit(job, front=front, extra_data=extra_data, on_event=on_event, on_progress=on_progress,
                             every_event=False, steps=False)
        result = handle.wait(timeout_s)
        if out_dir is not None:
            result = self.save_outputs(result, out_dir)
        return result

    # -- outputs
    def _view(self, output: Output) -> Answer:
        query = (f"/view?filename={quote(output.filename)}&subfolder={quote(output.subfolder)}"
                 f"&type={quote(output.type)}")
        response = self.transport.call("GET", query)
        if response.status_code in (400, 403) and ("/" in output.filename or "\\" in output.filename
                                                   or ".." in output.filename or ".." in output.subfolder):
            response.close()
            raise UnsafeOutput(output.filename)
        if response.status_code != 200:
            response.close()
            raise ServerError(f"GET /view of {output.filename!r} answered {response.status_code}",
                              server=self.url, status=response.status_code)
        return response

    def fetch(self, output: Output) -> bytes:
        """One output's bytes, in memory, as the server has it (within `limits.download_bytes`)."""
        with self._view(output) as response:
            return b"".join(self._download(response, output))

    def fetch_image(self, output: Output) -> Image.Image:
        """One output as a loaded PIL image (within `limits.image_pixels`)."""
        image = open_image(io.BytesIO(self.fetch(output)), limits=self.limits, what=output.filename, server=self.url)
        image.load()
        return image

    def save_outputs(self, result: JobResult, out_dir: Path | str, *, provenance: bool = True,
                     timeout_s: float | None = None) -> JobResult:
        """Stream every output to `out_dir` under a safe, new name; PNGs get our provenance added.

        Each file is written under a temporary name and appears under its own only when whole;
        each download must end within `timeout_s` (default `timeouts.download_s`).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        chunk = b""
        if provenance:
            chunk = provenance_chunk(provenance_record(result.job, prompt_id=result.prompt_id, server=self.url,
                                                       comfyui_version=self.comfyui_version()))
        deadline = time.monotonic() + (self.timeouts.download_s if timeout_s is None else timeout_s)
        files = [self._save(output, out_dir, chunk, index, deadline) for index, output in enumerate(result.outputs)]
        return JobResult(job=result.job, prompt_id=result.prompt_id, server=result.server, outputs=result.outputs,
                         files=result.files + tuple(files), timings=result.timings, cached_nodes=result.cached_nodes)

    def _download(self, response: Answer, output: Output, deadline: float | None = None) -> Iterator[bytes]:
        limit_s = self.timeouts.download_s
        return self.transport.body(response, f"GET /view of {output.filename!r}", limit=self.limits.download_bytes,
                                   deadline=deadline if deadline is not None else time.monotonic() + limit_s,
                                   limit_name="download_bytes")

    def _save(self, output: Output, out_dir: Path, chunk: bytes, index: int, deadline: float) -> Path:
        name = safe_filename(output.filename, fallback=f"output-{output.node_id}-{index}")
        with self._view(output) as response:
            part, handle = _create_new(out_dir, f".{name}.part")
            appender = PngTextAppender(chunk)
            try:
                with handle:
                    for piece in self._download(response, output, deadline):
                        handle.write(appender.feed(piece))
                    handle.write(appender.finish())
                return _claim(part, out_dir, name)
            finally:
                part.unlink(missing_ok=True)


def open_image(source: Any, *, limits: Limits, what: str, server: str | None = None) -> Image.Image:
    """Open an image without decoding it; refuse one that is unreadable or past `limits.image_pixels`.

    The refusal is a ServerError when `server` sent the image, else a ParameterError (a user's file).
    """
    try:
        return open_picture(source, limit=limits.image_pixels, what=what)
    except ValueError as exc:
        refusal = ServerError(str(exc), server=server) if server else ParameterError(str(exc), parameter="image")
        raise refusal from exc


def _claim(part: Path, folder: Path, name: str) -> Path:
    """Give a whole download its own name (name, name (1), ...), never replacing a file; the part stays."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    for number in range(10_000):
        target = folder.resolve() / (name if number == 0 else f"{stem} ({number}){dot}{suffix}")
        try:
            os.link(part, target)
        except FileExistsError:
            continue
        return target
    raise UnsafeOutput(name)


def _create_new(folder: Path, name: str) -> tuple[Path, io.BufferedWriter]:
    """Create a file that did not exist (never follows a link, never overwrites): name, name (1), ..."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    root = folder.resolve()
    for number in range(10_000):
        candidate = name if number == 0 else f"{stem} ({number}){dot}{suffix}"
        path = root / candidate
        if path.parent != root:
            raise UnsafeOutput(name)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                                 | getattr(os, "O_BINARY", 0), 0o644)
        except FileExistsError:
            continue
        return path, os.fdopen(descriptor, "wb")
    raise UnsafeOutput(name)


def _image_bytes(source: ImageSource) -> tuple[bytes, str, str]:
    """An image's bytes, a stem and a suffix to name it by."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return buffer.getvalue(), "image", ".png"
    if isinstance(source, bytes):
        return source, "image", ".png"
    path = Path(source)
    return path.read_bytes(), path.stem, path.suffix.lower() or ".png"


