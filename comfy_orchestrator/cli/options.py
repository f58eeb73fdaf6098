"""Options the commands share (--set, --server/--farm, --ca-cert, --broker) and what they open."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from comfy_orchestrator.cli.output import EXIT_BAD_INPUT, fail

if TYPE_CHECKING:  # imported where used, so that a command loads only what it needs (--help: click and rich)
    from comfy_orchestrator.client import Client
    from comfy_orchestrator.queue import CeleryQueue
    from comfy_orchestrator.servers import ServerConfig
    from comfy_orchestrator.settings import Settings
    from comfy_orchestrator.templates import Templates

# grid.GRID_FORMATS's names and grid.DEFAULT_GRID_FORMAT, said here so that --help loads no Pillow
# (tests/test_cli_startup.py keeps them equal)
GRID_FORMAT_NAMES, DEFAULT_GRID_FORMAT = ("jpg", "png"), "jpg"


def settings() -> Settings:
    from comfy_orchestrator.settings import Settings

    return Settings.from_environment()


def library(ctx: click.Context) -> Templates:
    """The templates: --templates folders, then $COMFY_ORCH_TEMPLATES's, then the per-user and built-in ones."""
    from comfy_orchestrator.templates import Templates

    folders: Sequence[str] = ctx.find_root().params.get("templates_dir") or ()
    return Templates.default([*folders, *settings().template_folders()])


def template_values(sets: Sequence[str]) -> dict[str, str]:
    from comfy_orchestrator.templates import parse_assignments

    return parse_assignments(sets)


def grid_format_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --grid-format option of the commands that draw grids (sweep, demo)."""
    return click.option("--grid-format", type=click.Choice(GRID_FORMAT_NAMES), default=DEFAULT_GRID_FORMAT,
                        show_default=True,
                        help="the grid image's format: jpg is written 6-9x faster and smaller; png is lossless"
                        )(function)


def set_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --set NAME=VALUE option, given many times."""
    return click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                        help="a template parameter; repeat for more")(function)


def broker_options(*, required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--broker URL (default $COMFY_BROKER, so a password stays off the command line) and --ca-cert FILE."""
    def add(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option("--ca-cert", "ca_cert", type=click.Path(dir_okay=False), metavar="FILE",
                                help="trust this certificate authority (PEM): the broker's with rediss://, and "
                                     "https servers' (a farm's own CA or its proxy's tls.crt)")(function)
        return click.option("--broker", metavar="URL", envvar="COMFY_BROKER", required=required,
                            help="the queue's Redis: redis://[:PASSWORD@]HOST:6379/0, or rediss:// for TLS "
                                 "(default $COMFY_BROKER)")(function)
    return add


def connect_queue(broker: str, ca_cert: str | None) -> CeleryQueue:
    """A CeleryQueue on `broker`, checked now so that a bad URL or password fails before any work."""
    try:
        from comfy_orchestrator.queue import CeleryQueue
    except ImportError as exc:
        fail(f"the queue needs the [queue] extra: pip install 'comfy-orchestrator[queue]' ({exc})", EXIT_BAD_INPUT)
    queue = CeleryQueue(broker, ca_cert=ca_cert)
    queue.connect().close()
    return queue


def plain_http_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """--allow-plain-http: a token or password may cross the network in clear (warned)."""
    return click.option("--allow-plain-http", is_flag=True,
                        help="send a token or password over plain http to a host that is not loopback "
                             "(anyone on the network can read it; warned on every run)")(function)


def transport_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--ca-cert FILE and --allow-plain-http: how a command may talk to its servers."""
    return click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
                        help="trust this certificate authority (PEM) for https servers: the farm's own CA or "
                             "its proxy's self-signed tls.crt (default: $REQUESTS_CA_BUNDLE, then the "
                             "usual authorities)")(plain_http_option(function))


def farm_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --server URL (repeatable) and --farm FILE options: the servers a command runs on."""
    function = click.option("--farm", "farm_file", type=click.Path(exists=True, dir_okay=False),
                            help="a farm file (TOML)")(function)
    return click.option("--server", "servers", multiple=True, metavar="URL",
                        help="a ComfyUI server; repeat for a farm (default $COMFY_URL or http://127.0.0.1:8188; "
                             "token from $COMFY_TOKEN)")(function)


def farm_servers(servers: Sequence[str], farm_file: str | None, *, ca_cert: Path | None = None,
                 allow_plain_http: bool = False) -> list[ServerConfig]:
    """The servers --farm and --server name, $COMFY_URL without either; URLs carry $COMFY_TOKEN.

    `ca_cert` (--ca-cert) serves every URL and the farm file's servers that name none.
    """
    from comfy_orchestrator.servers import load_farm, servers_from_urls

    config = settings()
    configs = list(load_farm(farm_file, ca_cert=ca_cert)) if farm_file else []
    configs += servers_from_urls(list(servers) or ([] if farm_file else [config.url()]), token=config.token(),
                                 ca_cert=ca_cert, allow_plain_http=allow_plain_http)
    return configs


def server_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The --server URL option of the commands that talk to one server: default $COMFY_URL, then the local one."""
    return click.option("--server", "server", metavar="URL", default=None,
                        help="the ComfyUI server (default: $COMFY_URL, then http://127.0.0.1:8188); "
                             "token from $COMFY_TOKEN")(function)


def connect_client(server: str | None, ca_cert: Path | None = None, allow_plain_http: bool = False) -> Client:
    """A client of --server, else $COMFY_URL, with $COMFY_TOKEN, trusting --ca-cert."""
    from comfy_orchestrator.client import Client

    config = settings()
    return Client(server or config.url(), token=config.token(), ca_cert=ca_cert,
                  allow_plain_http=allow_plain_http)
