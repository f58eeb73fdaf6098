"""What the command line loads before it works: each command imports what it needs when it runs."""

from __future__ import annotations


def test_grid_format_choices_are_the_grid_modules() -> None:
    # the command line names them itself so that --help loads no Pillow; they must not drift apart
    from comfy_orchestrator import grid
    from comfy_orchestrator.cli import options

    assert options.GRID_FORMAT_NAMES == tuple(grid.GRID_FORMATS)
    assert options.DEFAULT_GRID_FORMAT == grid.DEFAULT_GRID_FORMAT
