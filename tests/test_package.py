"""The package's public surface."""

import importlib
import subprocess
import sys

import comfy_orchestrator


def test_all_is_sorted_and_importable() -> None:
    assert comfy_orchestrator.__all__ == sorted(comfy_orchestrator.__all__)
    for name in comfy_orchestrator.__all__:
        assert getattr(comfy_orchestrator, name) is not None, name


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
