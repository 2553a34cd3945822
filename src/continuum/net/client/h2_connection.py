"""One HTTP/2 upstream connection and its streams: the h2 state, the stream table, and the
tasks that move its bytes (a frame reader, a writer, a PING keep-alive). The pool that opens
connections and hands out streams is :class:`~.h2.HTTP2Pool`; a connection tells it when a
stream slot frees and when it ends (:class:`PoolSide`)."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Protocol, final

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ...core.http import Headers
from .exchange import UpstreamError, read_body
from .h2_protocol import error_name

log = logging.getLogger("continuum.http")

RECEIVE_SIZE = 65536
#: Queued output (bytes) past which a body upload waits for the writer to catch up.
HIGH_WATER = 256 * 1024
#: Queued output past which the connection is dropped: uploads stop at HIGH_WATER, so only
#: answers h2 queues by itself (PING and SETTINGS ACKs) grow it further — a peer flooding
#: them without reading ours would otherwise grow our memory without bound.
_OUTPUT_LIMIT = 1024 * 1024
#: How long a closing connection may take to flush its GOAWAY before the socket is dropped.
_CLOSE_GRACE = 2.0


class PoolSide(Protocol):
    """What a connection needs of the pool that owns it."""

    authority: bytes
    ping_interval: float
    ping_timeout: float
    max_streams: int

    def connection_ended(self, conn: H2Conn) -> None: ...

    def slot_freed(self) -> None: ...


@final
class H2Stream:
    """One request's state on a connection, fed by the connection's reader task."""

    __slots__ = (
        "_event",
        "chunks",
        "conn",
        "ended",
        "error",
        "flow",
        "headers",
        "id",
        "sent_end",
        "status",
    )

    def __init__(self, conn: H2Conn, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.chunks: deque[bytes] = deque()
        #: Flow-controlled bytes buffered in ``chunks`` and not yet acknowledged to the peer.
        self.flow = 0
        self.status = 0
        self.headers: Headers = []
        self.ended = False  # the server's END_STREAM has arrived
        self.sent_end = False  # our END_STREAM is queued
        self.error: UpstreamError | None = None
        self._event: trio.Event | None = None

    def wake(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        """Until the reader reports something for this stream (only one task waits)."""
        event = self._event = trio.Event()
        await event.wait()

    def fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self.wake()


@final
class HTTP2Exchange:
    """A response being read from one stream of an :class:`HTTP2Pool` connection."""

    __slots__ = ("_stream", "headers", "status", "stream_id")

    def __init__(self, stream: H2Stream) -> None:
        self._stream: H2Stream | None = stream
        self.status = stream.status
        self.headers = stream.headers
        self.stream_id = stream.id

    async def receive_some(self) -> bytes:
        s = self._stream
        if s is None:
            return b""
        chunks = s.chunks
        while not chunks:
            if s.error is not None:
                raise s.error
            if s.ended:
                return b""
            await s.wait()
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        s.conn.consumed(s)
        return data

    async def read_all(self, limit: int) -> bytes:
        return await read_body(self.receive_some, limit)

    def unread(self, data: bytes) -> None:
        s = self._stream
        if s is not None:
            s.chunks.appendleft(data)  # already acknowledged: outside flow control now

    def close(self) -> None:
        """Release the stream; one not finished both ways is reset (RST_STREAM CANCEL)."""
        s, self._stream = self._stream, None
        if s is not None:
            s.conn.release(s)


@final
class H2Conn:
    """One HTTP/2 connection: h2 state, stream table and the tasks that move its bytes."""

    def __init__(
        self,
        pool: PoolSide,
        stream: trio.abc.Stream,
        raw: trio.SocketStream,
        conn: h2.connection.H2Connection,
    ) -> None:
        self.pool = pool
        self.stream = stream
        self.raw = raw
        self.h2 = conn
        self.streams: dict[int, H2Stream] = {}
        #: Stream slots taken (streams open, or about to be opened, by ``start``).
        self.active = 0
        self.dead = False
        self.draining = False  # no new streams (GOAWAY received, closing or dead)
        self.closing = False  # our GOAWAY is queued; close once it is written
        self.goaway_last_id: int | None = None
        now = trio.current_time()
        self.last_used = now
        self.last_recv = now
        self._outq: list[bytes] = []
        self.out_bytes = 0
        self._writer_event = trio.Event()
        self._drained: trio.Event | None = None
        self._window: trio.Event | None = None
        self._ping_ack: trio.Event | None = None
        self._scope = trio.CancelScope()

    # -- capacity --------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.draining

    @property
    def capacity(self) -> int:
        return min(self.h2.remote_settings.max_concurrent_streams, self.pool.max_streams)

    def unreserve(self) -> None:
        """Give back a slot taken for a stream that was never opened."""
        self.active -= 1
        self._slot_freed()

    def _slot_freed(self) -> None:
        if self.draining:
            if self.active == 0 and not self.dead:
                self.shutdown()
        else:
            self.pool.slot_freed()

    # -- output ----------------------------------------------------------------------------

    def take_output(self) -> None:
        """Move whatever h2 produced to the writer's queue (order is h2's order)."""
        out = self.h2.data_to_send()
        if out:
            self._outq.append(out)
            self.out_bytes += len(out)
            self._writer_event.set()

    async def wait_window(self) -> None:
        event = self._window
        if event is None:
            event = self._window = trio.Event()
        await event.wait()

    def _window_changed(self) -> None:
        event, self._window = self._window, None
        if event is not None:
            event.set()

    async def wait_drained(self) -> None:
        event = self._drained
        if event is None:
            event = self._drained = trio.Event()
        await event.wait()

    def _signal_drained(self) -> None:
        event, self._drained = self._drained, None
        if event is not None:
            event.set()

    # -- streams ---------------------------------------------------------------------------

    def consumed(self, s: H2Stream) -> None:
        """The consumer took a stream's buffered data: reopen the windows by that much."""
        flow, s.flow = s.flow, 0
        if flow and not self.dead:
            # (acknowledging never raises for a closed stream: it only reopens the
            # connection window then)
            self.h2.acknowledge_received_data(flow, s.id)
            self.take_output()

    def release(self, s: H2Stream) -> None:
        if self.streams.pop(s.id, None) is None:
            return
        self.active -= 1
        self.last_used = trio.current_time()
        if not self.dead:
            h2c = self.h2
            if s.flow:  # unread data still counts against the connection window
                h2c.acknowledge_received_data(s.flow, s.id)
                s.flow = 0
            if s.error is None and not (s.ended and s.sent_end):
                with contextlib.suppress(h2.exceptions.H2Error):  # closed on h2's side
                    h2c.reset_stream(s.id, h2.errors.ErrorCodes.CANCEL)
            self.take_output()
        self._slot_freed()

    # -- lifecycle -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close gracefully: queue our GOAWAY, close once it is written (or after a grace)."""
        if self.closing or self.dead:
            return
        self.closing = True
        self.draining = True
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection()
        self.take_output()
        self._writer_event.set()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + _CLOSE_GRACE)

    def fail(self, message: str) -> None:
        """The connection is unusable: fail its unfinished streams and stop its tasks."""
        if self.dead:
            return
        self.dead = True
        self.draining = True
        last = self.goaway_last_id
        for s in self.streams.values():
            if s.error is None and not s.ended:
                refused = last is not None and s.id > last
                s.fail(UpstreamError(message, sent_nothing=refused))
        self._window_changed()
        self._signal_drained()
        self._scope.cancel()
        self.pool.slot_freed()  # waiters may now need a new connection

    async def serve(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    if self.pool.ping_interval > 0:
                        nursery.start_soon(self._keepalive)
                    await self._reader()
        except Exception as exc:  # a bug here must not take the backend's actor down
            log.exception("HTTP/2 connection to %s failed unexpectedly", self.pool.authority)
            self.fail(f"HTTP/2 connection failed: {exc!r}")
        finally:
            self.fail("upstream HTTP/2 connection closed")
            self.raw.socket.close()
            self.pool.connection_ended(self)

    async def _reader(self) -> None:
        h2c = self.h2
        stream = self.stream
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.fail(f"upstream connection failed: {exc or type(exc).__name__}")
                return
            if not data:
                self.fail(
                    "upstream closed the connection"
                    + (" after GOAWAY" if self.goaway_last_id is not None else "")
                )
                return
            self.last_recv = trio.current_time()
            # h2 drops queued output when a GOAWAY arrives: hand it to the writer first.
            self.take_output()
            try:
                events = h2c.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self.take_output()  # h2 queued a GOAWAY of its own
                if isinstance(exc, h2.exceptions.DenialOfServiceError):
                    self.fail(f"upstream response head too large ({exc}; "
                              "http_client.max_response_header_size)")
                else:
                    self.fail(f"HTTP/2 protocol error from upstream: {exc}")
                return
            self.dispatch(events)
            self.take_output()
            if self.out_bytes > _OUTPUT_LIMIT:
                self.fail(f"upstream does not read its connection ({self.out_bytes} bytes "
                          "of our frames queued)")
                return

    def dispatch(self, events: list[h2.events.Event]) -> None:
        """Apply what h2 made of received bytes to the streams (the reader calls it, and the
        pool once for the events of the handshake)."""
        streams = self.streams
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                s = streams.get(ev.stream_id)
                flow = ev.flow_controlled_length or 0
                if s is not None and ev.data and s.error is None:
                    s.chunks.append(ev.data)
                    s.flow += flow
                    s.wake()
                elif flow:  # padding only, or nobody left to read it
                    self.h2.acknowledge_received_data(flow, ev.stream_id)
            elif isinstance(ev, h2.events.ResponseReceived):
                s = streams.get(ev.stream_id)
                if s is not None:
                    status = 0
                    headers: Headers = []
                    for name, value in ev.headers:
                        n = bytes(name) if not isinstance(name, str) else name.encode()
                        v = bytes(value) if not isinstance(value, str) else value.encode()
                        if n[:1] == b":":
                            if n == b":status":
                                status = int(v)
                        else:
                            headers.append((n, v))
                    s.headers = headers
                    s.status = status
                    s.wake()
            elif isinstance(ev, h2.events.StreamEnded):
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.ended = True
                    s.wake()
                    self._window_changed()  # an upload in progress stops
            elif isinstance(ev, h2.events.WindowUpdated):
                self._window_changed()
            elif isinstance(ev, h2.events.StreamReset):
                s = streams.get(ev.stream_id)
                if s is not None:
                    code = ev.error_code
                    # REFUSED_STREAM: the server guarantees it did no work on the request.
                    refused = code == h2.errors.ErrorCodes.REFUSED_STREAM
                    s.fail(
                        UpstreamError(
                            f"upstream reset the stream ({error_name(code)})",
                            sent_nothing=refused,
                        )
                    )
                    self._window_changed()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self._window_changed()
                if h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in ev.changed_settings:
                    self.pool.slot_freed()
            elif isinstance(ev, h2.events.PingAckReceived):
                ack = self._ping_ack
                if ack is not None:
                    ack.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._goaway(ev)

    def _goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        last = ev.last_stream_id or 0
        if self.goaway_last_id is not None:
            last = min(last, self.goaway_last_id)
        self.goaway_last_id = last
        self.draining = True
        reason = error_name(ev.error_code)
        log.debug("HTTP/2 GOAWAY from %s (%s, last stream %d)", self.pool.authority, reason, last)
        for s in self.streams.values():
            if s.id > last and s.error is None:
                s.fail(
                    UpstreamError(
                        f"upstream sent GOAWAY ({reason}) before processing the request",
                        sent_nothing=True,
                    )
                )
        self._window_changed()
        if self.active == 0:
            self.shutdown()
        self.pool.slot_freed()  # new streams need another connection

    async def _writer(self) -> None:
        queue = self._outq
        stream = self.stream
        try:
            while True:
                if not queue:
                    if self.closing:
                        break
                    event = self._writer_event = trio.Event()
                    await event.wait()
                    continue
                data = queue[0] if len(queue) == 1 else b"".join(queue)
                queue.clear()
                self.out_bytes = 0
                self._signal_drained()
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(f"upstream connection failed: {exc or type(exc).__name__}")
            return
        self._scope.cancel()  # our GOAWAY is out: done

    async def _keepalive(self) -> None:
        pool = self.pool
        interval = pool.ping_interval
        while True:
            await trio.sleep_until(self.last_recv + interval)
            if trio.current_time() - self.last_recv < interval:
                continue
            if self.closing or self.dead:
                return
            ack = self._ping_ack = trio.Event()
            try:
                self.h2.ping(b"continuu")
            except h2.exceptions.H2Error:
                return
            self.take_output()
            with trio.move_on_after(pool.ping_timeout):
                await ack.wait()
            self._ping_ack = None
            if not ack.is_set():
                log.info(
                    "HTTP/2 connection to %s: PING not answered within %g s, dropping it",
                    pool.authority, pool.ping_timeout,
                )
                self.fail(f"upstream did not answer a PING within {pool.ping_timeout:g} s")
                return


