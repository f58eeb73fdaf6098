"""Issue 17's baselines (bench/sweep_ceiling.py) against simulated servers: the bare loop and the example loop."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from comfy_orchestrator.client import Client
from comfy_orchestrator.params import DEFAULT_CHECKPOINT

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ceiling() -> ModuleType:
    _load("gpu_measure")  # sweep_ceiling builds on it, as bench/ scripts import each other
    return _load("sweep_ceiling")


def _prompts(img2img_job: Any, count: int) -> list[dict[str, Any]]:
    prompts = []
    for seed in range(count):
        prompt = img2img_job.graph.to_api()
        prompt["6"]["inputs"]["seed"] = seed
        prompts.append(prompt)
    return prompts


def _upload(urls: list[str], img2img_job: Any) -> None:
    for url in urls:
        with Client(url) as client:
            for name, path in img2img_job.inputs.items():
                client.upload(path, name=name)


def test_bare_loop_runs_every_prompt_once_over_all_servers(ceiling: ModuleType, sim: Callable[..., list[Any]],
                                                          img2img_job: Any) -> None:
    servers = sim(2, checkpoints=(DEFAULT_CHECKPOINT,))
    urls = [server.url for server in servers]
    _upload(urls, img2img_job)
    wall_s, pairs = ceiling.bare_loop(urls, _prompts(img2img_job, 7), depth=2)
    assert wall_s > 0
    assert len(pairs) == len({prompt_id for _, prompt_id in pairs}) == 7
    assert set(Counter(url for url, _ in pairs)) == set(urls)  # the shared list fed both servers
    for url, prompt_id in pairs:
        with Client(url) as client:
            assert client.history_entry(prompt_id)  # each one ran where the loop says


def test_bare_loop_fails_loudly_when_a_prompt_fails(ceiling: ModuleType, sim: Callable[..., list[Any]],
                                                   img2img_job: Any) -> None:
    (server,) = sim(1, checkpoints=(DEFAULT_CHECKPOINT,))
    _upload([server.url], img2img_job)
    server.fail_next(node_id="6", node_type="KSampler", message="out of memory")
    with pytest.raises(SystemExit, match="out of memory"):
        ceiling.bare_loop([server.url], _prompts(img2img_job, 3), depth=1)


def test_example_loop_fetches_each_prompts_image(ceiling: ModuleType, sim: Callable[..., list[Any]],
                                                 img2img_job: Any) -> None:
    (server,) = sim(1, checkpoints=(DEFAULT_CHECKPOINT,))
    _upload([server.url], img2img_job)
    pairs = ceiling.example_loop(server.url, _prompts(img2img_job, 3))
    assert [url for url, _ in pairs] == [server.url] * 3
    assert len({prompt_id for _, prompt_id in pairs}) == 3


def test_the_command_rows_load_from_bytecode_the_bench_writes(ceiling: ModuleType, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # An environment that forbids bytecode (the GPU machine's does, over a venv that holds none) would
    # time the compiler at every launch, which an installed package never pays.
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    rows = ceiling.Ceiling(SimpleNamespace(work=tmp_path), [["http://127.0.0.1:1"]], ["comfy-orch"], depth=3)
    assert "PYTHONDONTWRITEBYTECODE" not in rows.environment
    assert rows.environment["PYTHONPYCACHEPREFIX"] == str(tmp_path / "bytecode")
    assert rows.environment["PATH"] == os.environ["PATH"]  # the rest of the environment is the caller's


def test_firsts_gives_each_servers_earliest_mark_from_the_launch(ceiling: ModuleType) -> None:
    marks = [("a", 10.5), ("b", 10.2), ("a", 10.3), ("c", 11.0), ("b", 10.9)]
    assert ceiling._firsts(marks, 10.0) == [0.2, 0.3, 1.0]
