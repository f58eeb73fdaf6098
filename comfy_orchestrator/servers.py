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

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

__all__ = ["DEFAULT_QUEUE_AHEAD", "ServerConfig", "checked_servers", "load_farm", "parse_farm", "servers_from_urls"]

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

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http(s) URL such as http://127.0.0.1:8188")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _default_name(self) -> ServerConfig:
        if not self.name:  # a path tells apart the servers behind one proxy
            parts = urlsplit(self.url)
            object.__setattr__(self, "name", parts.netloc + parts.path)
        return self

    def request_headers(self) -> dict[str, str]:
        """The headers every request to this server carries."""
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def servers_from_urls(urls: Sequence[str], *, queue_ahead: int = DEFAULT_QUEUE_AHEAD) -> tuple[ServerConfig, ...]:
    """Server configs for plain URLs, as --server gives them (none for none)."""
    if not urls:
        return ()
    return checked_servers([{"url": url, "queue_ahead": queue_ahead} for url in urls], source="--server")


def parse_farm(text: str, *, source: str = "farm file") -> tuple[ServerConfig, ...]:
    """Read a farm file's TOML text: one [[server]] table per server."""
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
    return checked_servers(tables, source=source)


def load_farm(path: str | Path) -> tuple[ServerConfig, ...]:
    """Read a farm file (TOML, one [[server]] table per server)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise FarmFileInvalid(f"cannot read it: {exc.strerror or exc}", source=str(path)) from exc
    return parse_farm(text, source=str(path))


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
