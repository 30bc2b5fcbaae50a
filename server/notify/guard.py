"""What a webhook may be sent to: the URL's shape (checked when it is given)
and, at send time, the addresses its host resolves to.

By default a webhook never reaches the operator's own network: loopback,
private, link-local (cloud metadata at 169.254.169.254 among them), shared,
multicast and reserved addresses are refused. The host is resolved once,
every address is checked, and the request connects to the checked address
(the Host header and TLS server name keep the URL's host), so a DNS answer
that changes between the check and the connection cannot swap it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

MAX_URL = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(Exception):
    """The URL's host is an address webhooks may not reach."""


def parse_url(url: str) -> SplitResult:
    """The parts of a usable webhook URL; ValueError saying what is wrong otherwise."""
    if len(url) > MAX_URL:
        raise ValueError(f"at most {MAX_URL} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValueError("no spaces or control characters")
    parts = urlsplit(url)  # raises ValueError for a malformed host such as "[::1"
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    _ = parts.port  # raises ValueError for a port out of range or not a number
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password")
    return parts


def url_problem(url: str) -> str:
    """Why `url` cannot be a webhook URL ("" when it can)."""
    try:
        parse_url(url)
    except ValueError as exc:
        return str(exc) or "not a valid URL"
    return ""


@dataclass(frozen=True)
class Target:
    """Where to connect for a webhook URL, and the names the server expects."""

    url: str  # what to connect to: the URL with its host replaced by the checked address
    host_header: str
    server_name: str  # for TLS: the certificate must match the URL's host


def resolve(url: str, allow_private: bool) -> Target:
    """The address to send `url` to. ValueError for an unusable URL, Refused
    for a forbidden address, OSError when the name does not resolve (then a
    later attempt may succeed)."""
    parts = parse_url(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    if allow_private:
        return Target(url, parts.netloc, host)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        raise OSError(f"{host} has no address")
    for address in addresses:
        reason = forbidden(address)
        if reason:
            raise Refused(
                f"{host} resolves to {address}, a {reason} address "
                "(GENJOBS_WEBHOOK_ALLOW_PRIVATE=true allows it)"
            )
    address = addresses[0]
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(pinned, parts.netloc, host)


def forbidden(address: str) -> str:
    """What kind of non-public address `address` is ("" for a public one)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "non-public"  # shared (100.64/10), documentation and the like
    return ""
