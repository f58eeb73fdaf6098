"""Auth through a real nginx reverse proxy (bearer token, basic auth) in front of the simulated server."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_orchestrator.client import Client
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.errors import AuthFailed
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.provenance import read_provenance

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
                                      None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package 'nginx')")

TOKEN = "tok-7f3a9c2e5b1d"
PASSWORD = "s3cret-pw"
QUICK = RetryPolicy(max_attempts=2, first_delay_s=0.05, max_delay_s=0.1)

CONFIG = """
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
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
            auth_basic_user_file {root}/htpasswd;
            proxy_pass http://127.0.0.1:{upstream}/;
            {proxy}
        }}
    }}
}}
"""
PROXY = ("proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
         "proxy_set_header Connection $connection_upgrade; proxy_set_header Host $host; "
         "proxy_read_timeout 3600s; proxy_buffering off;")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def proxy(comfy: Any, tmp_path: Path) -> Iterator[str]:
    """nginx on a free loopback port in front of `comfy`; yields its base URL."""
    root = tmp_path / "nginx"
    root.mkdir()
    (root / "htpasswd").write_text(f"alice:{{PLAIN}}{PASSWORD}\n")
    port = _free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the private temp folder
    (root / "nginx.conf").write_text(CONFIG.format(user=user, root=root, port=port, upstream=comfy.port,
                                                   token=TOKEN, proxy=PROXY))
    assert NGINX is not None
    process = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until_listening(process, port, root)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, root: Path) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            try:
                process.wait(0.05)  # doubles as the pause between tries
            except subprocess.TimeoutExpired:
                continue
            log = (root / "error.log").read_text() if (root / "error.log").exists() else ""
            pytest.fail(f"nginx exited with {process.returncode}: {log[-500:]}")
    pytest.fail("nginx did not start listening")


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
