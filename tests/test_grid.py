"""Grid images: layout, labels, pages per third-axis value, thumbnails for large sweeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from comfy_orchestrator.errors import GridFailed
from comfy_orchestrator.grid import (
    MAX_GRID_SIDE_PX,
    GridAxis,
    GridCell,
    grid_images,
    make_thumbnail,
    thumbnail_path,
    write_results_page,
)

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30), (200, 40, 200), (30, 200, 200)]


def _cells(folder: Path, x: GridAxis, y: GridAxis, size: int = 64) -> list[GridCell]:
    cells = []
    for row, y_value in enumerate(y.values):
        for column, x_value in enumerate(x.values):
            name = Path(f"cell_{row}_{column}.png")
            Image.new("RGB", (size, size), COLOURS[(row * len(x.values) + column) % len(COLOURS)]).save(
                folder / name)
            cells.append(GridCell(len(cells), {x.name: x_value, y.name: y_value}, name))
    return cells


def _near(seen: tuple[int, ...], colour: tuple[int, ...], tolerance: int = 8) -> bool:
    """Whether a pixel shows `colour`, allowing for the grid's JPEG encoding."""
    return all(abs(a - b) <= tolerance for a, b in zip(seen, colour))


def _ink_columns(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many dark pixels a box holds: text is there when it is non-zero."""
    region = image.crop(box).convert("L")
    return sum(region.histogram()[:128])


def test_cells_land_in_their_row_and_column(tmp_path: Path) -> None:
    x, y = GridAxis("cfg", (6, 8, 10)), GridAxis("denoise", (0.3, 0.6))
    cells = _cells(tmp_path, x, y)
    [path] = grid_images(tmp_path, [x, y], cells, thumbnail_px=64)
    assert path == tmp_path / "grid.jpg"
    with Image.open(path) as grid:
        grid = grid.convert("RGB")
        # find each cell's colour in the grid and check the order of their centres
        centres = {}
        for index, colour in enumerate(COLOURS):
            spots = [(px, py) for px in range(0, grid.width, 4) for py in range(0, grid.height, 4)
                     if _near(grid.getpixel((px, py)), colour)]
            assert spots, f"cell {index} is missing"
            centres[index] = (sum(p[0] for p in spots) / len(spots), sum(p[1] for p in spots) / len(spots))
    assert centres[0][0] < centres[1][0] < centres[2][0]  # columns follow the x values
    assert abs(centres[0][1] - centres[2][1]) < 2 and centres[3][1] > centres[0][1] + 32  # rows follow y
    assert abs(centres[0][0] - centres[3][0]) < 2


def test_rows_and_columns_carry_labels(tmp_path: Path) -> None:
    x, y = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3, 0.6))
    [path] = grid_images(tmp_path, [x, y], _cells(tmp_path, x, y), thumbnail_px=128)
    with Image.open(path) as grid:
        label_width = grid.width - 2 * 128
        assert label_width > 60  # room for "denoise = 0.3"
        assert _ink_columns(grid, (0, 40, label_width - 4, grid.height)) > 50  # row labels
        assert _ink_columns(grid, (label_width, 0, grid.width, 30)) > 50  # column labels


def test_a_third_axis_makes_one_grid_per_value(tmp_path: Path) -> None:
    x, y, z = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,)), GridAxis("sampler", ("euler", "dpm++ 2m"))
    cells = []
    for sampler in z.values:
        for cell in _cells(tmp_path, x, y):
            cells.append(GridCell(len(cells), dict(cell.values, sampler=sampler), cell.image))
    paths = grid_images(tmp_path, [x, y, z], cells, thumbnail_px=64)
    assert [p.name for p in paths] == ["grid_sampler-euler.jpg", "grid_sampler-dpm++-2m.jpg"]


def test_missing_and_failed_cells_leave_a_marked_gap(tmp_path: Path) -> None:
    x, y = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,))
    cells = [GridCell(0, {"cfg": 6, "denoise": 0.3}, None, status="failed")]
    [path] = grid_images(tmp_path, [x, y], cells, thumbnail_px=64)
    with Image.open(path) as grid:
        assert grid.convert("RGB").getpixel((grid.width - 10, grid.height - 10)) == (225, 225, 225)


def test_large_sweeps_get_smaller_thumbnails(tmp_path: Path) -> None:
    x, y = GridAxis("seed", tuple(range(300))), GridAxis("cfg", (7,))
    source = tmp_path / "one.png"
    Image.new("RGB", (512, 512), (10, 120, 200)).save(source)
    cells = [GridCell(i, {"seed": i, "cfg": 7}, Path("one.png")) for i in range(300)]
    paths = grid_images(tmp_path, [x, y], cells, thumbnail_px=256)
    assert [p.name for p in paths] == ["grid_part-1.jpg", "grid_part-2.jpg", "grid_part-3.jpg"]  # 128 + 128 + 44
    for path in paths:
        with Image.open(path) as grid:
            assert grid.width <= MAX_GRID_SIDE_PX + 400 and grid.height < 200


def test_one_axis_makes_one_row(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), (0, 0, 0)).save(tmp_path / "a.png")
    cells = [GridCell(i, {"cfg": v}, Path("a.png")) for i, v in enumerate((6, 8, 10))]
    [path] = grid_images(tmp_path, [GridAxis("cfg", (6, 8, 10))], cells, thumbnail_px=64)
    with Image.open(path) as grid:
        assert grid.width > 3 * 64 and grid.height < 2 * 64


def test_an_unreadable_image_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    cells = [GridCell(0, {"cfg": 6}, Path("bad.png"))]
    with pytest.raises(GridFailed, match="cell 0's image bad.png"):
        grid_images(tmp_path, [GridAxis("cfg", (6,))], cells)


def test_long_row_labels_are_cut_so_the_grid_stays_narrow(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), (0, 0, 0)).save(tmp_path / "a.png")
    prompts = ("a very long prompt " * 20, "short")
    y = GridAxis("positive", prompts)
    cells = [GridCell(i, {"cfg": 6, "positive": p}, Path("a.png")) for i, p in enumerate(prompts)]
    [path] = grid_images(tmp_path, [GridAxis("cfg", (6,)), y], cells, thumbnail_px=64)
    with Image.open(path) as grid:
        assert grid.width < 64 + 160 + 40


def _colour_at_centre(path: Path) -> tuple[int, ...]:
    with Image.open(path) as grid:
        rgb = grid.convert("RGB")
        # the only cell sits at the bottom right, below the labels
        return tuple(rgb.getpixel((rgb.width - 40, rgb.height - 40)))


def test_a_kept_thumbnail_stands_in_for_its_image(tmp_path: Path) -> None:
    Image.new("RGB", (512, 384), (200, 30, 30)).save(tmp_path / "a.png")
    kept = make_thumbnail(tmp_path, Path("a.png"), thumbnail_px=128)
    assert kept == thumbnail_path(tmp_path, Path("a.png")) == tmp_path / "thumbnails" / "a.png"
    with Image.open(kept) as thumb:
        assert thumb.size == (128, 96)  # aspect kept
    # paint the thumbnail another colour: the grid must show the thumbnail's, proving it was used
    Image.new("RGB", (128, 96), (30, 30, 200)).save(kept)
    cells = [GridCell(0, {"cfg": 6}, Path("a.png"))]
    [grid] = grid_images(tmp_path, [GridAxis("cfg", (6,))], cells, thumbnail_px=128)
    assert _near(_colour_at_centre(grid), (30, 30, 200))


def test_a_thumbnail_older_than_its_image_or_too_small_is_not_used(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (256, 256), (200, 30, 30)).save(image)
    kept = make_thumbnail(tmp_path, Path("a.png"), thumbnail_px=64)
    Image.new("RGB", (64, 64), (30, 30, 200)).save(kept)
    cells = [GridCell(0, {"cfg": 6}, Path("a.png"))]
    # too small for 128 px cells: the grid goes back to the image
    [grid] = grid_images(tmp_path, [GridAxis("cfg", (6,))], cells, thumbnail_px=128)
    assert _near(_colour_at_centre(grid), (200, 30, 30))
    # big enough, but the image was rewritten after it (a rerun cell): the image wins again
    Image.new("RGB", (128, 128), (30, 30, 200)).save(kept)
    Image.new("RGB", (256, 256), (30, 200, 30)).save(image)
    stamp = kept.stat().st_mtime_ns
    os.utime(image, ns=(stamp + 10**9, stamp + 10**9))
    [grid] = grid_images(tmp_path, [GridAxis("cfg", (6,))], cells, thumbnail_px=128)
    assert _near(_colour_at_centre(grid), (30, 200, 30))
    # and the results page does not offer the stale thumbnail either
    page = write_results_page(tmp_path, [GridAxis("cfg", (6,))], cells, title="t").read_text("utf-8")
    assert '"thumbnail": null' in page and "thumbnails/a.png" not in page


def test_a_thumbnail_of_an_unreadable_image_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(GridFailed, match="thumbnail of bad.png"):
        make_thumbnail(tmp_path, Path("bad.png"))
    assert not list((tmp_path / "thumbnails").glob("*"))  # nothing half-written left behind


def test_png_grids_on_request_keep_every_pixel(tmp_path: Path) -> None:
    x, y = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,))
    [path] = grid_images(tmp_path, [x, y], _cells(tmp_path, x, y), thumbnail_px=64, image_format="png")
    assert path.name == "grid.png"
    with Image.open(path) as grid:
        colours = {colour for _, colour in grid.convert("RGB").getcolors(maxcolors=100_000) or []}
    assert COLOURS[0] in colours and COLOURS[1] in colours  # exact: lossless


def test_an_unknown_grid_format_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(GridFailed, match="unknown grid format 'gif': use one of jpg, png"):
        grid_images(tmp_path, [GridAxis("cfg", (6,))], [], image_format="gif")
