"""The `comfy-orch` command line: the only part of the package that prints or exits.

Exit codes: 0 success, 1 a job or server failed, 2 bad input (a parameter, a
template, a file, or set-up a server refuses: our certificate check or credentials),
130 stopped by Ctrl-C, 143 by SIGTERM (at any point of a command).
Errors are one line on stderr, never a traceback.

One module per idea, in import order: output (the only printing: consoles, `line`,
errors and exit codes), options (what commands share), values (a job's values from the
command line), group (`main`), then the commands by what a user does: templates, server
(one server), sweeps, farm, queue, advise, sim. A command's module loads when the command is
named (group.COMMAND_MODULES), and attaches it to `main`; each loads the library modules it
needs when it runs.
"""

from typing import NoReturn

from comfy_orchestrator.cli.group import main
from comfy_orchestrator.cli.output import collect_rarely_while_starting, end_process

__all__ = ["entry", "main"]


def entry() -> NoReturn:
    """`comfy-orch` as a process: the command, its start collected rarely (output.mark_started), then a quick end
    (output.end_process); `main` is the click group."""
    collect_rarely_while_starting()
    try:
        main()
    except SystemExit as stop:
        end_process(stop.code)
    end_process(0)
