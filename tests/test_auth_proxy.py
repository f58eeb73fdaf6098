"""Auth through a real nginx reverse proxy (bearer token, basic auth) in front of the simulated server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.client import Client
from comfy_orchestrator.errors import AuthFailed
from comfy_orchestrator.farm import Farm
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.provenance import read_provenance
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.servers import ServerConfig
from tests.conftest import free_port

TOKEN = "tok-7f3a9c2e5b1d"
PASSWORD = "s3cret-pw"
QUICK = RetryPolicy(max_attempts=2, first_delay_s=0.05, max_delay_s=0.1)

SITE = """
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 100m;
        location / {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            proxy_pass http://127.0.0.1:{upstream};
            {proxy}
        }}
        location /comfy/ {{
            auth_basic "comfy";
            auth_basic_user_file {htpasswd};
            proxy_pass http://127.0.0.1:{upstream}/;
            {proxy}
        }}
    }}
"""
PROXY = ("proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
         "proxy_set_header Connection $connection_upgrade; proxy_set_header Host $host; "
         "proxy_read_timeout 3600s; proxy_buffering off;")


@pytest.fixture
def proxy(comfy: Any, nginx: Any, tmp_path: Path) -> str:
    """nginx on a free loopback port in front of `comfy`; its base URL."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    nginx(SITE.format(port=port, upstream=comfy.port, token=TOKEN, proxy=PROXY, htpasswd=htpasswd), [port])
    return f"http://127.0.0.1:{port}"


def _no_secret_anywhere(secret: str, caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    assert not any(secret in record.getMessage() for record in caplog.records)
    assert not any(secret in text for text in texts)


def test_bearer_token_opens_http_and_websocket(proxy: str, img2img_job: Job, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Client(proxy, token=TOKEN, retry=QUICK, timeouts=Timeouts(read_s=5)) as client:
        result = client.run(img2img_job, out_dir=tmp_path / "out")
        assert client.listener.server_flags.get("supports_preview_metadata") is True
    record = read_provenance(result.files[0].read_bytes())
    assert record is not None and record["server"] == proxy
    _no_secret_anywhere(TOKEN, caplog, repr(client), str(record))


def test_missing_or_wrong_token_is_auth_failed(proxy: str, img2img_job: Job,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (None, "wrong-token-value"):
        with Client(proxy, token=token, retry=QUICK, timeouts=Timeouts(read_s=5)) as client:
            with pytest.raises(AuthFailed) as caught:
                client.run(img2img_job)
            assert caught.value.status == 401 and not caught.value.retryable
            _no_secret_anywhere("wrong-token-value", caplog, str(caught.value))


def test_websocket_handshake_needs_the_token_too(proxy: str) -> None:
    with Client(proxy, token="wrong-token-value", retry=QUICK, timeouts=Timeouts(read_s=5)) as client:
        with pytest.raises(AuthFailed) as caught:
            client.listener.start()
    assert caught.value.status == 401 and "wrong-token-value" not in str(caught.value)


@pytest.mark.parametrize("make", [
    lambda base: Client(base.replace("http://", f"http://alice:{PASSWORD}@") + "/comfy", retry=QUICK, timeouts=Timeouts(read_s=5)),
    lambda base: Client(base + "/comfy/", username="alice", password=PASSWORD, retry=QUICK, timeouts=Timeouts(read_s=5)),
])
def test_basic_auth_under_a_path_prefix(proxy: str, img2img_job: Job, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture, make: Callable[[str], Client]) -> None:
    caplog.set_level(logging.DEBUG)
    with make(proxy) as client:
        result = client.run(img2img_job, out_dir=tmp_path)
        assert client.url == proxy + "/comfy"
    record = read_provenance(result.files[0].read_bytes())
    assert record is not None
    _no_secret_anywhere(PASSWORD, caplog, repr(client), str(record))


def test_wrong_password_is_auth_failed(proxy: str) -> None:
    with Client(proxy + "/comfy", username="alice", password="nope", retry=QUICK, timeouts=Timeouts(read_s=5)) as client:
        with pytest.raises(AuthFailed) as caught:
            client.queue()
    assert "nope" not in str(caught.value)


@pytest.mark.parametrize("command", ["sweep", "farm status"])
def test_farm_commands_take_url_and_token_from_the_environment(command: str, proxy: str, sample_image: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep` and `farm status` honour $COMFY_URL and $COMFY_TOKEN as `run` does."""
    from click.testing import CliRunner

    from comfy_orchestrator.cli import main

    args = {"sweep": ["sweep", "img2img", "--axis", "denoise=0.3,0.6", "--set", f"image={sample_image}",
                      "--set", "steps=2", "--out", str(tmp_path / "out")],
            "farm status": ["farm", "status"]}[command]
    monkeypatch.setenv("COMFY_URL", proxy)  # the proxy answers 401 to a request without the token
    if command == "farm status":  # a sweep would wait out the farm's no-server timeout instead
        refused = CliRunner().invoke(main, args)  # a token to give, not a server down: exit 2, one line
        errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
        assert refused.exit_code == 2 and len(errors) == 1 and "401" in errors[0], refused.output
    monkeypatch.setenv("COMFY_TOKEN", TOKEN)
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert TOKEN not in done.output


def test_a_farm_whose_every_server_refuses_the_token_stops_at_once(proxy: str, img2img_job: Job) -> None:
    """Waiting cannot fix a refused token: the run raises it instead of waiting out Timeouts.no_server_s."""
    farm = Farm([ServerConfig(url=proxy, token="wrong-token-value")],
                timeouts=Timeouts(read_s=5, silence_s=1, job_s=30, no_server_s=600))
    with pytest.raises(AuthFailed) as caught:
        list(farm.run([img2img_job]))
    assert caught.value.status == 401 and "wrong-token-value" not in str(caught.value)
