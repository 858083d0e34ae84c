"""Which webhook URLs the server will call (SSRF protection).

https is required unless the server runs in dev mode. The host is resolved
and every address it resolves to must be public: private, loopback,
link-local, multicast, reserved and unspecified ranges are refused unless the
server allows private targets. Checked when a subscription is created or
updated over HTTP, and again by the worker before every request (the DNS
answer may have changed since, and psql callers skip the HTTP check).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import NamedTuple
from urllib.parse import urlsplit


class UrlPolicy(NamedTuple):
    dev_mode: bool
    allow_private: bool


def _is_blocked(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified)


async def url_problem(url: str, policy: UrlPolicy) -> str | None:
    """Why the URL may not be called, or None when it may."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "url is not a valid URL"
    if parts.scheme not in ("https", "http") or not host:
        return "url must be an http(s) URL with a host"
    if parts.scheme != "https" and not policy.dev_mode:
        return "url must use https (http is allowed only in dev mode)"
    if parts.username is not None or parts.password is not None:
        return "url must not carry credentials"
    if policy.allow_private:
        return None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return f"url host {host!r} does not resolve"
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or any(_is_blocked(a) for a in addresses):
        return f"url host {host!r} resolves to a private, loopback or link-local address"
    return None
