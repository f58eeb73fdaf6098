"""servers: a farm's servers from a farm file or from URLs, checked as they are read."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from comfy_orchestrator.errors import FarmFileInvalid
from comfy_orchestrator.servers import load_farm, parse_farm, servers_from_urls

FARM_TOML = """
[[server]]
url = "https://10.0.0.5:8188/"
name = "gpu0-a"
weight = 2.0
tags = ["h200", "gpu0"]
queue_ahead = 3
token = "s3cret"

[[server]]
url = "https://farm.example:443"
headers = { "X-Team" = "art" }
"""


def test_farm_file_gives_frozen_server_configs() -> None:
    first, second = parse_farm(FARM_TOML)
    assert (first.name, first.url, first.weight, first.tags, first.queue_ahead) == (
        "gpu0-a", "https://10.0.0.5:8188", 2.0, ("h200", "gpu0"), 3)
    assert first.request_headers() == {"Authorization": "Bearer s3cret"}
    assert (second.name, second.queue_ahead, second.weight) == ("farm.example:443", 2, 1.0)
    assert second.request_headers() == {"X-Team": "art"}
    with pytest.raises(ValidationError):
        first.weight = 3.0


def test_farm_file_is_read_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "farm.toml"
    path.write_text(FARM_TOML)
    assert [server.name for server in load_farm(path)] == ["gpu0-a", "farm.example:443"]


@pytest.mark.parametrize(("text", "complaint"), [
    ("[[server]]\nurl = 'http://a:1'\nweigth = 2", "weigth"),
    ("[[server]]\nurl = 'ftp://a:1'", "http(s) URL"),
    ("[[server]]\nurl = 'http://a:1'\nweight = 0", "greater than 0"),
    ("[[server]]\nurl = 'http://a:1'\nqueue_ahead = -1", "queue_ahead"),
    ("[[server]]\nurl = 'http://a:1'\n[[server]]\nurl = 'http://a:1'", "used twice"),
    ("[servers]\nurl = 'http://a:1'", "unknown top-level key"),
    ("", "no [[server]]"),
    ("[[server]\nurl=", "not valid TOML"),
    ("[[server]]\nurl = 'http://box:8080'\ntoken = 't'", "refusing to send a token over plain http"),
    ("[[server]]\nurl = 'https://box:8443'\nca_cert = 'absent-ca.pem'", "absent-ca.pem"),
])
def test_bad_farm_files_are_refused_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(FarmFileInvalid) as caught:
        parse_farm(text, source="farm.toml")
    assert complaint in str(caught.value)
    assert str(caught.value).startswith("farm.toml: ")


def test_the_shipped_farm_file_agrees() -> None:
    servers = load_farm(Path(__file__).resolve().parents[1] / "docker" / "farm.toml")
    assert len(servers) >= 1
    assert all(s.url.startswith("http://") and s.queue_ahead == 2 for s in servers)


def test_servers_behind_one_proxy_get_names_of_their_own() -> None:
    behind = parse_farm('[[server]]\nurl = "https://box:8443/gpu0/8188"\ntoken = "t"\n'
                        '[[server]]\nurl = "https://box:8443/gpu0/8189/"\ntoken = "t"\n')
    assert [s.name for s in behind] == ["box:8443/gpu0/8188", "box:8443/gpu0/8189"]
    assert behind[1].url == "https://box:8443/gpu0/8189"


def test_missing_farm_file_is_a_farm_error(tmp_path: Path) -> None:
    with pytest.raises(FarmFileInvalid, match="cannot read"):
        load_farm(tmp_path / "absent.toml")


def test_server_urls_become_configs() -> None:
    servers = servers_from_urls(["http://127.0.0.1:8188", "http://127.0.0.1:8189"], queue_ahead=1)
    assert [(s.name, s.queue_ahead) for s in servers] == [("127.0.0.1:8188", 1), ("127.0.0.1:8189", 1)]
    with pytest.raises(FarmFileInvalid, match="used twice"):
        servers_from_urls(["http://a:1", "http://a:1/"])


