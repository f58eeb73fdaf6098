"""Settings read from the environment: what each variable gives, and what its absence gives."""

from __future__ import annotations

import os

import pytest

from comfy_orchestrator.client import DEFAULT_URL
from comfy_orchestrator.settings import Settings


@pytest.mark.parametrize(("environ", "url", "token", "folders"), [
    ({}, DEFAULT_URL, None, []),
    ({"COMFY_URL": "https://box:8443/gpu0/8188", "COMFY_TOKEN": "s3cret-token-value"},
     "https://box:8443/gpu0/8188", "s3cret-token-value", []),
    ({"comfy_url": "http://10.0.0.5:8188"}, "http://10.0.0.5:8188", None, []),  # any case, as the shell allows
    ({"COMFY_URL": ""}, DEFAULT_URL, None, []),  # set but empty: as if not set
    ({"COMFY_ORCH_TEMPLATES": os.pathsep.join(["a", "", "b/c"])}, DEFAULT_URL, None, ["a", "b/c"]),
    ({"PATH": "/bin", "COMFY_OTHER": "x"}, DEFAULT_URL, None, []),  # others are not ours
])
def test_each_variable_gives_its_setting(environ: dict[str, str], url: str, token: str | None,
                                         folders: list[str]) -> None:
    settings = Settings.from_environment(environ)
    assert (settings.url(), settings.token(), settings.template_folders()) == (url, token, folders)


def test_the_token_is_never_shown() -> None:
    settings = Settings.from_environment({"COMFY_TOKEN": "s3cret-token-value"})
    assert "s3cret-token-value" not in repr(settings) and "s3cret-token-value" not in str(settings)


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_URL", "http://gpu-box:8188")
    assert Settings.from_environment().url() == "http://gpu-box:8188"
