"""Running sweeps on the simulated server: files, manifests, grids, resume, retries, batching, memory."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_orchestrator.errors import GraphInvalid, SweepError
from comfy_orchestrator.farm import Farm
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.jobs import content_name
from comfy_orchestrator.journal import JOURNAL_NAME
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.servers import ServerConfig
from comfy_orchestrator.sweep import Sweep, parse_axis
from comfy_orchestrator.sweep_run import SweepProgress, plan_sweep, run_sweep
from comfy_orchestrator.templates import Templates
from tests.conftest import CountingTemplate


def _manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text("utf-8").splitlines()]


def _grid_sweep(library: Templates, image: Path, *extra: str) -> Sweep:
    axes = (parse_axis("denoise=0.3:0.9:0.3"), parse_axis("cfg=4,7,10"), *(parse_axis(t) for t in extra))
    return Sweep(library.get("img2img"), axes, {"image": str(image), "seed": 42})


def test_a_3x3_grid_gives_9_images_a_matching_manifest_and_a_labelled_grid(
        comfy: Any, library: Templates, sample_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen: list[SweepProgress] = []
    report = run_sweep(_grid_sweep(library, sample_image), out, Farm([comfy.url]), on_progress=seen.append)
    assert (report.total, report.done, report.failed, report.ran) == (9, 9, 0, 9)
    images = sorted((out / "images").iterdir())
    assert len(images) == 9 and comfy.counters.prompts_finished == 9
    rows = _manifest(out)
    assert [row["index"] for row in rows] == list(range(9))
    assert sorted(out / f for row in rows for f in row["files"]) == images  # rows match the files exactly
    for row in rows:
        assert row["status"] == "done" and row["prompt_id"] and row["server"] and row["graph_hash"]
        assert row["params"]["denoise"] == row["values"]["denoise"] and row["params"]["cfg"] == row["values"]["cfg"]
        assert row["files"] == [f"images/{row['index']:05d}_denoise-{row['values']['denoise']}"
                                f"_cfg-{row['values']['cfg']}.png"]
    assert [(r["values"]["denoise"], r["values"]["cfg"]) for r in rows][:4] == [(0.3, 4), (0.3, 7), (0.3, 10),
                                                                                (0.6, 4)]
    assert len((out / "manifest.csv").read_text("utf-8").splitlines()) == 10
    # differing denoise gives differing pictures: the cells really ran with their own values
    with Image.open(out / rows[0]["files"][0]) as low, Image.open(out / rows[6]["files"][0]) as high:
        assert low.tobytes() != high.tobytes()
    # each cell's thumbnail was made as it arrived, and the grid was drawn from them
    assert sorted(p.relative_to(out / "thumbnails") for p in (out / "thumbnails").rglob("*.png")) == \
        sorted(Path(row["files"][0]) for row in rows)
    [grid] = report.grids
    with Image.open(grid) as picture:
        assert picture.width > 3 * 256 and picture.height > 3 * 256  # three thumbnails plus labels each way
        labels = picture.convert("L").crop((0, 40, picture.width - 3 * 256 - 8, picture.height))
        assert sum(labels.histogram()[:100]) > 100  # the row labels are drawn
    assert report.page == out / "index.html" and '"denoise"' in report.page.read_text("utf-8")
    assert set(report.phases) == {"prepare", "run", "finish"} and min(report.phases.values()) >= 0
    assert abs(sum(report.phases.values()) - report.elapsed_s) < 0.01  # the phases account for the whole run
    assert seen[-1].done == 9 and seen[-1].running == {} and not (out / ".incoming").exists()


def _page_header(folder: Path) -> dict[str, str]:
    """The results page's header of fixed parameters, read from the data the page embeds."""
    text = (folder / "index.html").read_text("utf-8")
    data = json.loads(re.search(r"const DATA = (.*?);\n", text).group(1).replace("<\\/", "</"))  # type: ignore[union-attr]
    return dict(data["fixed"])


def test_the_header_shows_what_shapes_the_picture_essentials_first(comfy: Any, library: Templates,
                                                                   sample_image: Path, tmp_path: Path) -> None:
    plain = Sweep(library.get("img2img"), (parse_axis("cfg=5,9"),), {"image": str(sample_image), "seed": 42})
    run_sweep(plain, tmp_path / "plain", Farm([comfy.url]))
    header = _page_header(tmp_path / "plain")
    assert list(header)[:8] == ["positive", "negative", "checkpoint", "seed", "steps", "sampler", "scheduler",
                                "denoise"]  # cfg is the axis
    assert header["seed"] == "42" and header["image"] == sample_image.name
    for unused in ("filename_prefix", "width", "height", "size_conditioning", "lora_strength", "upscale_method",
                   "cfg"):
        assert unused not in header, unused  # a file's name, a 0 size that keeps, a strength with no LoRA ...
    # the same parameters shape the picture once the feature they belong to is on
    resized = Sweep(library.get("img2img"), (parse_axis("cfg=5,9"),),
                    {"image": str(sample_image), "width": 128, "lora": "detail.safetensors", "lora_strength": 0.7})
    run_sweep(resized, tmp_path / "resized", Farm([comfy.url]))
    header = _page_header(tmp_path / "resized")
    assert header["width"] == "128" and header["upscale_method"] == "lanczos"
    assert header["lora"] == "detail.safetensors" and header["lora_strength"] == "0.7"
    assert "filename_prefix" not in header


def test_progress_carries_the_running_cells_sampler_steps(comfy: Any, library: Templates, sample_image: Path,
                                                         tmp_path: Path) -> None:
    sweep = Sweep(library.get("img2img"), (parse_axis("cfg=5,9"),), {"image": str(sample_image), "steps": 7})
    seen: list[SweepProgress] = []
    run_sweep(sweep, tmp_path / "out", Farm([comfy.url]), on_progress=seen.append)
    steps = [step for progress in seen for step in progress.steps.values()]
    assert (7, 7) in steps and all(maximum == 7 and 1 <= value <= 7 for value, maximum in steps)
    assert seen[-1].steps == {}  # finished cells leave the step map


def test_a_finished_sweep_run_again_does_nothing(comfy: Any, library: Templates, sample_image: Path,
                                                 tmp_path: Path) -> None:
    sweep = _grid_sweep(library, sample_image)
    run_sweep(sweep, tmp_path, Farm([comfy.url]))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").iterdir()}
    report = run_sweep(sweep, tmp_path, Farm([comfy.url]))
    assert (report.ran, report.skipped, report.done) == (0, 9, 9)
    assert comfy.counters.prompts_started == 9
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "images").iterdir()} == stamps


def test_a_changed_sweep_in_the_same_folder_is_refused(comfy: Any, library: Templates, sample_image: Path,
                                                       tmp_path: Path) -> None:
    run_sweep(_grid_sweep(library, sample_image), tmp_path, Farm([comfy.url]))
    changed = Sweep(library.get("img2img"), (parse_axis("denoise=0.3:0.9:0.3"), parse_axis("cfg=4,8")),
                    {"image": str(sample_image), "seed": 7})
    with pytest.raises(SweepError) as caught:
        run_sweep(changed, tmp_path, Farm([comfy.url]))
    assert str(caught.value) == (f"{tmp_path} holds a different sweep (seed: 42 before, 7 now; axis cfg: 4,7,10 "
                                 "before, 4,8 now); use another --out folder, or delete that one to start over")


def test_a_sweep_checked_first_is_validated_and_rendered_once_when_it_runs(comfy: Any, library: Templates,
                                                                          sample_image: Path, tmp_path: Path) -> None:
    counting = CountingTemplate(library.get("img2img"))
    sweep = Sweep(counting, (parse_axis("denoise=0.3,0.6"), parse_axis("cfg=4,7")), {"image": str(sample_image)})
    sweep.cells()  # as the command line does, to name a bad value before it asks the servers
    report = run_sweep(sweep, tmp_path / "new", Farm([comfy.url]))
    assert report.done == 4 and (counting.validated, counting.rendered) == (4, 4)
    # the picture was read and hashed once for the four prompts: each was told its upload name
    assert counting.image_names == [{"image": content_name(sample_image)}] * 4
    again = run_sweep(sweep, tmp_path / "new", Farm([comfy.url]))  # a resume renders to know what it has
    assert again.skipped == 4 and (counting.validated, counting.rendered) == (4, 8)


def test_a_resume_renders_the_seeds_its_journal_drew_and_no_others(comfy: Any, library: Templates,
                                                                   sample_image: Path, tmp_path: Path) -> None:
    def sweep(counting: CountingTemplate) -> Sweep:  # as the command line builds it: a fresh draw each time
        return Sweep(counting, (parse_axis("seed=random:3"),), {"image": str(sample_image)})

    run_sweep(sweep(CountingTemplate(library.get("img2img"))), tmp_path, Farm([comfy.url]))
    counting = CountingTemplate(library.get("img2img"))
    report = run_sweep(sweep(counting), tmp_path, Farm([comfy.url]))
    assert (report.ran, report.skipped) == (0, 3)
    # this run's own draws are validated (a bad value is said first), the stored ones validated and rendered
    assert (counting.validated, counting.rendered) == (6, 3)


def test_drawn_seeds_are_kept_when_the_same_command_resumes(comfy: Any, library: Templates, sample_image: Path,
                                                            tmp_path: Path) -> None:
    def sweep() -> Sweep:  # as the command line builds it: a fresh random draw each time
        return Sweep(library.get("img2img"), (parse_axis("seed=random:3"),), {"image": str(sample_image)})

    run_sweep(sweep(), tmp_path, Farm([comfy.url]))
    first = [row["values"]["seed"] for row in _manifest(tmp_path)]
    report = run_sweep(sweep(), tmp_path, Farm([comfy.url]))
    assert report.ran == 0 and [row["values"]["seed"] for row in _manifest(tmp_path)] == first
    assert [row["params"]["seed"] for row in _manifest(tmp_path)] == first


def test_a_failed_cell_is_recorded_the_sweep_goes_on_and_a_resume_retries_it(
        comfy: Any, library: Templates, sample_image: Path, tmp_path: Path) -> None:
    comfy.fail_next(message="CUDA error: an illegal memory access was encountered", node_type="KSampler")
    sweep = _grid_sweep(library, sample_image)
    report = run_sweep(sweep, tmp_path, Farm([comfy.url]))
    assert (report.done, report.failed) == (8, 1)
    [failed] = [row for row in _manifest(tmp_path) if row["status"] == "failed"]
    assert "illegal memory access" in failed["error"] and failed["files"] == []
    assert report.failures == {failed["index"]: failed["error"]}
    again = run_sweep(sweep, tmp_path, Farm([comfy.url]))
    assert (again.ran, again.done, again.failed) == (1, 9, 0)
    retried = _manifest(tmp_path)[failed["index"]]
    assert retried["status"] == "done" and retried["attempts"] == failed["attempts"] + 1 and retried["error"] is None


def test_a_cell_that_always_fails_stops_after_its_attempts(sim: Callable[..., list[Any]], library: Templates,
                                                           sample_image: Path, tmp_path: Path) -> None:
    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,))
    server.faults.oom_above(400 * 400)  # the 512-wide cells run out of memory every time
    sweep = Sweep(library.get("img2img"), (parse_axis("width=256,512"),), {"image": str(sample_image)})
    attempts = []
    for _ in range(3):
        report = run_sweep(sweep, tmp_path, Farm([server.url]), max_attempts=2)
        attempts.append(_manifest(tmp_path)[1]["attempts"])
        assert (report.done, report.failed) == (1, 1)
    assert attempts[0] >= 1 and attempts[1] == 2 and attempts[2] == 2  # the third run leaves it alone
    assert "out of memory" in _manifest(tmp_path)[1]["error"]


def test_batched_seeds_run_as_one_prompt_per_cfg_and_record_each_image(
        comfy: Any, library: Templates, sample_image: Path, tmp_path: Path) -> None:
    sweep = Sweep(library.get("variations"), (parse_axis("cfg=6,9"), parse_axis("seed=100,200,300,400")),
                  {"image": str(sample_image)}, batch_seeds=True)
    report = run_sweep(sweep, tmp_path, Farm([comfy.url]))
    assert (report.total, report.done, report.ran) == (8, 8, 2)
    assert comfy.counters.prompts_finished == 2
    rows = _manifest(tmp_path)
    assert [(r["values"]["cfg"], r["batch_index"]) for r in rows] == [(6, 0), (6, 1), (6, 2), (6, 3),
                                                                      (9, 0), (9, 1), (9, 2), (9, 3)]
    assert {r["params"]["seed"] for r in rows} == {100} and {r["params"]["batch_size"] for r in rows} == {4}
    assert len({r["prompt_id"] for r in rows}) == 2
    files = [tmp_path / r["files"][0] for r in rows]
    assert len(set(files)) == 8 and all(f.is_file() for f in files)
    with Image.open(files[0]) as first, Image.open(files[1]) as second:
        assert first.tobytes() != second.tobytes()  # each batch index is its own picture
    # every image is named by the seed it really has and its place in that seed's batch, never 'batch_index'
    assert [r["label"] for r in rows[:2]] == ["cfg=6, seed=100 #1", "cfg=6, seed=100 #2"]
    with (tmp_path / "manifest.csv").open(encoding="utf-8", newline="") as sheet:
        table = list(csv.DictReader(sheet))
    header = (tmp_path / "manifest.csv").read_text("utf-8").splitlines()[0].split(",")
    assert header.count("batch_index") == 1 and header.count("seed") == 1
    assert [(r["seed"], r["batch_index"]) for r in table[:4]] == [("100", "0"), ("100", "1"), ("100", "2"),
                                                                 ("100", "3")]
    text = report.page.read_text("utf-8")
    data = json.loads(re.search(r"const DATA = (.*?);\n", text).group(1))  # type: ignore[union-attr]
    assert [(a["name"], a["labels"]) for a in data["axes"]] == [("cfg", ["6", "9"]),
                                                                ("seed", ["100 #1", "100 #2", "100 #3", "100 #4"])]
    assert data["cells"][1]["values"] == {"cfg": 6, "seed": "100 #2"} and "batch_index" not in text.split("const DATA")[0]
    assert report.grids and not any("batch_index" in json.dumps(a) for a in data["axes"])


def test_cells_sharing_a_prompt_run_back_to_back(comfy: Any, library: Templates, sample_image: Path,
                                                 tmp_path: Path) -> None:
    sweep = Sweep(library.get("img2img"), (parse_axis("cfg=5,6,7"), parse_axis("positive=a lake,a forest")),
                  {"image": str(sample_image)})
    plan = plan_sweep(sweep)
    prompts = [job.graph["2"].inputs["text"] for job in plan.jobs]
    assert prompts == ["a lake"] * 3 + ["a forest"] * 3  # grouped, though the grid alternates them
    run_sweep(sweep, tmp_path, Farm([comfy.url]))
    # one server runs them in order, so each prompt is encoded once: the cache keeps it between cells
    assert comfy.counters.node_executions["CLIPTextEncode"] == 2 + 1  # two positives, one shared negative


@pytest.fixture
def realistic_sim(sim: Callable[..., list[Any]]) -> Any:
    """A simulated server with the recorded GPU costs, five times faster, so a sweep takes seconds."""
    from comfy_orchestrator.sim.costs import profile

    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,), costs=profile("realistic").scaled(5.0))
    return server


def _sweep_command(url: str, out: Path, image: Path) -> list[str]:
    return [sys.executable, "-m", "comfy_orchestrator.cli", "sweep", "img2img", "--server", url,
            "--axis", "denoise=0.2:0.8:0.2", "--axis", "cfg=5,7,9", "--set", f"image={image}", "--out", str(out)]


def _done_cells(out: Path) -> set[int]:
    path = out / JOURNAL_NAME
    if not path.exists():
        return set()
    db = sqlite3.connect(path, timeout=5.0)
    try:
        return {row[0] for row in db.execute("SELECT idx FROM cell WHERE status = 'done'")}
    except sqlite3.OperationalError:  # the table is not made yet
        return set()
    finally:
        db.close()


def test_a_sweep_killed_midway_finishes_the_rest_when_run_again(realistic_sim: Any, sample_image: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = _sweep_command(realistic_sim.url, out, sample_image)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pause, deadline = threading.Event(), time.monotonic() + 60
    while len(_done_cells(out)) < 4 and process.poll() is None and time.monotonic() < deadline:
        pause.wait(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    done_at_kill = _done_cells(out)
    assert 4 <= len(done_at_kill) < 12, "the sweep should be cut off midway"
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert realistic_sim.wait_idle(30.0)  # what the killed client had queued still runs on the server
    left_behind = realistic_sim.counters.prompts_started - len(done_at_kill)
    assert left_behind >= 1

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    run_again = 12 - len(done_at_kill) - left_behind
    assert f"12 of 12 cells done, 0 failed ({run_again} prompts run, {left_behind} adopted from an earlier run, " \
           f"{len(done_at_kill)} cells already done)" in again.stdout
    # the prompts the killed run left were adopted, not run again: one prompt a cell in all
    assert realistic_sim.counters.prompts_started == 12
    rows = _manifest(out)
    assert len(rows) == 12 and all(row["status"] == "done" for row in rows)
    for row in rows:
        if row["index"] in done_at_kill:  # finished cells were not run again, their files untouched
            name = Path(row["files"][0]).name
            assert stamps[name] == (out / row["files"][0]).stat().st_mtime_ns
    assert len(list((out / "images").iterdir())) == 12


def _start_sim_process(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "comfy_orchestrator.cli", "sim", "--port", "0",
                                "--checkpoint", DEFAULT_CHECKPOINT, "--root", str(tmp_path / "sim")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
    assert found, line
    return process, found[1]


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[str]:
    """A simulated server in its own process, so a sweep's own memory can be measured alone."""
    process, url = _start_sim_process(tmp_path)
    yield url
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.stdout is not None:
            process.stdout.close()


def _peak_rss_kib(command: list[str]) -> int:
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, which Popen.wait does not give
        process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, command
    return int(usage.ru_maxrss)


def test_memory_stays_flat_as_a_sweep_grows(sim_process: str, tmp_path: Path) -> None:
    image = tmp_path / "large.png"
    Image.effect_noise((768, 768), 64).convert("RGB").save(image)  # noise: large PNGs, over 1 MB each

    def peak(count: int) -> tuple[int, int]:
        out = tmp_path / f"out{count}"
        command = [sys.executable, "-m", "comfy_orchestrator.cli", "sweep", "img2img", "--server", sim_process,
                   "--axis", f"seed=1:{count}", "--set", f"image={image}", "--out", str(out), "--thumbnail", "32"]
        kib = _peak_rss_kib(command)
        written = sum(p.stat().st_size for p in (out / "images").iterdir())
        assert len(list((out / "images").iterdir())) == count
        return kib, written

    small_kib, small_bytes = peak(4)
    large_kib, large_bytes = peak(30)
    grown_kib = large_kib - small_kib
    # holding the images would grow memory by at least their size (tens of MB more); streaming keeps it flat
    print(f"peak RSS {small_kib} KiB for 4 cells, {large_kib} KiB for 30; images {small_bytes} / {large_bytes} B")
    assert grown_kib * 1024 < (large_bytes - small_bytes) / 4, (small_kib, large_kib, large_bytes)


def test_demo_runs_a_denoise_by_cfg_sweep_on_its_own_simulated_server(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "started a simulated ComfyUI" in result.output and "9 of 9 cells done, 0 failed" in result.output
    assert f"grid:     {out / 'grid.jpg'}" in result.output and f"page:     {out / 'index.html'}" in result.output
    rows = _manifest(out)
    assert sorted({r["values"]["denoise"] for r in rows}) == [0.3, 0.6, 0.9]
    assert sorted({r["values"]["cfg"] for r in rows}) == [4, 7, 10]
    assert len(list((out / "images").glob("*.png"))) == 9 and (out / "grid.jpg").is_file()


def test_the_grid_is_a_png_when_asked(comfy: Any, sample_image: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", "img2img", "--server", comfy.url, "--axis", "denoise=0.3,0.6",
                                       "--set", f"image={sample_image}", "--out", str(out), "--grid-format", "png"])
    assert result.exit_code == 0, result.output
    assert f"grid:     {out / 'grid.png'}" in result.output and not (out / "grid.jpg").exists()
    with Image.open(out / "grid.png") as grid:
        assert grid.format == "PNG"


def test_dry_run_lists_the_cells_and_submits_nothing(comfy: Any, sample_image: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    result = CliRunner().invoke(main, ["sweep", "img2img", "--server", comfy.url, "--axis", "denoise=0.3-0.9 [4]",
                                       "--axis", 'sampler="dpm++ 2m karras",euler', "--set",
                                       f"image={sample_image}", "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "    7  denoise=0.9, sampler=euler" in result.output
    assert "8 cells in 8 prompts on 1 server(s); about" in result.output and "nothing submitted" in result.output
    assert comfy.counters.prompts_started == 0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("axis", "message"), [
    ("denoise=0.3:1.5:0.4", "error: axis denoise=1.1: img2img: denoise=1.1: Input should be less than or equal to 1"),
    ("denoise=0.3:0.9:0", "error: axis 'denoise': the step is 0"),
    ("cfgg=1,2", "error: axis cfgg=1: img2img has no parameter 'cfgg'; did you mean 'cfg'?"),
])
def test_a_bad_axis_is_one_line_and_exit_code_2(sample_image: Path, tmp_path: Path, axis: str, message: str) -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    result = CliRunner().invoke(main, ["sweep", "img2img", "--axis", axis, "--set", f"image={sample_image}",
                                       "--out", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output


class _HeldProbe:
    """A server link whose probe waits for `release` (or `limit_s`): a server slow to send its /object_info."""

    def __init__(self, link: Any, release: threading.Event, answered: threading.Event, limit_s: float) -> None:
        self._link, self._release, self._answered, self._limit_s = link, release, answered, limit_s

    def probe(self) -> Any:
        self._release.wait(self._limit_s)  # a farm that waited for every server would sit out the whole limit
        schema = self._link.probe()
        self._answered.set()
        return schema

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


def test_the_servers_that_answer_start_the_sweep_while_another_is_still_being_probed(
        sim: Callable[..., list[Any]], library: Templates, sample_image: Path, tmp_path: Path) -> None:
    from comfy_orchestrator.farm import ClientLink

    fast, slow = sim(2, checkpoints=(DEFAULT_CHECKPOINT,))
    release, answered = threading.Event(), threading.Event()
    slow_answered_before_first_cell: list[bool] = []

    def connect(config: Any) -> Any:
        link = ClientLink(config)
        return _HeldProbe(link, release, answered, limit_s=30.0) if config.url == slow.url else link

    def on_progress(progress: SweepProgress) -> None:
        if progress.done and not release.is_set():
            slow_answered_before_first_cell.append(answered.is_set())
            release.set()  # the slow server may join now, for the cells left

    report = run_sweep(_grid_sweep(library, sample_image), tmp_path, Farm([fast.url, slow.url], connect=connect),
                       on_progress=on_progress)
    assert report.done == 9
    assert slow_answered_before_first_cell == [False]  # a cell was done before the slow server had answered
    assert fast.url.split("://", 1)[1] in {row["server"] for row in _manifest(tmp_path)}


class _ProbeSeen:
    """A server link that counts off its probe's start on `entered`."""

    def __init__(self, link: Any, entered: threading.Semaphore) -> None:
        self._link, self._entered = link, entered

    def probe(self) -> Any:
        self._entered.release()
        return self._link.probe()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


def test_a_new_sweep_is_prepared_while_its_servers_are_probed(sim: Callable[..., list[Any]], library: Templates,
                                                              sample_image: Path, tmp_path: Path) -> None:
    from comfy_orchestrator.farm import ClientLink

    servers = sim(2, checkpoints=(DEFAULT_CHECKPOINT,))
    entered = threading.Semaphore(0)
    preparing = threading.Event()
    probing_while_preparing: list[bool] = []

    def on_progress(progress: SweepProgress) -> None:
        if not probing_while_preparing:  # the first progress is made while the sweep is prepared
            preparing.set()
            probing_while_preparing.append(all(entered.acquire(timeout=20.0) for _ in servers))

    def connect(config: ServerConfig) -> _ProbeSeen:
        # the links are made only once the sweep is being prepared, so each thread goes from its new
        # link to its probe while the run is busy reading its first jobs: nothing may hold it back
        preparing.wait(20.0)
        return _ProbeSeen(ClientLink(config), entered)

    farm = Farm([server.url for server in servers], connect=connect)
    report = run_sweep(_grid_sweep(library, sample_image), tmp_path / "new", farm, on_progress=on_progress)
    assert report.done == 9
    assert probing_while_preparing == [True]  # both servers were being probed before the sweep was ready
    again = run_sweep(_grid_sweep(library, sample_image), tmp_path / "new", farm)  # a resume prepares first
    assert (again.ran, again.done) == (0, 9)


def test_a_cell_whose_graph_the_server_would_refuse_stops_the_sweep_before_anything_is_written(
        comfy: Any, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "bare.json.j2").write_text(
        '{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random-sd15.safetensors"}},'
        '"2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},'
        '"3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},'
        '"4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": {{ steps }}, "cfg": 7,'
        ' "sampler_name": "euler", "scheduler": "normal", "positive": ["3", 0], "negative": ["3", 0],'
        ' "latent_image": ["2", 0], "denoise": 1.0}},'
        '"5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},'
        '"6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "bare"}}}')
    (folder / "bare.params.json").write_text(json.dumps({"parameters": [{"name": "steps", "type": "int",
                                                                          "default": 20}]}))
    sweep = Sweep(Templates([folder]).get("bare"), (parse_axis("steps=20,0,5"),), {})  # 0 steps: KSampler's min is 1
    with pytest.raises(GraphInvalid, match="parameter 'steps': Value 0 smaller than min of 1"):
        run_sweep(sweep, tmp_path / "out", Farm([comfy.url]))
    assert not (tmp_path / "out").exists() and comfy.counters.prompts_finished == 0


def test_the_journal_holds_each_cells_graph_hash_and_parameters_in_cache_order(
        sim: Callable[..., list[Any]], library: Templates, sample_image: Path, tmp_path: Path) -> None:
    checkpoints = ("random-sd15.safetensors", "other-sd15.safetensors")
    (server,) = sim(checkpoints=checkpoints)
    sweep = Sweep(library.get("img2img"), (parse_axis(f"checkpoint={','.join(checkpoints)}"),
                                           parse_axis("cfg=5,7"), parse_axis("positive=a lake,a forest")),
                  {"image": str(sample_image), "model_family": "sd15", "filename_prefix": "mine"})
    run_sweep(sweep, tmp_path, Farm([server.url]))
    db = sqlite3.connect(tmp_path / JOURNAL_NAME)
    rows = {index: (json.loads(params), graph_hash) for index, params, graph_hash
            in db.execute("SELECT idx, params, graph_hash FROM cell")}
    order = [json.loads(cells)[0] for (cells,) in db.execute("SELECT cells FROM prompt ORDER BY submitted_at")]
    db.close()
    assert len(rows) == 8
    for cell in sweep.cells():  # worked out here the long way: rendered, parsed, then hashed as the digest says
        job = library.get("img2img").job(cell.params)
        plain = Graph.from_api(json.loads(job.graph.to_json())).to_api()
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        expected = dict(cell.params.model_dump(mode="json"), image=sample_image.name)
        assert rows[cell.index] == (expected, hashlib.sha256(text.encode("utf-8")).hexdigest())
    # one server runs the prompts in the order planned: each checkpoint's cells together, then each prompt's
    assert [sweep.cells()[i].values["checkpoint"] for i in order] == [checkpoints[0]] * 4 + [checkpoints[1]] * 4
    assert order == [0, 2, 1, 3, 4, 6, 5, 7]
