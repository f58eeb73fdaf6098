"""A sweep's results while it runs: each cell's thumbnail and grid place as its image arrives; the page last.

Everything a results folder shows but the images themselves is made here. Thumbnails are made
on a few threads as the images arrive, and (for grids small enough to hold in memory) pasted
into the grids at once, so that when the last cell is in only the grids' encoding and the page
are left: the GPUs do not wait on the drawing of a hundred pictures.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_orchestrator.errors import GridFailed
from comfy_orchestrator.grid import (
    IMAGE_THREADS,
    GridAxis,
    GridCell,
    GridPainter,
    results_page,
    save_results_page,
    write_results_page,
    write_thumbnail,
)
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.journal import CellRecord, CellStatus
from comfy_orchestrator.sweep import BATCH_AXIS, Cell, Sweep, Value, batch_seed_label, shown_values

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

GRID_AXES_MAX = 3  # X, Y and one axis of pages; a sweep of more axes has its page and no grid

# What a reader looks for first in a header, as A1111 and SwarmUI print it; the rest follow in the model's order.
ESSENTIAL_PARAMETERS = ("positive", "negative", "checkpoint", "seed", "steps", "sampler", "scheduler", "cfg",
                        "denoise")


class SweepResults:
    """The thumbnails, grids and results page of one run of a sweep into `folder`.

    Made once the journal holds every cell (`records`). The grids are laid out on a thumbnail
    thread when the first image arrives (at the end if none does), and the cells an earlier run
    finished are drawn into them then. Use it as a context manager around the run, then `write`
    once. Leaving lets the thumbnails still being made go on (`write` waits for them, so the
    caller writes its manifests meanwhile); after an error it drops those not begun and waits.
    """

    def __init__(self, folder: Path, sweep: Sweep, jobs: Sequence[Job], records: Sequence[CellRecord], *,
                 thumbnail_px: int, grid_format: str) -> None:
        self.folder, self.thumbnail_px = folder, thumbnail_px
        self.seed = next((axis.values[0] for axis in sweep.axes if axis.name == "seed"), 0) \
            if sweep.batch_seeds else None
        seed = self.seed
        self.axes = [GridAxis(axis.name, axis.values) if axis.name != BATCH_AXIS or seed is None else
                     GridAxis("seed", tuple(batch_seed_label(seed, int(i)) for i in axis.values))
                     for axis in sweep.run_axes]
        self.title = f"{sweep.template.name}: " + " × ".join(f"{a.name} ({len(a.values)})" for a in self.axes)
        self._pool = ThreadPoolExecutor(max_workers=IMAGE_THREADS, thread_name_prefix="thumbnail")
        self._start = functools.partial(self._start_drawing, sweep, jobs, records, grid_format)
        self._drawing: Future[tuple[dict[str, Any], GridPainter | None]] | None = None  # begun with the first image
        self._lock = threading.Lock()

    def add(self, cell: Cell, image: Path) -> None:
        """`cell`'s image (relative to the folder) is in place: make its thumbnail and grid place, on a thread."""
        values = dict(cell.values) if self.seed is None else shown_values(cell.values, self.seed)
        with self._lock:  # a resume's adopted prompts are recorded on a thread a server
            if self._drawing is None:
                self._drawing = self._pool.submit(self._start)
        self._pool.submit(self._make, GridCell(cell.index, values, image))

    def write(self, records: Sequence[CellRecord], *,
              meanwhile: Callable[[], object] = lambda: None) -> tuple[list[Path], Path]:
        """Write the grids and the page showing `records`, the journal's final state.

        The grids are encoded on a thread (Pillow lets go of the GIL) while the page is made and
        `meanwhile` (the caller's own last work) is done on this one.
        """
        self._pool.shutdown(wait=True)  # the thumbnails still being made: the page links them, the grids show them
        logger.debug("thumbnails made; encoding the grids")
        fixed, painter = self._start() if self._drawing is None else self._drawing.result()
        cells = [grid_cell(record, self.seed) for record in records]
        if painter is None:
            meanwhile()
            return [], write_results_page(self.folder, self.axes, cells, title=self.title, fixed=fixed)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="grid-save") as saver:
            saving = saver.submit(painter.save, cells)
            page = results_page(self.folder, self.axes, cells, title=self.title, grids=painter.paths, fixed=fixed)
            meanwhile()
            grids = saving.result()
        return grids, save_results_page(self.folder, page)  # once the grids it shows are written

    def _start_drawing(self, sweep: Sweep, jobs: Sequence[Job], records: Sequence[CellRecord],
                       grid_format: str) -> tuple[dict[str, Any], GridPainter | None]:
        """The header (what every cell shares) and the grids laid out, with the cells already done painted."""
        shaping = set().union(*(job.picture_parameters() for job in jobs))
        fixed = shared_parameters([record.params for record in records], exclude={axis.name for axis in self.axes},
                                  shaping=shaping)
        painter = GridPainter(self.folder, self.axes, thumbnail_px=self.thumbnail_px, image_format=grid_format,
                              fixed=fixed, definition=sweep.definition()) if len(self.axes) <= GRID_AXES_MAX else None
        if painter is not None and painter.painting:  # here, not on the pool: it may be shutting down already
            for record in records:
                if record.status is CellStatus.DONE and record.files:
                    try:
                        painter.paint(grid_cell(record, self.seed))
                    except GridFailed as exc:  # painted again when the grids are written, which then says why
                        logger.warning("%s", exc)
        return fixed, painter

    def _make(self, cell: GridCell) -> None:
        assert cell.image is not None
        try:
            thumb = write_thumbnail(self.folder, cell.image, thumbnail_px=self.thumbnail_px)
        except GridFailed as exc:  # the grid opens the image itself then; the result is kept either way
            logger.warning("%s", exc)
            self._paint(cell, None)
            return
        try:
            self._paint(cell, thumb)  # pasted from memory: the picture is decoded once
        finally:
            thumb.close()

    def _paint(self, cell: GridCell, thumb: Image.Image | None) -> None:
        assert self._drawing is not None  # add() began it before asking for this
        _, painter = self._drawing.result()
        if painter is None:
            return
        try:
            painter.paint(cell, thumb)
        except GridFailed as exc:  # painted again when the grids are written, which then says what is wrong
            logger.warning("%s", exc)

    def __enter__(self) -> SweepResults:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: object) -> None:
        # after a run, the thumbnails go on while the caller writes the manifests: write() waits for them;
        # on Ctrl-C, drop those not begun (the grid falls back to the images) and wait for the others
        self._pool.shutdown(wait=kind is not None, cancel_futures=kind is not None)
        if kind is not None and self._drawing is not None and self._drawing.done() \
                and not self._drawing.cancelled() and self._drawing.exception() is None:
            _, painter = self._drawing.result()
            if painter is not None:
                painter.close()


def shared_parameters(params: Sequence[Mapping[str, Any]], *, exclude: set[str],
                      shaping: Collection[str] | None = None) -> dict[str, Any]:
    """The parameters every cell has with the same value (not the axes, not the unset): the grid's header.

    With `shaping` (the parameters a rendered graph uses, Job.picture_parameters) a value is kept only
    if it shapes the picture; a flag or list, which steers the graph's structure rather than one input,
    only when it is set (True, not empty). The essentials come first.
    """
    if not params:
        return {}
    shared = {}
    for name, value in params[0].items():
        if name in exclude or value is None or value == [] or value == "":
            continue
        structural = isinstance(value, bool) or not isinstance(value, (int, float, str))
        if shaping is not None and name not in shaping and not (structural and value):
            continue
        if all(other.get(name) == value for other in params[1:]):
            shared[name] = value
    first = [name for name in ESSENTIAL_PARAMETERS if name in shared]
    return {name: shared[name] for name in [*first, *(n for n in shared if n not in first)]}


def grid_cell(record: CellRecord, batch_seed: Value | None) -> GridCell:
    """A journal record as the grid and the page show it; a batched image by its seed, not its batch index."""
    values = dict(record.values) if batch_seed is None else shown_values(record.values, batch_seed)
    details: dict[str, Any] = {"params": dict(record.params), "server": record.server,
                               "prompt_id": record.prompt_id, "graph_hash": record.graph_hash,
                               "batch_index": record.batch_index, "files": list(record.files),
                               "error": record.error}
    if record.finished_at is not None and record.started_at is not None:
        details["seconds"] = round(record.finished_at - record.started_at, 3)
    image = Path(record.files[0]) if record.status is CellStatus.DONE and record.files else None
    return GridCell(record.index, values, image, record.status.value, details)
