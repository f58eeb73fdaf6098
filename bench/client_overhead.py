"""Benchmark (not a test): the client's overhead per job against the simulated server with instant nodes.

Runs the same img2img prompt (a new seed each time, so nothing is cached) N times
through (1) a raw loop of requests + websocket-client that does only what the protocol
needs (POST /prompt, read the socket to `executing` null, GET /history/{id}) and
(2) Client.run, with and without downloading the output. Both run in this process
against one SimServer, so the ratio is the client's own cost per job.

    python bench/client_overhead.py --jobs 200
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import requests
import websocket
from PIL import Image

from comfy_orchestrator.client import Client
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.sim.server import SimServer

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"


def prompt(image: str, seed: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "seed": seed,
            "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.6}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "bench"}},
    }


def raw_loop(server: SimServer, image: str, seeds: range) -> list[float]:
    """The least a correct client must do per job."""
    client_id = uuid.uuid4().hex
    session = requests.Session()
    socket = websocket.create_connection(f"{server.ws_url}?clientId={client_id}", timeout=30, suppress_origin=True)
    socket.recv()  # greeting
    times = []
    try:
        for seed in seeds:
            start = time.perf_counter()
            prompt_id = str(uuid.uuid4())
            answer = session.post(f"{server.url}/prompt", timeout=30, json={
                "prompt": prompt(image, seed), "client_id": client_id, "prompt_id": prompt_id})
            answer.raise_for_status()
            while True:
                frame = socket.recv()
                if isinstance(frame, str):
                    message = json.loads(frame)
                    data = message.get("data") or {}
                    if message["type"] == "executing" and data.get("node") is None and \
                            data.get("prompt_id") == prompt_id:
                        break
            history = session.get(f"{server.url}/history/{prompt_id}", timeout=30).json()
            assert history[prompt_id]["outputs"]
            times.append(time.perf_counter() - start)
    finally:
        socket.close()
        session.close()
    return times


def client_loop(server: SimServer, job_for: Callable[[int], Job], seeds: range, out_dir: Path | None) -> list[float]:
    times = []
    with Client(server.url) as client:
        for seed in seeds:
            start = time.perf_counter()
            result = client.run(job_for(seed), out_dir=out_dir)
            assert result.outputs
            times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times) * 1000, "mean_ms": statistics.fmean(times) * 1000,
            "p90_ms": sorted(times)[int(len(times) * 0.9)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(picture, format="PNG")
    with SimServer(checkpoints=(CHECKPOINT,)) as server, TemporaryDirectory() as folder:
        source = Path(folder) / "input.png"
        source.write_bytes(picture.getvalue())
        with Client(server.url) as uploader:
            image = uploader.upload(source)

        def job_for(seed: int) -> Job:
            return Job(graph=Graph.from_api(prompt(image, seed)), inputs={image: source})

        runs = range(args.warmup, args.warmup + args.jobs)
        raw_loop(server, image, range(args.warmup))
        raw = raw_loop(server, image, runs)
        client_loop(server, job_for, range(args.warmup), None)
        plain = client_loop(server, job_for, runs, None)
        saved = client_loop(server, job_for, runs, Path(folder) / "out")
    rows = {"raw requests+websocket": summary(raw), "Client.run": summary(plain),
            "Client.run + download": summary(saved)}
    base = rows["raw requests+websocket"]["median_ms"]
    print(f"{args.jobs} jobs each, instant simulated nodes, one process")
    for name, row in rows.items():
        print(f"  {name:24s} median {row['median_ms']:7.2f} ms  mean {row['mean_ms']:7.2f} ms  "
              f"p90 {row['p90_ms']:7.2f} ms  x{row['median_ms'] / base:.2f}")


if __name__ == "__main__":
    main()
