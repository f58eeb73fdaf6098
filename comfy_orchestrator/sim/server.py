"""SimServer: a simulated ComfyUI on a port, served from a background thread (what `comfy-orch sim` runs)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from comfy_orchestrator.errors import ParameterError, ServerError
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.schema import Schema
from comfy_orchestrator.sim.app import build_app
from comfy_orchestrator.sim.costs import Costs, profile
from comfy_orchestrator.sim.faults import Faults
from comfy_orchestrator.sim.hub import SocketHub
from comfy_orchestrator.sim.queue import PromptQueue
from comfy_orchestrator.sim.registry import Counters
from comfy_orchestrator.sim.routes.base import SimConfig, SimState
from comfy_orchestrator.sim.worker import DEFAULT_PREVIEW_SIZE, PREVIEW_METHODS, Executor, Worker

# the templates' default first, then the random SD1.5 the GPU checks write
DEFAULT_CHECKPOINTS = (DEFAULT_CHECKPOINT, "random-sd15.safetensors", "random-sdxl.safetensors")
DEFAULT_VAES = ("random-vae.safetensors", "sdxl_vae.safetensors")
# What /view_metadata answers for the random checkpoints docker/random_checkpoint.py writes: the SAI
# model spec ComfyUI's CheckpointSave writes; any other checkpoint has only the note.
CHECKPOINT_METADATA: dict[str, dict[str, str]] = {
    "random-sd15.safetensors": {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1",
                                "modelspec.implementation": "sgm"},
    "random-sdxl.safetensors": {"modelspec.sai_model_spec": "1.0.0",
                                "modelspec.architecture": "stable-diffusion-xl-v1-base",
                                "modelspec.implementation": "sgm", "modelspec.predict_key": "epsilon"},
}
DEFAULT_LORAS = ("detail.safetensors", "style.safetensors")
DEFAULT_CONTROLNETS = ("control_v11p_sd15_canny.safetensors",)
TAESD_DECODERS = ("taesd_decoder.safetensors", "taesdxl_decoder.safetensors")  # so taesd previews are offered
T = TypeVar("T")


class SimServer:
    """A simulated ComfyUI 0.8 server on `host:port` (port 0: a free one), usable as a context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        profile_name: str = "instant",
        costs: Costs | None = None,
        checkpoints: Iterable[str] = DEFAULT_CHECKPOINTS,
        loras: Iterable[str] = DEFAULT_LORAS,
        controlnets: Iterable[str] = DEFAULT_CONTROLNETS,
        vaes: Iterable[str] = DEFAULT_VAES,
        checkpoint_metadata: Mapping[str, Mapping[str, str]] | None = None,
        root: Path | None = None,
        preview_method: str = "none",
        preview_size: int = DEFAULT_PREVIEW_SIZE,
        timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.costs = costs if costs is not None else profile(profile_name)
        self.checkpoints = tuple(checkpoints)
        self.loras = tuple(loras)
        self.controlnets = tuple(controlnets)
        self.vaes = tuple(vaes)
        metadata = CHECKPOINT_METADATA if checkpoint_metadata is None else checkpoint_metadata
        self.checkpoint_metadata = {name: dict(metadata.get(name, {})) for name in self.checkpoints}
        if not self.checkpoints:
            raise ParameterError("a simulated server needs at least one checkpoint name", parameter="checkpoints")
        if preview_method not in PREVIEW_METHODS:
            raise ParameterError(f"unknown preview method {preview_method!r}; choose one of "
                                 f"{', '.join(PREVIEW_METHODS)}", parameter="preview_method")
        if preview_size < 1:
            raise ParameterError(f"preview size must be at least 1 pixel, not {preview_size}",
                                 parameter="preview_size")
        self.preview_method = preview_method
        self.preview_size = preview_size
        self.timeout_s = timeout_s
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="comfy-sim-")) if root is None else Path(root)
        self.input_dir = self.root / "input"
        self.output_dir = self.root / "output"
        self.temp_dir = self.root / "temp"
        self.user_dir = self.root / "user"
        self.models_dir = self.root / "models"
        for folder in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.faults = Faults()
        self.counters = Counters()
        self.crashed = threading.Event()
        self.schema = (Schema.recorded().with_checkpoints(self.checkpoints)
                       .with_choices(("LoraLoader", "LoraLoaderModelOnly"), "lora_name", self.loras)
                       .with_choices(("ControlNetLoader", "DiffControlNetLoader"), "control_net_name",
                                     self.controlnets)
                       .with_choices(("VAELoader",), "vae_name", (*self.vaes, "pixel_space")))  # as ComfyUI lists
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._state: SimState | None = None
        self._worker: Worker | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._released: asyncio.Event | None = None

    # -- lifecycle
    def start(self) -> SimServer:
        """Start serving; returns once the port accepts connections."""
        if self._thread is not None:
            raise ServerError("already started", server=self.url)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="comfy-sim-loop", daemon=True)
        self._thread.start()
        if not ready.wait(self.timeout_s):
            raise ServerError("event loop did not start", server=f"http://{self.host}:{self.port}")
        self.faults.on_release(self._release_hanging)
        self.faults.on_refuse(self._set_refusing)
        self.faults.on_hold(self._hold_queue)
        self._call(self._open())
        return self

    def stop(self) -> None:
        """Stop serving and free the port; removes its folders if it made them."""
        if self._thread is None or self._loop is None:
            return
        self.faults.forget_listeners()
        if self._state is not None:
            self._call(self._close(crash=False))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout_s)
        self._thread = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def crash(self) -> None:
        """Die now, mid-prompt if one runs: sockets drop, queue, history and cache are lost, the port closes."""
        self._call(self._close(crash=True))

    def restart(self) -> None:
        """Come back on the same port with an empty queue and history (after `crash()` or at any time)."""
        if self._state is not None:
            self._call(self._close(crash=False))
        self.faults.accept_connections()
        self.crashed.clear()
        self._call(self._open())

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what tests read
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def history(self) -> dict[str, Any]:
        """A copy of the history, as GET /history gives it."""
        return self._live_state().queue.get_history()

    @property
    def queue_remaining(self) -> int:
        return self._live_state().queue.remaining()

    @property
    def loaded_checkpoint(self) -> str | None:
        return self._live_state().executor.loaded_checkpoint

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no prompt runs or waits; False if that did not happen within `timeout_s`."""
        return self._live_state().queue.idle.wait(timeout_s)

    def wait_for_client(self, client_id: str, timeout_s: float) -> bool:
        """Wait until a websocket with `client_id` is connected; False if none came within `timeout_s`."""
        return self._live_state().hub.wait_for(client_id, timeout_s)

    def add_input(self, name: str, data: bytes) -> Path:
        """Put a file into the input folder, as an upload would."""
        path = self.input_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def fail_next(self, *, message: str, node_id: str | None = None, node_type: str | None = None,
                  exception_type: str = "RuntimeError") -> None:
        """Make the next run of a matching node raise `message` (see Faults.fail_next)."""
        self.faults.fail_next(message=message, node_id=node_id, node_type=node_type, exception_type=exception_type)

    # -- internals
    def _live_state(self) -> SimState:
        if self._state is None:
            raise ServerError("the simulated server is not running", server=self.url)
        return self._state

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise ServerError("the simulated server is not running", server=self.url)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout_s)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        hub = SocketHub(loop, self.faults)
        self._released = asyncio.Event()

        def on_queue_change() -> None:
            hub.send("status", {"status": {"exec_info": {"queue_remaining": queue.remaining()}}}, None)

        queue = PromptQueue(on_queue_change)
        queue.hold(self.faults.queue_held)
        executor = Executor(schema=self.schema, outbox=hub, costs=self.costs, faults=self.faults,
                            counters=self.counters, input_dir=self.input_dir, output_dir=self.output_dir,
                            temp_dir=self.temp_dir, preview_method=self.preview_method,
                            preview_size=self.preview_size, crash=self._crash_from_worker)
        self._state = SimState(queue=queue, executor=executor, hub=hub)
        self._publisher = loop.create_task(hub.publish())
        config = SimConfig(schema=self.schema, faults=self.faults, input_dir=self.input_dir,
                           output_dir=self.output_dir, temp_dir=self.temp_dir, user_dir=self.user_dir,
                           models_dir=self.models_dir, checkpoints=self.checkpoints, vae_approx=TAESD_DECODERS,
                           checkpoint_metadata=self.checkpoint_metadata,
                           started_at=time.time())
        app = build_app(config, self._live_state, self._current_release)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()
        self._worker = Worker(queue, executor, hub)
        self._worker.start()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            server = self._site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _close(self, *, crash: bool) -> None:
        state, worker, runner = self._state, self._worker, self._runner
        if state is None:
            return
        self._state = None
        state.executor.crash()
        state.queue.stop()
        if crash:
            state.hub.abort_all()
        else:
            for socket in list(state.hub.sockets.values()):
                await socket.ws.close()
        if self._released is not None:
            self._released.set()
        if self._publisher is not None:
            self._publisher.cancel()
        if runner is not None:
            await runner.cleanup()
        self._runner = self._site = None
        if worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, worker.thread.join, self.timeout_s)
        if crash:
            self.crashed.set()

    def _crash_from_worker(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: loop.create_task(self._close(crash=True)))

    def _current_release(self) -> asyncio.Event:
        assert self._released is not None
        return self._released

    def _release_hanging(self) -> None:
        loop = self._loop
        if loop is None:
            return

        def release() -> None:
            if self._released is not None:
                self._released.set()
                self._released = asyncio.Event()

        loop.call_soon_threadsafe(release)

    def _hold_queue(self, held: bool) -> None:
        state = self._state
        if state is not None:
            state.queue.hold(held)

    def _set_refusing(self, refusing: bool) -> None:
        if self._state is None or self._loop is None:
            return
        self._call(self._stop_listening() if refusing else self._listen_again())

    async def _listen_again(self) -> None:
        if self._site is None and self._runner is not None:
            await self._listen()

    async def _stop_listening(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
