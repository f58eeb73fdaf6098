"""A running sweep's progress: the counts a progress bar shows, kept as the farm's threads and the caller record cells."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from comfy_orchestrator.sweep import Cell


@dataclass(frozen=True)
class SweepProgress:
    """Where a running sweep stands: counts over all its cells, and what runs now."""

    total: int
    done: int
    failed: int
    running: Mapping[str, str]  # cell label -> server
    elapsed_s: float
    eta_s: float | None
    message: str = ""  # the latest notable event: a retry, a server down
    steps: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # cell label -> sampler step, of max

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - len(self.running)


ProgressCallback = Callable[[SweepProgress], None]


def ignore_progress(progress: SweepProgress) -> None:
    """The default progress callback: nothing."""


class Tracker:
    """Counts for the progress callback, updated from the farm's threads and the caller's."""

    def __init__(self, total: int, done: int, failed: int, on_progress: ProgressCallback) -> None:
        self._lock = threading.Lock()
        self._total, self._done, self._failed = total, done, failed
        self._done_before = done
        self._running: dict[str, str] = {}
        self._steps: dict[str, tuple[int, int]] = {}
        self._message = ""
        self._started = time.monotonic()
        self._on_progress = on_progress
        self._emit()

    def running(self, cells: Sequence[Cell], server: str) -> None:
        with self._lock:
            for cell in cells:
                self._running[cell.label] = server
        self._emit()

    def step(self, cells: Sequence[Cell], value: int, maximum: int) -> None:
        with self._lock:
            for cell in cells:
                self._steps[cell.label] = (value, maximum)
        self._emit()

    def released(self, cells: Sequence[Cell]) -> None:
        """Cells stopped running without settling (an adopted prompt that gave nothing): they run again."""
        with self._lock:
            for cell in cells:
                self._running.pop(cell.label, None)
                self._steps.pop(cell.label, None)
        self._emit()

    def finished(self, cells: Sequence[Cell], *, failed: bool) -> None:
        with self._lock:
            for cell in cells:
                self._running.pop(cell.label, None)
                self._steps.pop(cell.label, None)
            if failed:
                self._failed += len(cells)
            else:
                self._done += len(cells)
        self._emit()

    def note(self, message: str) -> None:
        with self._lock:
            self._message = message
        self._emit()

    def _emit(self) -> None:
        with self._lock:
            elapsed_s = time.monotonic() - self._started
            settled = self._done - self._done_before
            left = self._total - self._done - self._failed
            eta_s = elapsed_s / settled * left if settled else None
            progress = SweepProgress(self._total, self._done, self._failed, dict(self._running), elapsed_s,
                                     eta_s, self._message, dict(self._steps))
        self._on_progress(progress)
