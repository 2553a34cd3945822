"""A keep-alive HTTP/1.1 connection pool for one upstream origin.

Why its own pool: DESIGN.md measured httpx's pool getting slower as concurrency grows; this
one is a LIFO stack of idle connections, a FIFO semaphore capping connections in use, and
nothing else on the hot path.
"""

from __future__ import annotations

import ssl
from collections import deque
from dataclasses import dataclass
from typing import final
from urllib.parse import urlsplit

import trio

from ...core.clock import now as clock
from .http1 import (
    DEFAULT_MAX_HEAD,
    ConnectError,
    Headers,
    HTTP1Connection,
    HTTP1Exchange,
    UpstreamError,
)


@dataclass(frozen=True, slots=True)
class Origin:
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


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = 100
    max_idle: int = 100
    idle_timeout: float = 90.0
    connect_timeout: float = 10.0
    #: Largest response head accepted (HTTP/1.1 bytes; HTTP/2 decoded header list).
    max_response_header_size: int = DEFAULT_MAX_HEAD


@dataclass(frozen=True, slots=True)
class PoolStats:
    in_use: int
    idle: int
    waiting: int
    opened_total: int


def make_ssl_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context()  # the system's trust store ...
    if ca_file is not None:
        ctx.load_verify_locations(cafile=ca_file)  # ... plus the backend's own CA bundle
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def open_transport(
    origin: Origin, ssl_context: ssl.SSLContext | None, connect_timeout: float
) -> tuple[trio.abc.Stream, trio.SocketStream, str | None]:
    """TCP (and TLS, when given a context) to ``origin``: (stream, raw TCP stream, the ALPN
    protocol). Every failure — refused, unreachable, TLS, timeout — is a ConnectError, mapped
    here for every pool."""
    try:
        with trio.fail_after(connect_timeout):
            raw = await trio.open_tcp_stream(origin.host, origin.port)
            if ssl_context is None:
                return raw, raw, None
            tls = trio.SSLStream(
                raw, ssl_context, server_hostname=origin.host, https_compatible=True
            )
            try:
                await tls.do_handshake()
            except BaseException:
                raw.socket.close()
                raise
            return tls, raw, tls.selected_alpn_protocol()
    except trio.TooSlowError:
        raise ConnectError(
            f"connect to {origin.host}:{origin.port} timed out", sent_nothing=True
        ) from None
    except (OSError, trio.BrokenResourceError) as exc:
        reason = _connect_failure_reason(exc)
        raise ConnectError(
            f"cannot connect to {origin.host}:{origin.port}: {reason}", sent_nothing=True
        ) from exc


def _connect_failure_reason(exc: BaseException) -> str:
    """The root cause, e.g. "Connection refused", not trio's "all attempts ... failed"."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return f"TLS handshake failed: {exc.__cause__}"
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError):
        exc = cause
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@final
class HTTP1Pool:
    """Connections to one origin. ``start`` sends a request and returns once the head is in."""

    def __init__(
        self, origin: Origin, limits: PoolLimits, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.origin = origin
        self.limits = limits
        self._ssl_context = ssl_context
        if origin.scheme == "https" and ssl_context is None:
            self._ssl_context = make_ssl_context()
        self._target_prefix = origin.base_path.encode()
        self._host_line = b" HTTP/1.1\r\nhost: " + origin.host_header + b"\r\n"
        self._idle: deque[HTTP1Connection] = deque()
        self._slots = trio.Semaphore(limits.max_connections)
        self._in_use = 0
        self._opened = 0
        self._closed = False

    @property
    def stats(self) -> PoolStats:
        waiting = self._slots.statistics().tasks_waiting
        return PoolStats(self._in_use, len(self._idle), waiting, self._opened)

    async def _connect(self) -> HTTP1Connection:
        stream, raw, _ = await open_transport(
            self.origin, self._ssl_context, self.limits.connect_timeout
        )
        self._opened += 1
        return HTTP1Connection(stream, raw, self.limits.max_response_header_size)

    async def _checkout(self) -> HTTP1Connection:
        idle = self._idle
        now = clock()
        while idle:
            conn = idle.pop()
            if now - conn.last_used < self.limits.idle_timeout:
                return conn
            conn.close()
        return await self._connect()

    async def prewarm(self, count: int) -> int:
        """Open up to ``count`` idle connections now, so first requests skip the connect."""
        opened = 0
        for _ in range(min(count, self.limits.max_idle) - len(self._idle)):
            conn = await self._connect()
            conn.last_used = clock()
            self._idle.appendleft(conn)
            opened += 1
        return opened

    def _encode(self, method: bytes, target: bytes, headers: Headers, body: bytes) -> bytes:
        """Head and body as one buffer, for one ``send_all``."""
        parts = [method, b" ", self._target_prefix, target, self._host_line]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if body or method in (b"POST", b"PUT", b"PATCH"):
            parts.append(b"content-length: %d\r\n\r\n" % len(body))
        else:
            parts.append(b"\r\n")
        parts.append(body)
        return b"".join(parts)

    async def start(
        self, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> HTTP1Exchange:
        """Send the request; return when the response head has arrived.

        A reused connection that turns out closed by the peer before answering anything is
        retried once on a fresh connection — the request cannot have been processed.
        """
        if self._closed:
            raise ConnectError("backend is shut down", sent_nothing=True)
        request = self._encode(method, target, headers, body)
        try:
            self._slots.acquire_nowait()  # the common case, without a scheduler round trip
        except trio.WouldBlock:
            await self._slots.acquire()  # FIFO among waiters
        self._in_use += 1
        conn: HTTP1Connection | None = None
        try:
            for attempt in (0, 1):
                conn = await self._checkout() if attempt == 0 else await self._connect()
                conn.reset_for_request()
                try:
                    await conn.io.send_all(request)
                    status, resp_headers = await conn.receive_head()
                except (UpstreamError, trio.BrokenResourceError, OSError) as exc:
                    conn.close()
                    stale = conn.reused and not conn.received_any
                    conn = None
                    if stale and attempt == 0:
                        continue
                    if isinstance(exc, UpstreamError):
                        raise
                    raise UpstreamError(f"upstream connection failed: {exc}") from exc
                return HTTP1Exchange(self, conn, status, resp_headers)
            raise AssertionError("unreachable")
        except BaseException:
            if conn is not None:
                conn.close()
            self._in_use -= 1
            self._slots.release()
            raise

    def release(self, conn: HTTP1Connection) -> None:
        """Return a connection: kept if its response was read whole and keep-alive holds."""
        self._in_use -= 1
        self._slots.release()
        if conn.keep_alive and not self._closed and len(self._idle) < self.limits.max_idle:
            conn.reused = True
            conn.last_used = clock()
            self._idle.append(conn)
        else:
            conn.close()

    def reap_idle(self) -> int:
        """Close connections idle longer than ``idle_timeout`` (oldest sit at the left)."""
        idle = self._idle
        deadline = clock() - self.limits.idle_timeout
        closed = 0
        while idle and idle[0].last_used <= deadline:
            idle.popleft().close()
            closed += 1
        return closed

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
