"""The package type-checks under mypy --strict (pyproject's [tool.mypy])."""

import re
import subprocess
import sys
from pathlib import Path


def test_mypy_strict_passes(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), "comfy_orchestrator"],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "Success" in done.stdout


def test_the_readme_python_examples_pass_mypy_strict_as_written(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    example = tmp_path / "readme_example.py"
    example.write_text("\n".join(blocks), encoding="utf-8")  # one after the other, as a reader runs them
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
                           str(example)], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_every_option_the_readme_offers_exists_on_its_command() -> None:
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text("utf-8")
    uses = re.findall(r"comfy-orch ([a-z-]+(?: [a-z-]+)?)[^`\n]*?(--[a-z][a-z-]+)", readme)
    assert ("demo", "--grid-format") in uses and len(uses) > 5
    for command, option in uses:
        words = command.split()
        shown = CliRunner().invoke(main, [*words, "--help"])
        if shown.exit_code != 0:  # "farm status" or a command and its first argument
            shown = CliRunner().invoke(main, [words[0], "--help"])
        assert option in shown.output, f"the README offers '{option}' on 'comfy-orch {command}'"
