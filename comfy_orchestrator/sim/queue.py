"""The simulated server's prompt queue and history, as ComfyUI's PromptQueue keeps them."""

from __future__ import annotations

import copy
import heapq
import threading
from collections.abc import Callable, Mapping
from typing import Any

MAXIMUM_HISTORY_SIZE = 10000

QueueItem = tuple[Any, str, dict[str, Any], dict[str, Any], list[str]]


class PromptQueue:
    """Pending prompts in a heap by (number, prompt_id), the running one, and the history."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.on_change = on_change
        self.task_counter = 0
        self.queue: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, bool] = {}
        self.stopped = False
        self.held = False  # a fault: prompts wait until released
        self.idle = threading.Event()  # nothing pending and nothing running
        self.idle.set()

    def _changed(self) -> None:
        if self.queue or self.running:
            self.idle.clear()
        else:
            self.idle.set()
        self.on_change()

    def put(self, item: QueueItem) -> None:
        with self.mutex:
            heapq.heappush(self.queue, item)
            self._changed()
            self.not_empty.notify()

    def get(self) -> tuple[QueueItem, int] | None:
        """The next prompt, or None when woken for flags or to stop."""
        with self.not_empty:
            while not self.queue or self.held:
                if self.stopped or self.flags:
                    return None
                self.not_empty.wait()
            if self.stopped:
                return None
            item = heapq.heappop(self.queue)
            number = self.task_counter
            self.running[number] = copy.deepcopy(item)
            self.task_counter += 1
            self._changed()
            return item, number

    def task_done(self, number: int, result: Mapping[str, Any], status: dict[str, Any]) -> None:
        with self.mutex:
            item = self.running.pop(number)
            if len(self.history) > MAXIMUM_HISTORY_SIZE:
                self.history.pop(next(iter(self.history)))
            self.history[item[1]] = {"prompt": list(item), "outputs": {}, "status": status, **result}
            self._changed()

    def remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.running)

    def snapshot(self) -> tuple[list[QueueItem], list[QueueItem]]:
        with self.mutex:
            return list(self.running.values()), list(self.queue)

    def wipe(self) -> None:
        with self.mutex:
            self.queue = []
            self._changed()

    def delete(self, prompt_id: str) -> bool:
        with self.mutex:
            for index, item in enumerate(self.queue):
                if item[1] == prompt_id:
                    if len(self.queue) == 1:
                        self.wipe()
                    else:
                        self.queue.pop(index)
                        heapq.heapify(self.queue)
                    self._changed()
                    return True
        return False

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None,
                    offset: int = -1) -> dict[str, Any]:
        with self.mutex:
            if prompt_id is not None:
                entry = self.history.get(prompt_id)
                return {} if entry is None else {prompt_id: copy.deepcopy(entry)}
            out: dict[str, Any] = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for index, key in enumerate(self.history):
                if index >= offset:
                    out[key] = copy.deepcopy(self.history[key])
                    if max_items is not None and len(out) >= max_items:
                        break
            return out

    def hold(self, held: bool) -> None:
        """Start no prompt while `held`."""
        with self.mutex:
            self.held = held
            self.not_empty.notify()

    def set_flag(self, name: str) -> None:
        with self.mutex:
            self.flags[name] = True
            self.not_empty.notify()

    def take_flags(self) -> dict[str, bool]:
        with self.mutex:
            flags, self.flags = self.flags, {}
            return flags

    def stop(self) -> None:
        with self.mutex:
            self.stopped = True
            self.not_empty.notify_all()
