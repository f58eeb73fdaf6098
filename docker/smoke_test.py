#!/usr/bin/env python3
"""Run img2img prompts on real ComfyUI servers and print how long they took.

Standard library only, so it runs on a fresh GPU box before anything else is
installed. For each server: wait for /system_stats, upload a generated
512x512 image, submit the reference img2img prompt (checkpoint, two text
encodes, VAE encode, KSampler 20 steps denoise 0.6, VAE decode, SaveImage)
`--count` times with different seeds, wait for each in /history, and fetch
the first image through /view. Prints one JSON line per prompt and a summary.

    python3 docker/smoke_test.py --url http://127.0.0.1:8188 --count 3
    python3 docker/smoke_test.py --url https://box-1:8443/gpu0/8188 --token "$TOKEN" --ca-cert box-1.pem
"""

from __future__ import annotations

import argparse
import json
import random
import ssl
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from typing import Any

CHECKPOINT = "random-sd15.safetensors"


def make_png(size: int, seed: int) -> bytes:
    """A size x size RGB PNG of smooth colour gradients with a little noise."""
    rng = random.Random(seed)
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter type: none
        for x in range(size):
            row += bytes(((x * 255 // size + rng.randrange(16)) % 256,
                          (y * 255 // size + rng.randrange(16)) % 256,
                          ((x + y) * 127 // size) % 256))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b""))


POSITIVE = "a photograph of a lighthouse at dusk, detailed"
NEGATIVE = "blurry, low quality"


def img2img_prompt(image: str, *, seed: int, steps: int = 20, checkpoint: str = CHECKPOINT, prefix: str = "smoke",
                   positive: str = POSITIVE, negative: str = NEGATIVE, sampler: str = "euler") -> dict[str, Any]:
    """The reference img2img prompt (a) in API format, node ids as recorded.

    The one copy of this graph: the tests and the benchmarks load it from here, since
    this file must stand alone on a GPU box.
    """
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0],
                         "seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": sampler,
                         "scheduler": "normal", "denoise": 0.6}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


class Server:
    """One ComfyUI server over HTTP or HTTPS (verified against `ca_cert`, or the system's authorities)."""

    def __init__(self, url: str, *, token: str | None, timeout_s: float, ca_cert: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.tls = ssl.create_default_context(cafile=ca_cert)

    def request(self, path: str, *, body: bytes | None = None, content_type: str | None = None) -> bytes:
        """GET (or POST `body`) `path`; return the response body."""
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.tls) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{self.url}{path}: HTTP {exc.code}: {exc.read()[:2000]!r}") from exc

    def json(self, path: str, payload: Any = None) -> Any:
        """GET or POST JSON."""
        body = None if payload is None else json.dumps(payload).encode()
        return json.loads(self.request(path, body=body, content_type="application/json" if body else None) or b"null")

    def wait_ready(self, deadline: float) -> float:
        """Wait until /system_stats answers; return the seconds waited."""
        started = time.monotonic()
        pause = threading.Event()
        while True:
            try:
                self.json("/system_stats")
                return time.monotonic() - started
            except (OSError, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.url} not ready: {exc}") from exc
            pause.wait(0.5)

    def upload(self, name: str, data: bytes) -> str:
        """Upload an input image; return the name the server stored it under."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        answer = json.loads(self.request("/upload/image", body=body,
                                         content_type=f"multipart/form-data; boundary={boundary}"))
        return str(answer["name"])

    def run(self, prompt: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Submit `prompt`, wait for its history entry, return what happened."""
        prompt_id = str(uuid.uuid4())
        submitted = time.monotonic()
        self.json("/prompt", {"prompt": prompt, "prompt_id": prompt_id, "client_id": "smoke-test"})
        pause = threading.Event()
        while True:
            entry = self.json(f"/history/{prompt_id}").get(prompt_id)
            if entry:  # the server writes the entry once the prompt has finished
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: prompt {prompt_id} not finished in time")
            pause.wait(0.05)
        wall_s = time.monotonic() - submitted
        status = entry["status"]
        events = {name: data for name, data in status.get("messages", [])}
        if status["status_str"] != "success":
            raise RuntimeError(f"{self.url}: prompt failed: {json.dumps(events.get('execution_error', status))[:3000]}")
        started_ms = events["execution_start"]["timestamp"]
        finished_ms = events["execution_success"]["timestamp"]
        images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
        return {"prompt_id": prompt_id, "wall_s": round(wall_s, 3),
                "server_s": round((finished_ms - started_ms) / 1000, 3),
                "cached_nodes": events.get("execution_cached", {}).get("nodes", []), "images": images}

    def view(self, image: dict[str, str]) -> bytes:
        """Download one output image."""
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                        "type": image["type"]})
        return self.request(f"/view?{query}")


def smoke_test(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Run the prompts on one server; return the timings."""
    deadline = time.monotonic() + args.timeout_s
    ready_s = server.wait_ready(deadline)
    print(json.dumps({"server": server.url, "ready_after_s": round(ready_s, 2)}), flush=True)
    started = time.monotonic()
    name = server.upload(f"smoke_input_{args.size}.png", make_png(args.size, seed=args.size))
    upload_s = time.monotonic() - started
    runs = []
    for index in range(args.count):
        prompt = img2img_prompt(name, seed=1001 + index, steps=args.steps, checkpoint=args.checkpoint, prefix="smoke")
        result = server.run(prompt, deadline)
        runs.append(result)
        print(json.dumps({"server": server.url, "prompt": index, **result}), flush=True)
    png = server.view(runs[0]["images"][0])
    if not png.startswith(b"\x89PNG"):
        raise RuntimeError(f"{server.url}: /view did not return a PNG")
    return {"server": server.url, "ready_s": round(ready_s, 2), "upload_s": round(upload_s, 3),
            "first_wall_s": runs[0]["wall_s"], "first_server_s": runs[0]["server_s"],
            "warm_server_s": sorted(r["server_s"] for r in runs[1:])[len(runs[1:]) // 2] if len(runs) > 1 else None,
            "prompts": len(runs), "png_bytes": len(png)}


def main(argv: list[str] | None = None) -> int:
    """Run the smoke test on every --url; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", required=True, help="ComfyUI base URL (repeat for several)")
    parser.add_argument("--token", help="bearer token, for servers behind the farm's proxy")
    parser.add_argument("--ca-cert", metavar="FILE", help="trust this certificate authority (PEM) for https URLs")
    parser.add_argument("--count", type=int, default=3, help="prompts per server (default 3)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512, help="input image size in pixels")
    parser.add_argument("--checkpoint", default=CHECKPOINT)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="deadline for each server, start included")
    parser.add_argument("--parallel", action="store_true", help="drive all servers at once (a thread each)")
    args = parser.parse_args(argv)
    failures: list[str] = []

    def test_one(url: str) -> None:
        server = Server(url, token=args.token, timeout_s=60.0, ca_cert=args.ca_cert)
        try:
            print(json.dumps({"summary": smoke_test(server, args)}), flush=True)
        except (OSError, RuntimeError, KeyError) as exc:
            print(json.dumps({"server": url, "error": str(exc)}), flush=True)
            failures.append(url)

    started = time.monotonic()
    if args.parallel:
        threads = [threading.Thread(target=test_one, args=(url,)) for url in args.url]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for url in args.url:
            test_one(url)
    print(json.dumps({"servers": len(args.url), "failed": len(failures), "parallel": args.parallel,
                      "wall_s": round(time.monotonic() - started, 2)}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
