"""Shared fixtures: the recorded reference, sample images, the template library."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from comfy_orchestrator.journal import JOURNAL_NAME
from comfy_orchestrator.templates import Templates


def _smoke_test() -> ModuleType:
    """docker/smoke_test.py, which holds the one copy of the reference img2img prompt."""
    path = Path(__file__).resolve().parents[1] / "docker" / "smoke_test.py"
    spec = importlib.util.spec_from_file_location("smoke_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


img2img_prompt: Callable[..., dict[str, Any]] = _smoke_test().img2img_prompt


def done_cells(out: Path) -> int:
    """Cells a sweep folder's journal records as done, read from outside the running command (0 before it
    exists)."""
    path = out / JOURNAL_NAME
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5.0)
    try:
        return int(db.execute("SELECT COUNT(*) FROM cell WHERE status = 'done'").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not made yet
        return 0
    finally:
        db.close()

def start_command(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    """`comfy-orch ARGS` as a process of its own (this checkout's package), its stderr piped, for a test to
    signal or read; its stdout piped too unless told otherwise."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "comfy_orchestrator.cli", *args], env=env, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


REFERENCE = Path(__file__).resolve().parent / "data" / "comfyui-reference"  # recorded from ComfyUI 0.8.0; see its README


def recorded_exchange(name: str) -> dict[str, Any]:
    """One recorded HTTP exchange of the real server (tests/data/comfyui-reference/http)."""
    data: dict[str, Any] = json.loads((REFERENCE / "http" / f"{name}.json").read_text("utf-8"))
    return data


@pytest.fixture
def recorded() -> Any:
    """Look up one recorded HTTP exchange by name."""
    return recorded_exchange


@pytest.fixture
def sample_image(tmp_path: Path) -> Path:
    """A small RGB picture on disk."""
    path = tmp_path / "input.png"
    image = Image.new("RGB", (96, 64), (40, 90, 160))
    for x in range(96):
        image.putpixel((x, x % 64), (250, 220, 30))
    image.save(path)
    return path


@pytest.fixture
def second_image(tmp_path: Path) -> Path:
    path = tmp_path / "second.png"
    Image.new("RGB", (96, 64), (200, 60, 60)).save(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def compiled_templates_kept_apart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tests' compiled templates go to a folder of their own, not the user's cache (the commands they start too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture
def library() -> Templates:
    return Templates.default()


class CountingTemplate:
    """A real template that counts what a sweep asks of it: each cell validated, each prompt rendered."""

    def __init__(self, template: Any) -> None:
        self._template = template
        self.validated = 0
        self.rendered = 0
        self.image_names: list[Any] = []  # what each job() was told of its pictures' upload names

    @property
    def name(self) -> str:
        return str(self._template.name)

    def params(self, values: Any) -> Any:
        self.validated += 1
        return self._template.params(values)

    def job(self, params: Any, *, label: str = "", image_names: Any = None) -> Any:
        self.rendered += 1
        self.image_names.append(image_names)
        return self._template.job(params, label=label, image_names=image_names)


@pytest.fixture
def sim() -> Iterator[Callable[..., list[Any]]]:
    """Start simulated ComfyUI servers on free loopback ports: `a, b = sim(2)`; all stop at teardown."""
    from comfy_orchestrator.sim import SimServer

    started: list[SimServer] = []

    def start(count: int = 1, **options: Any) -> list[SimServer]:
        servers = [SimServer(**options) for _ in range(count)]
        for server in servers:
            started.append(server.start())
        return servers

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def comfy(sim: Callable[..., list[Any]]) -> Any:
    """One simulated server with instant nodes that has the templates' default checkpoint."""
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    (server,) = sim(checkpoints=(DEFAULT_CHECKPOINT,))
    return server


@pytest.fixture
def client(comfy: Any) -> Iterator[Any]:
    """A Client of `comfy` with short timeouts and quick retries, closed at teardown."""
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.limits import Timeouts
    from comfy_orchestrator.retry import RetryPolicy

    with Client(comfy.url, timeouts=Timeouts(read_s=5.0, silence_s=1.0, job_s=30.0),
                retry=RetryPolicy(max_attempts=3, first_delay_s=0.05, max_delay_s=0.5)) as made:
        yield made


@pytest.fixture
def img2img_job(sample_image: Path) -> Any:
    """The recorded img2img prompt (a) as a Job on `sample_image`, mapped like the img2img template."""
    from comfy_orchestrator.graph import Graph
    from comfy_orchestrator.jobs import Job, content_name
    from comfy_orchestrator.params import DEFAULT_CHECKPOINT

    image = content_name(sample_image)
    graph = Graph.from_api(img2img_prompt(image, seed=1234, checkpoint=DEFAULT_CHECKPOINT, prefix="comfy-orch",
                                          positive="a lighthouse at dusk", negative="blurry"))
    parameter_map = {"1.ckpt_name": "checkpoint", "2.text": "positive", "3.text": "negative", "4.image": "image",
                     "6.seed": "seed", "6.steps": "steps", "6.cfg": "cfg", "6.sampler_name": "sampler",
                     "6.denoise": "denoise"}
    params = {"checkpoint": DEFAULT_CHECKPOINT, "positive": "a lighthouse at dusk", "negative": "blurry",
              "image": str(sample_image), "seed": 1234, "steps": 20, "cfg": 8.0, "sampler": "euler",
              "denoise": 0.6}
    return Job(graph=graph, template="img2img", params=params, inputs={image: sample_image},
               parameter_map=parameter_map)


NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
                                      None)
NGINX_CONFIG = """
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
{site}
}}
"""


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str, Sequence[int]], Path]]:
    """Start real nginx processes: `nginx(site, ports)` runs the http-level `site` and waits until every
    port in `ports` listens; returns its folder. All stop at teardown."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    started: list[subprocess.Popen[bytes]] = []

    def start(site: str, ports: Sequence[int]) -> Path:
        root = tmp_path / f"nginx-{len(started)}"
        root.mkdir()
        user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the private temp folder
        (root / "nginx.conf").write_text(NGINX_CONFIG.format(user=user, root=root, site=site))
        assert NGINX is not None
        process = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        for port in ports:
            _wait_until_listening(process, port, root)
        return root

    yield start
    for process in reversed(started):
        process.terminate()
        process.wait(10)


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
    pytest.fail(f"nginx did not start listening on {port}")


@dataclass(frozen=True)
class Issued:
    """A certificate the test authority signed, and its key, as PEM files."""

    cert: Path
    key: Path


class TlsAuthority:
    """A certificate authority made for one test: its own root, and server certificates it signs."""

    def __init__(self, folder: Path, name: str = "comfy-orch test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256()))
        self.cert = folder / f"{folder.name}-ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *hosts: str, name: str = "server", expired: bool = False) -> Issued:
        """A server certificate for `hosts` (names or IP addresses), valid now unless `expired`."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired else \
            (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
        alt_names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        authority = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else name)]))
            .issuer_name(self._cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(authority), critical=False)
            .sign(self._key, hashes.SHA256()))
        issued = Issued(cert=self.folder / f"{name}.crt", key=self.folder / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


@pytest.fixture
def tls_authority(tmp_path: Path) -> TlsAuthority:
    """A certificate authority of this test's own (`.cert` is its PEM; `.issue(host, ...)` signs)."""
    return TlsAuthority(tmp_path / "tls")
