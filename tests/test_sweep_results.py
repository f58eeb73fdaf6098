"""A sweep's thumbnails and grids made while it runs: the same pictures as drawn at the end, resumes included."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_orchestrator.farm import Farm
from comfy_orchestrator.grid import thumbnail_path
from comfy_orchestrator.journal import Journal
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_progress import SweepProgress
from comfy_orchestrator.sweep_results import SweepResults, shared_parameters
from comfy_orchestrator.sweep_run import plan_sweep, run_sweep
from comfy_orchestrator.templates import Templates


def _sweep(library: Templates, image: Path, template: str = "img2img", *axes: str, batch: bool = False) -> Sweep:
    fixed: dict[str, Any] = {"image": str(image)} if batch else {"image": str(image), "seed": 42}
    return Sweep(library.get(template), tuple(parse_axis(a) for a in axes or ("denoise=0.3:0.9:0.3", "cfg=4,7,10")),
                 fixed, batch_seeds=batch)


def _pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def test_a_resumed_sweeps_grid_is_the_grid_of_a_clean_run(comfy: Any, library: Templates, sample_image: Path,
                                                          tmp_path: Path) -> None:
    sweep = _sweep(library, sample_image)
    comfy.fail_next(message="out of memory", node_type="KSampler")
    first = run_sweep(sweep, tmp_path / "resumed", Farm([comfy.url]), grid_format="png")
    assert (first.done, first.failed) == (8, 1)
    [with_failure] = first.grids
    failed_picture = _pixels(with_failure)
    again = run_sweep(sweep, tmp_path / "resumed", Farm([comfy.url]), grid_format="png")
    clean = run_sweep(sweep, tmp_path / "clean", Farm([comfy.url]), grid_format="png")
    assert (again.ran, again.done, clean.done) == (1, 9, 9)
    [resumed_grid], [clean_grid] = again.grids, clean.grids
    # the 8 cells of the first run were painted from their thumbnails, the retried one as it arrived
    assert _pixels(resumed_grid) == _pixels(clean_grid) != failed_picture


def test_every_batched_image_gets_its_thumbnail_and_its_place_in_the_grid(comfy: Any, library: Templates, sample_image: Path,
                                                     tmp_path: Path) -> None:
    sweep = _sweep(library, sample_image, "variations", "cfg=6,9", "seed=100,200,300", batch=True)
    report = run_sweep(sweep, tmp_path / "batched", Farm([comfy.url]), grid_format="png")
    assert report.done == 6
    rows = [json.loads(line) for line in (tmp_path / "batched" / "manifest.jsonl").read_text("utf-8").splitlines()]
    for row in rows:
        assert thumbnail_path(tmp_path / "batched", Path(row["files"][0])).is_file()
    [grid] = report.grids
    with Image.open(grid) as picture:  # every slot got a picture: no grey "missing" square is left
        grey = picture.convert("RGB").getcolors(maxcolors=1 << 20)
    assert grey is not None and not any(colour == (225, 225, 225) and count > 64 * 64 for count, colour in grey)


def _page_cells(folder: Path) -> list[dict[str, Any]]:
    text = (folder / "index.html").read_text("utf-8")
    found = re.search(r"const DATA = (.*?);\n", text)
    assert found is not None
    cells: list[dict[str, Any]] = json.loads(found.group(1).replace("<\\/", "</"))["cells"]
    return cells


def test_a_sweep_cut_off_by_ctrl_c_keeps_its_manifests_and_thumbnails_and_a_resume_writes_the_rest(
        comfy: Any, library: Templates, sample_image: Path, tmp_path: Path) -> None:
    sweep, out = _sweep(library, sample_image), tmp_path / "cut"

    def ctrl_c(progress: SweepProgress) -> None:  # as a Ctrl-C lands: on the main thread, once 3 cells are in
        if progress.done >= 3 and threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, Farm([comfy.url]), on_progress=ctrl_c, grid_format="png")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()]
    done = [row for row in rows if row["status"] == "done"]
    assert len(rows) == 9 and len(done) >= 3 and len((out / "manifest.csv").read_text("utf-8").splitlines()) == 10
    for row in done:  # each image is in place; a thumbnail, where one was begun, is whole
        assert (out / row["files"][0]).is_file()
    assert not list(out.rglob("*.part")) and not (out / ".incoming").exists()
    assert not (out / "index.html").exists() and not list(out.glob("grid*"))  # written once the sweep is done
    report = run_sweep(sweep, out, Farm([comfy.url]), grid_format="png")
    assert (report.done, report.skipped) == (9, len(done))
    assert all(cell["thumbnail"] == f"thumbnails/{cell['image']}" for cell in _page_cells(out))
    assert [path.name for path in report.grids] == ["grid.png"] and report.grids[0].is_file()


def test_the_page_links_every_cells_thumbnail_and_the_grid(comfy: Any, library: Templates, sample_image: Path,
                                                           tmp_path: Path) -> None:
    report = run_sweep(_sweep(library, sample_image), tmp_path / "out", Farm([comfy.url]))
    cells = _page_cells(tmp_path / "out")
    assert len(cells) == 9 and all(cell["thumbnail"] == f"thumbnails/{cell['image']}" for cell in cells)
    assert all((tmp_path / "out" / cell["thumbnail"]).is_file() for cell in cells)
    assert report.grids == (tmp_path / "out" / "grid.jpg",) and report.grids[0].is_file()
    assert '"grids": ["grid.jpg"]' in (tmp_path / "out" / "index.html").read_text("utf-8")


def test_writing_the_results_does_the_callers_last_work_once_and_writes_the_grid_and_page(
        comfy: Any, library: Templates, sample_image: Path, tmp_path: Path) -> None:
    sweep, out = _sweep(library, sample_image), tmp_path / "out"
    run_sweep(sweep, out, Farm([comfy.url]), grid_format="png")
    (out / "index.html").unlink()
    (out / "grid.png").unlink()
    with Journal.open(out, digest=sweep.digest(), definition=sweep.definition()) as journal:
        records = list(journal.records())
    results = SweepResults(out, sweep, plan_sweep(sweep).jobs, records, thumbnail_px=256, grid_format="png")
    done: list[str] = []
    with results:  # the run is over: every image is in place, nothing new to add
        pass
    grids, page = results.write(records, meanwhile=lambda: done.append("closed"))
    assert done == ["closed"]
    assert grids == [out / "grid.png"] and grids[0].is_file() and page == out / "index.html" and page.is_file()
    assert all(cell["thumbnail"] == f"thumbnails/{cell['image']}" for cell in _page_cells(out))


def test_shared_parameters_are_the_header_essentials_first() -> None:
    params = [{"cfg": 6, "seed": 1, "positive": "a lake", "steps": 20, "lora": ""},
              {"cfg": 8, "seed": 1, "positive": "a lake", "steps": 20, "lora": ""}]
    assert list(shared_parameters(params, exclude={"cfg"})) == ["positive", "seed", "steps"]
    assert shared_parameters(params, exclude={"cfg"}, shaping={"seed"}) == {"seed": 1}
    assert shared_parameters([], exclude=set()) == {}
