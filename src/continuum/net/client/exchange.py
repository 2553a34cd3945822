"""What every upstream pool speaks, whatever its protocol: an :class:`Exchange` (one
request/response: status, headers, ``receive_some``, ``close``), the errors a pool raises,
and the origin, limits and statistics a pool is built from and reports.

Nothing here mentions HTTP/1.1 or HTTP/2, so the BackendActor and the Proxy hold either
pool the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

import msgspec
import trio

from ...core.http import Headers

#: Upstream response heads larger than this (status line, headers, any 1xx heads before
#: them) fail the exchange; ``http_client.max_response_header_size`` sets it per backend.
DEFAULT_MAX_HEAD = 65536
#: A body read yields to the scheduler after this many reads that found data at once (the
#: fast path does not yield): 16 x 64 KiB, so a fast upstream cannot hold the event loop.
_YIELD_EVERY = 16


class UpstreamError(Exception):
    """The upstream exchange failed (connect, reset, protocol error, early close)."""

    def __init__(self, message: str, *, sent_nothing: bool = False) -> None:
        super().__init__(message)
        #: True when the failure certainly happened before the upstream acted on the request
        #: (so another attempt cannot duplicate work).
        self.sent_nothing = sent_nothing


class ConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, TLS handshake, connect timeout)."""


class Exchange(Protocol):
    """One request/response on some upstream connection, protocol-neutral."""

    status: int
    headers: Headers

    async def receive_some(self) -> bytes:
        """The next piece of the (de-framed) body; b"" once the body is complete."""
        ...

    async def read_all(self, limit: int) -> bytes: ...

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the body: the next ``receive_some`` returns it (a
        look-ahead at a stream's first bytes)."""
        ...

    def close(self) -> None:
        """Finish: a fully read keep-alive response returns the connection to the pool."""
        ...


class RequestBody(Protocol):
    """A request body sent as it is produced (an upload relayed from its client), so it
    is never held whole."""

    #: Its size when known (sent as ``content-length``); None: sent chunked (HTTP/1.1).
    length: int | None

    async def receive_some(self) -> bytes:
        """The next piece; b"" at the end."""
        ...

    def rewind(self) -> bool:
        """Start again from the first byte, for a request that must be sent again before
        the upstream read any of it; False when that is no longer possible."""
        ...


class Pool(Protocol):
    """Connections to one upstream origin, whatever the protocol (:class:`HTTP1Pool`,
    :class:`HTTP2Pool`): the calls a BackendActor makes."""

    @property
    def origin(self) -> Origin: ...

    @property
    def limits(self) -> PoolLimits: ...

    @property
    def stats(self) -> PoolStats: ...

    async def start(
        self, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> Exchange:
        """Send a request; return once the response head has arrived."""
        ...

    async def start_upload(
        self, method: bytes, target: bytes, headers: Headers, body: RequestBody
    ) -> Exchange:
        """:meth:`start` with a body sent as it is produced."""
        ...

    async def prewarm(self, count: int) -> int:
        """Open up to ``count`` connections now; how many were opened."""
        ...

    def reap_idle(self) -> int:
        """Close connections idle past ``limits.idle_timeout``; how many were closed."""
        ...

    def close(self) -> None:
        """Stop taking requests; idle connections close now, busy ones when done."""
        ...


async def read_body(receive: Callable[[], Awaitable[bytes]], limit: int) -> bytes:
    """The rest of a response body, from any Exchange's ``receive_some``, up to ``limit``."""
    parts: list[bytes] = []
    size = 0
    while True:
        data = await receive()
        if not data:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        size += len(data)
        if size > limit:
            raise UpstreamError(f"upstream response larger than {limit} bytes")
        parts.append(data)
        if len(parts) % _YIELD_EVERY == 0:
            await trio.lowlevel.checkpoint()


class Origin(msgspec.Struct, frozen=True):
    scheme: str
    host: str
    port: int
    base_path: str  # e.g. "" or "/openai" — prefixed to every request path

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")


class PoolLimits(msgspec.Struct, frozen=True):
    max_connections: int = 100
    #: Idle connections kept for good; more stay while they keep being used, and are
    #: closed by the idle sweep once idle ``trim_after`` seconds (no churn under a wave).
    max_idle: int = 100
    idle_timeout: float = 90.0
    connect_timeout: float = 10.0
    trim_after: float = 5.0
    #: TCP keepalive on upstream sockets: idle seconds before the first probe and between
    #: probes (``http_client.tcp_keepalive_interval``); 0 leaves keepalive off.
    tcp_keepalive: float = 30.0
    #: Largest response head accepted (HTTP/1.1 bytes; HTTP/2 decoded header list).
    max_response_header_size: int = DEFAULT_MAX_HEAD


class PoolStats(msgspec.Struct, frozen=True):
    in_use: int
    idle: int
    waiting: int
    opened_total: int
    closed_total: int = 0
