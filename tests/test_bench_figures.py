"""The GPU suite's arithmetic (bench/gpu_measure.py): where servers x wall goes, and the steady rate."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

SUITE = Path(__file__).resolve().parents[1] / "bench" / "gpu_measure.py"


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_measure", SUITE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_measure"] = module
    spec.loader.exec_module(module)
    return module


class _NoGpu:
    def busy(self, start_s: float, end_s: float, gpu: int = 0) -> dict[str, float | None]:
        return {"gpu_busy_pct": None, "gpu_watts": None}


def _records(suite: ModuleType, t0: float, plan: dict[str, list[tuple[float, float]]]) -> list[object]:
    return [suite.PromptRecord(server=server, start_s=t0 + start, end_s=t0 + end, nodes={"3": "KSampler"},
                               cached=frozenset())
            for server, runs in plan.items() for start, end in runs]


def test_efficiency_and_the_losses_account_for_all_of_servers_x_wall(suite: ModuleType) -> None:
    wall_s = 10.0
    started = time.monotonic() - wall_s  # the row began 10 s ago, so it ends now
    t0 = time.time() - wall_s
    plan = {  # server a: lead 0.5, a GC pause of 0.3, ends at 9.0; server b: lead 0.2, ends at 9.5
        "a": [(0.5, 3.0), (3.3, 6.0), (6.0, 9.0)],
        "b": [(0.2, 4.0), (4.005, 9.5)],
    }
    row = suite.figures("t", _records(suite, t0, plan), servers=3, images=5, wall_s=wall_s, sampler=_NoGpu(),
                        started=started)
    busy = (2.5 + 2.7 + 3.0) + (3.8 + 5.495)
    assert row["efficiency"] == pytest.approx(busy / 30, abs=0.002)
    loss = row["loss"]
    assert loss["lead"] == pytest.approx(0.7 / 30, abs=0.002)
    assert loss["gaps_gc"] == pytest.approx(0.3 / 30, abs=0.002) and row["gc_pauses"] == 1
    assert loss["gaps_short"] == pytest.approx(0.005 / 30, abs=0.002)
    assert loss["wind_down"] == pytest.approx(0.5 / 30, abs=0.002)  # a idles from 9.0 to b's end at 9.5
    assert loss["end"] == pytest.approx(2 * 0.5 / 30, abs=0.003)  # from 9.5 to the row's end, both servers
    assert loss["unused_servers"] == pytest.approx(1 / 3, abs=0.002)  # the third never got a prompt
    assert row["efficiency"] + sum(loss.values()) == pytest.approx(1.0, abs=0.01)
    assert (row["idle_gap_median_ms"], row["idle_gap_max_ms"]) == (5.0, 300.0) and row["servers_used"] == 2


def test_the_steady_rate_counts_only_the_time_every_server_had_work(suite: ModuleType) -> None:
    # two servers, one prompt a second each from t=1 (after a slow 1 s start), then a long tail on b
    a = [(0.0, 1.0)] + [(float(t), float(t + 1)) for t in range(1, 10)]
    b = [(0.0, 1.0)] + [(float(t), float(t + 1)) for t in range(1, 10)] + [(10.0, 20.0)]
    rate = suite.steady_rate({"a": a, "b": b}, images_per_prompt=1.0)
    assert rate == pytest.approx(2.0, abs=0.01)  # 2 servers x 1 prompt/s; the tail does not count
    assert suite.steady_rate({"a": a[:2], "b": b}, images_per_prompt=1.0) is None  # too few prompts to tell
