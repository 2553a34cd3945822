"""One task that forwards every pass-through stream of a router: the stream pump.

Why: forwarding an SSE frame the plain way costs a trio ``receive_some`` and a
``send_all`` — two scheduler trips, each with its checks, per frame — and that per-operation
cost, not the router's own work, bounds how many frames one process forwards. Here the
sockets of the streams that need no per-frame work of their own (plain HTTP/1.1 on both
sides, the answer passed through) sit in one private epoll set that trio watches as a
single fd (``wait_readable``). One wake-up of :meth:`StreamPump.run` drains every ready
socket with non-blocking reads and writes: a trip per batch instead of two per frame.

What stays as the plain path gives it, per stream:

* the body is read and de-framed by the upstream connection itself
  (:class:`Upstream`: its parser, its limits and its errors), the bytes go through the
  stream's ``feed`` (the SSE end and error scan) and out as one HTTP/1.1 chunk;
* backpressure: a client that does not take a whole chunk stops its upstream from being
  read (it leaves the epoll set) until the rest went out (``EPOLLOUT``); never more than one
  chunk per stream is held;
* timers: the client connection's timer (:class:`Timer`, swept by the server) is moved
  per frame, a float write — to ``idle`` seconds ahead while the upstream is awaited, to
  ``write_timeout`` ahead while a write is blocked; the sweeper cancels the stream's task,
  which reads :attr:`PumpedStream.blocked` to tell which one passed;
* the client: ``EPOLLRDHUP`` tells a half-close (a peek reads EOF: keep streaming, stop
  watching) from a reset (an error: the client is gone); ``EPOLLERR``/``EPOLLHUP``: gone;
* stream metrics: the first frame's time, the longest gap, the first and the last three
  frames (for the usage scan).

The stream's own task hands its sockets over (:meth:`StreamPump.add`), waits for
:attr:`PumpedStream.done` under its own cancel scope, and takes them back with
:meth:`StreamPump.detach` (synchronous) whatever ended the wait. Both sockets stay owned by
their trio streams; the pump only moves bytes while it holds them.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
from collections.abc import Callable
from typing import Final, Protocol, final

import trio

from ..core.clock import now as clock
from .client.exchange import UpstreamError

log = logging.getLogger("continuum.proxy")

#: Ready sockets handled per wake-up at most (the rest wait for the next one).
BATCH: Final = 512

# How a pumped stream ended (:attr:`PumpedStream.outcome`).
RUNNING: Final = 0
COMPLETE: Final = 1  # the body ended (or ``feed`` found the stream truncated)
UPSTREAM_FAILED: Final = 2  # ``error`` says why
CLIENT_GONE: Final = 3
STOPPED: Final = 4  # the pump's task ended (the router stopping, or a crash)

_UPSTREAM: Final = select.EPOLLIN
_CLIENT: Final = select.EPOLLRDHUP
_GONE: Final = select.EPOLLERR | select.EPOLLHUP


class Upstream(Protocol):
    """The upstream side: reads, de-frames and keeps the body (``HTTP1Connection``)."""

    @property
    def complete(self) -> bool: ...

    def receive_ready(self) -> bool:
        """Read what the socket holds now; raise ``UpstreamError`` when it failed."""
        ...

    def take_body(self) -> bytes: ...


class Timer(Protocol):
    """The client side's timer and byte count (``ServerConnection``)."""

    deadline: float
    bytes_out: int


@final
class PumpedStream:
    """One stream while the pump holds it, and what it did (read once ``done`` is set,
    or after :meth:`StreamPump.detach`)."""

    __slots__ = (
        "blocked",
        "c1",
        "c2",
        "c3",
        "client",
        "client_fd",
        "done",
        "ending",
        "error",
        "feed",
        "first",
        "head",
        "idle",
        "last",
        "max_gap",
        "outcome",
        "pending",
        "timer",
        "upstream",
        "upstream_fd",
        "watching",
        "write_timeout",
    )

    def __init__(self, upstream: Upstream, upstream_fd: int, client: socket.socket,
                 feed: Callable[[bytes], bytes], timer: Timer, idle: float,
                 write_timeout: float) -> None:
        self.upstream = upstream
        self.upstream_fd = upstream_fd
        self.client = client
        self.client_fd = client.fileno()
        self.feed = feed
        self.timer = timer
        self.idle = idle
        self.write_timeout = write_timeout
        self.done = trio.Event()
        self.outcome = RUNNING
        #: Why the upstream failed (``UPSTREAM_FAILED``): the ``UpstreamError``'s text.
        self.error = ""
        #: The rest of a chunk the client did not take yet (then ``blocked``).
        self.pending = b""
        self.blocked = False
        #: The body ended while a write was blocked: complete once it went out.
        self.ending = False
        #: The client's half-close is not known yet (``EPOLLRDHUP`` is watched).
        self.watching = True
        #: Stream metrics: first frame time (0: none yet), last frame time, longest gap.
        self.first = 0.0
        self.last = 0.0
        self.max_gap = -1.0
        #: The first frame, and the last three (oldest first), kept by reference.
        self.head = self.c1 = self.c2 = self.c3 = b""


@final
class StreamPump:
    """The pump of one router (one per worker process; nothing global). :meth:`run` is
    its task; streams are handed over only while it runs."""

    __slots__ = ("_epoll", "_streams", "pumped")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        #: fd (either side) -> its stream
        self._streams: dict[int, PumpedStream] = {}
        #: Streams handed over so far (the ``continuum_streams_pumped_total`` counter).
        self.pumped = 0

    @property
    def running(self) -> bool:
        return self._epoll is not None

    def add(self, upstream: Upstream, upstream_sock: socket.socket, client: socket.socket,
            feed: Callable[[bytes], bytes], timer: Timer, idle: float,
            write_timeout: float) -> PumpedStream:
        """Take a stream over (the pump must be running): the body bytes the upstream
        already holds go out first. The caller arms ``timer`` and then waits for ``done``;
        whatever ends the wait, it calls :meth:`detach` before touching the sockets."""
        epoll = self._epoll
        assert epoll is not None, "the stream pump is not running"
        stream = PumpedStream(upstream, upstream_sock.fileno(), client, feed, timer, idle,
                              write_timeout)
        self.pumped += 1
        streams = self._streams
        streams[stream.upstream_fd] = streams[stream.client_fd] = stream
        try:
            epoll.register(stream.upstream_fd, _UPSTREAM)
            epoll.register(stream.client_fd, _CLIENT)
        except BaseException:
            self.detach(stream)
            raise
        now = clock()
        timer.deadline = now + idle
        body = upstream.take_body()
        if body:
            self._forward(stream, body, now)
        return stream

    def detach(self, stream: PumpedStream) -> None:
        """Give the stream's sockets back (at once; a no-op once it ended)."""
        streams = self._streams
        if streams.get(stream.upstream_fd) is not stream:
            return
        del streams[stream.upstream_fd], streams[stream.client_fd]
        epoll = self._epoll
        if epoll is not None:
            for fd in (stream.upstream_fd, stream.client_fd):
                with contextlib.suppress(OSError):
                    epoll.unregister(fd)

    def _end(self, stream: PumpedStream, outcome: int, error: str = "") -> None:
        self.detach(stream)
        stream.outcome = outcome
        stream.error = error
        stream.done.set()

    def _forward(self, stream: PumpedStream, body: bytes, now: float) -> None:
        """Body bytes read: through ``feed``, out as one chunk, metrics; then either the
        end, a blocked write, or the next idle deadline."""
        out = stream.feed(body)
        if out:
            frame = b"%x\r\n%b\r\n" % (len(out), out)
            stream.timer.bytes_out += len(out)
            sent = self._send(stream, frame)
            if sent < 0:
                return
            stream.c1, stream.c2, stream.c3 = stream.c2, stream.c3, out
            if sent < len(frame):
                self._block(stream, frame[sent:], now)
        if stream.first:
            if now - stream.last > stream.max_gap:
                stream.max_gap = now - stream.last
        else:
            stream.first = now
            stream.head = out
        stream.last = now
        self._after(stream, now)

    def _send(self, stream: PumpedStream, data: bytes) -> int:
        """A non-blocking send to the client: the bytes it took (0 when its buffer is
        full), or -1 when it is gone (the stream is ended)."""
        try:
            return stream.client.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._end(stream, CLIENT_GONE)
            return -1

    def _after(self, stream: PumpedStream, now: float) -> None:
        if stream.upstream.complete:
            if stream.blocked:
                stream.ending = True
            else:
                self._end(stream, COMPLETE)
        elif not stream.blocked:
            stream.timer.deadline = now + stream.idle

    def _block(self, stream: PumpedStream, rest: bytes, now: float) -> None:
        """The client did not take a whole chunk: keep the rest, read no more upstream
        until it went out, and time the client instead of the upstream."""
        epoll = self._epoll
        assert epoll is not None
        stream.pending = rest
        stream.blocked = True
        # Out of the set, not interest 0: epoll reports a reset (EPOLLERR/EPOLLHUP) whatever
        # the interest, and level-triggered it would be reported on every wake-up.
        epoll.unregister(stream.upstream_fd)
        epoll.modify(stream.client_fd, select.EPOLLOUT | (_CLIENT if stream.watching else 0))
        stream.timer.deadline = now + stream.write_timeout

    def _client_event(self, stream: PumpedStream, events: int, now: float) -> None:
        epoll = self._epoll
        assert epoll is not None
        if events & _GONE:
            self._end(stream, CLIENT_GONE)
            return
        if events & select.EPOLLRDHUP and stream.watching:
            try:
                stream.client.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                pass
            except OSError:
                self._end(stream, CLIENT_GONE)  # a reset
                return
            # A half-close (EOF, or a last request behind it): the answer still goes out.
            stream.watching = False
            epoll.modify(stream.client_fd, select.EPOLLOUT if stream.blocked else 0)
        if not (events & select.EPOLLOUT and stream.blocked):
            return
        rest = stream.pending
        sent = self._send(stream, rest)
        if sent < 0:
            return
        if sent < len(rest):
            stream.pending = rest[sent:]
            stream.timer.deadline = now + stream.write_timeout  # it took something
            return
        stream.pending = b""
        stream.blocked = False
        if stream.ending:
            self._end(stream, COMPLETE)
            return
        epoll.modify(stream.client_fd, _CLIENT if stream.watching else 0)
        epoll.register(stream.upstream_fd, _UPSTREAM)
        stream.timer.deadline = now + stream.idle

    def _upstream_event(self, stream: PumpedStream, now: float) -> None:
        upstream = stream.upstream
        try:
            if not upstream.receive_ready():
                return
        except UpstreamError as exc:
            self._end(stream, UPSTREAM_FAILED, str(exc))
            return
        body = upstream.take_body()
        if body:
            self._forward(stream, body, now)
        else:  # chunk framing only, or the end of the body
            self._after(stream, now)

    async def run(self) -> None:
        """Forward the streams handed over, until cancelled; streams still held then end
        as ``STOPPED``."""
        epoll = select.epoll()
        self._epoll = epoll
        streams = self._streams
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                ready = epoll.poll(0, BATCH)
                now = clock()
                for fd, events in ready:
                    stream = streams.get(fd)
                    if stream is None:
                        continue  # ended earlier in this batch
                    try:
                        if fd == stream.upstream_fd:
                            self._upstream_event(stream, now)
                        else:
                            self._client_event(stream, events, now)
                    except Exception:  # a defect: end this stream, keep the others going
                        log.exception("stream pump: forwarding failed")
                        self._end(stream, UPSTREAM_FAILED, "stream forwarding failed")
        finally:
            for stream in list(streams.values()):
                self._end(stream, STOPPED)
            self._epoll = None
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()
