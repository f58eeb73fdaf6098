"""Journal: the SQLite record of a sweep's cells in its output folder, and its manifests.

Every change is committed as it happens (WAL, synchronous=NORMAL), so a sweep cut off by
Ctrl-C or a crash resumes from what the journal says: cells done stay done. A power loss may
forget the last few commits; those cells run again (a cell is marked done only after its files
are in place, so the journal never claims a file that is not there).

Each prompt is recorded with its server before it is sent, so a resume can ask those servers
about it and adopt it instead of running the cell twice. The folder is locked while a journal
is open: a second sweep into it is refused, naming the process that holds it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from comfy_orchestrator.errors import JournalFailed, SweepError

JOURNAL_NAME = "journal.sqlite"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
LOCK_NAME = "journal.lock"
SCHEMA_VERSION = 1
# What an earlier sweep leaves in its folder: found without a journal, the journal was lost.
EARLIER_RESULTS = (MANIFEST_JSONL, "images")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cell (
    idx INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    template TEXT NOT NULL,
    axis_values TEXT NOT NULL,
    params TEXT NOT NULL,
    graph_hash TEXT NOT NULL,
    batch_index INTEGER,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    server TEXT,
    prompt_id TEXT,
    started_at REAL,
    finished_at REAL,
    timings TEXT NOT NULL DEFAULT '{}',
    files TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS prompt (
    prompt_id TEXT PRIMARY KEY,
    server TEXT NOT NULL,
    cells TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS queue_task (
    idx INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    queued_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class CellStatus(str, Enum):
    """Where a cell stands."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class PromptRecord:
    """A prompt sent for some cells and not yet settled: a resume asks its server about it."""

    prompt_id: str
    server: str
    cells: tuple[int, ...]
    submitted_at: float


@dataclass(frozen=True)
class CellPlan:
    """What the journal learns about a cell before it runs."""

    index: int
    label: str
    template: str
    values: Mapping[str, Any]
    params: Mapping[str, Any]
    graph_hash: str
    batch_index: int | None = None


@dataclass(frozen=True, kw_only=True)
class CellRecord(CellPlan):
    """One cell as the journal holds it: its plan, and what became of it."""

    status: CellStatus
    attempts: int
    error: str | None
    server: str | None
    prompt_id: str | None
    started_at: float | None
    finished_at: float | None
    timings: Mapping[str, float] = field(default_factory=dict)
    files: tuple[str, ...] = ()  # relative to the output folder, with forward slashes

    def manifest_entry(self) -> dict[str, Any]:
        """The cell as one manifest.jsonl line."""
        seconds = (self.finished_at - self.started_at
                   if self.finished_at is not None and self.started_at is not None else None)
        return {
            "index": self.index, "label": self.label, "status": self.status.value,
            "attempts": self.attempts, "template": self.template, "values": dict(self.values),
            "params": dict(self.params), "graph_hash": self.graph_hash, "batch_index": self.batch_index,
            "prompt_id": self.prompt_id, "server": self.server, "started_at": self.started_at,
            "finished_at": self.finished_at, "seconds": seconds, "timings": dict(self.timings),
            "files": list(self.files), "error": self.error,
        }


class Journal:
    """The journal of one sweep in one output folder; safe to call from several threads."""

    def __init__(self, connection: sqlite3.Connection, folder: Path, definition: Mapping[str, Any],
                 lock: FolderLock | None = None) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self._folder_lock = lock
        self.folder = folder
        self.definition = definition

    @classmethod
    def open(cls, folder: Path, *, digest: str, definition: Mapping[str, Any]) -> Journal:
        """Open or create the journal in `folder`, locking the folder; refuse if it records a different sweep.

        An existing journal keeps its stored definition (with any drawn seeds), which the
        caller should rebuild the sweep from. A folder with an earlier sweep's results but no
        journal (deleted, or truncated to nothing) is refused rather than run over.
        """
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / JOURNAL_NAME
        lock = FolderLock.take(folder)
        try:
            return cls._open_locked(folder, path, digest, definition, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, folder: Path, path: Path, digest: str, definition: Mapping[str, Any],
                     lock: FolderLock) -> Journal:
        if not path.is_file() or path.stat().st_size == 0:
            earlier = [name for name in EARLIER_RESULTS if _holds_something(folder / name)]
            if earlier:
                state = "empty" if path.is_file() else "missing"
                raise JournalFailed(
                    f"the journal is {state} but the folder holds an earlier sweep's {' and '.join(earlier)}; "
                    "restore the journal, or move those away (or use another --out) to start over",
                    path=str(path))
        try:
            db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a crash of this process without waiting on the disk; FULL's
            # fsync per commit cost ~13 ms a cell, on the thread that records results
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT schema_version, digest, definition FROM sweep").fetchone()
            if row is None:
                db.execute("INSERT INTO sweep VALUES (1, ?, ?, ?, ?)",
                           (SCHEMA_VERSION, digest, json.dumps(definition, default=str), time.time()))
                stored: Mapping[str, Any] = definition
            else:
                version, stored_digest, stored_text = row
                if version != SCHEMA_VERSION:
                    db.close()
                    raise JournalFailed(f"written by another version of the journal ({version})", path=str(path))
                if stored_digest != digest:
                    db.close()
                    changes = definition_changes(_loads(stored_text, path), definition)
                    differs = "; ".join(changes) if changes else _describe(_loads(stored_text, path))
                    raise SweepError(
                        f"{folder} holds a different sweep ({differs}); "
                        "use another --out folder, or delete that one to start over")
                stored = _loads(stored_text, path)
        except sqlite3.Error as exc:
            raise JournalFailed(f"cannot use the journal: {exc}", path=str(path)) from exc
        return cls(db, folder, stored, lock)

    def close(self) -> None:
        """Close the database and unlock the folder."""
        self.close_database()
        if self._folder_lock is not None:
            self._folder_lock.release()

    def close_database(self) -> None:
        """Close the database, folding its write-ahead log into it (a checkpoint and its syncs: 10-25 ms), and
        keep the folder locked until `close`; nothing is read or written through the journal after this."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(self, plans: Iterable[CellPlan]) -> None:
        """Record cells not yet known (those already recorded keep their state)."""
        rows = [(p.index, p.label, p.template, json.dumps(dict(p.values), default=str),  # keeps the axis order
                 _dumps(p.params), p.graph_hash, p.batch_index)
                for p in plans]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO cell (idx, label, template, axis_values, params, graph_hash, "
                           "batch_index) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def to_run(self, *, max_attempts: int) -> list[int]:
        """Cells to run now: pending, cut off while running, or failed with attempts left."""
        rows = self._read("SELECT idx FROM cell WHERE status IN ('pending', 'running') "
                          "OR (status = 'failed' AND attempts < ?) ORDER BY idx", (max_attempts,))
        return [row[0] for row in rows]

    def exhausted(self, *, max_attempts: int) -> int:
        """How many cells failed with no attempts left."""
        rows = self._read("SELECT COUNT(*) FROM cell WHERE status = 'failed' AND attempts >= ?", (max_attempts,))
        return int(rows[0][0])

    def mark_running(self, indices: Sequence[int], *, server: str | None = None,
                     prompt_id: str | None = None) -> None:
        """Cells were submitted: count an attempt."""
        now = time.time()
        with self._write() as db:
            db.executemany("UPDATE cell SET status = 'running', attempts = attempts + 1, error = NULL, "
                           "server = ?, prompt_id = ?, started_at = ?, finished_at = NULL WHERE idx = ?",
                           [(server, prompt_id, now, i) for i in indices])

    def mark_submitting(self, indices: Sequence[int], *, server: str, prompt_id: str) -> None:
        """Cells are about to be sent as `prompt_id` to `server`: count an attempt, remember the prompt.

        Recorded before the prompt is sent, so a prompt the server has is always known here. A cell
        already done stays done: a farm's copy of a straggling prompt can be sent just as the
        original's result is recorded, and the first result is the one kept.
        """
        now = time.time()
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO prompt (prompt_id, server, cells, submitted_at, settled) "
                       "VALUES (?, ?, ?, ?, 0)", (prompt_id, server, _dumps(list(indices)), now))
            db.executemany("UPDATE cell SET status = 'running', attempts = attempts + 1, error = NULL, "
                           "server = ?, prompt_id = ?, started_at = ?, finished_at = NULL "
                           "WHERE idx = ? AND status != 'done'", [(server, prompt_id, now, i) for i in indices])

    def settle_prompts(self, prompt_ids: Sequence[str]) -> None:
        """These prompts ended (or were withdrawn): a resume need not ask about them."""
        with self._write() as db:
            db.executemany("UPDATE prompt SET settled = 1 WHERE prompt_id = ?", [(p,) for p in prompt_ids])

    def open_prompts(self) -> list[PromptRecord]:
        """Prompts sent and not settled (a run cut off before they ended), oldest first."""
        rows = self._read("SELECT prompt_id, server, cells, submitted_at FROM prompt WHERE settled = 0 "
                          "ORDER BY submitted_at, prompt_id")
        found = []
        for prompt_id, server, cells, submitted_at in rows:
            indices = _loads(cells, self.folder / JOURNAL_NAME)
            if not (isinstance(indices, list) and all(isinstance(i, int) for i in indices)):
                raise JournalFailed(f"prompt {prompt_id}'s cells are not a list of numbers",
                                    path=str(self.folder / JOURNAL_NAME))
            found.append(PromptRecord(str(prompt_id), str(server), tuple(indices), float(submitted_at)))
        return found

    def settle_cells(self, indices: Sequence[int]) -> None:
        """The cells settled (done or failed): every prompt sent for exactly them is settled too."""
        with self._write() as db:
            db.execute("UPDATE prompt SET settled = 1 WHERE cells = ?", (_dumps(list(indices)),))

    def reopen(self, indices: Sequence[int], *, reasons: Mapping[int, str]) -> None:
        """Done cells whose files are gone or broken go back to pending, keeping their attempts.

        The prompt that made each is opened again, so a resume fetches its files from the
        server's history if the server still has them, before running the cell again.
        """
        with self._write() as db:
            for index in indices:
                row = db.execute("SELECT server, prompt_id, started_at FROM cell WHERE idx = ?", (index,)).fetchone()
                if row is not None and row[0] and row[1]:
                    db.execute("INSERT OR IGNORE INTO prompt (prompt_id, server, cells, submitted_at) "
                               "VALUES (?, ?, ?, ?)", (row[1], row[0], _dumps([index]), row[2] or time.time()))
                    db.execute("UPDATE prompt SET settled = 0 WHERE prompt_id = ?", (row[1],))
                db.execute("UPDATE cell SET status = 'pending', error = ?, files = '[]' WHERE idx = ?",
                           (reasons.get(index, "its files were lost"), index))

    def mark_done(self, index: int, *, files: Sequence[str], server: str, prompt_id: str,
                  timings: Mapping[str, float]) -> None:
        """A cell finished and its files are on disk."""
        with self._write() as db:
            db.execute("UPDATE cell SET status = 'done', error = NULL, server = ?, prompt_id = ?, "
                       "finished_at = ?, timings = ?, files = ? WHERE idx = ?",
                       (server, prompt_id, time.time(), _dumps(dict(timings)), _dumps(list(files)), index))

    def mark_failed(self, indices: Sequence[int], *, error: str, server: str | None = None,
                    prompt_id: str | None = None) -> None:
        """Cells failed; they run again on a later resume while attempts are left."""
        now = time.time()
        with self._write() as db:
            db.executemany("UPDATE cell SET status = 'failed', error = ?, server = COALESCE(?, server), "
                           "prompt_id = COALESCE(?, prompt_id), finished_at = ? WHERE idx = ?",
                           [(error, server, prompt_id, now, i) for i in indices])

    def queue_id(self, make: Callable[[], str]) -> str:
        """The id this sweep has on a broker's queue: the one recorded, or `make()`'s, recorded now."""
        with self._write() as db:
            row = db.execute("SELECT value FROM queue_meta WHERE key = 'sweep_id'").fetchone()
            if row is not None:
                return str(row[0])
            made = make()
            db.execute("INSERT INTO queue_meta VALUES ('sweep_id', ?)", (made,))
            return made

    def record_task(self, indices: Sequence[int], task_id: str) -> None:
        """Cells are put on the queue under `task_id`: count an attempt, remember the task (before it is sent,
        so a later run collects its result by it)."""
        now = time.time()
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO queue_task VALUES (?, ?, ?)", [(i, task_id, now) for i in indices])
            db.executemany("UPDATE cell SET status = 'running', attempts = attempts + 1, error = NULL, "
                           "server = NULL, prompt_id = NULL, started_at = ?, finished_at = NULL WHERE idx = ?",
                           [(now, i) for i in indices])

    def tasks(self) -> dict[int, str]:
        """Each queued cell's latest task id."""
        return {int(index): str(task_id) for index, task_id in self._read("SELECT idx, task_id FROM queue_task")}

    def counts(self) -> dict[CellStatus, int]:
        """How many cells are in each status."""
        rows = self._read("SELECT status, COUNT(*) FROM cell GROUP BY status")
        found = {CellStatus(status): count for status, count in rows}
        return {status: found.get(status, 0) for status in CellStatus}

    def records(self) -> Iterator[CellRecord]:
        """Every cell, in index order (read in pages, so large sweeps stay small in memory)."""
        last = -1
        while True:
            rows = self._read("SELECT * FROM cell WHERE idx > ? ORDER BY idx LIMIT 500", (last,))
            if not rows:
                return
            for row in rows:
                yield _record(row)
            last = rows[-1][0]

    def record(self, index: int) -> CellRecord:
        """One cell."""
        rows = self._read("SELECT * FROM cell WHERE idx = ?", (index,))
        if not rows:
            raise SweepError(f"the journal has no cell {index}")
        return _record(rows[0])

    def write_manifests(self, records: Iterable[CellRecord] | None = None) -> tuple[Path, Path]:
        """Write manifest.jsonl and manifest.csv from the journal (`records`: all of them, read already); return
        their paths."""
        jsonl, table = self.folder / MANIFEST_JSONL, self.folder / MANIFEST_CSV
        # with batched seeds the seed column holds the one seed of each image's batch; batch_index says which image
        axes = [axis["name"] for axis in self.definition.get("axes", [])]
        columns = ["index", "status", "attempts", *axes, "template", "graph_hash", "batch_index", "prompt_id",
                   "server", "seconds", "files", "error", "params"]
        with _replacing(jsonl) as lines, _replacing(table) as sheet:
            writer = csv.writer(sheet)
            writer.writerow(columns)
            for record in self.records() if records is None else records:
                entry = record.manifest_entry()
                lines.write(json.dumps(entry, sort_keys=False, default=str) + "\n")
                row = dict(entry, **{name: record.values.get(name, record.params.get(name, "")) for name in axes})
                row["files"] = ";".join(record.files)
                row["params"] = _dumps(record.params)
                writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return jsonl, table

    def _write(self) -> _Transaction:
        return _Transaction(self._db, self._lock, self.folder / JOURNAL_NAME)

    def _read(self, sql: str, arguments: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, arguments).fetchall()
            except sqlite3.Error as exc:
                raise JournalFailed(f"cannot read: {exc}", path=str(self.folder / JOURNAL_NAME)) from exc


class _Transaction:
    """One committed write under the journal's lock; SQLite's errors become JournalFailed."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
        self._db, self._lock, self._path = db, lock, path

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException as exc:  # a Ctrl-C too: the lock must not stay taken
            self._lock.release()
            if isinstance(exc, sqlite3.Error):
                raise JournalFailed(f"cannot write: {exc}", path=str(self._path)) from exc
            raise
        return self._db

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as failure:
            raise JournalFailed(f"cannot write: {failure}", path=str(self._path)) from failure
        finally:
            self._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise JournalFailed(f"cannot write: {exc}", path=str(self._path)) from exc


class _replacing:
    """A text file written beside its target and moved into place when complete."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._temporary = path.with_name(path.name + ".part")

    def __enter__(self) -> Any:
        self._file = self._temporary.open("w", encoding="utf-8", newline="")
        return self._file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._temporary, self._path)
        else:
            self._temporary.unlink(missing_ok=True)


def _record(row: Sequence[Any]) -> CellRecord:
    """A cell row as a record; a hand-edited row that does not fit is JournalFailed, naming the cell."""
    (index, label, template, values, params, graph_hash, batch_index, status, attempts, error, server,
     prompt_id, started_at, finished_at, timings, files) = row
    try:
        record = CellRecord(index, str(label), str(template), json.loads(values), json.loads(params),
                            str(graph_hash), batch_index, status=CellStatus(status), attempts=int(attempts),
                            error=error, server=server, prompt_id=prompt_id, started_at=started_at,
                            finished_at=finished_at, timings=json.loads(timings), files=tuple(json.loads(files)))
        if not (isinstance(record.values, Mapping) and isinstance(record.params, Mapping)
                and isinstance(record.timings, Mapping) and all(isinstance(f, str) for f in record.files)):
            raise TypeError("values, params and timings must be objects, files a list of names")
    except (ValueError, TypeError) as exc:
        raise JournalFailed(f"cell {index} does not read back ({exc}); was the journal edited by hand?",
                            path=JOURNAL_NAME) from exc
    return record


def _loads(text: Any, path: Path) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise JournalFailed(f"holds text that is not JSON ({exc}); was it edited by hand?", path=str(path)) from exc


def _holds_something(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


class FolderLock:
    """An exclusive lock on a sweep's output folder, held while its journal is open.

    The operating system drops it when the process ends, however it ends, so a killed
    sweep never leaves its folder locked. The file says who holds it.
    """

    def __init__(self, path: Path, handle: Any) -> None:
        self._path, self._handle = path, handle

    @classmethod
    def take(cls, folder: Path) -> FolderLock:
        """Lock `folder` or raise SweepError naming the process that holds it."""
        path = folder / LOCK_NAME
        try:
            handle = path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise JournalFailed(f"cannot create the folder's lock: {exc.strerror or exc}", path=str(path)) from exc
        try:
            _lock_file(handle)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read(200).strip() or "another process"
            handle.close()
            raise SweepError(f"{folder} is in use by {holder}; wait for it to finish, or use another --out "
                             "folder") from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        """Unlock (idempotent)."""
        if not self._handle.closed:
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.close()  # closing the file drops the lock


def _lock_file(handle: Any) -> None:
    """Take an exclusive, non-blocking lock on an open file; OSError if another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def definition_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two sweep definitions, as 'NAME: OLD before, NEW now' lines for a user."""
    def shown(value: Any) -> str:
        if isinstance(value, Mapping) and "file" in value:  # an input file, by name and content
            return f"{value['file']} ({value.get('content', '?')})"
        return "(not set)" if value is None else (str(value) if isinstance(value, (int, float, str))
                                                  else json.dumps(value))

    changes = []
    if old.get("template") != new.get("template"):
        changes.append(f"template: {old.get('template')} before, {new.get('template')} now")
    old_fixed, new_fixed = dict(old.get("fixed") or {}), dict(new.get("fixed") or {})
    for name in sorted(set(old_fixed) | set(new_fixed)):
        if old_fixed.get(name) != new_fixed.get(name):
            changes.append(f"{name}: {shown(old_fixed.get(name))} before, {shown(new_fixed.get(name))} now")
    old_axes = {a["name"]: a for a in old.get("axes") or ()}
    new_axes = {a["name"]: a for a in new.get("axes") or ()}
    for name in list(old_axes) + [n for n in new_axes if n not in old_axes]:
        before, now = old_axes.get(name), new_axes.get(name)
        if before is None or now is None:
            changes.append(f"axis {name}: {'(none)' if before is None else before['spec']} before, "
                           f"{'(none)' if now is None else now['spec']} now")
        elif before.get("spec") != now.get("spec") or (
                before.get("values") != now.get("values") and not _drawn(name, str(now.get("spec")))):
            changes.append(f"axis {name}: {before.get('spec')} before, {now.get('spec')} now")
    for flag in ("zip", "batch_seeds"):
        if bool(old.get(flag)) != bool(new.get(flag)):
            changes.append(f"{flag}: {bool(old.get(flag))} before, {bool(new.get(flag))} now")
    if [a["name"] for a in old.get("axes") or ()] != [a["name"] for a in new.get("axes") or ()] and \
            set(old_axes) == set(new_axes):
        changes.append(f"axis order: {', '.join(old_axes)} before, {', '.join(new_axes)} now")
    return changes


def _drawn(axis_name: str, spec: str) -> bool:
    """Whether an axis's values were drawn at random (random:N, or a seed of -1): they differ run to run."""
    if re.match(r"^\s*random\s*:", spec):
        return True
    return "seed" in axis_name and "-1" in (item.strip() for item in spec.split(","))


def _describe(definition: Mapping[str, Any]) -> str:
    axes = " ".join(f"{a['name']}={a['spec']}" for a in definition.get("axes", []))
    return f"template {definition.get('template')!r}, axes {axes}"
