"""What the command line prints: text a user or a server wrote comes out exactly as written; a stop, one line."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from comfy_orchestrator.cli import main
from tests.conftest import done_cells, free_port, start_command

# Each would be eaten, turned into a style, an emoji, or a MarkupError if it were read as rich markup.
HOSTILE_TEXTS = ["[x].png", "[/x]", "[bold]loud[/bold]", ":smile: and :a:b:", "[[server]]", "[link=file:///]y"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_a_value_the_user_typed_is_quoted_exactly(text: str) -> None:
    done = invoke("render", "img2img", "--set", f"sampler={text}")
    assert done.exit_code == 2, done.output
    assert f"sampler={text!r}" in done.stderr
    assert isinstance(done.exception, SystemExit) and done.stderr.count("\n") == 1


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_a_missing_image_is_named_as_typed(text: str) -> None:
    done = invoke("render", "img2img", "--set", f"image={text}")
    assert done.exit_code == 2
    assert f"image={text!r}" in done.stderr and done.stderr.count("\n") == 1


def test_a_farm_file_without_servers_names_the_tables(tmp_path: Path) -> None:
    farm = tmp_path / "farm.toml"
    farm.write_text('[x]\nname = "a"\n', encoding="utf-8")
    done = invoke("farm", "status", "--farm", str(farm))
    assert done.exit_code == 2
    assert "expected [[server]] tables" in done.stderr


def test_a_sweep_over_markup_looking_values_runs_and_labels_them_exactly(comfy: Any, sample_image: Path,
                                                                       tmp_path: Path) -> None:
    axis = "positive=[/x] a cat,[bold]dog :smile:"
    planned = invoke("sweep", "img2img", "--server", comfy.url, "--set", f"image={sample_image}",
                     "--axis", axis, "--out", str(tmp_path / "out"), "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert "[/x] a cat" in planned.stdout and "[bold]dog :smile:" in planned.stdout
    done = invoke("sweep", "img2img", "--server", comfy.url, "--set", f"image={sample_image}",
                  "--axis", axis, "--out", str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    assert "2 of 2 cells done" in done.stdout


class _MarkupAnswers(BaseHTTPRequestHandler):
    """A server whose every answer is a 500 with markup-looking text in its body."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        body = b"[/x] broke at [bold]step[/bold] :fire:"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """Keep the test's output clean."""


@pytest.fixture
def markup_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MarkupAnswers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_server_answer_is_printed_as_it_came(markup_server: str) -> None:
    done = invoke("queue", "--server", markup_server)
    assert done.exit_code == 1, done.output
    assert "[/x] broke at [bold]step[/bold] :fire:" in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_sweep_keeps_no_absolute_path_of_this_machine(comfy: Any, sample_image: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = invoke("sweep", "img2img", "--server", comfy.url, "--set", f"image={sample_image.name}",
                  "--axis", "cfg=6,8", "--out", "out")
    assert done.exit_code == 0, done.output
    here = str(tmp_path).encode()
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert {p.name for p in files} >= {"journal.sqlite", "manifest.jsonl", "manifest.csv", "index.html", "grid.jpg"}
    leaks = [str(path.relative_to(tmp_path)) for path in files if here in path.read_bytes()]
    assert leaks == []
    assert str(tmp_path) not in done.output
    # the same sweep resumed from another folder, the input typed another way: nothing to run again
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    again = invoke("sweep", "img2img", "--server", comfy.url, "--set", f"image=../{sample_image.name}",
                   "--axis", "cfg=6,8", "--out", "../out")
    assert again.exit_code == 0, again.output
    assert "0 prompts run, 2 cells already done" in again.stdout


def test_a_sweep_finds_a_picture_named_from_the_home_folder(sample_image: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(sample_image.parent))
    done = invoke("sweep", "img2img", "--set", f"image=~/{sample_image.name}", "--set", "positive=~ at home",
                  "--axis", "cfg=6,8", "--out", str(tmp_path / "out"), "--dry-run")
    assert done.exit_code == 0, done.output
    assert "2 cells in 2 prompts" in done.stdout


def test_a_bad_value_is_said_before_the_servers_are_asked(sample_image: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the value must be refused first
    done = invoke("sweep", "img2img", "--server", url, "--axis", "cfg=6,800", "--set", f"image={sample_image}",
                  "--out", str(tmp_path / "out"))
    assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.output
    assert "cfg=800" in done.stderr and "no server answers" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_sweep_with_no_server_answering_fails_at_once_naming_the_url(sample_image: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    done = invoke("sweep", "img2img", "--server", url, "--axis", "cfg=4,8", "--set", f"image={sample_image}",
                  "--out", str(out))
    assert done.exit_code == 1 and done.stderr.count("\n") == 1, done.output
    assert f"no server answers: {url}" in done.stderr and "--wait-for-servers" in done.stderr
    assert "HEAD /view" not in done.stderr and not out.exists()  # nothing started, nothing to resume
    # asked to wait, the sweep waits (here half a second) and records its cells as failed, to be resumed later
    waited = invoke("sweep", "img2img", "--server", url, "--axis", "cfg=4,8", "--set", f"image={sample_image}",
                    "--out", str(out), "--wait-for-servers", "0.5")
    assert waited.exit_code == 1 and "2 of 2 cells failed" in waited.stderr
    assert len((out / "manifest.csv").read_text("utf-8").splitlines()) == 3


def test_the_sweep_progress_line_is_cut_at_the_terminal_edge_never_wrapped() -> None:
    """At 80 columns the counts and ETA stay on the bar's line; the running cells' labels end in an ellipsis."""
    import io

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from comfy_orchestrator.cli.output import line, line_column

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    text = line(("8 done", "green"), " ", ("0 failed", "red"), " 1 running  ETA 00:12  ",
                ("denoise=0.9, cfg=10 step 14/20; denoise=0.6, cfg=10 step 3/20 ...", "dim"))
    progress = Progress(TextColumn("cells"), BarColumn(bar_width=24), MofNCompleteColumn(), line_column(),
                        console=console, auto_refresh=False)
    task = progress.add_task("", total=9, completed=8, line=text)
    progress.update(task)
    console.print(progress.make_tasks_table(progress.tasks))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "8/9 8 done 0 failed 1 running  ETA 00:12" in lines[0]
    assert lines[0].endswith("…") and len(lines[0]) <= 80


def test_plain_text_is_not_coloured_on_a_terminal(sample_image: Path, tmp_path: Path) -> None:
    """Only our own (text, style) pieces are styled: rich's highlighter would colour numbers, words and
    brackets of a plain line ('SD1.5' split in two, 'server(s)' in three)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FORCE_COLOR": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "comfy_orchestrator.cli", "sweep", "img2img", "--set",
                           f"image={sample_image}", "--axis", "cfg=6,8", "--out", str(tmp_path / "out"), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "2 cells in 2 prompts on 1 server(s); about" in done.stdout, done.stdout
    assert "(SD1.5, 512x512); nothing submitted" in done.stdout


class SilentServer:
    """A loopback server that takes each HTTP request in and never answers: `asked` is set once one has arrived."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[str] = []  # each request's first line
        self.asked = threading.Event()
        self._held: list[socket.socket] = []  # open and unanswered until `close`
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._held.append(connection)
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
            self.requests.append(received.split(b"\r\n", 1)[0].decode("latin-1"))
            self.asked.set()

    def close(self) -> None:
        for held in (self._listener, *self._held):
            with contextlib.suppress(OSError):
                held.shutdown(socket.SHUT_RDWR)  # wakes the accept or recv waiting on it
            held.close()
        self._thread.join(10)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


UNKNOWN_CHECKPOINT = "random-sd15.safetensors"  # not an official name: a command asks its server for the family
STOPS = [pytest.param(signal.SIGINT, 130, "interrupted", id="ctrl-c"),
         pytest.param(signal.SIGTERM, 143, "terminated", id="sigterm")]


def _stopped_while_asking(server: SilentServer, stop: signal.Signals, *args: str) -> tuple[int, str, list[str]]:
    """Run `comfy-orch ARGS` as a process, send it `stop` once its first request has reached `server`; its exit
    status, its stderr and the requests the server saw."""
    process = start_command(*args, stdout=subprocess.DEVNULL)
    try:
        assert server.asked.wait(60), f"nothing reached the server: {process.poll()}"
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()
    return process.returncode, err, list(server.requests)


@pytest.mark.parametrize(("stop", "code", "how"), STOPS)
def test_a_sweep_stopped_while_it_asks_its_server_ends_as_stopped_and_keeps_its_journal(
        sim: Callable[..., list[Any]], silent_server: SilentServer, sample_image: Path, tmp_path: Path,
        stop: signal.Signals, code: int, how: str) -> None:
    (comfy,) = sim(checkpoints=(UNKNOWN_CHECKPOINT,))
    sweep = ["sweep", "img2img", "--axis", "cfg=6,8", "--set", f"image={sample_image}", "--set",
             f"checkpoint={UNKNOWN_CHECKPOINT}", "--out", str(tmp_path / "out")]
    done = invoke(*sweep, "--server", comfy.url)
    assert done.exit_code == 0 and "2 of 2 cells done" in done.stdout, done.output
    returncode, err, asked = _stopped_while_asking(silent_server, stop, *sweep, "--server", silent_server.url)
    assert returncode == code, err
    assert err.strip() == f"error: {how}", err
    assert [request.split()[1].split("?")[0] for request in asked] == ["/view_metadata/checkpoints"]
    assert done_cells(tmp_path / "out") == 2
    again = invoke(*sweep, "--server", comfy.url)
    assert again.exit_code == 0 and "0 prompts run, 2 cells already done" in again.stdout, again.output


@pytest.mark.parametrize(("command", "stop", "code", "how"), [
    pytest.param(("run", "img2img", "--set", "seed=3", "--set", f"checkpoint={UNKNOWN_CHECKPOINT}"), signal.SIGTERM,
                 143, "terminated", id="run-sigterm"),  # the family is asked for before the prompt is made
    pytest.param(("run", "img2img", "--set", "seed=3", "--set", f"checkpoint={UNKNOWN_CHECKPOINT}"), signal.SIGINT,
                 130, "interrupted", id="run-ctrl-c"),
    pytest.param(("farm", "status"), signal.SIGINT, 130, "interrupted", id="farm-status-ctrl-c"),
    pytest.param(("history",), signal.SIGTERM, 143, "terminated", id="history-sigterm"),
])
def test_a_command_stopped_while_it_asks_its_server_says_so_in_one_line(
        silent_server: SilentServer, sample_image: Path, tmp_path: Path, command: tuple[str, ...],
        stop: signal.Signals, code: int, how: str) -> None:
    given = ("--set", f"image={sample_image}", "--out", str(tmp_path / "out")) if command[0] == "run" else ()
    returncode, err, asked = _stopped_while_asking(silent_server, stop, *command, *given, "--server",
                                                   silent_server.url)
    assert returncode == code, err
    assert err.strip() == f"error: {how}", err
    assert len(asked) == 1
    assert not (tmp_path / "out").exists()
