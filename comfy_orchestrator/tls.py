"""Transport security: whom a client trusts over TLS, why a certificate failed, and credentials in clear.

One trust decision serves both of a client's channels: requests verifies HTTPS against
the `Trust` bundle and the websocket's `ssl.SSLContext` loads the same file, so HTTP and
WSS agree. The bundle is the farm's own authority when one is given (`ca_cert`), else
$REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE, else the authorities requests ships with (certifi's).
Verification is never off. A `ca_cert` is loaded at once, so a bad one fails before any
work; the environment's bundle (checked to exist) and the default one only at the first
https or wss connection: loading one costs ~40 ms of CPU that a client of a plain-http
server never needs, and containers often name a bundle in the environment for every process.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from comfy_orchestrator.errors import CertificateRejected, ParameterError

__all__ = ["CA_BUNDLE_VARIABLES", "Trust", "certificate_rejection", "in_clear", "peer_fingerprint"]

log = logging.getLogger(__name__)

# Read in this order, as requests reads them.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

# OpenSSL's X509_V_ERR_* codes, grouped by what the user has to do about them.
_UNKNOWN_AUTHORITY = frozenset({2, 18, 19, 20, 21})
_EXPIRED, _NOT_YET_VALID = 10, 9
_WRONG_HOST = frozenset({62, 64})  # host name, IP address mismatch


@dataclass(frozen=True)
class Trust:
    """The authorities a client verifies servers with: a PEM file or a folder of them."""

    bundle: str
    source: str  # where the bundle came from, for messages: "ca_cert", "$REQUESTS_CA_BUNDLE", "default"
    _contexts: list[ssl.SSLContext] = field(default_factory=list, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def load(cls, ca_cert: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Trust:
        """Trust `ca_cert` if given, else the bundle the environment names, else requests' own."""
        environ = os.environ if environ is None else environ
        if ca_cert is not None:
            bundle, source = str(ca_cert), "ca_cert"
        else:
            named = next(((name, environ[name]) for name in CA_BUNDLE_VARIABLES if environ.get(name)), None)
            bundle, source = (named[1], f"${named[0]}") if named else (_default_bundle(), "default")
        if source == "ca_cert":
            return cls(bundle=bundle, source=source, _contexts=[_context(bundle, source)])  # checked now
        _check_exists(bundle, source)
        return cls(bundle=bundle, source=source)

    @property
    def context(self) -> ssl.SSLContext:
        """The one context both channels verify with, made at its first use."""
        with self._lock:
            if not self._contexts:
                self._contexts.append(_context(self.bundle, self.source))
            return self._contexts[0]

    @property
    def verify(self) -> str:
        """The value for requests' `verify=`: the same bundle, so HTTP and the websocket agree."""
        return self.bundle


def _default_bundle() -> str:
    """The authorities requests ships with (certifi's bundle, as requests' DEFAULT_CA_BUNDLE_PATH)."""
    import certifi  # requests' own dependency; imported here, so a plain-http client never loads it

    return str(certifi.where())


def _check_exists(bundle: str, source: str) -> Path:
    """The bundle's path; ParameterError naming where it came from if there is nothing there."""
    path = Path(bundle)
    if not path.exists():
        raise ParameterError(f"{source}: no file or folder {bundle!r} (a PEM file of the farm's "
                             "certificate authority)", parameter=source)
    return path


def _context(bundle: str, source: str) -> ssl.SSLContext:
    """A client context that checks the chain against `bundle` and the host name, TLS 1.2 or newer."""
    path = _check_exists(bundle, source)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if path.is_dir():
            context.load_verify_locations(capath=bundle)
        else:
            context.load_verify_locations(cafile=bundle)
    except (ssl.SSLError, ValueError) as exc:
        raise ParameterError(f"{source}: {bundle!r} holds no PEM certificate ({exc.__class__.__name__})",
                             parameter=source) from exc
    except OSError as exc:
        raise ParameterError(f"{source}: cannot read {bundle!r}: {exc.strerror or exc}",
                             parameter=source) from exc
    return context


def _verification_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure inside a library's error, however deeply it is wrapped."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return item
        pending.extend((item.__cause__, item.__context__, getattr(item, "reason", None), *item.args))
    return None


def certificate_rejection(error: BaseException, *, server: str, trust: Trust,
                          timeout_s: float) -> CertificateRejected | None:
    """Our error for a failed certificate check inside `error`, naming what did not match; None if none.

    For an unknown authority it names the fingerprint of the certificate the server presents
    (read within `timeout_s`), to compare with the one the farm's proxy printed.
    """
    failure = _verification_error(error)
    if failure is None:
        return None
    code = failure.verify_code
    detail = str(failure.verify_message or failure.reason or failure).rstrip(".")
    if code in _UNKNOWN_AUTHORITY:
        reason = "unknown authority"
        where = {"default": "the default bundle", "ca_cert": trust.bundle}.get(
            trust.source, f"{trust.bundle} (from {trust.source})")
        fingerprint = peer_fingerprint(server, timeout_s=timeout_s)
        presented = f"; the server presents SHA-256 {fingerprint}" if fingerprint else ""
        hint = (f"no authority in {where} signed it{presented}; pass the farm's CA, or the proxy's "
                "self-signed tls.crt, with --ca-cert FILE (ca_cert in a farm file)")
    elif code in _WRONG_HOST:
        reason = "wrong host name"
        hint = "connect by a name the certificate lists, or give the server a certificate for this name"
    elif code == _EXPIRED:
        reason = "expired"
        hint = "the server needs a new certificate"
    elif code == _NOT_YET_VALID:
        reason = "not yet valid"
        hint = "check the clocks of this machine and the server"
    else:
        reason = "not trusted"
        hint = "the server's certificate does not verify"
    return CertificateRejected(reason, server=server, detail=detail, hint=hint)


def in_clear(url: str) -> bool:
    """Whether requests to `url` cross a network unencrypted: plain http to a host that is not loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        return False
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def peer_fingerprint(url: str, *, timeout_s: float) -> str | None:
    """The SHA-256 fingerprint of the certificate an https server presents, read without trusting it.

    Only to put in an error message, where the user compares it with the one the proxy printed.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("https", "wss") or not parts.hostname:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is sent on this connection; it only reads the certificate
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=parts.hostname) as wrapped:
                der = wrapped.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        log.debug("%s: could not read the certificate's fingerprint: %s", url, exc)
        return None
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest()) if der else None
