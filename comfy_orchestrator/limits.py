"""Timeouts: how long the library waits, by what for, with documented defaults in one place.

Every wait and every call takes its limit from a `Timeouts` value, never a bare number:
`Client(url, timeouts=Timeouts(read_s=5))`, `Farm(servers, timeouts=FARM_TIMEOUTS)`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FARM_TIMEOUTS", "Timeouts"]


@dataclass(frozen=True)
class Timeouts:
    """Named limits, in seconds, on the waits of a client and a farm."""

    connect_s: float = 10.0  # opening a TCP connection (never more than read_s)
    read_s: float = 30.0  # one HTTP answer; opening the websocket and reading its greeting
    silence_s: float = 30.0  # websocket quiet while a job is pending before its record is read
    job_s: float = 3600.0  # a job from submit to result, when the wait names no limit of its own
    status_s: float = 10.0  # `farm status`: every server's answer, read in parallel
    no_server_s: float = 120.0  # a farm with no able server up before the jobs left fail

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"Timeouts.{name} must be more than 0 s, not {value!r}")

    @property
    def http(self) -> tuple[float, float]:
        """The (connect, read) pair requests takes."""
        return min(self.connect_s, self.read_s), self.read_s


# A farm fails over rather than wait long on one server.
FARM_TIMEOUTS = Timeouts(read_s=10.0, silence_s=5.0, job_s=600.0)
