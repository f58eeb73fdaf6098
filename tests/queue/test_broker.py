"""The broker URL: checked, masked, refused in one line; passwords never shown; TLS verified against --ca-cert."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from comfy_orchestrator.cli import main
from comfy_orchestrator.errors import BrokerAuthFailed, BrokerUnreachable, BrokerURLInvalid
from comfy_orchestrator.params import DEFAULT_CHECKPOINT
from comfy_orchestrator.queue import Broker, CeleryQueue, mask
from tests.queue.conftest import RedisServer, free_port, start_redis

PASSWORD = "correct-horse-battery"


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://user:hunter2@host/1", "rediss://user:***@host/1"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("redis://:pa@ss@host:6379/0", "redis://:***@host:6379/0"),
])
def test_a_password_is_masked_wherever_the_url_is_shown(url: str, shown: str) -> None:
    assert mask(url) == shown


@pytest.mark.parametrize("url, message", [
    ("amqp://host", "must start with redis://"),
    ("redis://:hunter2@", "names no host"),
    ("redis://host:notaport/0", "not a valid URL"),
    ("redis://host:6379/cache", "database number"),
    ("redis://host:6379/0?ssl_cert_reqs=none", "give TLS options with --ca-cert"),
])
def test_a_malformed_url_names_what_is_wrong_without_the_password(url: str, message: str) -> None:
    with pytest.raises(BrokerURLInvalid) as caught:
        Broker.parse(url)
    assert message in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_ca_certificate_needs_a_tls_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(BrokerURLInvalid, match="needs a rediss://"):
        Broker.parse("redis://host:6379/0", ca_cert=ca)
    with pytest.raises(BrokerURLInvalid, match="not a readable file"):
        Broker.parse("rediss://host:6379/0", ca_cert=tmp_path / "missing.pem")


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("locked"), password=PASSWORD)
    yield server
    server.stop()


def test_an_unreachable_broker_is_one_line_and_exit_code_2() -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    for arguments in (["queue", "status", "--broker", url], ["worker", "--broker", url]):
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 2, result.output
        assert "cannot reach the broker" in result.output and result.output.count("\n") == 1, result.output
        assert PASSWORD not in result.output
    with pytest.raises(BrokerUnreachable):
        CeleryQueue(url).connect()


@pytest.mark.parametrize("auth, message", [
    (":wrong-password@", "refused the password"),
    ("", "wants a password"),
])
def test_a_wrong_or_missing_password_is_one_line_and_exit_code_2(locked_redis: RedisServer, auth: str,
                                                                  message: str) -> None:
    url = f"redis://{auth}127.0.0.1:{locked_redis.port}/0"
    result = CliRunner().invoke(main, ["queue", "status", "--broker", url])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert "wrong-password" not in result.output
    with pytest.raises(BrokerAuthFailed):
        CeleryQueue(url).connect()


def test_the_password_is_never_printed_logged_journalled_or_written_into_a_picture(
        locked_redis: RedisServer, sim: Callable[..., list[Any]], start_worker: Callable[..., Any],
        sample_image: Path, tmp_path: Path) -> None:
    locked_redis.client(3).flushdb()
    url = locked_redis.url(3)
    (server,) = sim(1, checkpoints=(DEFAULT_CHECKPOINT,))
    worker = start_worker(url, [server.url], name="guarded", verbose=True)
    out = tmp_path / "out"

    result = CliRunner().invoke(main, ["-vv", "sweep", "img2img", "--broker", url, "--set", f"image={sample_image}",
                                       "--axis", "cfg=5,7", "--out", str(out)])
    status = CliRunner().invoke(main, ["queue", "status", "--broker", url, "--json"])

    assert result.exit_code == 0, result.output
    assert "2 of 2 cells done" in result.output
    assert status.exit_code == 0 and '"broker": "redis://:***@127.0.0.1' in status.output
    assert "listening on comfy-orch." in worker.output()  # -vv: the worker logged what it did
    for text in (result.output, status.output, worker.output()):
        assert PASSWORD not in text
    for path in out.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


# -- TLS: rediss:// with our own certificate authority


def _certificate_pair(folder: Path, *, host: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for `host` (a name or an IP address)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "comfy-orch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alternative = x509.DNSName(host)
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _start_tls_redis(folder: Path, *, host: str) -> tuple[RedisServer, Path]:
    ca, certificate, key = _certificate_pair(folder / "pki", host=host)
    tls_port = free_port()
    server = start_redis(folder, "--tls-port", str(tls_port), "--tls-cert-file", str(certificate), "--tls-key-file",
                         str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", tls_port=tls_port)
    return server, ca


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    server, ca = _start_tls_redis(tmp_path_factory.mktemp("tls"), host="127.0.0.1")
    yield server, ca
    server.stop()


def test_a_sweep_runs_over_tls_with_the_farms_own_ca(tls_redis: tuple[RedisServer, Path],
                                                     sim: Callable[..., list[Any]],
                                                     start_worker: Callable[..., Any], sample_image: Path,
                                                     tmp_path: Path) -> None:
    server, ca = tls_redis
    url = f"rediss://127.0.0.1:{server.tls_port}/0"
    (comfy,) = sim(1, checkpoints=(DEFAULT_CHECKPOINT,))
    start_worker(url, [comfy.url], name="tls", ca_cert=ca)

    result = CliRunner().invoke(main, ["sweep", "img2img", "--broker", url, "--ca-cert", str(ca), "--set",
                                       f"image={sample_image}", "--axis", "cfg=5,7", "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    assert "2 of 2 cells done" in result.output


def test_tls_without_the_ca_fails_in_one_line(tls_redis: tuple[RedisServer, Path]) -> None:
    server, _ = tls_redis
    result = CliRunner().invoke(main, ["queue", "status", "--broker", f"rediss://127.0.0.1:{server.tls_port}/0"])
    assert result.exit_code == 2, result.output
    assert "certificate" in result.output and "--ca-cert" in result.output, result.output
    assert result.output.count("\n") == 1


def test_a_certificate_for_another_host_fails_in_one_line(tmp_path: Path) -> None:
    server, ca = _start_tls_redis(tmp_path, host="queue.example.org")
    try:
        result = CliRunner().invoke(main, ["queue", "status", "--broker", f"rediss://127.0.0.1:{server.tls_port}/0",
                                           "--ca-cert", str(ca)])
    finally:
        server.stop()
    assert result.exit_code == 2, result.output
    assert "certificate" in result.output and result.output.count("\n") == 1, result.output
