"""The broker: a Redis URL checked and masked, TLS settings, the keys we keep there, and the Celery app.

One Redis serves as Celery's broker, its result backend, and the store of what Celery does not
track for us (keys under ``comfy-orch:``): which task is current for each cell of a sweep, its
state and the worker's lease on it, the sweeps and queues on offer, each worker's heartbeat and
verdicts, and input images by content. The password in a URL never leaves this module's
`Broker.url`: everything shown to a person uses `Broker.display`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from comfy_orchestrator.errors import BrokerAuthFailed, BrokerUnreachable, BrokerURLInvalid

PREFIX = "comfy-orch:"
TASK_NAME = "comfy_orchestrator.run_job"
IDLE_QUEUE = "comfy-orch.idle"  # what a worker listens on before any sweep it can run appears
QUEUE_PREFIX = "comfy-orch."


@dataclass(frozen=True)
class QueueTimeouts:
    """The queue's named timeouts and expiries, in seconds, with their defaults."""

    connect_s: float = 5.0  # opening a connection to Redis
    socket_s: float = 30.0  # one Redis command (a blocking pop waits less than this)
    lease_s: float = 30.0  # a running task's lease: a worker silent this long is taken for dead
    audit_s: float = 2.0  # how often a waiting submitter looks over its outstanding tasks
    result_expires_s: float = 7 * 86400.0  # a result not collected by then is gone (and is run again)
    input_expires_s: float = 7 * 86400.0  # an input image stored for workers
    state_expires_s: float = 14 * 86400.0  # our records of a sweep's tasks
    visibility_timeout_s: float = 3 * 3600.0  # Celery/Redis: an unacknowledged message goes back after this
    job_timeout_s: float = 600.0  # one prompt on a server

    @property
    def heartbeat_s(self) -> float:
        """How often a worker renews its heartbeat and its leases."""
        return max(self.lease_s / 6.0, 0.2)


@dataclass(frozen=True)
class Broker:
    """A checked Redis URL (redis:// or rediss://) and the CA to trust for rediss://."""

    url: str
    ca_cert: Path | None = None

    @classmethod
    def parse(cls, url: str, *, ca_cert: str | Path | None = None) -> Broker:
        """Check `url`; raise BrokerURLInvalid naming what is wrong (never echoing a password)."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise BrokerURLInvalid(f"not a valid URL ({exc}); expected redis://[:PASSWORD@]HOST:6379/0",
                                   broker=_mask_text(url)) from exc
        shown = mask(url)
        if parts.scheme not in ("redis", "rediss"):
            raise BrokerURLInvalid("the broker URL must start with redis:// (or rediss:// for TLS), "
                                   "e.g. redis://HOST:6379/0", broker=shown)
        if not parts.hostname:
            raise BrokerURLInvalid("the broker URL names no host; expected redis://HOST:6379/0", broker=shown)
        if port == 0:
            raise BrokerURLInvalid("port 0 is not a port; Redis listens on 6379 by default", broker=shown)
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise BrokerURLInvalid(f"the path must be a database number such as /0, not /{database}", broker=shown)
        if parts.query or parts.fragment:
            raise BrokerURLInvalid("give TLS options with --ca-cert, not in the URL", broker=shown)
        certificate = Path(ca_cert) if ca_cert is not None else None
        if certificate is not None:
            if parts.scheme != "rediss":
                raise BrokerURLInvalid("--ca-cert needs a rediss:// (TLS) URL", broker=shown)
            if not certificate.is_file():
                raise BrokerURLInvalid(f"the CA certificate {certificate} is not a readable file", broker=shown)
        return cls(url=url.strip(), ca_cert=certificate)

    @property
    def display(self) -> str:
        """The URL with its password masked: the only form that is printed or logged."""
        return mask(self.url)

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def ssl_options(self) -> dict[str, Any]:
        """Certificate checks for rediss://: always verified, against --ca-cert or the system's CAs."""
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.ca_cert is not None:
            options["ssl_ca_certs"] = str(self.ca_cert)
        return options

    def client(self, timeouts: QueueTimeouts = QueueTimeouts()) -> redis.Redis:
        """A redis-py client (bytes in, bytes out) with our timeouts and TLS checks."""
        options: dict[str, Any] = {"socket_connect_timeout": timeouts.connect_s,
                                   "socket_timeout": timeouts.socket_s, "health_check_interval": 30}
        if self.tls:
            options.update(self.ssl_options())
        return redis.Redis.from_url(self.url, **options)

    def check(self, client: redis.Redis) -> None:
        """Ping the broker; translate its refusals into one clear error each."""
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            if urlsplit(self.url).password is None:
                raise BrokerAuthFailed("the broker wants a password: redis://:PASSWORD@HOST:6379/0",
                                       broker=self.display) from exc
            raise BrokerAuthFailed("the broker refused the password in the URL (check it, and the user name "
                                   "if the server uses ACLs)", broker=self.display) from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise BrokerAuthFailed("the broker wants a password: redis://:PASSWORD@HOST:6379/0",
                                       broker=self.display) from exc
            raise BrokerUnreachable(f"the broker answered with an error: {exc}", broker=self.display) from exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise BrokerUnreachable(f"cannot reach the broker: {_reason(exc)}", broker=self.display) from exc


@contextmanager
def broker_errors(broker: Broker, doing: str) -> Iterator[None]:
    """Turn a connection to the broker lost while `doing` something into one BrokerUnreachable."""
    try:
        yield
    except (redis.RedisError, OperationalError, ConnectionError) as exc:
        raise BrokerUnreachable(f"lost the broker while {doing}: {_reason(exc)}", broker=broker.display) from exc


def as_text(value: bytes | str | None) -> str:
    """A Redis answer as text (redis-py types answers as bytes or str)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def mask(url: str) -> str:
    """`url` with the password (if any) replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return _mask_text(url)


def _mask_text(url: str) -> str:
    """Mask whatever stands between :// and the last @, for URLs too broken to parse."""
    head, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return head + sep + "***@" + rest.rpartition("@")[2]


def _reason(exc: BaseException) -> str:
    """A short reason from a Redis connection error, without the library's own URL text."""
    text = str(exc).strip() or type(exc).__name__
    if "certificate verify failed" in text or isinstance(exc.__cause__, ssl.SSLCertVerificationError):
        return f"the TLS certificate could not be verified ({text}); give the broker's CA with --ca-cert"
    return text


class Keys:
    """The names of our Redis keys (all under comfy-orch:)."""

    sweeps = PREFIX + "sweeps"  # set of sweep ids on offer
    queues = PREFIX + "queues"  # hash: queue name -> JSON {sweep, needs}
    workers = PREFIX + "workers"  # set of worker names ever seen (heartbeats say which are alive)

    @staticmethod
    def sweep(sweep_id: str) -> str:
        return f"{PREFIX}sweep:{sweep_id}"  # hash: title, total, submitted_at, ...

    @staticmethod
    def current(sweep_id: str) -> str:
        return f"{PREFIX}sweep:{sweep_id}:current"  # hash: job key -> the task id that counts

    @staticmethod
    def state(sweep_id: str) -> str:
        return f"{PREFIX}sweep:{sweep_id}:state"  # hash: task id -> JSON {state, worker, server}

    @staticmethod
    def events(sweep_id: str) -> str:
        return f"{PREFIX}sweep:{sweep_id}:events"  # list: task ids as workers start and finish them

    @staticmethod
    def lease(task_id: str) -> str:
        return f"{PREFIX}lease:{task_id}"  # string with a TTL: the worker running the task

    @staticmethod
    def worker(name: str) -> str:
        return f"{PREFIX}worker:{name}"  # string with a TTL: the worker's heartbeat and description

    @staticmethod
    def verdicts(queue: str) -> str:
        return f"{PREFIX}verdict:{queue}"  # hash: worker -> "" (can run) or what it lacks

    @staticmethod
    def input(name: str) -> str:
        return f"{PREFIX}input:{name}"  # an input file's bytes, by content name


def make_app(broker: Broker, timeouts: QueueTimeouts = QueueTimeouts()) -> Celery:
    """A Celery app on `broker`, set up so that no cell is lost and none is taken before it can run.

    Late acknowledgement (a task is acknowledged after it ran, so a worker killed mid-run leaves
    it to be delivered again), a prefetch of one per slot (a worker holds only what its servers
    keep queued), JSON only (nothing a broker holds can run code on a worker), and results that
    expire when not collected.
    """
    app = Celery("comfy_orchestrator", broker=broker.url, backend=broker.url, set_as_current=False)
    transport = {"visibility_timeout": int(timeouts.visibility_timeout_s),
                 "socket_connect_timeout": timeouts.connect_s, "socket_timeout": timeouts.socket_s}
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_default_queue=IDLE_QUEUE, task_create_missing_queues=True,
        result_expires=int(timeouts.result_expires_s), result_extended=False,
        broker_transport_options=transport, result_backend_transport_options=dict(transport),
        redis_socket_connect_timeout=timeouts.connect_s, redis_socket_timeout=timeouts.socket_s,
        broker_connection_retry_on_startup=False, broker_connection_max_retries=3,
        worker_hijack_root_logger=False, worker_redirect_stdouts=False, worker_send_task_events=False,
        task_send_sent_event=False, worker_enable_remote_control=False, worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if broker.tls:
        app.conf.broker_use_ssl = broker.ssl_options()
        app.conf.redis_backend_use_ssl = broker.ssl_options()
    return app
