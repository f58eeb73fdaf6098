"""The house's rules that a tool can hold: the README's layout is the import order, and nothing imports upward.

STYLE.md: a module imports only modules above it in the layout; the sim only those above
the client; nothing imports the CLI, and only the CLI imports settings.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "comfy_orchestrator"


def layout() -> list[str]:
    """The package's modules as the README's Layout section lists them, in order."""
    text = (ROOT / "README.md").read_text("utf-8")
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    return re.findall(r"^ {24}([a-z0-9_]+)/?\s", block, re.MULTILINE)


def room(path: Path) -> str:
    """The layout entry a file belongs to: its module, or its top folder inside the package."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_rooms(path: Path) -> set[str]:
    """The package's rooms that a file imports, lazily or not, absolutely or relatively."""
    here = ["comfy_orchestrator", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = (here[: len(here) - node.level + 1] if node.level else []) + (node.module or "").split(".")
            modules = [[part for part in base if part]] + [[*base, alias.name] for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in modules:
            if len(parts) > 1 and parts[0] == "comfy_orchestrator" and (
                    (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
                found.add(parts[1])
    return found


def sources() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__init__.py" or path.parent != PACKAGE]


def test_the_layout_lists_every_module_once() -> None:
    listed = layout()
    rooms = {room(path) for path in sources()} - {"sim"}  # the sim has its own line under the list
    assert len(listed) == len(set(listed)), listed
    assert sorted(rooms - set(listed)) == [] and sorted(set(listed) - rooms) == []


def test_no_module_imports_one_below_it() -> None:
    order = {name: index for index, name in enumerate(layout())}
    upward = []
    for path in sources():
        mine = room(path)
        limit = order["client"] if mine == "sim" else order[mine]
        for other in imported_rooms(path) - {mine}:
            if other == "sim":
                continue  # the CLI starts a simulated server for `comfy-orch sim` and the demo
            if order[other] >= limit:
                upward.append(f"{path.relative_to(ROOT)} imports {other}")
    assert upward == []


def test_nothing_imports_the_cli_and_only_the_cli_reads_settings() -> None:
    users = {name: [path.relative_to(ROOT).as_posix() for path in sources()
                    if name in imported_rooms(path) and room(path) != name] for name in ("cli", "settings")}
    assert users["cli"] == []
    assert users["settings"] == ["comfy_orchestrator/cli/options.py"]
