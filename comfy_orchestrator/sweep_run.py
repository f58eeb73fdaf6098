"""Running a sweep: its cells through a farm, recorded in the journal, with manifests, grids and the page.

The output folder holds ``images/`` (one file a cell, named after it), ``thumbnails/`` (made as
each image arrives, while the GPUs work, so the grids at the end only paste them),
``journal.sqlite``, ``manifest.jsonl`` and ``manifest.csv``, the grid images and ``index.html``. Running the
same sweep into the same folder again runs only the cells the journal does not have done.

Every cell is validated before anything is written. A resume first checks each done cell's files (a
missing, truncated or non-image file is fetched again from its server's history, or the cell runs
again), then asks the servers about the prompts a cut-off run left behind and adopts those still
queued, running or done, so no cell's GPU work is done twice.

Given a `queue` (`comfy_orchestrator.queue.CeleryQueue`) instead of a farm, the cells go through
the durable queue to workers on GPU boxes; the journal records each cell's task id, so a later
run (after `detach=True`, or a submitter that was killed) collects what finished meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy_orchestrator.client import open_image
from comfy_orchestrator.errors import ComfyError
from comfy_orchestrator.farm import (
    Farm,
    FarmEvent,
    JobDone,
    JobFailed,
    JobProgress,
    JobRetrying,
    JobSubmitted,
    JobSubmitting,
    NoServerUp,
    ServerDown,
    ServerLink,
)
from comfy_orchestrator.grid import DEFAULT_GRID_FORMAT
from comfy_orchestrator.jobs import Job, JobResult, content_name
from comfy_orchestrator.journal import JOURNAL_NAME, CellPlan, CellRecord, CellStatus, Journal, PromptRecord
from comfy_orchestrator.limits import Limits
from comfy_orchestrator.protocol import outcome_from_history, outputs_from_history
from comfy_orchestrator.provenance import portable_params
from comfy_orchestrator.sweep import (
    BATCH_AXIS,
    Batch,
    Cell,
    Sweep,
    cache_key,
    estimate_seconds,
    format_value,
    order_for_cache,
)
from comfy_orchestrator.sweep_progress import ProgressCallback, Tracker, ignore_progress
from comfy_orchestrator.sweep_progress import SweepProgress as SweepProgress  # its home before it had one
from comfy_orchestrator.sweep_results import SweepResults

if TYPE_CHECKING:
    from comfy_orchestrator.queue import CeleryQueue, QueueEvent

logger = logging.getLogger(__name__)

IMAGES_FOLDER = "images"
STAGING_FOLDER = ".incoming"  # downloads land here, then move to their cell's name
DEFAULT_MAX_ATTEMPTS = 3
ADOPT_POLL_S = 0.5  # how often a resume asks about a prompt it adopted that is still queued or running


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep would run: its cells, the prompts they make, and a rough time."""

    sweep: Sweep
    cells: tuple[Cell, ...]
    batches: tuple[Batch, ...]
    jobs: tuple[Job, ...]  # one a batch, in the order they run
    estimate_s: float


@dataclass(frozen=True)
class SweepReport:
    """A finished run: the counts, and where its results are."""

    folder: Path
    total: int
    done: int
    failed: int
    ran: int  # prompts run this time
    skipped: int  # cells already done before this run
    elapsed_s: float
    manifest: Path
    manifest_csv: Path
    grids: tuple[Path, ...] = ()
    page: Path | None = None
    adopted: int = 0  # prompts a cut-off run left on the servers that this run finished with
    failures: Mapping[int, str] = field(default_factory=dict)  # cell index -> error
    # seconds spent preparing (journal, planning), running the prompts, and writing results (manifests, grids, page)
    phases: Mapping[str, float] = field(default_factory=dict)
    waiting: int = 0  # cells left on the queue by a detached run; the same command again collects them


def plan_sweep(sweep: Sweep, *, servers: int = 1) -> SweepPlan:
    """Validate every cell and render each prompt, ordered so ComfyUI's cache is reused."""
    cells = sweep.cells()
    batches = sweep.batches(cells)
    uploads: dict[Path, str] = {}  # each picture read and hashed once, not once a prompt

    def job(batch: Batch) -> Job:
        files: Mapping[str, Path] = getattr(batch.params, "image_fields", dict)()
        for path in files.values():
            if path not in uploads:
                uploads[path] = content_name(path)
        names = {name: uploads[path] for name, path in files.items()}
        return sweep.template.job(batch.params, label=_label(batch), image_names=names)

    pairs = [(batch, job(batch)) for batch in batches]
    ordered = order_for_cache(pairs, lambda pair: cache_key(pair[1].graph))
    return SweepPlan(sweep, tuple(cells), tuple(b for b, _ in ordered), tuple(j for _, j in ordered),
                     estimate_seconds(batches, servers=servers))


def run_sweep(
    sweep: Sweep,
    folder: Path | str,
    farm: Farm | None = None,
    *,
    queue: CeleryQueue | None = None,
    detach: bool = False,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    on_progress: ProgressCallback = ignore_progress,
    thumbnail_px: int = 256,
    grid_format: str = DEFAULT_GRID_FORMAT,
) -> SweepReport:
    """Run the cells of `sweep` the journal in `folder` does not have done, then write the results.

    A folder that holds another sweep is refused. `on_progress` is called from the farm's
    threads as well as the caller's. With `queue` the cells go through the durable queue
    instead of `farm`; `detach` then queues them, collects what already finished and returns.
    A new sweep through a farm is prepared (every cell validated, the journal written) while
    the farm's servers connect and are probed, so its first prompts go out sooner.
    """
    if (farm is None) == (queue is None):
        raise ValueError("run_sweep takes a farm or a queue, not both")
    started = time.monotonic()
    folder = Path(folder)
    servers = len(farm.servers) if farm is not None else 1

    def prepare(stack: ExitStack) -> _Setup:
        return _prepare(stack, sweep, folder, servers=servers, max_attempts=max_attempts, on_progress=on_progress,
                        thumbnail_px=thumbnail_px, grid_format=grid_format, started=started)

    with ExitStack() as stack:
        adopted, ready = 0, list[_Setup]()
        try:
            if farm is not None and not (folder / JOURNAL_NAME).is_file():  # nothing to adopt or skip
                _run_while_preparing(farm, folder, lambda: prepare(stack), ready, max_attempts=max_attempts)
            else:
                ready.append(prepare(stack))
                setup = ready[0]
                with setup.results:
                    if farm is not None:
                        adopted = _adopt(setup.journal, farm, setup.plan, max_attempts, folder, setup.staging,
                                         setup.tracker, setup.results)
                    _choose_work(setup, max_attempts)
                    if queue is not None:
                        _run_queued(setup.journal, queue, setup.plan.sweep, setup.work, setup.to_run, folder,
                                    setup.staging, setup.tracker, setup.results, detach=detach)
                    else:
                        assert farm is not None
                        _run(farm, folder, (job for _, job in setup.work), ready)
        finally:
            ran = time.monotonic()
            if ready:  # after Ctrl-C too; after a run, while the last thumbnails are made
                records = list(ready[0].journal.records())
                manifests = ready[0].journal.write_manifests(records)
                shutil.rmtree(ready[0].staging, ignore_errors=True)
        assert ready  # a run that got no journal has raised by now
        return _finish(ready[0], records, *manifests, adopted=adopted, started=started, ran=ran)


@dataclass
class _Setup:
    """A run prepared: its plan, the open journal, the folders, the progress counts and the results' maker."""

    plan: SweepPlan
    journal: Journal
    staging: Path
    tracker: Tracker
    results: SweepResults
    skipped: int  # cells done before this run
    prepared_at: float
    work: list[tuple[Batch, Job]] = field(default_factory=list)  # the prompts this run sends
    to_run: set[int] = field(default_factory=set)  # the cells this run settles
    by_label: dict[str, Batch] = field(default_factory=dict)  # a prompt's job label -> its batch of cells


def _choose_work(setup: _Setup, max_attempts: int) -> None:
    """The cells the journal does not have done (nor given up on), and the prompts that run them."""
    setup.to_run = set(setup.journal.to_run(max_attempts=max_attempts))
    setup.work = [(batch, job) for batch, job in zip(setup.plan.batches, setup.plan.jobs)
                  if any(cell.index in setup.to_run for cell in batch.cells)]
    setup.by_label = {job.label: batch for batch, job in setup.work}


def _prepare(stack: ExitStack, sweep: Sweep, folder: Path, *, servers: int, max_attempts: int,
             on_progress: ProgressCallback, thumbnail_px: int, grid_format: str, started: float) -> _Setup:
    """Validate every cell, open (or create) the journal in `folder` and record the cells; nothing runs yet.

    Each cell is validated and each prompt rendered once: a sweep keeps the cells it validated (the command
    line checks them before it asks the servers), and a journal already in the folder is opened before the
    prompts are rendered, so that the seeds it stored are the ones rendered.
    """
    sweep.cells()  # every cell is valid before anything is written
    journal = None
    if (folder / JOURNAL_NAME).is_file():  # a resume: nothing is written before the prompts render
        journal = stack.enter_context(Journal.open(folder, digest=sweep.digest(), definition=sweep.definition()))
        sweep = _stored_sweep(sweep, journal)
    plan = plan_sweep(sweep, servers=servers)  # a new journal is made only once every prompt renders and checks
    if journal is None:
        journal = stack.enter_context(Journal.open(folder, digest=sweep.digest(), definition=sweep.definition()))
        stored = _stored_sweep(sweep, journal)
        if stored is not sweep:  # another run made the journal meanwhile, with seeds of its own
            sweep, plan = stored, plan_sweep(stored, servers=servers)
    journal.add(_cell_plans(plan))
    skipped = journal.counts()[CellStatus.DONE]
    if skipped:  # a resume: done cells whose files are broken run again (a new journal has none done)
        skipped -= _check_done_files(journal, folder)
    staging = folder / STAGING_FOLDER
    shutil.rmtree(staging, ignore_errors=True)  # pieces of downloads a crash cut off
    staging.mkdir(parents=True)
    (folder / IMAGES_FOLDER).mkdir(exist_ok=True)
    tracker = Tracker(len(plan.cells), skipped, journal.exhausted(max_attempts=max_attempts), on_progress)
    results = SweepResults(folder, sweep, plan.jobs, list(journal.records()), thumbnail_px=thumbnail_px,
                           grid_format=grid_format)
    prepared_at = time.monotonic()
    logger.debug("sweep of %d cells in %d prompts prepared in %.3f s", len(plan.cells), len(plan.jobs),
                 prepared_at - started)
    return _Setup(plan, journal, staging, tracker, results, skipped, prepared_at)


def _finish(setup: _Setup, records: Sequence[CellRecord], manifest: Path, manifest_csv: Path, *, adopted: int,
            started: float, ran: float) -> SweepReport:
    """Write the grids and the page showing `records` (every cell, as the run left them); the report."""
    journal, plan = setup.journal, setup.plan
    logger.debug("cells settled; writing the grids and the page")
    counts = journal.counts()
    # the journal is closed (its log folded into the database, synced) while the grids encode
    grids, page = setup.results.write(records, meanwhile=journal.close_database)
    failures = {r.index: r.error or "" for r in records if r.status is CellStatus.FAILED}
    finished = time.monotonic()
    phases = {"prepare": setup.prepared_at - started, "run": ran - setup.prepared_at, "finish": finished - ran}
    return SweepReport(folder=journal.folder, total=len(plan.cells), done=counts[CellStatus.DONE],
                       failed=counts[CellStatus.FAILED], ran=len(setup.work), skipped=setup.skipped,
                       elapsed_s=finished - started, manifest=manifest, manifest_csv=manifest_csv,
                       grids=tuple(grids), page=page, failures=failures, adopted=adopted,
                       phases={name: round(seconds, 3) for name, seconds in phases.items()},
                       waiting=len(plan.cells) - counts[CellStatus.DONE] - counts[CellStatus.FAILED])


def _run_while_preparing(farm: Farm, folder: Path, prepare: Callable[[], _Setup], ready: list[_Setup], *,
                         max_attempts: int) -> None:
    """Run a new sweep through `farm`, prepared when the farm reads its first job, while its servers connect
    and are probed. The setup goes into `ready` once made, for the caller to finish with (after an error too)."""
    with ExitStack() as results_open:

        def jobs() -> Iterator[Job]:
            setup = prepare()
            ready.append(setup)
            results_open.enter_context(setup.results)
            _choose_work(setup, max_attempts)
            yield from (job for _, job in setup.work)

        _run(farm, folder, jobs(), ready)


def _stored_sweep(sweep: Sweep, journal: Journal) -> Sweep:
    """The sweep as the journal stored it: the stored definition wins, holding the seeds drawn when it began."""
    if _canonical(journal.definition) == _canonical(sweep.definition()):
        return sweep
    return sweep.with_stored_axes(journal.definition)


def _canonical(definition: Mapping[str, Any]) -> str:
    return json.dumps(definition, sort_keys=True, default=str)


def _check_done_files(journal: Journal, folder: Path) -> int:
    """Send done cells whose files are missing, truncated or not images back to run (or be fetched again); how
    many were sent."""
    broken: dict[int, str] = {}
    for record in journal.records():
        if record.status is not CellStatus.DONE:
            continue
        for name in record.files or ("",):
            problem = _file_problem(folder, name)
            if problem:
                broken[record.index] = f"its file {name or '(none)'} {problem}"
                break
    for index, reason in broken.items():
        logger.warning("cell %d is done but %s; fetching or running it again", index, reason)
    if broken:
        journal.reopen(sorted(broken), reasons=broken)
    return len(broken)


def _file_problem(folder: Path, name: str) -> str:
    """Why a cell's file is unusable, or "" if it looks whole: an image, not too large, not cut short."""
    path = folder / name
    if not name or not path.is_file():
        return "is missing"
    try:
        with open_image(path, limits=Limits(), what=name) as image:
            image_format = image.format
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.seek(max(0, size - 12))
            tail = handle.read()
    except ComfyError as exc:
        return f"is refused: {exc}"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if image_format == "PNG" and not tail.endswith(b"IEND\xaeB`\x82"):
        return "is truncated"
    if image_format == "JPEG" and not tail.endswith(b"\xff\xd9"):
        return "is truncated"
    return ""


def _adopt(journal: Journal, farm: Farm, plan: SweepPlan, max_attempts: int, folder: Path, staging: Path,
           tracker: Tracker, results: SweepResults) -> int:
    """Ask the servers about the prompts a cut-off run left; finish the cells of those queued, running or done.

    A prompt whose cells no longer need it is taken off its server's queue. Returns how many prompts were
    adopted; the cells of the others run again through the farm.
    """
    prompts = journal.open_prompts()
    if not prompts:
        return 0
    to_run = set(journal.to_run(max_attempts=max_attempts))
    by_cell = {cell.index: (batch, job) for batch, job in zip(plan.batches, plan.jobs) for cell in batch.cells}
    configs = {config.name: config for config in farm.servers}
    links: dict[str, ServerLink] = {}
    claimed: set[int] = set()
    adopted: dict[str, list[tuple[PromptRecord, Batch, Job, list[Cell]]]] = {}
    try:
        for prompt in prompts:
            config = configs.get(prompt.server)
            if config is None:
                logger.warning("prompt %s went to %s, which is not in this farm; its cells run again",
                               prompt.prompt_id, prompt.server)
                journal.settle_prompts([prompt.prompt_id])
                continue
            link = links.get(prompt.server) or links.setdefault(prompt.server, farm.connect(config))
            wanted = [i for i in prompt.cells if i in to_run and i not in claimed and i in by_cell]
            batch, job = by_cell[wanted[0]] if wanted else (None, None)
            if batch is None or job is None or any(by_cell[i][0] is not batch for i in wanted):
                _withdraw(link, prompt)
                journal.settle_prompts([prompt.prompt_id])
                continue
            state, entry = link.locate(prompt.prompt_id)
            if state == "unknown" or (state == "done" and not _succeeded(entry, prompt.prompt_id)):
                journal.settle_prompts([prompt.prompt_id])
                continue
            claimed.update(wanted)
            cells = [cell for cell in batch.cells if cell.index in wanted]
            adopted.setdefault(prompt.server, []).append((prompt, batch, job, cells))
            tracker.running(cells, prompt.server)
        if adopted:
            logger.info("adopting %d prompts a cut-off run left on the servers",
                        sum(len(found) for found in adopted.values()))
            stop = threading.Event()
            with ThreadPoolExecutor(max_workers=len(adopted), thread_name_prefix="adopt") as pool:
                waits = [pool.submit(_finish_adopted, journal, links[server], found, farm.timeouts.job_s, folder,
                                     staging, tracker, results, stop) for server, found in adopted.items()]
                try:
                    for future in waits:
                        future.result()
                except BaseException:  # Ctrl-C or SIGTERM: leave nothing we adopted running on a GPU
                    stop.set()
                    for server, found in adopted.items():
                        for prompt, *_ in reversed(found):  # the waiting ones first, so none starts meanwhile
                            _withdraw(links[server], prompt)
                    raise
    finally:
        for link in links.values():
            link.close()
    return sum(len(found) for found in adopted.values())


def _withdraw(link: ServerLink, prompt: PromptRecord) -> None:
    """Take a prompt off its server (off the queue, or interrupted), so it does not run for nothing."""
    try:
        link.cancel(prompt.prompt_id)
    except ComfyError as exc:
        logger.warning("could not take prompt %s off %s: %s", prompt.prompt_id, prompt.server, exc)


def _succeeded(entry: Mapping[str, Any] | None, prompt_id: str) -> bool:
    if entry is None:
        return False
    outcome = outcome_from_history(entry, prompt_id)
    return outcome.failure is None and outcome.interruption is None and outcome.status != "error"


def _finish_adopted(journal: Journal, link: ServerLink, found: Sequence[tuple[PromptRecord, Batch, Job, list[Cell]]],
                    timeout_s: float, folder: Path, staging: Path, tracker: Tracker,
                    results: SweepResults, stop: threading.Event) -> None:
    """Wait for one server's adopted prompts in the order it runs them; record each one's cells."""
    for prompt, batch, job, cells in found:
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                state, entry = link.locate(prompt.prompt_id)
                if state in ("done", "unknown") or time.monotonic() >= deadline:
                    break
                if stop.wait(ADOPT_POLL_S):
                    return
            if state == "done" and entry is not None and _succeeded(entry, prompt.prompt_id):
                result = JobResult(job=job, prompt_id=prompt.prompt_id, server=prompt.server,
                                   outputs=outputs_from_history(entry))
                result = link.save(result, staging)
                for cell, image in _record_result(journal, batch, cells, result, folder):
                    results.add(cell, image)
                tracker.finished(cells, failed=False)
            else:
                logger.warning("adopted prompt %s on %s ended %s; its cells run again", prompt.prompt_id,
                               prompt.server, "without a result" if state == "done" else f"({state})")
                tracker.released(cells)
        except ComfyError as exc:
            logger.warning("adopted prompt %s on %s: %s; its cells run again", prompt.prompt_id, prompt.server, exc)
            tracker.released(cells)
        journal.settle_prompts([prompt.prompt_id])


def _run(farm: Farm, folder: Path, jobs: Iterator[Job], ready: Sequence[_Setup]) -> None:
    """`jobs` through the farm, each outcome recorded as it comes, in the setup that `ready` holds (for a new
    sweep, put there when the farm reads its first job)."""

    def on_event(event: FarmEvent) -> None:
        if ready:  # a server may come up, or go down, before the sweep is prepared: nothing to record then
            _on_farm_event(event, ready[0])

    for outcome in farm.run(jobs, out_dir=folder / STAGING_FOLDER, on_event=on_event):
        setup = ready[0]
        _record_outcome(setup.journal, setup.by_label[outcome.job.label], setup.to_run, outcome, folder,
                        setup.tracker, setup.results)


def _on_farm_event(event: FarmEvent, setup: _Setup) -> None:
    """What the journal and the progress make of a farm event."""
    match event:
        case JobSubmitting(job=job, server=server, prompt_id=prompt_id):
            cells = _open_cells(setup.by_label[job.label], setup.to_run)
            setup.journal.mark_submitting([c.index for c in cells], server=server, prompt_id=prompt_id)
        case JobSubmitted(job=job, server=server):
            setup.tracker.running(_open_cells(setup.by_label[job.label], setup.to_run), server)
        case JobProgress(job=job, progress=progress) if progress.node_max:
            setup.tracker.step(_open_cells(setup.by_label[job.label], setup.to_run), progress.node_value,
                               progress.node_max)
        case JobRetrying(job=job, server=server, error=error):
            setup.tracker.note(f"{job.label} failed on {server}, retrying: {error}")
        case ServerDown(server=server, error=error):
            setup.tracker.note(f"{server} is down: {error}")
        case NoServerUp():
            setup.tracker.note(event.message)
        case JobDone():
            pass


def _run_queued(journal: Journal, queue: CeleryQueue, sweep: Sweep, work: Sequence[tuple[Batch, Job]],
                to_run: set[int], folder: Path, staging: Path, tracker: Tracker, results: SweepResults, *,
                detach: bool) -> None:
    """Put the cells on the queue (or find the tasks an earlier run queued) and collect their outcomes."""
    from comfy_orchestrator.queue import QueueNote, TaskLost, TaskQueued, TaskStarted

    by_label = {job.label: batch for batch, job in work}
    statuses = {record.index: record.status for record in journal.records()}
    known = journal.tasks()
    tasks: dict[str, str] = {}
    for batch, job in work:
        cells = _open_cells(batch, to_run)
        ids = {known.get(cell.index) for cell in cells}
        if len(ids) == 1 and None not in ids and all(statuses[c.index] is CellStatus.RUNNING for c in cells):
            tasks[job.label] = str(ids.pop())  # queued by an earlier run: collect it, do not queue it again

    def on_event(event: QueueEvent) -> None:
        match event:
            case TaskQueued(job=job, task_id=task_id):
                journal.record_task([c.index for c in _open_cells(by_label[job.label], to_run)], task_id)
            case TaskStarted(job=job, worker=worker, server=server):
                tracker.running(_open_cells(by_label[job.label], to_run), f"{worker}/{server}")
            case TaskLost(job=job, reason=reason):
                tracker.note(f"{job.label}: {reason}; queued again")
            case QueueNote(message=message):
                tracker.note(message)

    sweep_id = journal.queue_id(lambda: uuid.uuid4().hex[:16])
    title = f"{sweep.template.name}: " + " × ".join(f"{a.name} ({len(a.values)})" for a in sweep.run_axes)
    for outcome in queue.run([job for _, job in work], sweep_id=sweep_id, title=f"{title} -> {folder.name}",
                             tasks=tasks, out_dir=staging, detach=detach, on_event=on_event):
        _record_outcome(journal, by_label[outcome.job.label], to_run, outcome, folder, tracker, results)


def _record_outcome(journal: Journal, batch: Batch, to_run: set[int], outcome: JobResult | JobFailed, folder: Path,
                    tracker: Tracker, results: SweepResults) -> None:
    """Record one prompt's outcome for its open cells: images in place and done, or failed."""
    cells = _open_cells(batch, to_run)
    if isinstance(outcome, JobFailed):
        server = outcome.servers[-1] if outcome.servers else None
        journal.mark_failed([c.index for c in cells], error=str(outcome.error), server=server)
        tracker.finished(cells, failed=True)
        logger.warning("cells %s failed: %s", ", ".join(str(c.index) for c in cells), outcome.error)
    else:
        for cell, image in _record_result(journal, batch, cells, outcome, folder):
            results.add(cell, image)
        tracker.finished(cells, failed=False)
    journal.settle_cells([c.index for c in cells])


def _record_result(journal: Journal, batch: Batch, cells: Sequence[Cell], result: JobResult,
                   folder: Path) -> list[tuple[Cell, Path]]:
    """Move a prompt's files to their cells' names and mark the cells done; each cell with its grid image."""
    files = list(result.files)
    if not files:
        journal.mark_failed([c.index for c in cells], error=f"prompt {result.prompt_id} produced no files",
                            server=result.server, prompt_id=result.prompt_id)
        return []
    for source in files:
        problem = _file_problem(source.parent, source.name)
        if problem:
            journal.mark_failed([c.index for c in cells], server=result.server, prompt_id=result.prompt_id,
                                error=f"the server's output {source.name} {problem}")
            for leftover in files:
                leftover.unlink(missing_ok=True)
            return []
    batched = len(batch.cells) > 1
    if batched and len(files) != len(batch.cells):
        journal.mark_failed([c.index for c in cells], server=result.server, prompt_id=result.prompt_id,
                            error=f"a batch of {len(batch.cells)} gave {len(files)} files")
        return []
    shown = []
    for cell in cells:
        mine = [files[cell.batch_index or 0]] if batched else files
        names = []
        for number, source in enumerate(mine):
            suffix = f"_{number + 1}" if len(mine) > 1 else ""
            target = folder / IMAGES_FOLDER / f"{cell.slug}{suffix}{source.suffix or '.png'}"
            if batched:
                shutil.copyfile(source, target)  # every cell of a batch has its own file
            else:
                os.replace(source, target)
            names.append(target.relative_to(folder).as_posix())
        journal.mark_done(cell.index, files=names, server=result.server, prompt_id=result.prompt_id,
                          timings=result.timings)
        shown.append((cell, Path(names[0])))
    if batched:
        for source in files:
            source.unlink(missing_ok=True)
    return shown


def _open_cells(batch: Batch, to_run: set[int]) -> list[Cell]:
    """The cells of a batch that this run is to settle (done ones stay as they are)."""
    return [cell for cell in batch.cells if cell.index in to_run]


def _label(batch: Batch) -> str:
    first = batch.cells[0]
    if len(batch.cells) == 1:
        return f"cell {first.index}: {first.label}"
    rest = ", ".join(f"{n}={format_value(v)}" for n, v in first.values.items() if n != BATCH_AXIS)
    return f"cells {first.index}-{batch.cells[-1].index} (batch of {len(batch.cells)}): {rest}"


def _cell_plans(plan: SweepPlan) -> Iterator[CellPlan]:
    for batch, job in zip(plan.batches, plan.jobs):
        params, _ = portable_params(job.params, job.inputs)  # no local paths kept (job.params: the batch's as JSON)
        for cell in batch.cells:
            yield CellPlan(cell.index, cell.label, plan.sweep.template.name, dict(cell.values), params,
                           job.graph.digest(), cell.batch_index)
