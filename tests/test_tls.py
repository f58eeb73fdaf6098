"""TLS end to end: a real nginx with a certificate from the test's own authority in front of the simulated server."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from comfy_orchestrator.cli import main
from comfy_orchestrator.client import Client
from comfy_orchestrator.errors import CertificateRejected, ParameterError
from comfy_orchestrator.jobs import Job
from comfy_orchestrator.limits import Timeouts
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.tls import Trust, in_clear, peer_fingerprint
from tests.conftest import Issued, TlsAuthority, free_port

TOKEN = "tls-token-4be1f09c7d"
QUICK = RetryPolicy(max_attempts=2, first_delay_s=0.05, max_delay_s=0.1)
SHORT = Timeouts(read_s=5, silence_s=1, job_s=30)
SITE = """
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 100m;
        location / {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Authorization "";
            proxy_read_timeout 1h;
            proxy_buffering off;
        }}
    }}
"""

TlsProxy = Callable[[Issued], int]


@pytest.fixture(autouse=True)
def no_ca_bundle_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test gives is trusted besides the usual authorities."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tls_proxy(comfy: Any, nginx: Any) -> TlsProxy:
    """Start nginx serving `issued` over TLS, with a bearer token, in front of `comfy`; returns its port."""

    def start(issued: Issued) -> int:
        port = free_port()
        nginx(SITE.format(port=port, cert=issued.cert, key=issued.key, token=TOKEN, upstream=comfy.port), [port])
        return port

    return start


@pytest.fixture
def farm_port(tls_proxy: TlsProxy, tls_authority: TlsAuthority) -> int:
    """A proxy whose certificate, from the test's authority, names localhost and 127.0.0.1."""
    return tls_proxy(tls_authority.issue("localhost", "127.0.0.1"))


def tls_client(url: str, **options: Any) -> Client:
    return Client(url, token=TOKEN, retry=QUICK, timeouts=SHORT, **options)


# -- pure rules

@pytest.mark.parametrize(("url", "clear"), [
    ("http://10.0.0.5:8080", True),
    ("http://gpu-box.example.org:8443", True),
    ("http://127.0.0.1:8188", False),
    ("http://127.8.9.10:8188", False),
    ("http://[::1]:8188", False),
    ("http://localhost:8188", False),
    ("http://LOCALHOST.:8188", False),
    ("http://farm.localhost", False),
    ("http://localhost.example.org", True),
    ("https://10.0.0.5:8443", False),
    ("ws://10.0.0.5/ws", True),
    ("wss://10.0.0.5/ws", False),
])
def test_in_clear_means_plain_http_off_loopback(url: str, clear: bool) -> None:
    assert in_clear(url) is clear


def test_trust_prefers_ca_cert_then_the_environment(tls_authority: TlsAuthority, tmp_path: Path) -> None:
    other = TlsAuthority(tmp_path / "other")
    environ = {"REQUESTS_CA_BUNDLE": str(other.cert), "CURL_CA_BUNDLE": str(tls_authority.cert)}
    assert Trust.load(tls_authority.cert, environ=environ).bundle == str(tls_authority.cert)
    from_env = Trust.load(environ=environ)
    assert (from_env.bundle, from_env.source) == (str(other.cert), "$REQUESTS_CA_BUNDLE")
    assert Trust.load(environ={"CURL_CA_BUNDLE": str(other.cert)}).source == "$CURL_CA_BUNDLE"
    default = Trust.load(environ={})
    assert default.source == "default" and Path(default.bundle).is_file()
    assert default.context.verify_mode == ssl.CERT_REQUIRED and default.context.check_hostname


@pytest.mark.parametrize(("content", "message"), [
    (None, "no file or folder"),
    (b"not a certificate\n", "holds no PEM certificate"),
])
def test_a_bad_ca_cert_is_a_parameter_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "farm-ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ParameterError, match=message) as caught:
        Client("https://127.0.0.1:8443", ca_cert=path)
    assert caught.value.parameter == "ca_cert" and str(path) in str(caught.value)


# -- credentials never in clear

@pytest.mark.parametrize("credentials", [{"token": "abc"}, {"username": "alice", "password": "pw"},
                                         {"headers": {"Authorization": "Bearer abc"}}])
def test_credentials_over_plain_http_to_another_host_are_refused(credentials: dict[str, Any]) -> None:
    with pytest.raises(ParameterError, match="refusing to send credentials over plain http") as caught:
        Client("http://10.0.0.5:8080/gpu0/8188", **credentials)
    assert "abc" not in str(caught.value) and "pw" not in str(caught.value)
    assert "--allow-plain-http" in str(caught.value)


def test_credentials_in_the_url_over_plain_http_are_refused() -> None:
    with pytest.raises(ParameterError, match="plain http"):
        Client("http://alice:pw@gpu-box.example.org:8080")


def test_plain_http_credentials_are_warned_when_allowed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with Client("http://10.0.0.5:8080", token="abc", allow_plain_http=True):
        pass
    assert any("sending credentials over plain http" in record.getMessage() for record in caplog.records)
    assert not any("abc" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8188", "https://10.0.0.5:8443", "http://10.0.0.5:8080"])
def test_no_refusal_without_credentials_or_off_the_network(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with Client(url, token=None if url == "http://10.0.0.5:8080" else "abc"):
        pass
    assert not caplog.records


# -- a job over https and wss

def test_a_job_runs_over_https_and_wss_with_the_farms_ca(farm_port: int, tls_authority: TlsAuthority,
                                                         img2img_job: Job, tmp_path: Path) -> None:
    url = f"https://localhost:{farm_port}"
    with tls_client(url, ca_cert=tls_authority.cert) as client:
        result = client.run(img2img_job, out_dir=tmp_path / "out")
        assert client.listener.server_flags.get("supports_preview_metadata") is True  # the websocket spoke
    assert result.server == url and result.files and result.files[0].stat().st_size > 0


def test_requests_ca_bundle_is_honoured_for_http_and_websocket(farm_port: int, tls_authority: TlsAuthority,
                                                               img2img_job: Job, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_authority.cert))
    with tls_client(f"https://127.0.0.1:{farm_port}") as client:
        client.listener.start()  # the websocket alone first: it must verify with the same bundle
        result = client.run(img2img_job, out_dir=tmp_path)
    assert result.files


def test_unknown_authority_is_rejected_on_http_and_websocket(farm_port: int, img2img_job: Job) -> None:
    with tls_client(f"https://localhost:{farm_port}") as client:
        with pytest.raises(CertificateRejected) as over_http:
            client.run(img2img_job)
        with pytest.raises(CertificateRejected) as over_websocket:
            client.listener.start()
    for caught in (over_http, over_websocket):
        assert caught.value.reason == "unknown authority" and not caught.value.retryable
        assert caught.value.server == f"https://localhost:{farm_port}"
        assert "--ca-cert" in str(caught.value) and TOKEN not in str(caught.value)


@pytest.mark.parametrize(("hosts", "connect_to"), [(("farm.example.org",), "127.0.0.1"),
                                                   (("127.0.0.1",), "localhost")])
def test_a_certificate_for_another_host_is_rejected(tls_proxy: TlsProxy, tls_authority: TlsAuthority,
                                                    hosts: tuple[str, ...], connect_to: str) -> None:
    port = tls_proxy(tls_authority.issue(*hosts, name="elsewhere"))
    with tls_client(f"https://{connect_to}:{port}", ca_cert=tls_authority.cert) as client:
        with pytest.raises(CertificateRejected) as over_http:
            client.queue()
        with pytest.raises(CertificateRejected) as over_websocket:
            client.listener.start()
    for caught in (over_http, over_websocket):
        assert caught.value.reason == "wrong host name", caught.value
        assert connect_to in str(caught.value)


def test_an_expired_certificate_is_rejected(tls_proxy: TlsProxy, tls_authority: TlsAuthority) -> None:
    port = tls_proxy(tls_authority.issue("localhost", "127.0.0.1", name="old", expired=True))
    with tls_client(f"https://127.0.0.1:{port}", ca_cert=tls_authority.cert) as client:
        with pytest.raises(CertificateRejected) as caught:
            client.queue()
    assert caught.value.reason == "expired" and "new certificate" in str(caught.value)


def test_the_proxys_self_signed_certificate_is_its_own_authority(tls_proxy: TlsProxy, tmp_path: Path,
                                                                 img2img_job: Job) -> None:
    """What docker/proxy/entrypoint.sh makes at first start works as --ca-cert, and the fingerprint matches."""
    tls = tmp_path / "proxy-tls"
    made = subprocess.run(["sh", str(Path(__file__).resolve().parents[1] / "docker" / "proxy" / "entrypoint.sh"),
                           "true"], env={"PATH": "/usr/bin:/bin", "COMFY_PROXY_TOKEN": TOKEN,
                                         "COMFY_PROXY_TLS_DIR": str(tls)},
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    port = tls_proxy(Issued(cert=tls / "tls.crt", key=tls / "tls.key"))
    url = f"https://127.0.0.1:{port}"
    printed = made.stdout.split("SHA-256 fingerprint ")[1].split()[0]
    assert peer_fingerprint(url, timeout_s=5) == printed
    with tls_client(url) as client:
        with pytest.raises(CertificateRejected, match=printed):
            client.queue()
    with tls_client(url, ca_cert=tls / "tls.crt") as client:
        assert client.run(img2img_job, out_dir=tmp_path / "out").files


# -- the command line over TLS

def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_error_line(result: Result) -> str:
    """The command's one line of error (after any progress bar); no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    return errors[0]


def test_run_completes_over_https_with_ca_cert_and_fails_in_one_line_without(
        farm_port: int, tls_authority: TlsAuthority, sample_image: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_TOKEN", TOKEN)
    url = f"https://localhost:{farm_port}"
    done = invoke("run", "img2img", "--server", url, "--ca-cert", str(tls_authority.cert),
                  "--set", f"image={sample_image}", "--out", str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    assert [path.parent for path in map(Path, done.stdout.split())] == [tmp_path / "out"]
    refused = invoke("run", "img2img", "--server", url, "--set", f"image={sample_image}",
                     "--out", str(tmp_path / "refused"))
    assert refused.exit_code == 2
    line = one_error_line(refused)
    assert f"{url}: TLS certificate rejected, unknown authority" in line and "--ca-cert" in line
    assert TOKEN not in refused.output


def farm_file(folder: Path, url: str, **fields: str) -> Path:
    """A farm file with one server behind the proxy, with the token."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = "".join(f'{key} = "{value}"\n' for key, value in fields.items())
    path = folder / "farm.toml"
    path.write_text(f'[[server]]\nurl = "{url}"\ntoken = "{TOKEN}"\n{extra}', "utf-8")
    return path


def sweep(*where: str, image: Path, out: Path) -> Result:
    """A 2x2 img2img sweep on the servers `where` names."""
    return invoke("sweep", "img2img", *where, "--axis", "denoise=0.4,0.6", "--axis", "cfg=5,7",
                  "--set", f"image={image}", "--out", str(out))


@pytest.mark.parametrize("trust_by", ["--ca-cert", "farm file ca_cert", "--server and --ca-cert"])
def test_a_2x2_sweep_completes_over_https_and_wss(farm_port: int, tls_authority: TlsAuthority, sample_image: Path,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  trust_by: str) -> None:
    url = f"https://localhost:{farm_port}"
    if trust_by == "--ca-cert":
        where = ["--farm", str(farm_file(tmp_path / "farm", url)), "--ca-cert", str(tls_authority.cert)]
    elif trust_by == "farm file ca_cert":  # a relative path is read beside the farm file
        shutil.copy(tls_authority.cert, tmp_path / "farm-ca.pem")
        where = ["--farm", str(farm_file(tmp_path, url, ca_cert="farm-ca.pem"))]
    else:
        monkeypatch.setenv("COMFY_TOKEN", TOKEN)
        where = ["--server", url, "--ca-cert", str(tls_authority.cert)]
    done = sweep(*where, image=sample_image, out=tmp_path / "out")
    assert done.exit_code == 0, done.output
    assert "4 of 4 cells done" in done.stdout
    assert len(list((tmp_path / "out" / "images").iterdir())) == 4


@pytest.mark.parametrize(("hosts", "reason"), [(("localhost", "127.0.0.1"), "unknown authority"),
                                               (("farm.example.org",), "wrong host name"),
                                               (("localhost", "127.0.0.1"), "expired")])
def test_a_sweep_whose_certificate_fails_stops_in_one_line(tls_proxy: TlsProxy, tls_authority: TlsAuthority,
                                                           sample_image: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           hosts: tuple[str, ...], reason: str) -> None:
    port = tls_proxy(tls_authority.issue(*hosts, name="farm", expired=reason == "expired"))
    url = f"https://127.0.0.1:{port}"
    trust = [] if reason == "unknown authority" else ["--ca-cert", str(tls_authority.cert)]
    refused = sweep("--farm", str(farm_file(tmp_path / "farm", url)), *trust, image=sample_image,
                    out=tmp_path / "out")
    assert refused.exit_code == 2
    assert f"{url}: TLS certificate rejected, {reason}" in one_error_line(refused)
    # nothing is lost: the journal holds the 4 cells, ready to run once the certificate is fixed
    again = sweep("--farm", str(farm_file(tmp_path / "farm", url)), "--dry-run", image=sample_image,
                  out=tmp_path / "out")
    assert again.exit_code == 0 and "4 cells" in again.stdout


def test_farm_status_takes_ca_cert(farm_port: int, tls_authority: TlsAuthority,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_TOKEN", TOKEN)
    url = f"https://localhost:{farm_port}"
    up = invoke("farm", "status", "--server", url, "--ca-cert", str(tls_authority.cert), "--json")
    assert up.exit_code == 0, up.output
    refused = invoke("farm", "status", "--server", url)  # set-up to fix, not a server down
    assert refused.exit_code == 2 and f"{url}: TLS certificate rejected, unknown authority" in one_error_line(refused)
    assert "is down" not in refused.output and "refused us" in refused.stdout


@pytest.mark.parametrize("command", [["queue"], ["farm", "status"], ["sweep", "img2img", "--axis", "cfg=5,7",
                                                                       "--out", "unused"]])
def test_a_token_to_another_host_over_plain_http_is_refused(command: list[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_TOKEN", TOKEN)
    refused = invoke(*command, "--server", "http://10.0.0.5:8080")
    assert refused.exit_code == 2
    line = one_error_line(refused)
    assert "plain http" in line and "--allow-plain-http" in line and TOKEN not in line


def test_a_farm_file_sending_a_token_in_clear_is_refused(tmp_path: Path) -> None:
    refused = invoke("farm", "status", "--farm", str(farm_file(tmp_path, "http://gpu-box.example.org:8080")))
    assert refused.exit_code == 2
    assert "server 1" in one_error_line(refused) and "allow_plain_http = true" in refused.output


def _non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (a UDP 'connect' sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("this machine has no route off loopback, so no non-loopback address to test on")
        address: str = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback address")
    return address


def test_a_token_over_plain_http_runs_with_a_warning_when_allowed(sim: Any, tmp_path: Path, sample_image: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    address = _non_loopback_address()
    (server,) = sim(host="0.0.0.0", checkpoints=(DEFAULT_CHECKPOINT,))
    monkeypatch.setenv("COMFY_TOKEN", TOKEN)
    caplog.set_level(logging.WARNING)
    done = invoke("run", "img2img", "--server", f"http://{address}:{server.port}", "--allow-plain-http",
                  "--set", f"image={sample_image}", "--out", str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    warnings = [r.getMessage() for r in caplog.records if "sending credentials over plain http" in r.getMessage()]
    assert warnings and not any(TOKEN in message for message in warnings)


def test_the_smoke_test_runs_over_https_with_ca_cert(farm_port: int, tls_authority: TlsAuthority) -> None:
    """docker/smoke_test.py, the standard-library check of a new farm, verifies the proxy too."""
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    script = Path(__file__).resolve().parents[1] / "docker" / "smoke_test.py"
    command = [sys.executable, str(script), "--url", f"https://localhost:{farm_port}", "--token", TOKEN,
               "--count", "1", "--steps", "2", "--size", "64", "--checkpoint", DEFAULT_CHECKPOINT, "--timeout-s", "20"]
    done = subprocess.run([*command, "--ca-cert", str(tls_authority.cert)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"summary"' in done.stdout
    refused = subprocess.run([*command[:-1], "1"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stdout, refused.stdout


def test_the_default_bundle_is_loaded_once_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    trust = Trust.load()
    assert trust.source == "default" and trust._contexts == []  # a plain-http client never pays for it
    assert trust.context is trust.context and len(trust._contexts) == 1
    with Client("http://127.0.0.1:1") as client:
        assert client.trust.source == "default" and client.trust._contexts == []


def test_the_environments_bundle_is_checked_to_exist_at_once_and_read_at_first_use(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"\$REQUESTS_CA_BUNDLE: no file or folder"):
        Trust.load(environ={"REQUESTS_CA_BUNDLE": str(tmp_path / "missing.pem")})
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    trust = Trust.load(environ={"REQUESTS_CA_BUNDLE": str(garbage)})  # a plain-http client never reads it
    with pytest.raises(ParameterError, match=r"\$REQUESTS_CA_BUNDLE: .* holds no PEM certificate") as caught:
        trust.context
    assert caught.value.parameter == "$REQUESTS_CA_BUNDLE"
