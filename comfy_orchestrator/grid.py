"""X/Y grid images of a sweep's results, and the static results page."""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_orchestrator.errors import GridFailed
from comfy_orchestrator.sweep import Value, file_slug, format_value

if TYPE_CHECKING:  # Pillow's drawing loads with the first thumbnail or grid: a sweep's first prompt does not wait on it
    from PIL import Image, ImageDraw, ImageFont

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

MAX_GRID_SIDE_PX = 8192  # a grid wider or taller than this gets smaller thumbnails
MIN_THUMBNAIL_PX = 64
PAINTED_PIXELS_MAX = 64 * 2**20  # grids drawn as cells arrive are held in memory (3 bytes a pixel): past this, at the end
RESULTS_PAGE = "index.html"
THUMBNAILS_FOLDER = "thumbnails"  # made as each image arrives, so the grid at the end only pastes them
PNG_LEVEL = 1  # zlib level for thumbnails and PNG grids: 4x faster to write than 6, for a fifth more bytes
IMAGE_THREADS = min(4, os.cpu_count() or 1)  # Pillow decodes and encodes without the GIL
# The grid is written at the end of a sweep, while the GPUs wait: JPEG (4:4:4, so labels stay
# crisp) writes a 10x10 grid of 256 px cells in 0.07 s against 0.4-0.65 s as PNG, at half the
# bytes or less; the cells' own images stay as the server made them. --grid-format png for lossless.
GRID_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "jpg": ("JPEG", {"quality": 92, "subsampling": 0}),
    "png": ("PNG", {"compress_level": PNG_LEVEL}),
}
DEFAULT_GRID_FORMAT = "jpg"
GRID_METADATA_KEY = "comfy_orchestrator_sweep"  # the PNG text chunk holding the sweep's definition
COLUMN_LABEL_LINES = 3  # a column label longer than this is shortened to what tells it apart
LABEL_LINES_MAX = 8  # ... and only past this is it cut
HEADER_LINES = 6  # the fixed parameters over the grid; the page shows them all
_DATA_MARK = "/*__SWEEP_DATA__*/null"
_BACKGROUND = (250, 250, 250)
_INK = (30, 30, 30)
_MISSING = (225, 225, 225)
_MUTED = (90, 90, 90)


@dataclass(frozen=True)
class GridAxis:
    """An axis as a grid shows it: its name and its values in order."""

    name: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class GridCell:
    """One cell as a grid shows it: its axis values, its image (if any), and its details."""

    index: int
    values: Mapping[str, Value]
    image: Path | None  # relative to the output folder
    status: str = "done"
    details: Mapping[str, Any] = field(default_factory=dict)  # parameters, prompt id, error ...


def grid_images(
    folder: Path,
    axes: Sequence[GridAxis],
    cells: Iterable[GridCell],
    *,
    thumbnail_px: int = 256,
    name: str = "grid",
    image_format: str = DEFAULT_GRID_FORMAT,
    fixed: Mapping[str, Any] | None = None,
    definition: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Draw X/Y grids (X: the first axis, Y: the second) into `folder`, one per value of the others.

    Images (or their kept thumbnails) are opened one at a time and shrunk, so memory holds one
    grid. `image_format` is a key of GRID_FORMATS ("jpg" or "png"). `fixed` (the parameters every
    cell shares) is written in a header above the grid; `definition` (the sweep's) goes into the
    image's metadata under GRID_METADATA_KEY, as a PNG text chunk or the JPEG comment.
    """
    layout = _Layout(folder, axes, thumbnail_px=thumbnail_px, name=name, image_format=image_format, fixed=fixed,
                     definition=definition)
    by_values = {_key(cell.values, axes): cell for cell in cells}
    written = []
    for plan in layout.plans():
        sheet = layout.start(plan)
        try:
            # a row's pictures are read on a few threads, one row at a time
            with ThreadPoolExecutor(max_workers=IMAGE_THREADS, thread_name_prefix="grid") as pool:
                for row in sheet.rows():
                    found = [by_values.get(key) for key in row]
                    for key, cell, thumb in zip(row, found, pool.map(lambda c: _thumb(folder, c, sheet.side), found)):
                        sheet.put(key, cell, thumb)
            written.append(layout.save(sheet))
        finally:
            sheet.canvas.close()
    return written


class GridPainter:
    """A sweep's grids drawn while it runs: labels at once, each cell's picture as it arrives, files at the end.

    The grids then cost only their encoding when the last cell is in. They are held in memory,
    so grids past `max_pixels` in all are drawn at the end instead, one at a time, as
    `grid_images` draws them. `paint` may be called from any thread.
    """

    def __init__(self, folder: Path, axes: Sequence[GridAxis], *, thumbnail_px: int = 256, name: str = "grid",
                 image_format: str = DEFAULT_GRID_FORMAT, fixed: Mapping[str, Any] | None = None,
                 definition: Mapping[str, Any] | None = None, max_pixels: int = PAINTED_PIXELS_MAX) -> None:
        self._layout = _Layout(folder, axes, thumbnail_px=thumbnail_px, name=name, image_format=image_format,
                               fixed=fixed, definition=definition)
        self._thumbnail_px, self._fixed, self._definition = thumbnail_px, fixed, definition
        self._lock = threading.Lock()
        self._painted: dict[tuple[Any, ...], tuple[str, Path | None]] = {}  # what each slot shows now
        plans = self._layout.plans()
        self._sheets: list[_Sheet] = []
        if sum(plan.pixels for plan in plans) <= max_pixels:
            self._sheets = [self._layout.start(plan) for plan in plans]
        self._by_key = {key: sheet for sheet in self._sheets for key in sheet.slots}

    @property
    def painting(self) -> bool:
        """Whether the grids are drawn as cells arrive (False: all at the end)."""
        return bool(self._sheets)

    @property
    def paths(self) -> list[Path]:
        """The grid images `save` writes."""
        return [plan.path for plan in self._layout.plans()]

    def paint(self, cell: GridCell, kept: Image.Image | None = None) -> None:
        """Show `cell` (its picture, or its status) in its grid now; `kept`: its thumbnail just made, in memory."""
        key = _key(cell.values, self._layout.axes)
        sheet = self._by_key.get(key)
        if sheet is None:
            return  # drawn at the end, or not a cell of these grids
        thumb = _thumb(self._layout.folder, cell, sheet.side, kept)  # outside the lock: threads decode at once
        with self._lock:
            sheet.put(key, cell, thumb)
            self._painted[key] = (cell.status, cell.image)

    def save(self, cells: Iterable[GridCell]) -> list[Path]:
        """Write the grids showing `cells`, the sweep's final state: a cell not yet shown as it is now is painted first."""
        cells = list(cells)
        if not self.painting:
            layout = self._layout
            return grid_images(layout.folder, layout.axes, cells, thumbnail_px=self._thumbnail_px, name=layout.name,
                               image_format=layout.image_format, fixed=self._fixed, definition=self._definition)
        by_values = {_key(cell.values, self._layout.axes): cell for cell in cells}
        stale = [cell for key, cell in by_values.items() if self._painted.get(key) != (cell.status, cell.image)]
        with ThreadPoolExecutor(max_workers=IMAGE_THREADS, thread_name_prefix="grid") as pool:
            list(pool.map(self.paint, stale))
        try:
            for key, sheet in self._by_key.items():
                if key not in by_values and key not in self._painted:
                    sheet.put(key, None, None)  # no such cell: "missing", as grid_images shows it
            return [self._layout.save(sheet) for sheet in self._sheets]
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the grids' memory (save does; call it when a run stops before saving)."""
        for sheet in self._sheets:
            sheet.canvas.close()
        self._sheets, self._by_key = [], {}


@dataclass(frozen=True)
class _Plan:
    """One grid image to draw: the page (values of the axes past the second) and the part of X and Y it shows."""

    path: Path
    x_axis: GridAxis
    y_axis: GridAxis | None
    page: Mapping[str, Value]
    title: str
    pixels: int  # about how large its canvas is


@dataclass
class _Sheet:
    """A grid image being drawn: its canvas and where each cell's picture goes."""

    path: Path
    canvas: Image.Image
    draw: ImageDraw.ImageDraw
    font: Font
    side: int
    slots: dict[tuple[Any, ...], tuple[int, int]]  # a cell's key -> the top left corner of its picture
    columns: int

    def rows(self) -> list[list[tuple[Any, ...]]]:
        keys = list(self.slots)
        return [keys[i:i + self.columns] for i in range(0, len(keys), self.columns)]

    def put(self, key: tuple[Any, ...], cell: GridCell | None, thumb: Image.Image | None) -> None:
        left, top = self.slots[key]
        self.draw.rectangle((left, top, left + self.side - 1, top + self.side - 1), fill=_BACKGROUND)
        _paste(self.canvas, self.draw, cell, thumb, (left, top), self.side, self.font)


class _Layout:
    """Where a sweep's grid images go and what each shows: the pages, the parts, the thumbnail size."""

    def __init__(self, folder: Path, axes: Sequence[GridAxis], *, thumbnail_px: int, name: str, image_format: str,
                 fixed: Mapping[str, Any] | None, definition: Mapping[str, Any] | None) -> None:
        if not axes:
            raise GridFailed("a grid needs at least one axis")
        if image_format not in GRID_FORMATS:
            raise GridFailed(f"unknown grid format {image_format!r}: use one of {', '.join(GRID_FORMATS)}")
        self.folder, self.axes, self.name, self.image_format = folder, list(axes), name, image_format
        self.pil_format, options = GRID_FORMATS[image_format]
        self.options = {**options, **_metadata_options(self.pil_format, definition)}
        self.header = fixed_lines(fixed or {})
        x_axis, y_axis = axes[0], (axes[1] if len(axes) > 1 else None)
        # past this many values an axis is split over several images, so none grows beyond MAX_GRID_SIDE_PX
        per_image = MAX_GRID_SIDE_PX // MIN_THUMBNAIL_PX
        self.x_parts = _chunks(x_axis, per_image)
        self.y_parts: list[GridAxis | None] = list(_chunks(y_axis, per_image)) if y_axis else [None]
        columns = max(len(part.values) for part in self.x_parts)
        rows = max(len(part.values) for part in self.y_parts if part is not None) if y_axis else 1
        self.side = max(MIN_THUMBNAIL_PX, min(thumbnail_px, MAX_GRID_SIDE_PX // max(columns, rows)))

    def plans(self) -> list[_Plan]:
        plans = []
        pages = self.axes[2:]
        for page_values in itertools.product(*(axis.values for axis in pages)):
            page = dict(zip((axis.name for axis in pages), page_values))
            title = ", ".join(f"{n} = {format_value(v)}" for n, v in page.items())
            suffix = "_".join(f"{file_slug(n)}-{file_slug(format_value(v))}" for n, v in page.items())
            for part, (x_part, y_part) in enumerate(itertools.product(self.x_parts, self.y_parts), start=1):
                split = f"part-{part}" if len(self.x_parts) * len(self.y_parts) > 1 else ""
                stem = "_".join(s for s in (self.name, suffix, split) if s)
                rows = len(y_part.values) if y_part is not None else 1
                plans.append(_Plan(self.folder / f"{stem}.{self.image_format}", x_part, y_part, page, title,
                                   len(x_part.values) * rows * self.side ** 2))
        return plans

    def start(self, plan: _Plan) -> _Sheet:
        """The plan's canvas with its title, header and labels drawn, and where each cell goes."""
        return _draw_grid(plan, self.axes, self.side, self.header)

    def save(self, sheet: _Sheet) -> Path:
        try:
            sheet.canvas.save(sheet.path, format=self.pil_format, **self.options)
        except OSError as exc:
            raise GridFailed(f"cannot write {sheet.path}: {exc}") from exc
        return sheet.path


def thumbnail_path(folder: Path, image: Path) -> Path:
    """Where the thumbnail of `image` (relative to `folder`) is kept: thumbnails/<its path, as .png>."""
    return folder / THUMBNAILS_FOLDER / image.with_suffix(".png")


def write_thumbnail(folder: Path, image: Path, *, thumbnail_px: int = 256) -> Image.Image:
    """Write the thumbnail of `image` (relative to `folder`) at thumbnail_path, so the grid need not open the
    image later; hand it back open for a grid to paste unread (the caller closes it)."""
    from PIL import Image

    target = thumbnail_path(folder, image)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with Image.open(folder / image) as source:
            thumb = _shrunk(source, thumbnail_px)
        staged = target.with_name(target.name + ".part")
        thumb.save(staged, format="PNG", compress_level=PNG_LEVEL)
        staged.replace(target)  # a cut-off write never passes for a thumbnail
    except OSError as exc:
        raise GridFailed(f"cannot make the thumbnail of {image}: {exc}") from exc
    return thumb


def write_results_page(
    folder: Path,
    axes: Sequence[GridAxis],
    cells: Iterable[GridCell],
    *,
    title: str,
    grids: Sequence[Path] = (),
    fixed: Mapping[str, Any] | None = None,
) -> Path:
    """Write the self-contained results page (index.html) into `folder`; images are linked relatively.

    Every link is relative to the page, so it works opened from disk, moved, or served over HTTP.
    `fixed` (the parameters every cell shares) is shown in the page's header.
    """
    return save_results_page(folder, results_page(folder, axes, cells, title=title, grids=grids, fixed=fixed))


def results_page(folder: Path, axes: Sequence[GridAxis], cells: Iterable[GridCell], *, title: str,
                 grids: Sequence[Path] = (), fixed: Mapping[str, Any] | None = None) -> str:
    """The results page's HTML, as write_results_page writes it (the thumbnails it links are made by now)."""
    data = {
        "title": title,
        "fixed": [[name, format_value(value) if isinstance(value, (int, float, str)) else json.dumps(value)]
                  for name, value in (fixed or {}).items()],
        "axes": [{"name": a.name, "values": list(a.values), "labels": [format_value(v) for v in a.values]}
                 for a in axes],
        "cells": [{"index": c.index, "values": dict(c.values), "status": c.status,
                   "image": c.image.as_posix() if c.image else None, "thumbnail": _kept_thumbnail(folder, c),
                   "details": dict(c.details)}
                  for c in cells],
        "grids": [Path(os.path.relpath(Path(g).resolve(), folder.resolve())).as_posix() for g in grids],
    }
    page = resources.files("comfy_orchestrator").joinpath("data/results.html").read_text(encoding="utf-8")
    if _DATA_MARK not in page:
        raise GridFailed("the results page template lacks its data mark")
    # '<\/' keeps a value such as '</script>' from closing the script element early
    embedded = json.dumps(data, default=str).replace("</", "<\\/")
    return page.replace("__SWEEP_TITLE__", html.escape(title)).replace(_DATA_MARK, embedded)


def save_results_page(folder: Path, page: str) -> Path:
    """Write `page` (results_page's HTML) as the folder's index.html."""
    path = folder / RESULTS_PAGE
    path.write_text(page, encoding="utf-8")
    return path


def _draw_grid(plan: _Plan, axes: Sequence[GridAxis], side: int, header: Sequence[str]) -> _Sheet:
    """A canvas with the plan's title, header and axis labels, and the corner of each cell's picture."""
    from PIL import Image, ImageDraw, ImageFont

    x_axis, y_axis, title = plan.x_axis, plan.y_axis, plan.title
    font = ImageFont.load_default(size=max(11, side // 12))
    heading = ImageFont.load_default(size=max(13, side // 9))
    y_values: Sequence[Value | None] = y_axis.values if y_axis else [None]
    gap = max(2, side // 64)
    line_h = _text_size(font, "Ag")[1] + gap
    longest_px = max(160, 2 * side)  # long prompts as row labels wrap, not allowed to widen the grid
    row_labels = axis_labels(font, y_axis, longest_px, max_lines=max(1, side // line_h)) if y_axis else [[]]
    column_labels = axis_labels(font, x_axis, side, max_lines=COLUMN_LABEL_LINES)
    label_h = max(len(lines) for lines in column_labels) * line_h + 2 * gap
    label_w = max((_text_size(font, t)[0] for lines in row_labels for t in lines), default=0) + 3 * gap \
        if y_axis else 0
    width = label_w + len(x_axis.values) * (side + gap) + gap
    header_lines = _wrap_pieces(font, header, max(width - 4 * gap, side), HEADER_LINES)
    title_h = _text_size(heading, "Ag")[1] + 3 * gap if title else 0
    header_h = len(header_lines) * line_h + (gap if header_lines else 0)
    top_h = title_h + header_h
    height = top_h + label_h + len(y_values) * (side + gap) + gap
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap * 2, gap), title, font=heading, fill=_INK)
    for number, text in enumerate(header_lines):
        draw.text((gap * 2, title_h + gap + number * line_h), text, font=font, fill=_MUTED)
    for column, lines in enumerate(column_labels):
        left = label_w + gap + column * (side + gap)
        first = top_h + label_h / 2 - (len(lines) - 1) * line_h / 2
        for number, text in enumerate(lines):
            draw.text((left + side / 2, first + number * line_h), text, font=font, fill=_INK, anchor="mm")
    slots: dict[tuple[Any, ...], tuple[int, int]] = {}
    for row, y_value in enumerate(y_values):
        top = top_h + label_h + row * (side + gap)
        first = top + side / 2 - (len(row_labels[row]) - 1) * line_h / 2
        for number, text in enumerate(row_labels[row]):
            draw.text((gap, first + number * line_h), text, font=font, fill=_INK, anchor="lm")
        for column, x_value in enumerate(x_axis.values):
            values: dict[str, Value] = dict(plan.page)
            values[x_axis.name] = x_value
            if y_axis and y_value is not None:
                values[y_axis.name] = y_value
            slots[_key(values, axes)] = (label_w + gap + column * (side + gap), top)
    return _Sheet(plan.path, canvas, draw, font, side, slots, len(x_axis.values))


def axis_labels(font: Font, axis: GridAxis, width_px: int, *, max_lines: int) -> list[list[str]]:
    """Each value's label ("name = value") as lines no wider than `width_px`.

    A label is wrapped; one that needs more than `max_lines` is shortened to the part of its value
    that tells it apart from the axis's other values ("…emaonly…"), which is then shown whole,
    in as many lines as it takes; only past LABEL_LINES_MAX lines is the end cut.
    """
    texts = [format_value(v) for v in axis.values]
    labels = []
    for text, part in zip(texts, distinct_parts(texts)):
        lines = _wrap(font, f"{axis.name} = {text}", width_px)
        if len(lines) > max_lines:
            lines = _wrap(font, f"{axis.name} = {part}", width_px)
        if len(lines) > LABEL_LINES_MAX:
            lines = lines[:LABEL_LINES_MAX - 1] + [_fit(font, " ".join(lines[LABEL_LINES_MAX - 1:]), width_px)]
        labels.append(lines)
    return labels


def distinct_parts(texts: Sequence[str]) -> list[str]:
    """Each text without the start and end all of them share ("…" in their place), cut at word edges.

    'v1-5-pruned-emaonly.safetensors' beside 'v1-5-pruned.safetensors' gives '…pruned-emaonly…' and
    '…pruned…'; a shared part is only dropped where every text keeps something of its own.
    """
    if len(set(texts)) < 2:
        return list(texts)
    prefix = _edge(os.path.commonprefix(list(texts)), at_end=True)
    suffix = _edge(os.path.commonprefix([t[::-1] for t in texts])[::-1], at_end=False)
    for cut_prefix, cut_suffix in ((prefix, suffix), (prefix, ""), ("", suffix), ("", "")):
        middles = [t[len(cut_prefix):len(t) - len(cut_suffix)].strip(" ,;:") for t in texts]
        if all(m.strip() for m in middles):
            return [("…" if cut_prefix else "") + m + ("…" if cut_suffix else "") for m in middles]
    return list(texts)


def fixed_lines(fixed: Mapping[str, Any]) -> list[str]:
    """The header pieces of the parameters every cell shares: 'seed: 42', 'positive: a lake at dusk'."""
    pieces = []
    for name, value in fixed.items():
        shown = format_value(value) if isinstance(value, (int, float, str)) else json.dumps(value)
        pieces.append(f"{name}: {shown}")
    return pieces


def _edge(shared: str, *, at_end: bool) -> str:
    """A shared prefix (at_end) or suffix trimmed back to a separator, so no word is split."""
    if len(shared) < 4:
        return ""
    separators = " -_./,:;"
    if at_end:
        cut = max(shared.rfind(c) for c in separators)
        return shared[:cut + 1] if cut >= 0 else ""
    cut = min((i for i in (shared.find(c) for c in separators) if i >= 0), default=-1)
    return shared[cut:] if cut >= 0 else ""


def _wrap(font: Font, text: str, width_px: int) -> list[str]:
    """`text` in lines no wider than `width_px`, broken after spaces and separators where possible."""
    words = re.findall(r"[^\s/_\-.,]*[\s/_\-.,]?", text)
    lines: list[str] = []
    current = ""
    for word in (w for w in words if w):
        if _text_size(font, (current + word).rstrip())[0] <= width_px:
            current += word
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = ""
        for char in word:  # a word wider than the line is broken between characters
            if current and _text_size(font, (current + char).rstrip())[0] > width_px:
                lines.append(current.rstrip())
                current = ""
            current += char
    if current.strip() or not lines:
        lines.append(current.rstrip())
    return lines


def _wrap_pieces(font: Font, pieces: Sequence[str], width_px: int, max_lines: int) -> list[str]:
    """Pieces laid out left to right, three spaces apart, wrapped; the last line cut past `max_lines`."""
    lines: list[str] = []
    current = ""
    for piece in pieces:
        joined = f"{current}   {piece}" if current else piece
        if _text_size(font, joined)[0] <= width_px:
            current = joined
            continue
        if current:
            lines.append(current)
        wrapped = _wrap(font, piece, width_px)
        lines.extend(wrapped[:-1])
        current = wrapped[-1]
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [_fit(font, " ".join(lines[max_lines - 1:]), width_px)]
    return lines


def _metadata_options(pil_format: str, definition: Mapping[str, Any] | None) -> dict[str, Any]:
    """Pillow save options that carry the sweep's definition: a PNG text chunk or the JPEG comment."""
    if definition is None:
        return {}
    text = json.dumps({"version": 1, "sweep": definition}, ensure_ascii=True, separators=(",", ":"), default=str)
    if pil_format == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(GRID_METADATA_KEY, text)
        return {"pnginfo": info}
    return {"comment": text.encode("ascii")}


def read_grid_metadata(image: Image.Image) -> dict[str, Any] | None:
    """The sweep a grid image shows, from its metadata (None if it carries none)."""
    text = image.info.get(GRID_METADATA_KEY) if image.format == "PNG" else image.info.get("comment")
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "sweep" in record else None


def _thumb(folder: Path, cell: GridCell | None, side: int, kept: Image.Image | None = None) -> Image.Image | None:
    """The cell's picture shrunk to fit side x side, from its kept thumbnail when that will do (`kept`: that
    thumbnail in memory, as write_thumbnail handed it back)."""
    if cell is None or cell.image is None:
        return None
    if kept is not None and max(kept.size) >= side:  # as _open_smallest would have read it back from its file
        return _shrunk(kept, side)
    try:
        with _open_smallest(folder, cell.image, side) as image:
            return _shrunk(image, side)
    except OSError as exc:
        raise GridFailed(f"cannot read cell {cell.index}'s image {cell.image}: {exc}") from exc


def _paste(canvas: Image.Image, draw: ImageDraw.ImageDraw, cell: GridCell | None, thumb: Image.Image | None,
           corner: tuple[int, int], side: int, font: Font) -> None:
    left, top = corner
    if thumb is None:
        draw.rectangle((left, top, left + side - 1, top + side - 1), fill=_MISSING)
        text = "missing" if cell is None else cell.status
        draw.text((left + side / 2, top + side / 2), text, font=font, fill=_INK, anchor="mm")
        return
    canvas.paste(thumb, (left + (side - thumb.width) // 2, top + (side - thumb.height) // 2))
    thumb.close()


def _kept_thumbnail(folder: Path, cell: GridCell) -> str | None:
    """The page shows a cell's thumbnail in its table (the viewer opens the image itself)."""
    kept = _fresh_thumbnail(folder, cell.image) if cell.image is not None else None
    return kept.relative_to(folder).as_posix() if kept is not None else None


def _fresh_thumbnail(folder: Path, image: Path) -> Path | None:
    """The image's kept thumbnail, unless there is none or the image was written after it (a rerun cell)."""
    kept = thumbnail_path(folder, image)
    try:
        return kept if kept.stat().st_mtime_ns >= (folder / image).stat().st_mtime_ns else None
    except OSError:
        return None  # no thumbnail (or no image: opening it says so)


def _open_smallest(folder: Path, image: Path, side: int) -> Image.Image:
    """The fresh kept thumbnail, open, when it is at least `side` (or the whole image), else the image."""
    from PIL import Image

    kept = _fresh_thumbnail(folder, image)
    if kept is not None:
        try:
            thumb = Image.open(kept)
        except OSError:
            thumb = None  # unreadable: the image stands in
        if thumb is not None:
            if max(thumb.size) >= side:
                return thumb
            thumb.close()
    return Image.open(folder / image)


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    """An RGB copy of `image` no larger than side x side, aspect kept."""
    image.draft("RGB", (side, side))  # JPEG decodes straight to a smaller size
    image.thumbnail((side, side))
    return image.convert("RGB")


def _chunks(axis: GridAxis, size: int) -> list[GridAxis]:
    return [GridAxis(axis.name, axis.values[i:i + size]) for i in range(0, len(axis.values), size)]


def _fit(font: Font, text: str, width: int) -> str:
    """The text, shortened with an ellipsis to fit `width` pixels."""
    if _text_size(font, text)[0] <= width:
        return text
    while len(text) > 1 and _text_size(font, text + "…")[0] > width:
        text = text[:-1]
    return text + "…"


def _text_size(font: Font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def _key(values: Mapping[str, Value], axes: Sequence[GridAxis]) -> tuple[Any, ...]:
    return tuple(_comparable(values.get(axis.name)) for axis in axes)


def _comparable(value: Value | None) -> Any:
    # JSON round trips turn 6.0 into 6 and back; compare numbers by value, text by text
    return ("n", float(value)) if isinstance(value, (int, float)) else ("s", value)
