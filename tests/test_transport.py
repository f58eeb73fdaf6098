"""Transport: calls go straight to the pool, requests carries what needs it, and both say the same on failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import urllib3

from comfy_orchestrator.errors import ConnectionFailed, MalformedMessage, RequestTimedOut, ServerError
from comfy_orchestrator.limits import Limits, Timeouts
from comfy_orchestrator.retry import RetryPolicy
from comfy_orchestrator.transport import SharedAnswers, Transport, _as_requests_error

ONCE = RetryPolicy(max_attempts=1)


class Scripted(ThreadingHTTPServer):
    """A plain HTTP server that answers each path as a test says, noting every request it gets."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client hanging up on a long error page is what a test wants."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(self.rfile.read(length) if length else b"")
        self.server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.server.routes.get(self.path.split("?")[0], _not_found)(self)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _not_found(handler: BaseHTTPRequestHandler) -> None:
    reply(handler, 404, b"{}")


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_calls_go_straight_to_the_pool_with_requests_headers_and_ours(scripted: Scripted, no_proxy: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scripted.routes["/queue"] = lambda handler: reply(handler, 200, b'{"queue_running": []}')
    with Transport(scripted.url, token="t0ken", retry=ONCE) as transport:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("requests was asked to make a call the pool makes")

        monkeypatch.setattr(transport.session, "request", refuse)
        assert transport.json("GET", "/queue") == {"queue_running": []}
        assert transport.json("POST", "/queue", json_body={"clear": True}) == {"queue_running": []}
    (_, _, first), (method, path, second) = scripted.seen
    assert first["authorization"] == "Bearer t0ken" and first["user-agent"].startswith("python-requests/")
    assert "gzip" in first["accept-encoding"]
    assert (method, path) == ("POST", "/queue") and second["content-type"] == "application/json"


def test_netrc_credentials_are_sent_by_the_pool(scripted: Scripted, no_proxy: None, tmp_path: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with Transport(scripted.url, retry=ONCE) as transport:
        assert transport.send("GET", "/free") == 404
    assert scripted.seen[0][2]["authorization"] == requests.auth._basic_auth_str("alice", "s3cret")


def test_a_callers_session_carries_every_call(scripted: Scripted, no_proxy: None) -> None:
    scripted.routes["/history/p1"] = lambda handler: reply(handler, 200, b"{}")
    calls = []

    class Recording(requests.Session):
        def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
            calls.append((method, str(url).split("/", 3)[-1]))
            return super().request(method, url, *args, **kwargs)

    with Transport(scripted.url, retry=ONCE, session=Recording()) as transport:
        assert transport.json("GET", "/history/p1") == {}
        assert transport.send("POST", "/prompt", json_body={"prompt": {}}) == 404
    assert calls == [("GET", "history/p1"), ("POST", "prompt")]


def test_a_proxy_for_the_server_is_used(scripted: Scripted, no_proxy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Scripted()
    proxy.routes["http://gpu.invalid:8188/queue"] = lambda handler: reply(handler, 200, b'{"via": "proxy"}')
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("http_proxy", proxy.url)
    try:
        with Transport("http://gpu.invalid:8188", retry=ONCE) as transport:
            assert transport.json("GET", "/queue") == {"via": "proxy"}
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert [(method, path) for method, path, _ in proxy.seen] == [("GET", "http://gpu.invalid:8188/queue")]


def test_a_redirect_is_followed(scripted: Scripted, no_proxy: None) -> None:
    scripted.routes["/old"] = lambda handler: reply(handler, 307, b"", Location="/new")
    scripted.routes["/new"] = lambda handler: reply(handler, 200, b'{"moved": true}')
    with Transport(scripted.url, retry=ONCE) as transport:
        assert transport.json("GET", "/old") == {"moved": True}
    assert [path for _, path, _ in scripted.seen] == ["/old", "/old", "/new"]  # the pool's try, then requests'


def test_a_cookie_set_on_a_straight_answer_is_kept_and_sent(scripted: Scripted, no_proxy: None) -> None:
    scripted.routes["/login"] = lambda handler: reply(handler, 200, b"{}", Set_Cookie="door=open; Path=/")
    scripted.routes["/queue"] = lambda handler: reply(handler, 200, b"{}")
    with Transport(scripted.url, retry=ONCE) as transport:
        transport.json("GET", "/login")
        transport.json("GET", "/queue")
    assert "cookie" not in scripted.seen[0][2] and scripted.seen[1][2]["cookie"] == "door=open"


def test_an_error_page_is_quoted_in_one_short_line(scripted: Scripted, no_proxy: None) -> None:
    page = b"Traceback\nsomething broke " + b"x" * 1_000_000
    scripted.routes["/object_info"] = lambda handler: reply(handler, 500, page, Content_Type="text/plain")
    with Transport(scripted.url, retry=ONCE) as transport, pytest.raises(ServerError) as caught:
        transport.json("GET", "/object_info")
    assert caught.value.status == 500 and "answered 500: Traceback something broke xxx" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_a_value_json_cannot_hold_is_refused_before_sending(scripted: Scripted, no_proxy: None) -> None:
    with Transport(scripted.url, retry=ONCE) as transport, pytest.raises(ServerError, match="InvalidJSONError"):
        transport.send("POST", "/prompt", json_body={"cfg": float("nan")})
    assert scripted.seen == []


def test_a_refused_connection_and_a_silent_server_say_what_requests_said(no_proxy: None) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with Transport(f"http://127.0.0.1:{port}", retry=ONCE) as transport, pytest.raises(ConnectionFailed) as caught:
        transport.send("GET", "/queue")
    assert "cannot connect (ConnectionError)" in str(caught.value)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Transport(url, retry=ONCE, timeouts=Timeouts(read_s=0.2)) as transport, \
                pytest.raises(RequestTimedOut, match="timed out after 0.2 s"):
            transport.send("GET", "/queue")


@pytest.mark.parametrize(("error", "kind"), [
    (urllib3.exceptions.ProtocolError("reset"), requests.exceptions.ConnectionError),
    (ConnectionResetError("reset"), requests.exceptions.ConnectionError),
    (urllib3.exceptions.ClosedPoolError(None, "closed"), requests.exceptions.ConnectionError),  # type: ignore[arg-type]
    (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.ConnectTimeoutError()),  # type: ignore[arg-type]
     requests.exceptions.ConnectTimeout),
    (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.NewConnectionError(  # type: ignore[arg-type]
        None, "refused")), requests.exceptions.ConnectionError),  # type: ignore[arg-type]
    (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.ProxyError(  # type: ignore[arg-type]
        "down", OSError())), requests.exceptions.ProxyError),
    (urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.SSLError()),  # type: ignore[arg-type]
     requests.exceptions.SSLError),
    (urllib3.exceptions.SSLError(), requests.exceptions.SSLError),
    (urllib3.exceptions.ReadTimeoutError(None, "/", "slow"), requests.exceptions.ReadTimeout),  # type: ignore[arg-type]
    (urllib3.exceptions.InvalidHeader(), requests.exceptions.InvalidHeader),
    (urllib3.exceptions.DecodeError(), requests.exceptions.RequestException),
])
def test_urllib3_errors_map_as_requests_maps_them(error: Exception, kind: type[Exception]) -> None:
    assert type(_as_requests_error(error)) is kind


def test_the_answer_body_is_bounded_on_the_straight_path(scripted: Scripted, no_proxy: None) -> None:
    scripted.routes["/history"] = lambda handler: reply(handler, 200, json.dumps({"x": "y" * 4096}).encode())
    with Transport(scripted.url, retry=ONCE, limits=Limits(json_bytes=1024)) as transport, \
            pytest.raises(ServerError, match=r"over the limit of 1 KiB \(Limits.json_bytes\)"):
        transport.json("GET", "/history")


def test_a_client_on_a_quiet_environment_never_loads_requests(scripted: Scripted, no_proxy: None,
                                                              tmp_path: Any) -> None:
    scripted.routes["/upload/image"] = lambda handler: reply(handler, 200, b'{"name": "a.png"}')
    scripted.routes["/queue"] = lambda handler: reply(handler, 200, b"{}")
    code = (f"import sys\nfrom comfy_orchestrator.transport import Transport\n"
            f"with Transport({scripted.url!r}) as transport:\n"
            "    transport.json('POST', '/upload/image', files={'image': ('a.png', b'PNG', 'image/png')},\n"
            "                   form={'type': 'input', 'overwrite': 'true'})\n"
            "    transport.send('POST', '/queue', json_body={'clear': True})\n"
            "print('requests' in sys.modules)\n")
    env = {**os.environ, "HOME": str(tmp_path), "NETRC": str(tmp_path / "none")}  # no .netrc: nothing to read
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    (method, path, headers), _ = scripted.seen
    assert (method, path) == ("POST", "/upload/image") and headers["content-type"].startswith("multipart/form-data")
    assert headers["user-agent"] == f"python-requests/{requests.__version__}"


def test_an_upload_is_encoded_as_requests_encodes_it(scripted: Scripted, no_proxy: None) -> None:
    scripted.routes["/upload/image"] = lambda handler: reply(handler, 200, b'{"name": "a.png"}')
    files, form = {"image": ("a b.png", b"\x89PNG data", "application/octet-stream")}, {"type": "input", "subfolder": ""}
    with Transport(scripted.url, retry=ONCE) as transport:
        assert transport.json("POST", "/upload/image", files=files, form=form) == {"name": "a.png"}
    theirs = requests.Request("POST", scripted.url, files=files, data=form).prepare()
    ours, boundary = scripted.bodies[0], scripted.seen[0][2]["content-type"].split("boundary=")[1]
    their_boundary = str(theirs.headers["Content-Type"]).split("boundary=")[1]
    assert isinstance(theirs.body, bytes) and ours == theirs.body.replace(their_boundary.encode(), boundary.encode())


def test_shared_answers_read_each_distinct_body_once() -> None:
    shared = SharedAnswers(kept=2)
    reads: list[bytes] = []

    def read(body: bytes) -> Any:
        reads.append(body)
        return json.loads(body)

    first = shared.read("GET /object_info", b'{"a": [1]}', read)
    assert shared.read("GET /object_info", b'{"a": [1]}', read) is first  # the same bytes: what was made
    assert shared.read("GET /object_info", b'{"a": [2]}', read) == {"a": [2]}  # other bytes: their own
    assert shared.read("GET /queue", b'{"a": [1]}', read) is not first  # another route: its own
    assert reads == [b'{"a": [1]}', b'{"a": [2]}', b'{"a": [1]}']
    shared.read("GET /object_info", b'{"a": [1]}', read)  # only the last two are kept
    assert len(reads) == 4


def test_a_shared_body_that_fails_is_read_again_by_the_next_caller() -> None:
    shared = SharedAnswers()
    calls = []

    def refuse(body: bytes) -> Any:
        calls.append(body)
        raise MalformedMessage("GET /object_info did not answer JSON", server=f"server {len(calls)}")

    for number in (1, 2):
        with pytest.raises(MalformedMessage, match=f"server {number}"):
            shared.read("GET /object_info", b"<html>", refuse)


def test_threads_with_the_same_body_wait_for_the_one_reading_it() -> None:
    shared = SharedAnswers()
    reading, release = threading.Event(), threading.Event()
    reads = []

    def read(body: bytes) -> Any:
        reads.append(body)
        reading.set()
        release.wait(10)
        return json.loads(body)

    made: list[Any] = []
    threads = [threading.Thread(target=lambda: made.append(shared.read("GET /object_info", b"[1]", read)))
               for _ in range(4)]
    threads[0].start()
    assert reading.wait(10)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert reads == [b"[1]"] and len(made) == 4 and all(each is made[0] for each in made)
