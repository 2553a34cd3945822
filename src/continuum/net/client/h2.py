"""HTTP/2 upstreams: a multiplexing pool with the same interface as :class:`HTTP1Pool`.

``HTTP2Pool.start(method, target, headers, body)`` returns an :class:`HTTP2Exchange` (the
protocol-neutral :class:`~.exchange.Exchange`), so a BackendActor holds either pool.

Lifecycle — unlike HTTP1Pool, each HTTP/2 connection needs background tasks (a frame reader,
a writer, a PING keep-alive), and they live in the pool's own nursery::

    pool = HTTP2Pool(origin, limits, make_h2_ssl_context(ca_file, verify))
    await nursery.start(pool.run)     # returns once the pool accepts ``start`` calls
    ...
    pool.close()                      # run() returns once the last connection has closed

Cancelling ``run`` closes every connection at once (in-flight exchanges fail with
UpstreamError). :func:`open_pool` applies a backend's ``http2: auto|always|never`` setting and
returns either pool (already running when it is an HTTP2Pool).

Design:
- One connection is used until the peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached; then
  another is opened (one connect at a time) up to ``limits.max_connections``; past that,
  ``start`` waits FIFO for a stream slot.
- All bytes go out through one writer task per connection: request tasks only feed h2 (sync)
  and queue its output, so a cancelled request can never leave half a frame on the wire.
  Request bodies respect the stream and connection windows and the peer's frame size.
- The reader task never blocks on a slow consumer: a stream buffers at most its receive window
  (DATA is acknowledged when ``receive_some`` hands it out, which is what reopens the window).
- GOAWAY: streams the server promised (id <= last_stream_id) run to completion, later ones fail
  with ``UpstreamError(sent_nothing=True)`` (the router retries them elsewhere); no new stream
  goes to that connection, which closes once its last stream is done.

The pool is this module; one connection and its streams are :mod:`.h2_connection`; the h2
library's tuning (GOAWAY handling, bounded header blocks) is :mod:`.h2_protocol`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from typing import Literal, final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from ...core.http import Headers
from .connect import make_h2_ssl_context, make_ssl_context, open_transport
from .exchange import (
    ConnectError,
    Origin,
    PoolLimits,
    PoolStats,
    RequestBody,
    UpstreamError,
)
from .h2_connection import HIGH_WATER, RECEIVE_SIZE, H2Conn, H2Stream, HTTP2Exchange
from .h2_protocol import BoundedHeaderBlocks, FinishStreamsAfterGoaway
from .http1_pool import HTTP1Pool

#: After a failed extra connection (others still alive), wait this long before another try.
_RECONNECT_BACKOFF = 1.0

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"te",
        b"content-length",
        b"http2-settings",
    }
)
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})

Mode = Literal["auto", "always", "never"]


@final
class _Waiter:
    __slots__ = ("conn", "error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.conn: H2Conn | None = None
        self.error: ConnectError | None = None


@final
class HTTP2Pool:
    """HTTP/2 connections to one origin, multiplexing requests as streams.

    Same calls as :class:`HTTP1Pool` (``start``, ``prewarm``, ``reap_idle``, ``close``,
    ``stats``, ``origin``, ``limits``), plus ``run``, which must be running (started with
    ``await nursery.start(pool.run)``) for connections to work. ``http://`` origins use
    prior-knowledge h2c; ``https://`` ones require the server to pick ``h2`` by ALPN.
    """

    def __init__(
        self,
        origin: Origin,
        limits: PoolLimits,
        ssl_context: ssl.SSLContext | None = None,
        *,
        ping_interval: float = 30.0,
        ping_timeout: float = 10.0,
        max_streams_per_connection: int = 1000,
        stream_window: int = 1 << 20,
        connection_window: int = 16 << 20,
    ) -> None:
        self.origin = origin
        self.limits = limits
        self._ssl_context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            self._ssl_context = ssl_context if ssl_context is not None else make_h2_ssl_context()
        #: Seconds without anything received before a connection is PINGed (0: never).
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        #: Our own cap on streams per connection (the peer's SETTINGS may lower it).
        self.max_streams = max_streams_per_connection
        self._stream_window = stream_window
        self._connection_window = max(connection_window, 65535)
        self.authority = origin.host_header
        self._scheme = origin.scheme.encode()
        self._path_prefix = origin.base_path.encode()
        self._conns: list[H2Conn] = []
        self._waiters: deque[_Waiter] = deque()
        self._connecting = 0
        self._retry_connect_at = 0.0
        self._opened = 0
        self._ended = 0  # connections closed, for whatever reason
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the connections' tasks; returns after ``close()`` once all have closed."""
        if self._nursery is not None:
            raise RuntimeError("HTTP2Pool.run() is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                self._check_done()
                await self._done.wait()
        finally:
            self._closed = True
            self._nursery = None
            self._fail_waiters(ConnectError("backend is shut down", sent_nothing=True))

    def close(self) -> None:
        """Stop taking requests; idle connections close now, busy ones after their streams."""
        if self._closed:
            return
        self._closed = True
        self._fail_waiters(ConnectError("backend is shut down", sent_nothing=True))
        for conn in list(self._conns):
            conn.draining = True
            if conn.active == 0:
                conn.shutdown()
        self._check_done()

    def _check_done(self) -> None:
        if self._closed and not self._conns and not self._connecting:
            self._done.set()

    def _fail_waiters(self, error: ConnectError) -> None:
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            w.error = ConnectError(str(error), sent_nothing=True)
            w.event.set()

    @property
    def stats(self) -> PoolStats:
        in_use = 0
        idle = 0
        for conn in self._conns:
            in_use += conn.active
            if conn.active == 0 and not conn.dead:
                idle += 1
        return PoolStats(in_use, idle, len(self._waiters), self._opened, self._ended)

    # -- connections -----------------------------------------------------------------------

    def _new_h2(self) -> h2.connection.H2Connection:
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.state_machine = FinishStreamsAfterGoaway()
        codes = h2.settings.SettingCodes
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.INITIAL_WINDOW_SIZE: self._stream_window,
                codes.MAX_CONCURRENT_STREAMS: 100,  # pushed streams: none (push is off)
                codes.MAX_HEADER_LIST_SIZE: self.limits.max_response_header_size,
            },
        )
        # Enforced from the start, not only once the server acknowledged our SETTINGS: a
        # larger header block fails the connection (its HPACK state cannot be trusted).
        conn.decoder.max_header_list_size = self.limits.max_response_header_size
        conn.incoming_buffer = BoundedHeaderBlocks(self.limits.max_response_header_size)
        conn.initiate_connection()
        if self._connection_window > 65535:
            conn.increment_flow_control_window(self._connection_window - 65535)
        return conn

    async def _handshake(self, stream: trio.abc.Stream, raw: trio.SocketStream) -> H2Conn:
        """Send our preface and SETTINGS; return once the server's SETTINGS have arrived."""
        origin = self.origin
        where = f"{origin.host}:{origin.port}"
        h2c = self._new_h2()
        events: list[h2.events.Event] = []
        try:
            with trio.fail_after(self.limits.connect_timeout):
                await stream.send_all(h2c.data_to_send())
                while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        raise ConnectError(
                            f"{where} closed the connection during the HTTP/2 handshake",
                            sent_nothing=True,
                        )
                    events += h2c.receive_data(data)
        except trio.TooSlowError:
            raw.socket.close()
            raise ConnectError(
                f"HTTP/2 handshake with {where} timed out", sent_nothing=True
            ) from None
        except h2.exceptions.ProtocolError as exc:
            raw.socket.close()
            raise ConnectError(f"{where} does not speak HTTP/2: {exc}", sent_nothing=True) from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raw.socket.close()
            raise ConnectError(
                f"cannot connect to {where}: HTTP/2 handshake failed: {exc}", sent_nothing=True
            ) from exc
        except BaseException:
            raw.socket.close()
            raise
        conn = H2Conn(self, stream, raw, h2c)
        conn.take_output()  # our SETTINGS ACK
        conn.dispatch(events)
        return conn

    async def _connect(self) -> H2Conn:
        origin = self.origin
        limits = self.limits
        stream, raw, alpn = await open_transport(
            origin, self._ssl_context, limits.connect_timeout, limits.tcp_keepalive
        )
        if self._ssl_context is not None and alpn != "h2":
            raw.socket.close()
            raise ConnectError(
                f"{origin.host}:{origin.port} did not negotiate HTTP/2 by ALPN"
                f" (it chose {alpn or 'nothing'})",
                sent_nothing=True,
            )
        return await self._handshake(stream, raw)

    def _install(self, conn: H2Conn) -> None:
        nursery = self._nursery
        if self._closed or nursery is None:
            conn.dead = True
            conn.raw.socket.close()
            self._check_done()
            return
        self._opened += 1
        self._conns.append(conn)
        nursery.start_soon(conn.serve)
        self._dispatch()

    async def adopt(self, stream: trio.abc.Stream, raw: trio.SocketStream) -> None:
        """Use an already negotiated (ALPN h2) transport as the pool's first connection."""
        self._install(await self._handshake(stream, raw))

    async def _background_connect(self) -> None:
        try:
            conn = await self._connect()
        except Exception as exc:
            self._connecting -= 1
            error = exc if isinstance(exc, ConnectError) else ConnectError(
                f"cannot connect to {self.origin.host}:{self.origin.port}: {exc!r}",
                sent_nothing=True,
            )
            if any(c.usable for c in self._conns):
                self._retry_connect_at = trio.current_time() + _RECONNECT_BACKOFF
            else:
                self._fail_waiters(error)
            self._check_done()
            return
        except BaseException:
            self._connecting -= 1
            self._check_done()
            raise
        self._connecting -= 1
        self._install(conn)

    # -- what a connection tells its pool ---------------------------------------------------

    def connection_ended(self, conn: H2Conn) -> None:
        """``conn`` is closed: forget it, and give its waiters another connection."""
        self._ended += 1
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)
        self._check_done()
        self._dispatch()

    def slot_freed(self) -> None:
        """A connection can take another stream: hand it to the next waiter."""
        if self._waiters:
            self._dispatch()

    def _pick(self) -> H2Conn | None:
        for conn in self._conns:  # oldest first: extra connections drain and get reaped
            if conn.active < conn.capacity and not conn.draining:
                return conn
        return None

    def _dispatch(self) -> None:
        """Hand free stream slots to waiters (FIFO); open a connection if they need one."""
        waiters = self._waiters
        while waiters:
            conn = self._pick()
            if conn is None:
                break
            w = waiters.popleft()
            conn.active += 1
            w.conn = conn
            w.event.set()
        if not waiters or self._closed or self._connecting or self._nursery is None:
            return
        usable = sum(1 for c in self._conns if not c.draining)
        if usable >= self.limits.max_connections:
            return
        if usable and trio.current_time() < self._retry_connect_at:
            return
        self._connecting += 1
        self._nursery.start_soon(self._background_connect)

    async def _wait_for_slot(self) -> H2Conn:
        w = _Waiter()
        self._waiters.append(w)
        self._dispatch()
        try:
            await w.event.wait()
        except BaseException:
            if w.conn is not None:
                w.conn.unreserve()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(w)
            raise
        if w.error is not None:
            raise w.error
        assert w.conn is not None
        return w.conn

    # -- requests --------------------------------------------------------------------------

    def _request_headers(
        self, method: bytes, target: bytes, headers: Headers, body: bytes,
        upload: RequestBody | None = None,
    ) -> list[tuple[bytes, bytes]]:
        out = [
            (b":method", method),
            (b":scheme", self._scheme),
            (b":authority", self.authority),
            (b":path", self._path_prefix + target),
        ]
        for name, value in headers:
            name = name.lower()
            if name in _HOP_BY_HOP or name[:1] == b":":
                if name == b"te" and value.strip().lower() == b"trailers":
                    out.append((name, b"trailers"))
                continue
            out.append((name, value))
        if upload is not None:
            if upload.length is not None:
                out.append((b"content-length", b"%d" % upload.length))
        elif body or method in _BODY_METHODS:
            out.append((b"content-length", b"%d" % len(body)))
        return out

    async def start(
        self, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> HTTP2Exchange:
        """Send the request on a new stream; return once the response head has arrived.

        A stream the server refused unprocessed (past a GOAWAY's last stream id, or
        REFUSED_STREAM) is sent once more, on another connection: like HTTP/1.1's stale
        keep-alive retry, it cannot duplicate work.
        """
        try:
            return await self._start_once(method, target, headers, body)
        except ConnectError:
            raise
        except UpstreamError as exc:
            if not exc.sent_nothing:
                raise
        return await self._start_once(method, target, headers, body)

    async def start_upload(
        self, method: bytes, target: bytes, headers: Headers, body: RequestBody
    ) -> HTTP2Exchange:
        """:meth:`start` with a body sent as ``body`` produces it, in DATA frames within
        the flow-control windows; a refused stream is sent again if the body can start
        over."""
        try:
            return await self._start_once(method, target, headers, b"", body)
        except ConnectError:
            raise
        except UpstreamError as exc:
            if not exc.sent_nothing or not body.rewind():
                raise
        return await self._start_once(method, target, headers, b"", body)

    async def _start_once(
        self, method: bytes, target: bytes, headers: Headers, body: bytes,
        upload: RequestBody | None = None,
    ) -> HTTP2Exchange:
        if self._closed:
            raise ConnectError("backend is shut down", sent_nothing=True)
        if self._nursery is None:
            raise RuntimeError("HTTP2Pool.run() is not running")
        request = self._request_headers(method, target, headers, body, upload)
        no_body = not body and upload is None
        while True:
            conn = None if self._waiters else self._pick()
            if conn is not None:
                conn.active += 1
            else:
                conn = await self._wait_for_slot()
            if conn.draining:  # GOAWAY or failure between the hand-off and now
                conn.unreserve()
                continue
            try:
                stream_id = conn.h2.get_next_available_stream_id()
            except h2.exceptions.NoAvailableStreamIDError:
                conn.draining = True
                conn.unreserve()
                continue
            break
        s = H2Stream(conn, stream_id)
        conn.streams[stream_id] = s
        try:
            try:
                conn.h2.send_headers(stream_id, request, end_stream=no_body)
            except h2.exceptions.H2Error as exc:
                raise UpstreamError(
                    f"cannot open an HTTP/2 stream: {exc}", sent_nothing=True
                ) from exc
            s.sent_end = no_body
            conn.take_output()
            if body:
                await self._send_body(conn, s, body)
            elif upload is not None:
                await self._send_upload(conn, s, upload)
            while not s.status:
                if s.error is not None:
                    raise s.error
                await s.wait()
        except BaseException:
            conn.release(s)
            raise
        return HTTP2Exchange(s)

    @classmethod
    async def _send_upload(cls, conn: H2Conn, s: H2Stream, upload: RequestBody) -> None:
        """An upload's pieces as DATA frames as they come, then END_STREAM."""
        while data := await upload.receive_some():
            await cls._send_body(conn, s, data, last=False)
            if s.ended:
                return  # the server answered already (a refusal, say); close() resets
        try:
            conn.h2.end_stream(s.id)
        except h2.exceptions.H2Error:
            return
        s.sent_end = True
        conn.take_output()

    @staticmethod
    async def _send_body(conn: H2Conn, s: H2Stream, body: bytes, last: bool = True) -> None:
        """DATA frames within the peer's frame size and the stream/connection windows
        (the last one ends the stream, unless more is to come: not ``last``)."""
        h2c = conn.h2
        view = memoryview(body)
        total = len(body)
        offset = 0
        while offset < total:
            if s.error is not None:
                raise s.error
            if s.ended:
                return  # the server answered without reading all of it; close() resets
            try:
                size = min(
                    h2c.local_flow_control_window(s.id), h2c.max_outbound_frame_size, total - offset
                )
            except h2.exceptions.H2Error:
                return
            if size <= 0:
                await conn.wait_window()
                continue
            end = last and offset + size == total
            try:
                h2c.send_data(s.id, view[offset : offset + size], end_stream=end)
            except h2.exceptions.H2Error as exc:
                raise UpstreamError(f"cannot send the request body: {exc}") from exc
            s.sent_end = end
            offset += size
            conn.take_output()
            if conn.out_bytes > HIGH_WATER:
                await conn.wait_drained()

    async def prewarm(self, count: int) -> int:
        """Open a connection now if there is none (one HTTP/2 connection carries many
        requests, so ``count`` > 1 still opens one). Returns how many were opened."""
        if count <= 0 or self._closed or any(c.usable for c in self._conns):
            return 0
        if self._nursery is None:
            raise RuntimeError("HTTP2Pool.run() is not running")
        self._connecting += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._connecting -= 1
            self._dispatch()  # requests that queued behind this connect try their own
            self._check_done()
            raise
        self._connecting -= 1
        self._install(conn)
        return 1

    def reap_idle(self) -> int:
        """Close connections without streams idle past ``idle_timeout``, and idle ones
        beyond ``max_idle`` that stayed idle ``trim_after`` (least recently used first)."""
        now = trio.current_time()
        limits = self.limits
        idle = sorted(
            (c for c in self._conns if c.active == 0 and not c.closing and not c.dead),
            key=lambda c: c.last_used,
        )
        excess = len(idle) - limits.max_idle
        trim_after = min(limits.trim_after, limits.idle_timeout)
        closed = 0
        for conn in idle:
            quiet = now - conn.last_used
            if (excess > 0 and quiet >= trim_after) or quiet >= limits.idle_timeout:
                conn.shutdown()
                excess -= 1
                closed += 1
        return closed


async def open_pool(
    origin: Origin,
    limits: PoolLimits,
    mode: Mode,
    nursery: trio.Nursery,
    *,
    ca_file: str | None = None,
    verify: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    http1_ssl_context: ssl.SSLContext | None = None,
    ping_interval: float = 30.0,
    ping_timeout: float = 10.0,
) -> HTTP1Pool | HTTP2Pool:
    """The pool for a backend's ``http2`` setting.

    - ``never``: HTTP1Pool. ``always``: HTTP2Pool (h2 by ALPN on https, prior-knowledge h2c
      on http), connecting lazily. ``auto``: HTTP1Pool on http; on https, one TLS handshake
      offering ALPN [h2, http/1.1] decides, and that connection becomes the chosen pool's first
      one. An unreachable origin raises ConnectError (``auto`` cannot decide; try again later).
    - TLS: contexts are built from ``ca_file``/``verify``; ``ssl_context`` (must offer h2)
      and ``http1_ssl_context`` (http/1.1 only) override them.
    - An HTTP2Pool comes back running in ``nursery`` (``pool.close()`` ends it).
    """
    https = origin.scheme == "https"

    def h1_context() -> ssl.SSLContext | None:
        if not https:
            return None
        return http1_ssl_context or make_ssl_context(ca_file, verify)

    def h2_context() -> ssl.SSLContext | None:
        if not https:
            return None
        return ssl_context or make_h2_ssl_context(ca_file, verify)

    if mode == "never" or (mode == "auto" and not https):
        return HTTP1Pool(origin, limits, h1_context())
    tls = h2_context()
    if mode == "always":
        pool = HTTP2Pool(
            origin, limits, tls, ping_interval=ping_interval, ping_timeout=ping_timeout
        )
        await nursery.start(pool.run)
        return pool
    assert tls is not None
    stream, raw, alpn = await open_transport(
        origin, tls, limits.connect_timeout, limits.tcp_keepalive
    )
    if alpn == "h2":
        pool = HTTP2Pool(
            origin, limits, tls, ping_interval=ping_interval, ping_timeout=ping_timeout
        )
        try:
            await nursery.start(pool.run)
            await pool.adopt(stream, raw)
        except BaseException:
            raw.socket.close()
            pool.close()
            raise
        return pool
    h1 = HTTP1Pool(origin, limits, h1_context())
    h1.adopt(stream, raw)
    return h1
