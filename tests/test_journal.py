"""Journal: a real SQLite file in a real folder; resume, retries, refusals, manifests."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.errors import JournalFailed, SweepError
from comfy_orchestrator.journal import JOURNAL_NAME, CellPlan, CellStatus, Journal, definition_changes

DEFINITION: dict[str, Any] = {"template": "img2img", "fixed": {}, "zip": False, "batch_seeds": False,
                              "axes": [{"name": "cfg", "spec": "6,8,10", "values": [6, 8, 10], "replaces": None}]}


def _plans(count: int = 3) -> list[CellPlan]:
    return [CellPlan(i, f"cfg={6 + 2 * i}", "img2img", {"cfg": 6 + 2 * i}, {"cfg": 6.0 + 2 * i, "seed": 0},
                     f"hash{i}") for i in range(count)]


def _open(folder: Path, digest: str = "d1", definition: dict[str, Any] | None = None) -> Journal:
    return Journal.open(folder, digest=digest, definition=definition or DEFINITION)


def test_a_new_journal_runs_every_cell(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        assert journal.to_run(max_attempts=3) == [0, 1, 2]
        assert journal.counts()[CellStatus.PENDING] == 3


def test_done_cells_stay_done_after_reopening(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.mark_running([0, 1], server="http://a", prompt_id="p0")
        journal.mark_done(0, files=["00000.png"], server="http://a", prompt_id="p0", timings={"finished": 2.0})
    # reopened as a new process would: cell 1 was cut off while running and runs again
    with _open(tmp_path) as journal:
        journal.add(_plans())  # adding again keeps the recorded state
        assert journal.to_run(max_attempts=3) == [1, 2]
        done = journal.record(0)
        assert (done.status, done.files, done.server, done.prompt_id) == (CellStatus.DONE, ("00000.png",),
                                                                          "http://a", "p0")
        assert done.timings == {"finished": 2.0}


def test_a_finished_sweep_has_nothing_to_run(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        for i in range(3):
            journal.mark_running([i])
            journal.mark_done(i, files=[f"{i}.png"], server="s", prompt_id=f"p{i}", timings={})
    with _open(tmp_path) as journal:
        assert journal.to_run(max_attempts=3) == []


def test_a_failed_cell_is_retried_until_its_attempts_run_out(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans(1))
        for attempt in range(1, 4):
            assert journal.to_run(max_attempts=3) == [0]
            journal.mark_running([0], server="s")
            journal.mark_failed([0], error=f"boom {attempt}")
        record = journal.record(0)
        assert (record.status, record.attempts, record.error) == (CellStatus.FAILED, 3, "boom 3")
        assert journal.to_run(max_attempts=3) == []
        assert journal.to_run(max_attempts=4) == [0]


def test_a_different_sweep_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    _open(tmp_path).close()
    with pytest.raises(SweepError, match=r"holds a different sweep \(template 'img2img', axes cfg=6,8,10\)"):
        _open(tmp_path, digest="d2")


def test_the_stored_definition_wins_on_reopening(tmp_path: Path) -> None:
    _open(tmp_path).close()
    changed = dict(DEFINITION, axes=[dict(DEFINITION["axes"][0], values=[1, 2, 3])])
    with _open(tmp_path, definition=changed) as journal:
        assert journal.definition == DEFINITION


def test_each_event_is_committed_as_it_happens(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.mark_running([2], server="http://b", prompt_id="p2")
        # a second connection, as another process would see the file right now
        other = sqlite3.connect(tmp_path / JOURNAL_NAME)
        try:
            assert other.execute("SELECT status, server FROM cell WHERE idx = 2").fetchone() == ("running",
                                                                                                  "http://b")
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            other.close()


def test_a_corrupt_journal_is_reported(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalFailed, match="cannot use the journal"):
        _open(tmp_path)


def test_manifests_have_one_row_a_cell(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.mark_running([0, 1], server="http://a", prompt_id="p")
        journal.mark_done(0, files=["img/a.png", "img/b.png"], server="http://a", prompt_id="p",
                          timings={"submitted": 1.0})
        journal.mark_failed([1], error="node 6 (KSampler): out of memory")
        jsonl, table = journal.write_manifests()
    lines = [json.loads(line) for line in jsonl.read_text("utf-8").splitlines()]
    assert [line["status"] for line in lines] == ["done", "failed", "pending"]
    assert lines[0]["files"] == ["img/a.png", "img/b.png"] and lines[0]["values"] == {"cfg": 6}
    assert lines[0]["graph_hash"] == "hash0" and lines[0]["prompt_id"] == "p"
    assert lines[1]["error"] == "node 6 (KSampler): out of memory"
    with table.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["cfg"] for row in rows] == ["6", "8", "10"]
    assert rows[0]["files"] == "img/a.png;img/b.png" and rows[1]["error"].endswith("out of memory")
    assert json.loads(rows[2]["params"]) == {"cfg": 10.0, "seed": 0}
    assert not list(tmp_path.glob("*.part"))


def test_manifests_from_records_read_already_are_the_manifests_read_from_the_journal(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.mark_running([0], server="http://a", prompt_id="p")
        journal.mark_done(0, files=["img/a.png"], server="http://a", prompt_id="p", timings={"submitted": 1.0})
        jsonl, table = journal.write_manifests()
        read = jsonl.read_bytes(), table.read_bytes()
        assert journal.write_manifests(list(journal.records())) == (jsonl, table)
    assert (jsonl.read_bytes(), table.read_bytes()) == read


def test_a_journal_whose_database_is_closed_keeps_its_folder_locked_until_it_is_closed(tmp_path: Path) -> None:
    journal = _open(tmp_path)
    journal.add(_plans())
    assert (tmp_path / f"{JOURNAL_NAME}-wal").is_file()  # the cells are in its write-ahead log
    journal.close_database()
    assert not (tmp_path / f"{JOURNAL_NAME}-wal").exists()  # folded into the database
    with pytest.raises(SweepError, match="is in use by process"):
        _open(tmp_path)
    journal.close()
    with _open(tmp_path) as again:
        assert again.counts()[CellStatus.PENDING] == 3


def test_a_copy_sent_after_its_cell_is_done_leaves_the_cell_done_and_is_known(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.mark_submitting([0, 1], server="http://a", prompt_id="first")
        journal.mark_done(0, files=["img/a.png"], server="http://a", prompt_id="first", timings={})
        journal.mark_submitting([0, 1], server="http://b", prompt_id="copy")  # a straggler's copy, sent late
        done, running = journal.record(0), journal.record(1)
        assert (done.status, done.prompt_id, done.attempts, done.files) == (CellStatus.DONE, "first", 1, ("img/a.png",))
        assert (running.status, running.prompt_id, running.attempts) == (CellStatus.RUNNING, "copy", 2)
        assert {prompt.prompt_id for prompt in journal.open_prompts()} == {"first", "copy"}  # a resume withdraws it


def test_a_second_opener_of_a_folder_in_use_is_refused_naming_the_holder(tmp_path: Path) -> None:
    import os

    with _open(tmp_path):
        with pytest.raises(SweepError, match=rf"is in use by process {os.getpid()} on .*; wait for it"):
            _open(tmp_path)
    _open(tmp_path).close()  # closing released it


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, os; from pathlib import Path; from comfy_orchestrator.journal import FolderLock; "
            "FolderLock.take(Path(sys.argv[1])); os.kill(os.getpid(), 9)")
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, timeout=60)
    assert killed.returncode == -9
    _open(tmp_path).close()


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_journal_beside_earlier_results_is_said_not_run_over(tmp_path: Path, damage: str) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.write_manifests()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cell.png").write_bytes(b"an image")
    if damage == "deleted":
        (tmp_path / JOURNAL_NAME).unlink()
    else:
        (tmp_path / JOURNAL_NAME).write_bytes(b"")
    state = "missing" if damage == "deleted" else "empty"
    with pytest.raises(JournalFailed, match=rf"the journal is {state} but the folder holds an earlier sweep's "
                                            r"manifest.jsonl and images; restore the journal"):
        _open(tmp_path)
    assert (tmp_path / "images" / "cell.png").read_bytes() == b"an image"


def test_a_prompt_is_recorded_before_it_is_sent_and_open_until_its_cells_settle(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.mark_submitting([0], server="a:1", prompt_id="p0")
        journal.mark_submitting([1, 2], server="b:2", prompt_id="p12")
        assert [(p.prompt_id, p.server, p.cells) for p in journal.open_prompts()] == [
            ("p0", "a:1", (0,)), ("p12", "b:2", (1, 2))]
        assert journal.record(1).status is CellStatus.RUNNING and journal.record(1).attempts == 1
        journal.settle_cells([1, 2])
        journal.settle_prompts(["p0"])
        assert journal.open_prompts() == []


def test_reopening_a_broken_done_cell_opens_its_prompt_again(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
        journal.mark_submitting([0], server="a:1", prompt_id="p0")
        journal.mark_done(0, files=["images/c0.png"], server="a:1", prompt_id="p0", timings={})
        journal.settle_cells([0])
        journal.reopen([0], reasons={0: "its file images/c0.png is truncated"})
        record = journal.record(0)
        assert (record.status, record.files, record.error) == (CellStatus.PENDING, (),
                                                               "its file images/c0.png is truncated")
        assert [p.prompt_id for p in journal.open_prompts()] == ["p0"]
        assert journal.to_run(max_attempts=3) == [0, 1, 2]


def test_a_hand_edited_cell_is_one_error_naming_it(tmp_path: Path) -> None:
    with _open(tmp_path) as journal:
        journal.add(_plans())
    db = sqlite3.connect(tmp_path / JOURNAL_NAME)
    db.execute("UPDATE cell SET params = '{not json', status = 'finished' WHERE idx = 1")
    db.commit()
    db.close()
    with _open(tmp_path) as journal, pytest.raises(JournalFailed, match="cell 1 does not read back"):
        list(journal.records())


def test_definition_changes_name_each_difference_old_and_new() -> None:
    old = {"template": "img2img", "fixed": {"image": {"file": "a.png", "content": "a-1.png"}, "steps": 20},
           "axes": [{"name": "cfg", "spec": "6,8", "values": [6, 8]},
                    {"name": "seed", "spec": "random:2", "values": [5, 9]}], "zip": False, "batch_seeds": False}
    new = {"template": "img2img", "fixed": {"image": {"file": "a.png", "content": "a-2.png"}, "sampler": "ddim"},
           "axes": [{"name": "cfg", "spec": "6,9", "values": [6, 9]},
                    {"name": "seed", "spec": "random:2", "values": [1, 2]}], "zip": True, "batch_seeds": False}
    assert definition_changes(old, new) == [
        "image: a.png (a-1.png) before, a.png (a-2.png) now",  # the same name, other pixels
        "sampler: (not set) before, ddim now",
        "steps: 20 before, (not set) now",
        "axis cfg: 6,8 before, 6,9 now",  # drawn seeds are not a difference
        "zip: False before, True now",
    ]
    assert definition_changes(old, old) == []
