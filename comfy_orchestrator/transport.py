"""Transport: HTTP to one ComfyUI server: its URL and credentials, TLS, proxies, timeouts, retries, bounded answers.

A client's requests go to one server, so what requests settles per call is settled here
once: the environment's proxies and .netrc are read at construction, the headers (ours,
the session's defaults, credentials) merged once. Calls then go straight to urllib3's
connection pool for that server, verified with the client's `Trust` (the websocket's
context too), with requests' own timeouts, retry setting and error mapping; requests'
per-call work (merging settings, hooks, cookies, redirects, a Response object) was
~40 % of a job's CPU. requests still carries a call where its extra work is needed: a
session the caller passed (its adapters and hooks are theirs), a proxy for the server,
cookies a server or proxy set, a redirect. requests itself is imported only then (or on an
error, to name it as requests would): it is ~35 ms of a command's start.

Credentials are never sent in clear to a host that is not loopback unless allowed, and
never appear in an error, a log line or a repr. `SharedAnswers` lets the clients of a farm read
an answer that is byte-identical across servers (/object_info) once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import urllib3
from urllib3.fields import RequestField
from urllib3.filepost import encode_multipart_formdata

from comfy_orchestrator.errors import (
    AuthFailed,
    ComfyError,
    ConnectionFailed,
    MalformedMessage,
    ParameterError,
    RequestTimedOut,
    ServerError,
)
from comfy_orchestrator.limits import Limits, Timeouts, describe_bytes
from comfy_orchestrator.retry import RetryPolicy, call_with_retries
from comfy_orchestrator.tls import Trust, certificate_rejection, in_clear

if TYPE_CHECKING:
    import requests

__all__ = ["Answer", "Files", "SharedAnswers", "Transport", "split_credentials"]

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 16
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_POOL_CONNECTIONS = 10  # as requests' adapter keeps per host; more are made when needed, not kept
_NO_RETRIES = urllib3.Retry(0, read=False)  # requests' adapter setting: our retry loop decides
# Form files as requests takes them: field -> (file name, bytes, content type)
Files = Mapping[str, tuple[str, bytes, str]]
Answered = TypeVar("Answered")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without user:password, and the user and password it carried."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ParameterError(f"server URL scheme must be http, https, ws or wss, not {parts.scheme!r}",
                             parameter="server")
    if not parts.hostname:
        raise ParameterError("server URL has no host", parameter="server")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    try:
        port = parts.port
    except ValueError as exc:  # out of range, or not a number
        raise ParameterError(f"server URL {host!r} has a bad port ({exc}); ports are 1 to 65535",
                             parameter="server") from exc
    netloc = f"{host}:{port}" if port else host
    clean = urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))
    user = parts.username and unquote(parts.username)
    password = parts.password and unquote(parts.password)
    return clean, user or None, password or None


class Answer:
    """One HTTP answer: its status, its headers, and its body as it arrives (urllib3's response)."""

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers

    def read1(self) -> bytes:
        """What the socket has of the body, inflated; b"" at its end."""
        return self.raw.read1(_CHUNK_BYTES, decode_content=True)

    def close(self) -> None:
        """Hand the connection back to the pool; one whose body was not read to its end is closed."""
        self.raw.close()
        self.raw.release_conn()

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Transport:
    """HTTP to one server: every call with its credentials, trust, timeouts and retries; answers bounded."""

    def __init__(self, url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, headers: Mapping[str, str] | None = None,
                 timeouts: Timeouts = Timeouts(), limits: Limits = Limits(), retry: RetryPolicy = RetryPolicy(),
                 session: requests.Session | None = None, ca_cert: str | Path | None = None,
                 allow_plain_http: bool = False, closed: threading.Event | None = None) -> None:
        """`ca_cert` as for Client; `closed`, once set, cuts short the rests between retries (the client's close)."""
        self.url, url_user, url_password = split_credentials(url)
        user, password = username or url_user, password or url_password
        self.timeouts = timeouts
        self.limits = limits
        self.retry = retry
        self.trust = Trust.load(ca_cert)
        self.headers = dict(headers or {})  # what the server's door needs: ours, for HTTP and the websocket
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            pair = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {pair}"
        self._refuse_credentials_in_clear(allow_plain_http)
        self.credentials = _describe_credentials(self.headers, token=bool(token), basic=user is not None)
        self._closed = closed or threading.Event()
        self._own_session = session is None
        self._session = session
        self._session_lock = threading.Lock()
        # whether calls may go straight to the pool: not with a caller's session (its adapters and hooks)
        self._direct = self._own_session
        # requests reads the environment's proxies and .netrc once, now, if it names any
        self._quiet_environment = not (urllib.request.getproxies() or _netrc_file() is not None)
        if self._own_session and not self._quiet_environment:
            import requests

            self._direct = requests.utils.select_proxy(self.url, self.session.proxies) is None
        self._sent_headers = self._merged_headers()
        self._path_prefix = urlsplit(self.url).path
        self._timeout = urllib3.Timeout(connect=self.timeouts.http[0], read=self.timeouts.read_s)
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._pool_lock = threading.Lock()

    def _refuse_credentials_in_clear(self, allowed: bool) -> None:
        """A token or password must not cross a network unencrypted, unless the caller says so."""
        if not any(name.lower() in ("authorization", "proxy-authorization") for name in self.headers):
            return
        if not in_clear(self.url):
            return
        if not allowed:
            raise ParameterError(f"{self.url}: refusing to send credentials over plain http to a host that is "
                                 "not loopback, where anyone on the way can read them; use https:// (the farm's "
                                 "proxy serves it), or accept the risk with --allow-plain-http "
                                 "(allow_plain_http = true in a farm file)", parameter="allow_plain_http")
        log.warning("%s: sending credentials over plain http; anyone on the network can read them (use https://)",
                    self.url)

    @property
    def session(self) -> requests.Session:
        """requests' session for the calls it makes: the caller's, or ours, made at first need.

        Ours reads the environment's proxies and .netrc once, here, and never again.
        """
        with self._session_lock:
            if self._session is None:
                import requests

                self._session = requests.Session()
                if self._quiet_environment:  # as read at construction: no proxy, no .netrc
                    self._session.trust_env = False
                else:
                    _read_environment_once(self._session, self.url,
                                           has_credentials="Authorization" in self.headers)
            return self._session

    def _merged_headers(self) -> dict[str, str]:
        """What requests would send on each call: the session's defaults, ours, and .netrc's basic auth."""
        if self._session is None:
            return {**_default_headers(), **self.headers}
        merged = {**self._session.headers, **self.headers}
        auth = self._session.auth
        if isinstance(auth, tuple) and len(auth) == 2 and not any(name.lower() == "authorization" for name in merged):
            import requests

            merged["Authorization"] = requests.auth._basic_auth_str(*auth)
        return {str(name): str(value) for name, value in merged.items() if value is not None}

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool and, if we made it, the session."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self._own_session and self._session is not None:
            self._session.close()

    # -- one call
    def once(self, method: str, path: str, *, json_body: Any = None, form: Mapping[str, str] | None = None,
             files: Files | None = None) -> Answer:
        """One HTTP request, its body unread; library errors become ours, without credentials in them.

        The body is `json_body` as JSON, or `form` and `files` as multipart/form-data, encoded as
        requests encodes them.
        """
        body, content_type = None, None
        if json_body is not None:
            try:
                body, content_type = json.dumps(json_body, allow_nan=False).encode(), "application/json"
            except ValueError as exc:  # NaN or infinity, which JSON has no words for
                import requests

                raise self._failure(method, path, requests.exceptions.InvalidJSONError(exc)) from exc
        elif files is not None or form is not None:
            body, content_type = _multipart(form or {}, files or {})
        if self._direct and not (self._session is not None and self._session.cookies):
            answer = self._straight(method, path, body, content_type)
            if answer is not None:
                return self._checked(answer, method, path)
        headers = self.headers if content_type is None else {**self.headers, "Content-Type": content_type}
        import requests

        try:
            response = self.session.request(method, self.url + path, headers=headers, data=body, stream=True,
                                            timeout=self.timeouts.http, verify=self.trust.verify)
        except requests.RequestException as exc:
            raise self._failure(method, path, exc) from exc
        return self._checked(Answer(response.raw), method, path)

    def _straight(self, method: str, path: str, body: bytes | None, content_type: str | None) -> Answer | None:
        """The call on urllib3's pool, as requests' adapter makes it; None where requests must make it."""
        headers = self._sent_headers
        if body is not None:
            headers = {**headers, "Content-Type": content_type or "", "Content-Length": str(len(body))}
        try:
            raw = self._connections().urlopen(
                method, self._path_prefix + path, body=body, headers=headers, redirect=False, assert_same_host=False,
                preload_content=False, decode_content=False, retries=_NO_RETRIES, timeout=self._timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failure(method, path, _as_requests_error(exc)) from exc
        answer = Answer(raw)
        if raw.status in _REDIRECTS:  # requests follows them, as it always did
            answer.close()
            return None
        if "set-cookie" in raw.headers:  # a proxy's session: kept, and sent by requests from now on
            import requests

            request = requests.Request(method, self.url + path, headers=headers).prepare()
            requests.cookies.extract_cookies_to_jar(self.session.cookies, request, raw)  # type: ignore[no-untyped-call]
        return answer

    def _connections(self) -> urllib3.HTTPConnectionPool:
        """The pool of connections to the server, made at first use (https verified by the Trust)."""
        with self._pool_lock:
            if self._pool is None:
                parts = urlsplit(self.url)
                host = parts.hostname or ""
                if parts.scheme == "https":
                    self._pool = urllib3.HTTPSConnectionPool(host, parts.port or 443, maxsize=_POOL_CONNECTIONS,
                                                             ssl_context=self.trust.context, cert_reqs="CERT_REQUIRED")
                else:
                    self._pool = urllib3.HTTPConnectionPool(host, parts.port or 80, maxsize=_POOL_CONNECTIONS)
            return self._pool

    def _failure(self, method: str, path: str, exc: requests.RequestException) -> ComfyError:
        """Our error for a library's, naming the route and the kind of failure, never the URL's secrets."""
        import requests

        route = _route(method, path)
        if isinstance(exc, requests.exceptions.SSLError):
            rejection = certificate_rejection(exc, server=self.url, trust=self.trust,
                                              timeout_s=self.timeouts.connect_s)
            if rejection is not None:
                return rejection
            return ConnectionFailed(f"{route}: TLS handshake failed ({type(exc).__name__}); does the server speak "
                                    "https on that port?", server=self.url)
        if isinstance(exc, requests.Timeout):
            return RequestTimedOut(f"{route} timed out after {self.timeouts.read_s:g} s", server=self.url)
        if isinstance(exc, requests.ConnectionError):
            return ConnectionFailed(f"{route}: cannot connect ({type(exc).__name__}); is ComfyUI running there? "
                                    "(--server URL or $COMFY_URL; 'comfy-orch sim' starts a simulated one)",
                                    server=self.url)
        return ServerError(f"{route} failed ({type(exc).__name__})", server=self.url)

    def _checked(self, answer: Answer, method: str, path: str) -> Answer:
        """The answer, unless it refuses our credentials or says the server failed."""
        status = answer.status_code
        if status in (401, 403, 407):
            answer.close()
            raise AuthFailed(f"{_route(method, path)} answered {status}: {_refusal(self.credentials)}",
                             server=self.url, status=status)
        if status >= 500:
            with answer:
                text = self._start_of(answer)
            raise ServerError(f"{_route(method, path)} answered {status}: {text}", server=self.url,
                              status=status)
        return answer

    def _start_of(self, answer: Answer) -> str:
        """The first words of an error page, for the message; never more than one read of it."""
        try:
            piece = answer.read1()
        except (urllib3.exceptions.HTTPError, OSError):
            return ""
        return piece[:200].decode("utf-8", "replace").strip().replace("\n", " ")

    def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        """An HTTP request, retried with backoff on connection errors and 5xx (every caller may repeat it)."""
        return call_with_retries(lambda attempt: self.once(method, path, **kwargs), self.retry,
                                 rest=self._closed.wait, on_retry=self.log_retry)

    def log_retry(self, error: ComfyError, attempt: int, delay_s: float) -> None:
        log.info("%s: %s; retry %d in %.2f s", self.url, error, attempt, delay_s)

    def send(self, method: str, path: str, **kwargs: Any) -> int:
        """A call whose answer says nothing but its status: read (within limits) and dropped; the status."""
        with self.call(method, path, **kwargs) as answer:
            for _ in self.body(answer, _route(method, path), limit=self.limits.json_bytes,
                               deadline=time.monotonic() + self.timeouts.read_s, limit_name="json_bytes"):
                pass
        return answer.status_code

    # -- answers
    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """An answer's JSON, read within `limits.json_bytes` (decompressed) and the read timeout."""
        return self.loads(self.json_bytes(method, path, **kwargs), _route(method, path))

    def json_bytes(self, method: str, path: str, **kwargs: Any) -> bytes:
        """The bytes of an answer that is to be JSON (status 200), read as `json` reads them, not yet parsed."""
        route = _route(method, path)
        with self.call(method, path, **kwargs) as answer:
            if answer.status_code != 200:
                raise ServerError(f"{route} answered {answer.status_code}", server=self.url,
                                  status=answer.status_code)
            return self._json_body(answer, route)

    def parse_json(self, answer: Answer, route: str) -> Any:
        """The body's JSON; MalformedMessage if it is not JSON (None for an empty body)."""
        return self.loads(self._json_body(answer, route), route)

    def _json_body(self, answer: Answer, route: str) -> bytes:
        deadline = time.monotonic() + self.timeouts.read_s
        return b"".join(self.body(answer, route, limit=self.limits.json_bytes, deadline=deadline,
                                  limit_name="json_bytes"))

    def loads(self, body: bytes, route: str) -> Any:
        """`body` (an answer to `route`) read as JSON; MalformedMessage if it is not JSON (None if it is empty)."""
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise MalformedMessage(f"{route} did not answer JSON", server=self.url) from exc
        except RecursionError as exc:
            raise MalformedMessage(f"{route} answered JSON nested too deep", server=self.url) from exc

    def body(self, answer: Answer, what: str, *, limit: int, deadline: float, limit_name: str) -> Iterator[bytes]:
        """A body's pieces as they arrive, decompressed; refused past `limit` bytes or `deadline`.

        Reads what the socket has (read1), so a body that trickles in is cut at its deadline,
        and a compressed one is inflated a piece at a time.
        """
        announced = answer.headers.get("Content-Length", "")
        if announced.isdigit() and "Content-Encoding" not in answer.headers and int(announced) > limit:
            raise ServerError(f"{what}: the answer is {describe_bytes(int(announced))}, over the limit of "
                              f"{describe_bytes(limit)} (Limits.{limit_name})", server=self.url)
        total = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    raise RequestTimedOut(f"{what}: the answer did not arrive within its time "
                                          f"({total} bytes so far)", server=self.url)
                piece = answer.read1()
                if not piece:
                    return
                total += len(piece)
                if total > limit:
                    raise ServerError(f"{what}: the answer is over the limit of {describe_bytes(limit)} "
                                      f"(Limits.{limit_name})", server=self.url)
                yield piece
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # what urllib3's response raises, either path
            raise ConnectionFailed(f"{what}: the answer broke off ({type(exc).__name__})", server=self.url) from exc


class SharedAnswers:
    """What answers' bytes were read into (parsed and checked), shared by the clients handed this one.

    The servers of one ComfyUI install send byte-identical /object_info answers (0.6 MB of JSON here,
    several on a real install): a farm's threads each parsed and checked theirs, holding the GIL while
    the sweep was prepared. Now the first reads it and the others get what it made; servers whose bytes
    differ get their own. Answers are told apart by their route and the SHA-256 of their bytes; the
    last `kept` are kept. What is handed out is shared: read it, never change it.
    """

    def __init__(self, *, kept: int = 4) -> None:
        self.kept = kept
        # held while one body is read: the others wait, and take what it made if their bytes are the same.
        # A reading is parsing and checking, which holds the GIL throughout: two would not overlap anyway.
        self._lock = threading.Lock()
        self._made: dict[tuple[str, bytes], Any] = {}  # oldest first

    def read(self, route: str, body: bytes, read: Callable[[bytes], Answered]) -> Answered:
        """`read(body)`, or what it made of the same bytes before.

        An error is raised to its own caller only; the next caller with those bytes reads them again.
        """
        key = (route, hashlib.sha256(body).digest())
        with self._lock:
            if key in self._made:
                return cast(Answered, self._made[key])
            made = self._made[key] = read(body)
            while len(self._made) > self.kept:
                del self._made[next(iter(self._made))]
            return made


def _route(method: str, path: str) -> str:
    """A call as errors name it: the method and the path, without its query."""
    return f"{method} {path.split('?')[0]}"


def _read_environment_once(session: requests.Session, url: str, *, has_credentials: bool) -> None:
    """Settle the environment's proxies and .netrc for `url` now, not on every request.

    requests reads them on each call (walking os.environ); every request of a client
    goes to the one server, so once is enough. The CA bundle the environment names is
    the Trust's.
    """
    import requests

    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies.update(settings["proxies"])
    if not has_credentials and session.auth is None:
        session.auth = requests.utils.get_netrc_auth(url)
    session.trust_env = False


def _netrc_file() -> str | None:
    """The .netrc requests would read ($NETRC, else ~/.netrc or ~/_netrc), if there is one."""
    named = os.environ.get("NETRC")
    for candidate in (named,) if named is not None else ("~/.netrc", "~/_netrc"):
        path = os.path.expanduser(candidate)
        if os.path.exists(path):
            return path
    return None


@functools.cache
def _default_headers() -> dict[str, str]:
    """requests' default headers (requests.utils.default_headers), without importing requests."""
    encodings = urllib3.util.make_headers(accept_encoding=True)["accept-encoding"]
    return {"User-Agent": f"python-requests/{importlib.metadata.version('requests')}",
            "Accept-Encoding": ", ".join(re.split(r",\s*", encodings)), "Accept": "*/*", "Connection": "keep-alive"}


def _multipart(form: Mapping[str, str], files: Files) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type, the fields then the files, as requests encodes them."""
    fields: list[Any] = [(name, value.encode("utf-8")) for name, value in form.items()]
    for name, (filename, data, content_type) in files.items():
        field = RequestField(name=name, data=data, filename=filename)
        field.make_multipart(content_type=content_type)
        fields.append(field)
    return encode_multipart_formdata(fields)


def _as_requests_error(error: Exception) -> requests.RequestException:
    """The error requests' adapter raises for urllib3's `error` (HTTPAdapter.send), so both paths say the same."""
    import requests

    exceptions, errors = requests.exceptions, urllib3.exceptions
    kind: Callable[[Exception], requests.RequestException] = exceptions.RequestException
    if isinstance(error, (errors.ProtocolError, OSError, errors.ClosedPoolError)):
        kind = exceptions.ConnectionError
    elif isinstance(error, errors.MaxRetryError):
        reason = error.reason
        if isinstance(reason, errors.ConnectTimeoutError) and not isinstance(reason, errors.NewConnectionError):
            kind = exceptions.ConnectTimeout
        elif isinstance(reason, errors.ProxyError):
            kind = exceptions.ProxyError
        elif isinstance(reason, errors.SSLError):
            kind = exceptions.SSLError
        else:
            kind = exceptions.ConnectionError
    elif isinstance(error, errors.ProxyError):
        kind = exceptions.ProxyError
    elif isinstance(error, errors.SSLError):
        kind = exceptions.SSLError
    elif isinstance(error, errors.ReadTimeoutError):
        kind = exceptions.ReadTimeout
    elif isinstance(error, errors.InvalidHeader):
        kind = exceptions.InvalidHeader
    return kind(error)


def _describe_credentials(headers: Mapping[str, str], *, token: bool, basic: bool) -> str:
    """Which credentials a client sends, by kind and header name, never by value."""
    if token:
        return "a bearer token"
    if basic:
        return "basic auth (a user and password)"
    if headers:
        return "the header" + ("s " if len(headers) > 1 else " ") + ", ".join(sorted(headers))
    return ""


def _refusal(credentials: str) -> str:
    """One line on a 401/403: what was tried, and how to give credentials."""
    if credentials:
        return (f"the server or its proxy refused {credentials}; check it ($COMFY_TOKEN, the farm file's "
                "token or headers, or user:password in the URL)")
    return ("the server or its proxy wants credentials and none were sent; give a token ($COMFY_TOKEN or "
            "the farm file's token) or user:password in the URL")
