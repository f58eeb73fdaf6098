"""RetryPolicy: how often a failing call or server is tried, and how long it rests between tries."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy", "jitter"]


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
