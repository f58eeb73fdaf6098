"""Timeouts: one value of named limits, checked when made."""

from __future__ import annotations

import pytest

from comfy_orchestrator.limits import FARM_TIMEOUTS, Timeouts


def test_defaults_are_documented_values() -> None:
    assert Timeouts() == Timeouts(connect_s=10.0, read_s=30.0, silence_s=30.0, job_s=3600.0, status_s=10.0,
                                  no_server_s=120.0)
    assert (FARM_TIMEOUTS.read_s, FARM_TIMEOUTS.silence_s, FARM_TIMEOUTS.job_s) == (10.0, 5.0, 600.0)


@pytest.mark.parametrize(("timeouts", "pair"), [
    (Timeouts(), (10.0, 30.0)),
    (Timeouts(read_s=5.0), (5.0, 5.0)),  # connecting never waits longer than an answer may take
    (Timeouts(connect_s=2.0, read_s=60.0), (2.0, 60.0)),
])
def test_http_pair_is_connect_then_read(timeouts: Timeouts, pair: tuple[float, float]) -> None:
    assert timeouts.http == pair


@pytest.mark.parametrize("field", ["connect_s", "read_s", "silence_s", "job_s", "status_s", "no_server_s"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_a_limit_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"Timeouts.{field} must be more than 0 s"):
        Timeouts(**{field: value})
