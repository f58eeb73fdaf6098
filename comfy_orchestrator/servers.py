"""A farm's servers: ServerConfig and the farm file (TOML, one [[server]] table per server).

    servers = load_farm("farm.toml")               # or servers_from_urls(["http://a:8188"])
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from comfy_orchestrator.errors import FarmFileInvalid
from comfy_orchestrator.tls import in_clear

__all__ = ["DEFAULT_QUEUE_AHEAD", "ServerConfig", "checked_servers", "load_farm", "parse_farm", "servers_from_urls",
           "without_credentials"]

DEFAULT_QUEUE_AHEAD = 2


class ServerConfig(BaseModel):
    """One server of a farm, as a farm file or --server gives it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    name: str = ""  # defaults to host:port (and the path, if any)
    headers: dict[str, str] = Field(default_factory=dict)
    token: str | None = None  # sent as "Authorization: Bearer <token>"
    weight: float = Field(default=1.0, gt=0)  # relative speed before any job was timed
    tags: tuple[str, ...] = ()
    queue_ahead: int = Field(default=DEFAULT_QUEUE_AHEAD, ge=0, le=64)
    ca_cert: Path | None = None  # PEM of the authority that signed an https server's certificate
    allow_plain_http: bool = False  # send the token over plain http to a host that is not loopback (warned)

    @field_validator("ca_cert")
    @classmethod
    def _check_ca_cert(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no file {str(path)!r} (a PEM file of the farm's certificate authority)")
        return path

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"{without_credentials(url)!r} is not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{without_credentials(url)!r} is not an http(s) URL such as http://127.0.0.1:8188")
        return url.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0") or not name.strip():
                # a line break would end the header and start another of the writer's choosing
                raise ValueError(f"header {name.strip()!r} has a line break or is empty; one line each")
        return headers

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: str | None) -> str | None:
        if token is not None and any(c in token for c in "\r\n\0"):
            raise ValueError("the token has a line break; it must be one line")
        return token

    @model_validator(mode="after")
    def _default_name(self) -> ServerConfig:
        if not self.name:  # a path tells apart the servers behind one proxy; never the credentials
            parts = urlsplit(self.url)
            object.__setattr__(self, "name", parts.netloc.rpartition("@")[2] + parts.path)
        return self

    @property
    def display_url(self) -> str:
        """The URL without any user:password, to show and to record."""
        return without_credentials(self.url)

    @model_validator(mode="after")
    def _no_credentials_in_clear(self) -> ServerConfig:
        has_credentials = any(name.lower() in ("authorization", "proxy-authorization")
                              for name in self.request_headers())
        if has_credentials and in_clear(self.url) and not self.allow_plain_http:
            raise ValueError(f"{self.display_url}: refusing to send a token over plain http to a host that is not "
                             "loopback; use https:// (the farm's proxy serves it), or accept the risk with "
                             "allow_plain_http = true (--allow-plain-http)")
        return self

    def request_headers(self) -> dict[str, str]:
        """The headers every request to this server carries."""
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def without_credentials(url: str) -> str:
    """`url` with any user:password taken out of its host part."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url.rpartition("@")[2]
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"


def servers_from_urls(urls: Sequence[str], *, queue_ahead: int = DEFAULT_QUEUE_AHEAD, token: str | None = None,
                      ca_cert: Path | None = None, allow_plain_http: bool = False) -> tuple[ServerConfig, ...]:
    """Server configs for plain URLs, as --server gives them (none for none)."""
    if not urls:
        return ()
    return checked_servers([{"url": url, "queue_ahead": queue_ahead, "token": token, "ca_cert": ca_cert,
                             "allow_plain_http": allow_plain_http} for url in urls], source="--server")


def parse_farm(text: str, *, source: str = "farm file", folder: Path | None = None,
               ca_cert: Path | None = None) -> tuple[ServerConfig, ...]:
    """Read a farm file's TOML text: one [[server]] table per server.

    A relative `ca_cert` in a table is read from `folder` (the farm file's own); a server
    without one gets `ca_cert` (--ca-cert on the command line).
    """
    # imported here: a farm named by --server URLs reads no TOML
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FarmFileInvalid(f"not valid TOML: {exc}", source=source) from exc
    unknown = sorted(set(data) - {"server"})
    if unknown:
        raise FarmFileInvalid(f"unknown top-level key(s) {', '.join(unknown)}; expected [[server]] tables",
                              source=source)
    tables = data.get("server")
    if not isinstance(tables, list) or not tables:
        raise FarmFileInvalid("no [[server]] tables", source=source)
    return checked_servers([_with_ca_cert(table, folder, ca_cert) for table in tables], source=source)


def _with_ca_cert(table: Any, folder: Path | None, default: Path | None) -> Any:
    """A server table whose ca_cert is found beside the farm file, or the default one."""
    if not isinstance(table, dict):
        return table
    given = table.get("ca_cert")
    if isinstance(given, str) and folder is not None:
        return {**table, "ca_cert": folder / Path(given).expanduser()}
    if given is None and default is not None:
        return {**table, "ca_cert": default}
    return table


def load_farm(path: str | Path, *, ca_cert: Path | None = None) -> tuple[ServerConfig, ...]:
    """Read a farm file (TOML, one [[server]] table per server); `ca_cert` serves servers naming none."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise FarmFileInvalid(f"cannot read it: {exc.strerror or exc}", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise FarmFileInvalid(f"is not UTF-8 text (byte {exc.start}); save it as UTF-8", source=str(path)) from exc
    return parse_farm(text, source=str(path), folder=path.parent, ca_cert=ca_cert)


def checked_servers(tables: Sequence[Any], *, source: str) -> tuple[ServerConfig, ...]:
    """Validate server tables; refuse none at all and names used twice."""
    servers = []
    for index, table in enumerate(tables, start=1):
        try:
            servers.append(ServerConfig.model_validate(table))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'server'}: {error['msg']}" for error in exc.errors())
            raise FarmFileInvalid(f"server {index}: {problems}", source=source) from exc
    if not servers:
        raise FarmFileInvalid("no servers given", source=source)
    names = [server.name for server in servers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FarmFileInvalid(f"server name(s) used twice: {', '.join(duplicates)}", source=source)
    return tuple(servers)
