"""Who may reach the server: the ``Host`` allowlist (every route), the WebSocket ``Origin`` rule.

Both defend a server on loopback against web pages. A page on ``evil.example`` whose name the
attacker re-points at 127.0.0.1 (DNS rebinding) is, to the browser, same-origin with
``http://evil.example:8000``: it can read ``/health`` and open ``/ws/chat``. Its requests carry
``Host: evil.example:8000``, a name, so the server answers only requests whose ``Host`` is an IP
address (rebinding needs a name), ``localhost``, ``server.host`` or a name in
``server.allowed_hosts``. ``Origin`` is never compared with ``Host`` (a rebinding page makes them
agree): a browser may open a chat socket only from a loopback page or an origin listed in
``server.allowed_origins``.

Every HTTP response also carries the page's security headers (:class:`SecurityHeaders`): a model's
answer is rendered as Markdown, so a prompt-injected answer may hold an image whose URL carries
the conversation to another site; the Content-Security-Policy lets the page load nothing but the
server's own files (and ``data:`` images), and no other site may frame it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.cli import is_loopback

__all__ = ["SECURITY_HEADERS", "HostAllowlist", "HostGuard", "SecurityHeaders", "origin_allowed"]


class HostAllowlist:
    """The ``Host`` header values the server answers (see the module docstring).

    ``names`` are host names without port; ``"*"`` allows any host, ``"*.example.com"`` any
    subdomain of ``example.com``.
    """

    def __init__(self, names: Iterable[str]) -> None:
        normalized = {_normalize(name) for name in names if name}
        self._any = "*" in normalized
        self._names = frozenset({"localhost", *normalized} - {"*"})
        self._suffixes = tuple(name[1:] for name in self._names if name.startswith("*."))

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this ``Host`` header (port included or not) is served."""
        if self._any:
            return True
        if not host_header:
            return False
        host = _host_of(host_header)
        if host is None:
            return False
        if _is_ip(host):
            return True
        return host in self._names or host.endswith(self._suffixes)

    def __repr__(self) -> str:
        shown = "*" if self._any else ", ".join(sorted(self._names))
        return f"<HostAllowlist [IP addresses, {shown}]>"


class HostGuard:
    """ASGI middleware: a request whose ``Host`` is not allowed gets 400 (a socket, 403)."""

    def __init__(self, app: ASGIApp, allowlist: HostAllowlist) -> None:
        self.app = app
        self.allowlist = allowlist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.allowlist.allows(Headers(scope=scope).get("host")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Closing before the handshake is answered is an HTTP 403 for the client.
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        response = PlainTextResponse("host not allowed\n", status_code=400)
        await response(scope, receive, send)


SECURITY_HEADERS: dict[str, str] = {
    # Script and style from the server's files only (the page has none inline), a socket to the
    # server itself, images from it or data: URLs: nothing a rendered answer holds can send the
    # page's content elsewhere.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP level 2
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""The headers :class:`SecurityHeaders` adds to every HTTP response."""


class SecurityHeaders:
    """ASGI middleware: every HTTP response gets :data:`SECURITY_HEADERS`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *self._headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """Whether a WebSocket handshake with this ``Origin`` may proceed.

    No ``Origin``: not a browser, the token decides. Otherwise the origin must be listed in
    ``allowed`` (``"*"`` allows all) or be a loopback page.
    """
    if origin is None:
        return True
    allowed = {entry.rstrip("/").lower() for entry in allowed}
    normalized = origin.rstrip("/").lower()
    if "*" in allowed or normalized in allowed:
        return True
    try:
        hostname = urlsplit(normalized).hostname
    except ValueError:
        return False
    return hostname is not None and is_loopback(hostname)


def _normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _host_of(header: str) -> str | None:
    """The host of a ``Host`` header, lower case, without port or IPv6 brackets."""
    try:
        host = urlsplit(f"//{header.strip()}").hostname
    except ValueError:
        return None
    return _normalize(host) if host else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
