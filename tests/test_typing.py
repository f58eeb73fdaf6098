"""The package type-checks under mypy --strict (pyproject's [tool.mypy])."""

import subprocess
import sys
from pathlib import Path


def test_mypy_strict_passes(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), "comfy_orchestrator"],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "Success" in done.stdout
