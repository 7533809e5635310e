"""Which ``Host`` a request may name, and whether it came straight from this machine.

Without an API key the server trusts the machine it runs on, nothing else. A web
page elsewhere could still reach a loopback server through the visitor's browser:
by DNS rebinding (its own name resolved to 127.0.0.1, so ``Origin`` and ``Host``
agree on the attacker's name) or by opening ``ws://127.0.0.1`` directly (the
``Origin`` then names the attacker's site). And a reverse proxy on the same
machine turns every Internet caller into a loopback one. So a key-less call needs
a loopback ``Host``, no ``Origin`` or a loopback one, no forwarding headers, and
a loopback peer (``direct_local_request``); ``TrustedHosts`` answers any other
``Host`` with 400 before a route runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
"""What reverse proxies add: a request carrying one did not come from this machine's user."""
CLOSE_POLICY_VIOLATION = 1008


def is_loopback_name(name: str | None) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (a bare host name, no port, no brackets)."""
    if not name:
        return False
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str | None) -> str | None:
    """The name in a ``Host`` header (``[::1]:8000`` → ``::1``), lower case."""
    if not host_header:
        return None
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return None


def origin_is_loopback(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and is_loopback_name(parts.hostname)


def forwarded(headers: Headers) -> bool:
    return any(name in headers for name in FORWARDING_HEADERS)


def direct_local_request(connection: HTTPConnection) -> bool:
    """Sent by a program on this machine to a loopback name, not through a proxy,
    not from a page of another site: what a key-less server serves."""
    headers = connection.headers
    if forwarded(headers):
        return False
    if not is_loopback_name(host_name(headers.get("host"))):
        return False
    origin = headers.get("origin")
    if origin is not None and not origin_is_loopback(origin):
        return False
    client = connection.client
    return client is None or is_loopback_name(client.host)


def host_allowed(name: str | None, allowed: Iterable[str]) -> bool:
    """``name`` matches an entry: exact, ``*.example.com`` (subdomains), or ``*``."""
    if name is None:
        return False
    for pattern in allowed:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class TrustedHosts:
    """ASGI middleware: a request naming a ``Host`` neither loopback nor in ``allowed``
    gets 400 (a WebSocket is closed before accept: 403). ``allowed`` None: any name."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        name = host_name(Headers(scope=scope).get("host"))
        if is_loopback_name(name) or host_allowed(name, self.allowed):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION, "reason": ""})
            return
        body = b"this server does not answer to that Host name"
        await send({
            "type": "http.response.start", "status": 400,
            "headers": [(b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})


def trusted_hosts(allowed_hosts: tuple[str, ...], *, has_key: bool) -> tuple[str, ...] | None:
    """The ``Host`` names to answer besides loopback ones: those configured; else none
    without an API key (DNS rebinding), any with one (None)."""
    if allowed_hosts or not has_key:
        return allowed_hosts
    return None
