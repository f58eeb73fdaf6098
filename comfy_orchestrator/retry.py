"""RetryPolicy and the one retry loop: how often a failing call is tried, how long it rests between tries.

Whether to retry is the error's `retryable` attribute; how long to rest is
`RetryPolicy.delay()` times a random jitter, so that callers that failed together do not
come back in lockstep. Every retrying caller goes through `call_with_retries`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from comfy_orchestrator.errors import ComfyError

__all__ = ["RetryPolicy", "call_with_retries", "jitter"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often a call is tried and how long to rest between tries."""

    max_attempts: int = 3
    first_delay_s: float = 2.0
    max_delay_s: float = 60.0

    def delay(self, attempt: int, jitter: float = 1.0) -> float:
        """Seconds to rest after failed `attempt` (1-based)."""
        return float(min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s) * jitter)


def jitter() -> float:
    """A random factor, so that callers that failed together do not retry in lockstep."""
    return random.uniform(0.8, 1.2)


def _retryable(error: ComfyError) -> bool:
    return error.retryable


def _quiet(error: ComfyError, attempt: int, delay_s: float) -> None:
    """The default retry callback: nothing."""


def call_with_retries(
    call: Callable[[int], T],
    policy: RetryPolicy,
    *,
    rest: Callable[[float], bool],
    may_retry: Callable[[ComfyError], bool] = _retryable,
    on_retry: Callable[[ComfyError, int, float], None] = _quiet,
    scale: Callable[[], float] = jitter,
) -> T:
    """Return `call(attempt)`, trying again after a retryable ComfyError up to `policy.max_attempts`.

    Between tries it calls `rest(seconds)`, which waits (an Event's `wait`, so a close
    cuts it short) and returns True to stop: the last error is then raised. `on_retry`
    hears each error, the attempt that failed and the rest before the next; `scale` is
    the jitter (a seam for tests).
    """
    attempt = 1
    while True:
        try:
            return call(attempt)
        except ComfyError as exc:
            if not may_retry(exc) or attempt >= policy.max_attempts:
                raise
            delay_s = policy.delay(attempt, scale())
            on_retry(exc, attempt, delay_s)
            if rest(delay_s):
                raise
            attempt += 1
