"""What the server checks before any route runs: the Host header, the body's size, the time to send it.

One plain ASGI middleware, ``RequestGuard``, in front of the whole app (so before routing, auth and
JSON parsing):

- **Host.** A server without an API key answers only requests addressed to an IP address, a localhost
  name, this machine's name or a name in ``allowed_hosts``. A page on another site can point its own
  domain at 127.0.0.1 (DNS rebinding) and then read a keyless local API as same-origin; the Host header
  still carries that domain, so this check is what stops it. An IP literal cannot be rebound.
- **Size.** A Content-Length over ``max_bytes`` is refused (413) without reading a byte of the body; a
  chunked body is counted as it arrives and refused as soon as it passes the limit, so memory stays
  bounded whatever the client sends.
- **Time.** The whole body must arrive within ``body_timeout`` seconds (else 408). uvicorn's keep-alive
  timeout covers only idle connections between requests, not a client that sends less than its
  Content-Length, or drips it, and would otherwise hold its connection (and its buffers) forever.

The body read here is replayed to the app, which reads it as usual. Refusals become responses through
the ``render`` function given: the server's one mapping from exception to HTTP status and body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zephyr.errors import ZephyrError

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20  # far above any context's worth of text, far below harm
DEFAULT_BODY_TIMEOUT = 30.0
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class RequestTooLarge(ZephyrError):
    """The request body is over the server's size limit."""


class RequestTimedOut(ZephyrError):
    """The request body did not arrive in time."""


class HostNotAllowed(ZephyrError):
    """The Host header names a host this server does not answer for."""


def hostname(host_header: str) -> str:
    """The host part of a Host header, lower-cased: ``[::1]:8000`` -> ``::1``, ``Example.COM.:80``
    -> ``example.com``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    # No Host at all is an HTTP/1.0 client, never a browser (which always sends one).
    if not host_header or "*" in allowed:
        return True
    name = hostname(host_header)
    if name in allowed or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def local_hosts(extra: Iterable[str] = ()) -> frozenset[str]:
    """The names a keyless server answers to: localhost, this machine's name, and ``extra``."""
    return frozenset(hostname(h) for h in (*LOCAL_HOSTS, socket.gethostname(), *extra) if h)


class RequestGuard:
    """The Host, size and time checks above. ``allowed_hosts=None`` turns the Host check off (a server
    with an API key: the key, not the address, is what protects it)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        render: Callable[[BaseException], Response],
        max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        allowed_hosts: frozenset[str] | None = None,
    ):
        self.app, self.render = app, render
        self.max_bytes, self.body_timeout, self.allowed_hosts = max_bytes, body_timeout, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self._check_headers(dict(scope["headers"]))
            body = await self._read_body(receive)
        except (HostNotAllowed, RequestTooLarge, RequestTimedOut) as exc:
            log.info("Refused %s %s from %s: %s", scope["method"], scope["path"], _client(scope), exc)
            response = self.render(exc)
            # Whatever of the body is still unread must not be taken for the next request.
            response.headers["connection"] = "close"
            return await response(scope, receive, send)
        if body is None:
            log.info("Client %s left while sending its request", _client(scope))
            return
        try:
            await self.app(scope, _replay(body, receive), send)
        except ClientDisconnect:  # a client that hangs up is routine, not an error with a traceback
            log.info("Client %s disconnected during %s %s", _client(scope), scope["method"], scope["path"])

    def _check_headers(self, headers: dict[bytes, bytes]) -> None:
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None and not host_allowed(host, self.allowed_hosts):
            raise HostNotAllowed(
                f"Host {hostname(host)!r} is not served here: a server without an API key answers "
                "localhost and IP addresses only (start it with --allowed-hosts NAME, or an API key)"
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise RequestTooLarge(self._too_large(int(length)))

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body (None if the client hung up), within the size and time limits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise RequestTimedOut(
                    f"The request body did not arrive within {self.body_timeout:g} s "
                    f"({size} bytes came); send the whole body at once"
                ) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise RequestTooLarge(self._too_large(None))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int | None) -> str:
        got = f"over {self.max_bytes}" if size is None else str(size)  # None: a chunked body, cut short
        return (
            f"The request body is {got} bytes; this server takes at most {self.max_bytes} "
            "(zephyr serve --max-request-bytes)"
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the client's later events."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
