"""What the command line prints: text a user or a server wrote comes out exactly as written."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from comfy_orchestrator.cli import main
from tests.conftest import free_port

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
