"""The package's public surface."""

import importlib
import inspect
import re
import subprocess
import sys
import typing
from pathlib import Path

import comfy_orchestrator


def test_all_is_sorted_and_importable() -> None:
    assert comfy_orchestrator.__all__ == sorted(comfy_orchestrator.__all__)
    for name in comfy_orchestrator.__all__:
        assert getattr(comfy_orchestrator, name) is not None, name


def test_all_is_complete() -> None:
    """Every error, every name the README imports, and every value Client and Farm take is exported."""
    errors = importlib.import_module("comfy_orchestrator.errors")
    wanted = {name for name, value in vars(errors).items()
              if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    for names in re.findall(r"^from comfy_orchestrator import (.+)$", readme, re.MULTILINE):
        wanted |= {name.strip() for name in names.split(",")}
    for function in (comfy_orchestrator.Client.__init__, comfy_orchestrator.Farm.__init__):
        hints = list(typing.get_type_hints(function, localns={"requests": importlib.import_module("requests")}).values())
        while hints:
            value = hints.pop()
            hints += typing.get_args(value)
            if inspect.isclass(value) and value.__module__.startswith("comfy_orchestrator") \
                        and not getattr(value, "_is_protocol", False):
                    wanted.add(value.__name__)
    assert wanted >= {"MalformedMessage", "Timeouts", "RetryPolicy", "ServerConfig", "load_farm"}
    assert sorted(wanted - set(comfy_orchestrator.__all__)) == []


def test_every_error_derives_from_comfy_error() -> None:
    errors = importlib.import_module("comfy_orchestrator.errors")
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__:
            assert issubclass(value, comfy_orchestrator.ComfyError), name
            assert isinstance(value.retryable, bool), name


def test_import_has_no_side_effects() -> None:
    code = ("import logging, threading; import comfy_orchestrator; "
            "assert not logging.getLogger().handlers, 'logging configured at import'; "
            "assert threading.active_count() == 1, 'threads started at import'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "ok"


def test_package_is_typed() -> None:
    from importlib import resources

    assert resources.files("comfy_orchestrator").joinpath("py.typed").is_file()


def test_importing_the_package_or_the_command_line_loads_nothing_heavy() -> None:
    # names load on first use, and a command imports what it needs when it runs: --help needs click and rich
    code = ("import sys, comfy_orchestrator, comfy_orchestrator.cli; "
            "heavy = {'requests', 'websocket', 'pydantic', 'PIL', 'jinja2', 'aiohttp', 'sqlite3', 'celery', 'redis', "
            "'rich.progress', 'rich.table', 'comfy_orchestrator.client', 'comfy_orchestrator.params'} & set(sys.modules); "
            "print(sorted(heavy)); assert comfy_orchestrator.Client.__name__ == 'Client'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_public_name_has_a_home() -> None:
    assert sorted(comfy_orchestrator._HOMES) == comfy_orchestrator.__all__
    assert set(comfy_orchestrator.__all__) <= set(dir(comfy_orchestrator))
    assert not hasattr(comfy_orchestrator, "NoSuchName")
