"""Timeouts and Limits: how long the library waits and how much it takes in, with documented defaults.

Every wait and every call takes its limit from a `Timeouts` value, never a bare number:
`Client(url, timeouts=Timeouts(read_s=5))`, `Farm(servers, timeouts=FARM_TIMEOUTS)`.
Everything a server (or a file) sends is bounded by a `Limits` value: `Client(url, limits=Limits(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FARM_TIMEOUTS", "Limits", "Timeouts"]


@dataclass(frozen=True)
class Timeouts:
    """Named limits, in seconds, on the waits of a client and a farm."""

    connect_s: float = 10.0  # opening a TCP connection (never more than read_s)
    read_s: float = 30.0  # one HTTP answer; opening the websocket and reading its greeting
    silence_s: float = 30.0  # websocket quiet while a job is pending before its record is read
    job_s: float = 3600.0  # a job from submit to result, when the wait names no limit of its own
    status_s: float = 10.0  # `farm status`: every server's answer, read in parallel
    no_server_s: float = 120.0  # a farm with no able server up before the jobs left fail
    download_s: float = 600.0  # one output file's whole download (a stalled one fails, to be tried again)

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


MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Named limits on what the library takes in from a server or a file; past one, a clear error.

    The defaults are far above what a real ComfyUI sends and far below what would hurt:
    the recorded /object_info is ~0.6 MB and a history entry a few KB; a SaveImageWebsocket
    frame holds one PNG.
    """

    json_bytes: int = 64 * MIB  # one JSON answer (/object_info, /history, /queue ...), decompressed
    websocket_frame_bytes: int = 64 * MIB  # one websocket message, all its fragments together
    download_bytes: int = 1024 * MIB  # one output file from /view
    text_chunk_bytes: int = 8 * MIB  # one PNG text chunk, inflated (our provenance is a few KB)
    # one image's width x height, checked before it is decoded: twice an 8192-pixel square, below the
    # 179 MP at which Pillow itself refuses
    image_pixels: int = 2 * 8192 * 8192

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"Limits.{name} must be more than 0, not {value!r}")


def describe_bytes(size: int) -> str:
    """A byte count for a person: 64 MiB, 1.5 GiB, 512 B."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"
