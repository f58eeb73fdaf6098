"""A simulated ComfyUI 0.8 server: the real protocol on loopback, numpy pictures, and faults on demand.

Needs the `[sim]` extra (aiohttp, numpy). It speaks HTTP and the websocket exactly as the
recordings in shared/comfyui-reference show (routes also under /api, status codes, JSON
bodies, message order, binary preview frames type 1 and 4), validates prompts with
`comfy_orchestrator.validation.check_prompt`, runs one prompt at a time with ComfyUI's node
order and classic cache, and paints pictures that change with image, denoise, seed and cfg.
Every node class of the recorded schema runs: the common ones faithfully, any other one with
small deterministic stand-ins of its declared outputs (sim.generic).

Start one::

    from comfy_orchestrator.sim import SimServer

    with SimServer() as server:              # a free loopback port, "instant" costs
        server.url                           # "http://127.0.0.1:PORT"; server.ws_url for /ws
        server.add_input("a.png", png_bytes)  # or POST /upload/image
        ...                                  # drive it over HTTP + websocket
        server.wait_idle(timeout_s=5)        # queue empty, worker idle
        server.wait_for_client("id", 5)      # a websocket with that clientId is connected
        server.history                       # GET /history, as a dict
        server.counters.node_executions      # {"KSampler": 3, ...}; also checkpoint_loads,
                                             # sampler_steps, images_saved, prompts_started/finished

Options: `SimServer(port=8188, profile_name="realistic", costs=Costs(...), checkpoints=[...],
root=folder, preview_method="latent2rgb", preview_size=512)`: previews are off by default, as
ComfyUI's `--preview-method none`. Folders: `server.input_dir`, `output_dir`, `temp_dir`, `user_dir`.
Counters survive `crash()`/`restart()`; the queue, history and cache do not.

Faults (``server.faults``; every switch is thread-safe, ``faults.clear()`` undoes all)::

    faults.close_websocket_after(n)      # each socket is closed after n messages
    faults.silence_websocket_after(n)    # each socket stays open but goes quiet after n messages
    faults.fail_route("/prompt", status=500, times=None)  # ComfyUI's own 500 text; /api/... too
    faults.hang_route("/history")        # never answers until clear() or stop
    faults.refuse_connections()          # the port stops listening; accept_connections() undoes
    faults.oom_above(pixels)             # sampler/VAE: torch.OutOfMemoryError execution_error
    faults.slow_downloads(bytes_per_s)   # /view trickles
    faults.hostile_filenames("../../x.png")  # saved images are reported under this name
    faults.drop_prompts(1)               # POST answers 200, then the prompt vanishes silently
    faults.hold_queue()                  # prompts queue up but none starts until release_queue()
    faults.fail_next(message=..., node_type="KSampler")  # one execution_error (server.fail_next too)
    faults.crash_on("KSampler", step=3)  # the server crashes there (server.crashed is set)
    server.crash(); server.restart()     # die now; come back on the same port, empty

The pytest fixture `sim` (tests/conftest.py) starts N servers: ``a, b = sim(2)``.
"""

from comfy_orchestrator.sim.costs import PROFILES, Costs, profile
from comfy_orchestrator.sim.faults import Faults
from comfy_orchestrator.sim.registry import NODES, Counters
from comfy_orchestrator.sim.server import SimServer

__all__ = ["NODES", "PROFILES", "Costs", "Counters", "Faults", "SimServer", "profile"]
