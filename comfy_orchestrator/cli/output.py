"""What `comfy-orch` shows and how it ends: the consoles, `line`, warnings, errors as one line, exit codes.

The only module of the package that prints or exits; the command modules go through it.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click

from comfy_orchestrator.errors import (
    AuthFailed,
    BrokerError,
    CertificateRejected,
    ComfyError,
    FarmFileInvalid,
    GraphInvalid,
    JournalFailed,
    ParameterError,
    SweepError,
    TemplateError,
    WorkflowImportError,
)

if TYPE_CHECKING:  # rich loads when something is first shown (rich.progress when a bar is drawn)
    from rich.console import Console
    from rich.progress import ProgressColumn
    from rich.text import Text

# A server refusing our certificate check or our credentials is set-up the user fixes (--ca-cert, the token),
# as is a journal that cannot be used (a file at fault): exit 2, as for any bad input.
BAD_INPUT = (ParameterError, TemplateError, GraphInvalid, SweepError, WorkflowImportError, FarmFileInvalid,
             BrokerError, CertificateRejected, AuthFailed, JournalFailed)

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report them

# While a command starts, nearly all it makes (modules, classes, functions, its template and jobs) lives as
# long as the process, and the little it drops is freed by reference counting: the collector's look after
# every 700 new objects found nothing and cost ~10 % of the CPU before the first prompt. Until the command
# says it is under way (`mark_started`), the collector looks after this many.
STARTING_COLLECTION_THRESHOLD = 100_000
USUAL_COLLECTION_THRESHOLDS = gc.get_threshold()  # the interpreter's own, as this module loads


class _ConsoleAtFirstUse:
    """A rich Console made when it is first used (by any thread), so that a command that shows nothing before
    its first prompt loads no rich before it (`run` with its seed given: ~15 ms of its start)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None
        self._making = threading.Lock()

    def _made(self) -> Console:
        if self._console is None:
            with self._making:
                if self._console is None:
                    from rich.console import Console

                    self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    def __enter__(self) -> Console:  # what a Console does as a context (rich's Live uses it)
        return self._made().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self._made().__exit__(*exc_info)

    def __repr__(self) -> str:
        return repr(self._made())


# Text a user or a server wrote is never read as markup, emoji codes or highlighted: our own styling
# is given as (text, style) pieces of a `line`, so no bracket in a value can change or break output.
stdout = cast("Console", _ConsoleAtFirstUse(soft_wrap=True, markup=False, emoji=False, highlight=False))


stderr = cast("Console", _ConsoleAtFirstUse(stderr=True, soft_wrap=True, markup=False, emoji=False,
                                             highlight=False))


def line(*parts: str | tuple[str, str]) -> Text:
    """One line of output from plain pieces and (text, style) pieces, none of it markup."""
    from rich.text import Text

    return Text.assemble(*parts)


def note(text: str) -> None:
    """One line of plain text on stderr, written without rich: what a command says before its first prompt."""
    click.echo(text, err=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line of error and exit."""
    stderr.print(line(("error:", "bold red"), " ", message))
    sys.exit(code)


def line_column() -> ProgressColumn:
    """A progress bar column showing the task's `line` field, a Text built with `line()`.

    The line is cut with an ellipsis at the terminal's edge, never wrapped: a wrapped line would
    leave the ETA's digits alone on a second line under the bar at 80 columns.
    """
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class LineColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            shown = task.fields.get("line")
            text = shown.copy() if isinstance(shown, Text) else Text(str(shown or ""))
            text.no_wrap, text.overflow = True, "ellipsis"
            return text

    return LineColumn()


class Commands(click.Group):
    """A click group that turns our errors into one line and an exit code, and a stop into its own.

    From the command's start to its end SIGTERM stops it as Ctrl-C does (`terminate_as_interrupt`); a stop
    that a command does not handle itself (while it reads a template, asks a server, prepares a sweep) ends it
    here, as stopped (130 or 143), and not as click would (exit 1, "Aborted!").
    """

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            try:
                with terminate_as_interrupt():
                    return super().invoke(ctx)
            except KeyboardInterrupt as stop:
                how, code = stopped(stop)
                fail(how, code)
            except BAD_INPUT as exc:
                fail(str(exc), EXIT_BAD_INPUT)
            except ComfyError as exc:
                fail(str(exc), EXIT_FAILED)
            except OSError as exc:  # a file we were asked to read or write
                fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), EXIT_BAD_INPUT)


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    stderr.print(line(("warning:", "yellow"), " ", str(message)))


def warn(text: str) -> None:
    stderr.print(line(("warning:", "yellow"), " ", text))


def format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the queue is cleaned, the manifest written."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def stopped(stop: KeyboardInterrupt) -> tuple[str, int]:
    """How a command was stopped ("interrupted": Ctrl-C, "terminated": SIGTERM) and the exit code that says so."""
    return ("terminated", EXIT_TERMINATED) if isinstance(stop, Terminated) else ("interrupted", EXIT_INTERRUPTED)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM stops the main thread as Ctrl-C does (elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def collect_rarely_while_starting() -> None:
    """Let the garbage collector look rarely (STARTING_COLLECTION_THRESHOLD) until `mark_started()`; the process's
    entry calls it. A command that never says it started keeps collecting, only less often."""
    gc.set_threshold(STARTING_COLLECTION_THRESHOLD, *USUAL_COLLECTION_THRESHOLDS[1:])


def mark_started() -> None:
    """The command is under way (its first prompt is out): what its start made is kept out of every later
    collection (gc.freeze: it lives as long as the process), and the collector works as usual again.
    Only the first call after `collect_rarely_while_starting` does anything; any thread may call it."""
    if gc.get_threshold()[0] == STARTING_COLLECTION_THRESHOLD:
        gc.freeze()
        gc.set_threshold(*USUAL_COLLECTION_THRESHOLDS)


def end_process(code: object) -> NoReturn:
    """End this process with `code` (a SystemExit's) as Python would, but without tearing the interpreter down.

    Tearing down every module and collecting what they hold costs a finished command 0.05-0.3 s of
    CPU for nothing. Everything else an exit does still happens: the exit handlers run (logging
    flushed, finalizers), then the output is flushed. While a thread other than this one still runs,
    the ordinary exit waits for it instead.
    """
    status = code if isinstance(code, int) else 0 if code is None else 1
    if not isinstance(code, (int, type(None))):
        print(code, file=sys.stderr)  # as Python says a SystemExit's message
    others = [thread for thread in threading.enumerate()
              if thread is not threading.current_thread() and not thread.daemon and thread.is_alive()]
    if others:
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120  # as Python ends when its output cannot be flushed
    os._exit(status)
