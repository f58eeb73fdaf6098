"""The results page in a real headless Chromium: grid, axis labels, swapping axes, third axis, viewer."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_orchestrator.grid import GridAxis, GridCell, write_results_page, write_thumbnail

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser

X = GridAxis("cfg", (6, 8, 10))
Y = GridAxis("denoise", (0.3, 0.6))
Z = GridAxis("sampler", ("euler", "dpm++ 2m karras"))
COLOURS = {"euler": [(230, 40, 40), (40, 200, 60), (40, 60, 230)], "dpm++ 2m karras": [(240, 200, 20)] * 3}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page_path(tmp_path: Path) -> Path:
    """A results page over a 3 x 2 x 2 sweep whose images are flat colours: the column picks the colour."""
    (tmp_path / "images").mkdir()
    cells = []
    for sampler in Z.values:
        for denoise in Y.values:
            for column, cfg in enumerate(X.values):
                index = len(cells)
                image = Path("images") / f"{index:05d}.png"
                if not (sampler == "dpm++ 2m karras" and denoise == 0.6 and cfg == 10):
                    Image.new("RGB", (64, 64), COLOURS[str(sampler)][column]).save(tmp_path / image)
                    cells.append(GridCell(index, {"cfg": cfg, "denoise": denoise, "sampler": sampler}, image,
                                          details={"params": {"cfg": float(cfg), "seed": 7}, "prompt_id": f"p{index}"}))
                else:
                    cells.append(GridCell(index, {"cfg": cfg, "denoise": denoise, "sampler": sampler}, None,
                                          status="failed", details={"error": "node 6 ran out of memory"}))
    return write_results_page(tmp_path, [X, Y, Z], cells, title="img2img: cfg × denoise × sampler </script>")


def _open(browser: Any, path: Path) -> Any:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_selector("#grid td.cell img")
    page.wait_for_function("Array.from(document.images).every((i) => i.complete)")
    page.errors = errors
    return page


def _labels(page: Any, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def _colour_at(screenshot: bytes, box: dict[str, float]) -> tuple[int, ...]:
    with Image.open(io.BytesIO(screenshot)) as image:
        return tuple(image.convert("RGB").getpixel((int(box["x"] + box["width"] / 2),
                                                    int(box["y"] + box["height"] / 2))))


def test_the_page_embeds_its_data_and_links_images_relatively(page_path: Path) -> None:
    text = page_path.read_text("utf-8")
    assert "<\\/script>" in text and text.count("</script>") == 1  # the title cannot close the script early
    data = json.loads(re.search(r"const DATA = (.*);\n", text)[1].replace("<\\/", "</"))  # type: ignore[index]
    assert [a["name"] for a in data["axes"]] == ["cfg", "denoise", "sampler"]
    assert data["cells"][0]["image"] == "images/00000.png"
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_the_grid_shows_labelled_axes_and_the_images(browser: Any, page_path: Path) -> None:
    page = _open(browser, page_path)
    assert _labels(page, "#grid thead th.x-label") == ["cfg = 6", "cfg = 8", "cfg = 10"]
    assert _labels(page, "#grid tbody th.y-label") == ["denoise = 0.3", "denoise = 0.6"]
    assert page.locator("#grid td.cell img").count() == 6
    shot = page.screenshot(full_page=True)
    cells = page.locator("#grid tbody tr").first.locator("td.cell")
    seen = [_colour_at(shot, cells.nth(i).bounding_box()) for i in range(3)]
    assert seen == COLOURS["euler"]  # the screenshot shows each image in its column
    assert page.errors == []
    page.close()


def test_swapping_axes_changes_the_layout(browser: Any, page_path: Path) -> None:
    page = _open(browser, page_path)
    before = page.locator("#grid").bounding_box()
    page.click("#swap")
    page.wait_for_function("Array.from(document.images).every((i) => i.complete)")
    assert _labels(page, "#grid thead th.x-label") == ["denoise = 0.3", "denoise = 0.6"]
    assert _labels(page, "#grid tbody th.y-label") == ["cfg = 6", "cfg = 8", "cfg = 10"]
    after = page.locator("#grid").bounding_box()
    assert after["height"] > before["height"] and after["width"] < before["width"]  # 3 rows x 2 now
    shot = page.screenshot(full_page=True)
    rows = page.locator("#grid tbody tr")
    column = [_colour_at(shot, rows.nth(i).locator("td.cell").first.bounding_box()) for i in range(3)]
    assert column == COLOURS["euler"]  # the cfg colours now run down the first column
    page.close()


def test_picking_the_third_axis_value_shows_its_cells(browser: Any, page_path: Path) -> None:
    page = _open(browser, page_path)
    picker = page.locator("select.page-axis[data-axis=sampler]")
    assert picker.locator("option").all_inner_texts() == ["euler", "dpm++ 2m karras"]
    picker.select_option(label="dpm++ 2m karras")
    page.wait_for_function("Array.from(document.images).every((i) => i.complete)")
    shot = page.screenshot(full_page=True)
    first = page.locator("#grid td.cell").first
    assert _colour_at(shot, first.bounding_box()) == (240, 200, 20)
    failed = page.locator("#grid td.cell.failed")
    assert failed.count() == 1 and failed.inner_text() == "failed"
    page.close()


def test_choosing_an_axis_as_x_moves_the_old_x_to_y(browser: Any, page_path: Path) -> None:
    page = _open(browser, page_path)
    page.select_option("#x-axis", "sampler")
    assert _labels(page, "#grid thead th.x-label") == ["sampler = euler", "sampler = dpm++ 2m karras"]
    assert page.locator("select.page-axis").evaluate_all("els => els.map(e => e.dataset.axis)") == ["cfg"]
    page.close()


def test_clicking_a_cell_opens_it_with_its_parameters(browser: Any, page_path: Path) -> None:
    page = _open(browser, page_path)
    page.locator("#grid td.cell").nth(1).click()
    viewer = page.locator("#viewer")
    viewer.wait_for(state="visible")
    assert page.locator("#viewer-image").get_attribute("src") == "images/00001.png"
    details = dict(zip(page.locator("#viewer-details td:first-child").all_inner_texts(),
                       page.locator("#viewer-details td:last-child").all_inner_texts()))
    assert details["cfg"] == "8" and details["denoise"] == "0.3" and details["prompt_id"] == "p1"
    assert details["seed"] == "7" and "params" not in details  # each parameter on its own row
    page.keyboard.press("Escape")
    viewer.wait_for(state="hidden")
    page.close()


def test_the_table_shows_kept_thumbnails_and_the_viewer_the_image(browser: Any, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (600, 600), (200, 30, 30)).save(tmp_path / "images" / "00000.png")
    Image.new("RGB", (600, 600), (30, 30, 200)).save(tmp_path / "images" / "00001.png")
    write_thumbnail(tmp_path, Path("images/00000.png"), thumbnail_px=256).close()  # cell 1 has none: its image is shown
    cells = [GridCell(i, {"cfg": cfg}, Path(f"images/{i:05d}.png")) for i, cfg in enumerate((6, 8))]
    page = _open(browser, write_results_page(tmp_path, [GridAxis("cfg", (6, 8))], cells, title="thumbs"))
    sources = [page.locator("#grid td.cell img").nth(i).get_attribute("src") for i in range(2)]
    assert sources == ["thumbnails/images/00000.png", "images/00001.png"]
    widths = page.evaluate("Array.from(document.querySelectorAll('#grid td.cell img')).map((i) => i.naturalWidth)")
    assert widths == [256, 600]  # the browser loaded the small file for the first cell (cells are 200 px)
    page.locator("#grid td.cell").first.click()
    page.locator("#viewer").wait_for(state="visible")
    assert page.locator("#viewer-image").get_attribute("src") == "images/00000.png"
    page.keyboard.press("Escape")
    # cells made larger than the 256 px thumbnail show the full image instead of a blurred one
    page.locator("#thumb-size").fill("512")
    page.wait_for_function("document.querySelector('#grid td.cell img').naturalWidth === 600")
    assert page.locator("#grid td.cell img").first.get_attribute("src") == "images/00000.png"
    assert page.errors == []
    page.close()


@pytest.fixture
def relative_sweep(comfy: Any, sample_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 2-cell sweep run with a relative --out, then moved: the folder as a user would pass it on."""
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(main, ["sweep", "img2img", "--server", comfy.url, "--set", f"image={sample_image}",
                                     "--set", "seed=42", "--set", "positive=a lake at dusk", "--axis", "cfg=6,8",
                                     "--out", "demo-out"])
    assert done.exit_code == 0, done.output
    moved = tmp_path / "elsewhere" / "results"
    moved.parent.mkdir()
    shutil.move("demo-out", moved)
    return moved


@pytest.fixture
def http_root(relative_sweep: Path) -> Iterator[str]:
    """The moved folder served over HTTP on a free loopback port."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            """Keep the test's output clean."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(relative_sweep)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("where", ["disk", "http"])
def test_every_link_and_the_header_work_from_a_relative_out_moved_or_served(browser: Any, relative_sweep: Path,
                                                                          http_root: str, where: str) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto((relative_sweep / "index.html").as_uri() if where == "disk" else http_root)
    page.wait_for_selector("#grid td.cell img")
    page.wait_for_function("Array.from(document.images).every((i) => i.complete)")
    assert page.evaluate("Array.from(document.querySelectorAll('#grid img')).map((i) => i.naturalWidth > 0)") == [True, True]
    links = page.locator("#grids a")
    assert links.all_inner_texts() == ["grid.jpg"]
    loaded = page.evaluate("async (href) => { const i = new Image(); i.src = href; await i.decode(); "
                           "return i.naturalWidth; }", links.first.get_attribute("href"))
    assert loaded > 0  # the grid image's link resolves from the page
    fixed = dict(zip(page.locator("#fixed span").evaluate_all("els => els.map(e => e.dataset.name)"),
                     page.locator("#fixed span b").all_inner_texts()))
    assert fixed["seed"] == "42" and fixed["positive"] == "a lake at dusk" and fixed["steps"] == "20"
    assert fixed["sampler"] == "euler" and "checkpoint" in fixed and "cfg" not in fixed  # cfg is the axis
    page.close()
