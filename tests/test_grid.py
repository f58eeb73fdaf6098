"""Grid images: layout, labels, pages per third-axis value, thumbnails for large sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageFont

from comfy_orchestrator.errors import GridFailed
from comfy_orchestrator.grid import (
    MAX_GRID_SIDE_PX,
    PAINTED_PIXELS_MAX,
    GridAxis,
    GridCell,
    GridPainter,
    axis_labels,
    distinct_parts,
    grid_images,
    read_grid_metadata,
    results_page,
    save_results_page,
    thumbnail_path,
    write_results_page,
    write_thumbnail,
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
    write_thumbnail(tmp_path, Path("a.png"), thumbnail_px=128).close()
    kept = thumbnail_path(tmp_path, Path("a.png"))
    assert kept == tmp_path / "thumbnails" / "a.png"
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
    write_thumbnail(tmp_path, Path("a.png"), thumbnail_px=64).close()
    kept = thumbnail_path(tmp_path, Path("a.png"))
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
        write_thumbnail(tmp_path, Path("bad.png"))
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


SAMPLERS = ("dpm++ 2m karras", "dpm++ 2m sde karras", "dpm++ 2m sde gpu karras", "euler")
CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly-fp16.safetensors",
               "v1-5-pruned.safetensors")


@pytest.mark.parametrize("values", [SAMPLERS, CHECKPOINTS])
@pytest.mark.parametrize("side", [64, 128, 256])
def test_long_axis_values_are_wrapped_never_cut_where_they_differ(values: tuple[str, ...], side: int) -> None:
    font = ImageFont.load_default(size=max(11, side // 12))
    labels = axis_labels(font, GridAxis("name", values), side, max_lines=3)
    shown = [" ".join(lines).replace(" ", "") for lines in labels]
    for text, part in zip(values, distinct_parts(values)):
        # the whole value, or at least the part that tells it apart, is there in full
        assert text.replace(" ", "") in shown[values.index(text)] or part.strip("…").replace(" ", "") in \
            shown[values.index(text)]
    assert len(set(shown)) == len(values)
    for lines in labels:
        assert all(font.getbbox(line)[2] - font.getbbox(line)[0] <= side for line in lines)


@pytest.mark.parametrize(("texts", "parts"), [
    (["v1-5-pruned-emaonly.safetensors", "v1-5-pruned.safetensors"], ["…pruned-emaonly…", "…pruned…"]),
    (["a cat in the rain, masterpiece", "a dog in the rain, masterpiece"], ["a cat…", "a dog…"]),
    (["portrait of a cat, oil painting", "portrait of a dog, oil painting"], ["…cat…", "…dog…"]),
    (["euler", "euler_ancestral"], ["euler", "euler_ancestral"]),  # nothing would be left of 'euler'
    (["same", "same"], ["same", "same"]),
])
def test_distinct_parts_keep_what_tells_values_apart(texts: list[str], parts: list[str]) -> None:
    assert distinct_parts(texts) == parts


@pytest.mark.parametrize("image_format", ["jpg", "png"])
def test_the_grid_has_a_header_of_fixed_parameters_and_the_sweep_in_its_metadata(tmp_path: Path,
                                                                                   image_format: str) -> None:
    x, y = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,))
    cells = _cells(tmp_path, x, y)
    [plain] = grid_images(tmp_path, [x, y], cells, thumbnail_px=64, image_format=image_format, name="plain")
    definition = {"template": "img2img", "axes": [{"name": "cfg", "values": [6, 8]}], "fixed": {"seed": 42}}
    fixed = {"positive": "a lake at dusk", "seed": 42, "steps": 20, "sampler": "euler",
             "checkpoint": "v1-5-pruned-emaonly.safetensors"}
    [headed] = grid_images(tmp_path, [x, y], cells, thumbnail_px=64, image_format=image_format, fixed=fixed,
                           definition=definition)
    with Image.open(plain) as without, Image.open(headed) as grid:
        assert grid.width == without.width and grid.height > without.height  # the header's lines
        header = grid.crop((0, 0, grid.width, grid.height - without.height))
        assert sum(header.convert("L").histogram()[:160]) > 0  # ink: text is drawn there
        assert read_grid_metadata(grid) == {"version": 1, "sweep": definition}
        assert read_grid_metadata(without) is None


def _pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


@pytest.mark.parametrize("max_pixels", [PAINTED_PIXELS_MAX, 1], ids=["painted-as-cells-arrive", "drawn-at-the-end"])
def test_a_grid_painted_cell_by_cell_is_the_grid_drawn_at_the_end(tmp_path: Path, max_pixels: int) -> None:
    x, y, z = GridAxis("cfg", (6, 8, 10)), GridAxis("denoise", (0.3, 0.6)), GridAxis("steps", (10, 20))
    cells = [GridCell(cell.index + 6 * page, {**cell.values, "steps": steps}, cell.image)
             for page, steps in enumerate(z.values) for cell in _cells(tmp_path, x, y)]
    failed = GridCell(cells[4].index, cells[4].values, None, "failed")
    final = [*cells[:4], failed, *cells[5:-1]]  # one cell failed, the last one never ran ("missing")
    header = {"seed": 42, "positive": "a lake"}
    painter = GridPainter(tmp_path, [x, y, z], thumbnail_px=64, image_format="png", name="painted", fixed=header,
                          max_pixels=max_pixels)
    assert painter.painting == (max_pixels > 1)
    painter.paint(GridCell(cells[2].index, cells[2].values, None, "running"))  # shown, then replaced below
    for cell in reversed(cells[:4] + cells[5:-1]):  # in any order, as cells finish
        painter.paint(cell)
    painted = painter.save(final)
    drawn = grid_images(tmp_path, [x, y, z], final, thumbnail_px=64, image_format="png", name="drawn", fixed=header)
    assert [p.name for p in painted] == ["painted_steps-10.png", "painted_steps-20.png"]
    for one, other in zip(painted, drawn, strict=True):
        assert _pixels(one) == _pixels(other)  # the same picture, pixel for pixel


def test_a_painted_cell_is_repainted_when_its_image_changed(tmp_path: Path) -> None:
    x, y = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,))
    cells = _cells(tmp_path, x, y)
    painter = GridPainter(tmp_path, [x, y], thumbnail_px=64, image_format="png", name="painted")
    for cell in cells:
        painter.paint(cell)
    Image.new("RGB", (32, 96), (10, 10, 10)).save(tmp_path / "rerun.png")  # narrower: the old one must not show
    final = [cells[0], GridCell(cells[1].index, cells[1].values, Path("rerun.png"))]
    [drawn] = grid_images(tmp_path, [x, y], final, thumbnail_px=64, image_format="png", name="drawn")
    assert cells[0].image is not None
    (tmp_path / cells[0].image).unlink()  # a cell shown as it is now is not read again at the end
    [painted] = painter.save(final)
    assert _pixels(painted) == _pixels(drawn)


def test_a_cell_painted_with_its_thumbnail_in_memory_reads_no_file_and_looks_the_same(tmp_path: Path) -> None:
    x, y = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,))
    cells = _cells(tmp_path, x, y, size=200)
    from_files = GridPainter(tmp_path, [x, y], thumbnail_px=64, image_format="png", name="from-files")
    from_memory = GridPainter(tmp_path, [x, y], thumbnail_px=64, image_format="png", name="from-memory")
    for cell in cells:
        assert cell.image is not None
        kept = write_thumbnail(tmp_path, cell.image, thumbnail_px=64)
        with Image.open(thumbnail_path(tmp_path, cell.image)) as written:
            assert kept.tobytes() == written.convert("RGB").tobytes()  # the file holds what is handed back
        from_files.paint(cell)
        thumbnail_path(tmp_path, cell.image).unlink()
        (tmp_path / cell.image).unlink()  # neither the image nor its thumbnail can be read now
        from_memory.paint(cell, kept)
        kept.close()
    [one], [other] = from_files.save(cells), from_memory.save(cells)
    assert _pixels(one) == _pixels(other)


@pytest.mark.parametrize("max_pixels", [PAINTED_PIXELS_MAX, 1], ids=["painted-as-cells-arrive", "drawn-at-the-end"])
def test_a_painter_names_the_grids_it_will_write(tmp_path: Path, max_pixels: int) -> None:
    x, y, z = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,)), GridAxis("steps", (10, 20))
    cells = [GridCell(cell.index + 2 * page, {**cell.values, "steps": steps}, cell.image)
             for page, steps in enumerate(z.values) for cell in _cells(tmp_path, x, y)]
    painter = GridPainter(tmp_path, [x, y, z], thumbnail_px=64, max_pixels=max_pixels)
    named = painter.paths
    assert len(named) == 2 and not any(path.exists() for path in named)
    assert painter.save(cells) == named


def test_the_results_page_made_then_saved_is_the_page_written_at_once(tmp_path: Path) -> None:
    x, y = GridAxis("cfg", (6, 8)), GridAxis("denoise", (0.3,))
    cells = _cells(tmp_path, x, y)
    args = (tmp_path, [x, y], cells)
    written = write_results_page(*args, title="t </script>", grids=[tmp_path / "grid.jpg"]).read_text("utf-8")
    (tmp_path / "index.html").unlink()
    page = save_results_page(tmp_path, results_page(*args, title="t </script>", grids=[tmp_path / "grid.jpg"]))
    assert page == tmp_path / "index.html" and page.read_text("utf-8") == written


def test_a_sweep_loads_pillows_drawing_only_when_it_draws() -> None:
    # a sweep's first prompts do not wait on fonts and drawing: they load with the first thumbnail or grid
    code = ("import sys, comfy_orchestrator.sweep_run; "
            "print(sorted({'PIL.ImageDraw', 'PIL.ImageFont', 'PIL.PngImagePlugin'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"
