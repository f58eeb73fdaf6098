"""Credentials given to a sweep (user:password in a URL, a bearer token) reach no file, page or output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from comfy_orchestrator.cli import main

PASSWORD = "pw-Sekr3t-4711"
TOKEN = "tok-Sekr3t-0815"


def _everything_written(out: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file())


@pytest.mark.parametrize("how", ["basic auth in the URL", "bearer token from the environment",
                                 "token and headers in a farm file"])
def test_no_credential_reaches_any_file_or_output(comfy: Any, sample_image: Path, tmp_path: Path, how: str,
                                                  monkeypatch: Any) -> None:
    port = comfy.url.rsplit(":", 1)[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMFY_TOKEN", raising=False)
    servers: list[str]
    if how == "basic auth in the URL":
        servers = ["--server", f"http://alice:{PASSWORD}@127.0.0.1:{port}"]
    elif how == "bearer token from the environment":
        monkeypatch.setenv("COMFY_TOKEN", TOKEN)
        servers = ["--server", comfy.url]
    else:
        (tmp_path / "farm.toml").write_text(f'[[server]]\nurl = "http://bob:{PASSWORD}@127.0.0.1:{port}"\n'
                                            f'token = "{TOKEN}"\nheaders = {{ "X-Api-Key" = "{PASSWORD}" }}\n')
        servers = ["--farm", "farm.toml"]
    result = CliRunner().invoke(main, ["sweep", "img2img", *servers, "--axis", "cfg=6,8", "--axis",
                                       "denoise=0.5,0.6", "--set", "image=input.png", "--out", "out"])
    assert result.exit_code == 0, result.output
    written = _everything_written(tmp_path / "out")
    assert b"127.0.0.1" in written  # the server is named, without its credentials
    for secret in (PASSWORD, TOKEN):
        assert secret.encode() not in written
        assert secret not in result.output
    assert b"alice" not in written and b"bob" not in written
