"""A keep-alive HTTP/1.1 connection pool for one upstream origin.

Why its own pool: httpx's pool measured slower the higher the concurrency (docs/design.md);
this one is a LIFO stack of idle connections, a FIFO semaphore capping connections in use, and
nothing else on the hot path.

``max_idle`` is enforced by the idle sweep (:meth:`HTTP1Pool.reap_idle`), never at release:
closing every connection past the cap when a wave of answers completes only for the next wave
to open them again measured 21 % of the router's CPU at 1,000 concurrent slow requests, filled
the port range with TIME_WAIT sockets and ended in failed connects. A connection past the cap
is closed once it has stayed idle ``trim_after`` seconds, so a pool sized by the last minute's
peak stays while that peak keeps coming back.
"""

from __future__ import annotations

import ssl
from collections import deque
from typing import Final, final

import trio

from ...core.clock import now as clock
from ...core.http import Headers
from .connect import make_ssl_context, open_transport
from .exchange import (
    ConnectError,
    Origin,
    PoolLimits,
    PoolStats,
    RequestBody,
    UpstreamError,
    read_body,
)
from .http1 import HTTP1Connection

#: Methods whose request says ``content-length: 0`` when it has no body.
_BODY_METHODS: Final = frozenset((b"POST", b"PUT", b"PATCH"))


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
        #: Connections in use are capped at ``max_connections``; past it, requests wait
        #: here in arrival order and each release hands its slot to the first of them.
        #: (A counter and a ParkingLot: trio's Semaphore costs a KI-protected call on
        #: both sides of every request.)
        self._max_in_use = limits.max_connections
        self._queue = trio.lowlevel.ParkingLot()
        self._queued = 0  # tasks that parked in ``_queue`` and have not returned yet
        self._in_use = 0
        self._opened = 0
        self._dropped = 0  # connections closed, for whatever reason
        self._closed = False

    @property
    def stats(self) -> PoolStats:
        waiting = self._queue.statistics().tasks_waiting
        return PoolStats(self._in_use, len(self._idle), waiting, self._opened, self._dropped)

    def _drop(self, conn: HTTP1Connection) -> None:
        """Close ``conn`` and count it (``closed_total``: the churn the metrics show)."""
        conn.close()
        self._dropped += 1

    async def _connect(self) -> HTTP1Connection:
        limits = self.limits
        stream, raw, _ = await open_transport(
            self.origin, self._ssl_context, limits.connect_timeout, limits.tcp_keepalive
        )
        self._opened += 1
        return HTTP1Connection(stream, raw, self.limits.max_response_header_size)

    def _reuse(self) -> HTTP1Connection | None:
        """The most recently used idle connection still within ``idle_timeout`` (the
        others on the way are closed); None when a new one must be opened."""
        idle = self._idle
        if not idle:
            return None
        now = clock()
        timeout = self.limits.idle_timeout
        while idle:
            conn = idle.pop()
            if now - conn.last_used < timeout:
                return conn
            self._drop(conn)
        return None

    async def prewarm(self, count: int) -> int:
        """Open up to ``count`` idle connections now, so first requests skip the connect."""
        opened = 0
        for _ in range(min(count, self.limits.max_idle) - len(self._idle)):
            conn = await self._connect()
            conn.last_used = clock()
            self._idle.appendleft(conn)
            opened += 1
        return opened

    def _encode(self, method: bytes, target: bytes, headers: Headers, body: bytes,
                framing: bytes | None = None) -> bytes:
        """Head and body as one buffer, for one ``send_all`` (``framing``: the head's last
        line when it is not the body's content-length)."""
        if framing is None:
            framing = (b"content-length: %d\r\n\r\n" % len(body)
                       if body or method in _BODY_METHODS else b"\r\n")
        # One join of a tuple (a part the request does not have is empty); every
        # ``name: value`` line at C speed: one join, not four parts per field.
        return b"".join((method, b" ", self._target_prefix, target, self._host_line,
                         b"\r\n".join(map(b": ".join, headers)) + b"\r\n" if headers else b"",
                         framing, body))

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
        if self._in_use < self._max_in_use:  # the common case: no scheduler round trip
            self._in_use += 1
        else:
            await self._wait_for_slot()
        conn: HTTP1Connection | None = None
        try:
            for attempt in range(2):  # not a tuple: its iterator would outlive the wait
                conn = (self._reuse() if attempt == 0 else None) or await self._connect()
                conn.reset_for_request()
                try:
                    await conn.io.send_all(request)
                    status, resp_headers = await conn.receive_head()
                except (UpstreamError, trio.BrokenResourceError, OSError) as exc:
                    self._drop(conn)
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
                self._drop(conn)
            self._free_slot()
            raise

    async def start_upload(
        self, method: bytes, target: bytes, headers: Headers, body: RequestBody
    ) -> HTTP1Exchange:
        """:meth:`start` with a body sent as ``body`` produces it (chunked when its length
        is unknown). A stale reused connection is retried as in :meth:`start`, if the body
        can start over. An upstream that answers before it has read the whole body (a 413,
        say) and closes is answered with that response."""
        if self._closed:
            raise ConnectError("backend is shut down", sent_nothing=True)
        length = body.length
        chunked = length is None
        framing = (b"transfer-encoding: chunked\r\n\r\n" if length is None
                   else b"content-length: %d\r\n\r\n" % length)
        head = self._encode(method, target, headers, b"", framing)
        if self._in_use < self._max_in_use:
            self._in_use += 1
        else:
            await self._wait_for_slot()
        conn: HTTP1Connection | None = None
        try:
            for attempt in range(2):  # not a tuple: its iterator would outlive the wait
                conn = (self._reuse() if attempt == 0 else None) or await self._connect()
                conn.reset_for_request()
                try:
                    try:
                        await conn.io.send_all(head)
                        await _send_body(conn, body, chunked)
                    except (trio.BrokenResourceError, OSError) as exc:
                        if not (conn.reused and attempt == 0):
                            # It may have answered before it stopped reading (a 413, say):
                            # that answer is the outcome. (The connection is not kept: its
                            # socket is dead.)
                            try:
                                status, resp_headers = await conn.receive_head()
                            except UpstreamError:
                                raise UpstreamError("upstream connection failed while "
                                                    f"sending the body: {exc}") from exc
                            return HTTP1Exchange(self, conn, status, resp_headers)
                        raise UpstreamError(f"upstream connection failed: {exc}") from exc
                    status, resp_headers = await conn.receive_head()
                except UpstreamError:
                    self._drop(conn)
                    stale = conn.reused and not conn.received_any
                    conn = None
                    if stale and attempt == 0 and body.rewind():
                        continue
                    raise
                return HTTP1Exchange(self, conn, status, resp_headers)
            raise AssertionError("unreachable")
        except BaseException:
            if conn is not None:
                self._drop(conn)
            self._free_slot()
            raise

    def adopt(self, stream: trio.abc.Stream, raw: trio.SocketStream) -> None:
        """Take a connection opened elsewhere (the ALPN probe of ``http2: auto`` that the
        server answered with HTTP/1.1) as the first idle one."""
        conn = HTTP1Connection(stream, raw, self.limits.max_response_header_size)
        conn.last_used = clock()
        self._idle.append(conn)
        self._opened += 1

    async def _wait_for_slot(self) -> None:
        """Every connection is in use: wait for a release to hand its slot over (FIFO)."""
        self._queued += 1
        try:
            await self._queue.park()
        finally:
            self._queued -= 1

    def _free_slot(self) -> None:
        """A request is done with its slot: to the first waiter (``_in_use`` unchanged),
        or back to the count. ``_queued`` may still count a waiter just cancelled (out of
        the lot already), so the lot itself says whether the slot was taken."""
        if self._queued and self._queue.unpark():
            return
        self._in_use -= 1

    def release(self, conn: HTTP1Connection) -> None:
        """Return a connection: kept if its response was read whole and keep-alive holds,
        whatever the number already idle (``reap_idle`` trims the ones past ``max_idle``)."""
        self._free_slot()
        if conn.can_reuse and not self._closed:  # (set only with ``complete``)
            conn.reused = True
            conn.last_used = clock()
            self._idle.append(conn)
        else:
            self._drop(conn)

    def reap_idle(self) -> int:
        """Close connections idle longer than ``idle_timeout``, and those past ``max_idle``
        idle longer than ``trim_after`` (least recently used first: they sit at the left)."""
        idle = self._idle
        limits = self.limits
        now = clock()
        closed = 0
        deadline = now - limits.idle_timeout
        while idle and idle[0].last_used <= deadline:
            self._drop(idle.popleft())
            closed += 1
        trim_deadline = now - min(limits.trim_after, limits.idle_timeout)
        while len(idle) > limits.max_idle and idle[0].last_used <= trim_deadline:
            self._drop(idle.popleft())
            closed += 1
        return closed

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())


async def _send_body(conn: HTTP1Connection, body: RequestBody, chunked: bool) -> None:
    """``body`` onto ``conn`` as it comes (chunk-framed when ``chunked``)."""
    send = conn.io.send_all
    while data := await body.receive_some():
        await send(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
    if chunked:
        await send(b"0\r\n\r\n")


@final
class HTTP1Exchange:
    """A response being read from an :class:`HTTP1Connection` checked out of a pool."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, pool: HTTP1Pool, conn: HTTP1Connection, status: int, headers: Headers):
        self._pool = pool
        self._conn: HTTP1Connection | None = conn
        self.status = status
        self.headers = headers

    async def receive_some(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        return await conn.receive_some()

    async def read_all(self, limit: int) -> bytes:
        conn = self._conn
        if conn is not None and conn.complete:
            body = conn.take_body()  # the usual small answer: no receive loop
            if len(body) > limit:
                raise UpstreamError(f"upstream response larger than {limit} bytes")
            return body
        return await read_body(self.receive_some, limit)

    def unread(self, data: bytes) -> None:
        if self._conn is not None:
            self._conn.unread(data)

    def pump_connection(self) -> HTTP1Connection | None:
        """The connection this body is read from, when a stream pump can move it: a plain
        socket, the body not complete yet. The pump reads and parses through it, so the
        connection's state (parser, body bytes already read) stays the exchange's."""
        conn = self._conn
        if conn is None or conn.complete or conn.pump_socket() is None:
            return None
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)
