"""Fixtures for the queue: a real redis-server on a free port, real Celery worker processes, sims.

redis-server is Debian's package (.ci/run installs it); a test that needs it and cannot find it
fails, never skips. Workers are `comfy-orch worker` subprocesses; every wait here is on state
we can observe (a worker's heartbeat in Redis, a file), with a deadline.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0  # a worker process imports Celery and probes its servers within this
STOP_DEADLINE_S = 20.0
TEST_LEASE_S = 2.0  # short leases, so that a killed worker's cells are queued again within seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], *, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class RedisServer:
    """A redis-server process of our own."""

    port: int
    process: subprocess.Popen[bytes]
    password: str | None = None
    tls_port: int | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_redis(folder: Path, *extra: str, password: str | None = None, tls_port: int | None = None) -> RedisServer:
    """Start redis-server on a free port (no persistence), and wait until it answers."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                              else None)
    if binary is None:
        pytest.fail("redis-server is not installed; .ci/run installs Debian's redis-server package")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    arguments = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(folder), "--daemonize", "no", "--loglevel", "warning", *extra]
    if password:
        arguments += ["--requirepass", password]
    with (folder / "redis.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT)
    server = RedisServer(port, process, password, tls_port)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited: {(folder / 'redis.log').read_text()}")
        try:
            return bool(server.client().ping())
        except redis.RedisError:
            return False

    wait_for(answers, timeout_s=10.0, what="redis-server to answer")
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the queue tests; each test gets a database of its own (`broker_url`)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


_databases = itertools.cycle(range(16))


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """A broker URL on a freshly emptied database of the test's redis-server."""
    db = next(_databases)
    redis_server.client(db).flushdb()
    return redis_server.url(db)


@dataclass
class WorkerProcess:
    """A `comfy-orch worker` subprocess."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    servers: Sequence[str] = field(default_factory=tuple)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no acknowledgement; its cells must come back through the queue."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(STOP_DEADLINE_S)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")


def cli_environment() -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout first on the path."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(REPO) + os.pathsep + environment.get("PYTHONPATH", "")
    environment.pop("COMFY_BROKER", None)
    return environment


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `comfy-orch worker` processes; each is up once its heartbeat is in Redis. All stop at teardown."""
    started: list[WorkerProcess] = []

    def start(broker: str, servers: Sequence[str], *, name: str, lease_s: float = TEST_LEASE_S,
              ca_cert: Path | None = None, verbose: bool = False, wait: bool = True) -> WorkerProcess:
        log = tmp_path / f"worker-{name}.log"
        command = [sys.executable, "-m", "comfy_orchestrator.cli", *(["-vv"] if verbose else []), "worker",
                   "--broker", broker, "--name", name, "--lease", str(lease_s)]
        if ca_cert is not None:
            command += ["--ca-cert", str(ca_cert)]
        for server in servers:
            command += ["--server", server]
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
                                       env=cli_environment())
        worker = WorkerProcess(name, process, log, tuple(servers))
        started.append(worker)
        if wait:
            tls: dict[str, Any] = {"ssl_ca_certs": str(ca_cert)} if ca_cert is not None else {}
            client = redis.Redis.from_url(broker, **tls)

            def up() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"worker {name} exited with {process.returncode}: {worker.output()}")
                return bool(client.exists(f"comfy-orch:worker:{name}"))

            wait_for(up, timeout_s=START_DEADLINE_S, what=f"worker {name}'s heartbeat")
            client.close()
        return worker

    yield start
    for worker in reversed(started):
        worker.stop()


def sim_costs() -> Any:
    """Prompts that take about 0.2 s (20 steps of 10 ms): long enough to kill a worker mid-sweep."""
    from comfy_orchestrator.sim.costs import Costs

    return Costs(step_s=0.01)
