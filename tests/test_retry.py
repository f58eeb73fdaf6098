"""The one retry loop: how often, how long between tries, with what jitter, and when it stops."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from comfy_orchestrator.errors import ComfyError, ConnectionFailed, PromptRejected
from comfy_orchestrator.retry import RetryPolicy, call_with_retries, jitter

POLICY = RetryPolicy(max_attempts=4, first_delay_s=1.0, max_delay_s=3.0)


def failing(errors: list[ComfyError], answer: str = "ok") -> tuple[list[int], Callable[[int], str]]:
    """A call that raises `errors` in turn, then answers; and the attempts it saw."""
    seen: list[int] = []

    def call(attempt: int) -> str:
        seen.append(attempt)
        if errors:
            raise errors.pop(0)
        return answer

    return seen, call


def lost(server: str = "a") -> ConnectionFailed:
    return ConnectionFailed("cannot connect", server=server)


@pytest.mark.parametrize(("failures", "scale", "rests"), [
    (0, 1.0, []),
    (1, 1.0, [1.0]),
    (3, 1.0, [1.0, 2.0, 3.0]),  # doubles up to the cap
    (2, 1.2, [1.2, 2.4]),  # the jitter scales each rest
])
def test_retryable_errors_are_tried_again_after_growing_rests(failures: int, scale: float,
                                                              rests: list[float]) -> None:
    seen, call = failing([lost() for _ in range(failures)])
    waited: list[float] = []

    def rest(seconds: float) -> bool:
        waited.append(seconds)
        return False

    answer = call_with_retries(call, POLICY, rest=rest, scale=lambda: scale)
    assert answer == "ok"
    assert seen == list(range(1, failures + 2))
    assert waited == pytest.approx(rests)


def test_the_last_attempt_raises_its_error() -> None:
    errors: list[ComfyError] = [lost("1"), lost("2"), lost("3"), lost("4"), lost("5")]
    seen, call = failing(errors)
    with pytest.raises(ConnectionFailed) as caught:
        call_with_retries(call, POLICY, rest=lambda s: False, scale=lambda: 1.0)
    assert seen == [1, 2, 3, 4] and caught.value.server == "4"


def test_an_error_that_is_not_retryable_is_raised_at_once() -> None:
    rejected = PromptRejected("bad", server="a", error={}, node_errors={})
    seen, call = failing([rejected])
    with pytest.raises(PromptRejected):
        call_with_retries(call, POLICY, rest=lambda s: False)
    assert seen == [1]


def test_a_rest_cut_short_raises_the_error_it_rested_after() -> None:
    closed = threading.Event()
    closed.set()
    seen, call = failing([lost("first"), lost("second")])
    with pytest.raises(ConnectionFailed) as caught:
        call_with_retries(call, POLICY, rest=closed.wait)
    assert seen == [1] and caught.value.server == "first"


def test_each_retry_is_reported_with_its_rest() -> None:
    heard: list[tuple[str, int, float]] = []
    seen, call = failing([lost("x"), lost("y")])
    call_with_retries(call, POLICY, rest=lambda s: False, scale=lambda: 1.0,
                      on_retry=lambda error, attempt, delay_s: heard.append((str(error), attempt, delay_s)))
    assert heard == [("x: cannot connect", 1, 1.0), ("y: cannot connect", 2, 2.0)]


def test_jitter_stays_within_a_fifth_either_way() -> None:
    draws = [jitter() for _ in range(500)]
    assert all(0.8 <= draw <= 1.2 for draw in draws)
    assert max(draws) - min(draws) > 0.2  # it does vary
