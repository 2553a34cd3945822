"""The floor: the simplest fast, correct HTTP/1.1 reverse proxy on bare trio + httptools.

This is the baseline the router's throughput is compared against (this shape measured 5,768
req/s against nginx; docs/design.md). It is a baseline, not a product: no routing, no JSON
decode, no limits. Per client connection it parses requests with
``httptools.HttpRequestParser``, rebuilds the request head (dropping hop-by-hop headers, body
bytes forwarded untouched), sends it on a keep-alive connection from its own pool to the one
upstream, and passes the upstream's response bytes back as they arrive, using
``httptools.HttpResponseParser`` only to find where the response ends (``Content-Length`` and
chunked responses both work; a small response is one ``send_all``).

A reused pooled connection that turns out to be closed by the upstream is retried once on a
fresh connection; any other upstream failure before the first byte is a 502 JSON error.

With ``--pipe`` it is the *streaming* floor instead: a bare byte pipe. Each client connection
gets its own fresh upstream connection and the bytes are moved both ways with
``receive_some``/``send_all``, nothing parsed. That is the least a trio process can do per
forwarded SSE frame (one receive and one send, each a scheduler trip), so the router's CPU per
frame and its TTFB are compared against it (the ``streaming`` scenario).

With ``--pump`` it is the same pipe with every socket moved by one task: the sockets sit in a
private epoll set that trio watches as a single fd (``wait_readable`` on the epoll fd), and
ready bytes move with non-blocking ``recv_into``/``send``, a batch per wake-up. That is the
ceiling of forwarding with fewer scheduler trips (issue 15 item 5): what such a pump could save
in the router before any of the router's own work (timeouts, SSE framing, metrics). A peer
that does not read stops its source from being read (the rest of the write waits for
``EPOLLOUT``), so nothing is buffered without bound; a paused source that resets meanwhile
still ends the pair (epoll reports ``EPOLLERR``/``EPOLLHUP`` even with no interest set).

Standalone on purpose: it must not import ``continuum``, so the baseline stays fixed.

Usage: ``python benches/floor_proxy.py --port 8002 --upstream 127.0.0.1:8001 [--pipe|--pump]``
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
from typing import Final

import httptools
import trio

READ_SIZE: Final = 65536
MAX_IDLE: Final = 512
SPARES: Final = 256  # --pipe: upstream connections kept open ahead of need
REFILL_DELAY: Final = 0.1  # --pipe: seconds between a spare taken and the refill
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


def _error(status: bytes, message: bytes, close: bool = False) -> bytes:
    body = b'{"error":{"message":"' + message + b'","type":"proxy_error","param":null,"code":null}}'
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


BAD_GATEWAY: Final = _error(b"502 Bad Gateway", b"upstream failed", close=True)
BAD_REQUEST: Final = _error(b"400 Bad Request", b"malformed HTTP request", close=True)


class UpstreamError(Exception):
    """The upstream failed before the response was complete."""


class _Request:
    """One parsed client request, ready to forward."""

    __slots__ = ("data", "keep_alive")

    def __init__(self, data: bytes, keep_alive: bool) -> None:
        self.data = data  # the rebuilt upstream request: head + untouched body
        self.keep_alive = keep_alive


class _RequestReader:
    """httptools request-parser callbacks; completed requests collect in ``ready``."""

    __slots__ = ("body", "headers", "host_header", "parser", "ready", "url")

    def __init__(self, host_header: bytes) -> None:
        self.host_header = host_header
        self.url = b""
        self.headers: list[bytes] = []
        self.body: list[bytes] = []
        self.ready: list[_Request] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers += (name, b": ", value, b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        body = b"".join(self.body)
        head = b"".join(
            (
                parser.get_method(),
                b" ",
                self.url,
                b" HTTP/1.1\r\n",
                self.host_header,
                *self.headers,
                b"Content-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
            )
        )
        self.ready.append(_Request(head + body, parser.should_keep_alive()))
        self.url = b""
        self.headers = []
        self.body = []


class _ResponseWatcher:
    """httptools response-parser callbacks: only notes where a response ends."""

    __slots__ = ("complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.complete = True
        # llhttp resets its flags once this callback returns: read keep-alive now.
        self.keep_alive = bool(self.parser.should_keep_alive())


class _UpstreamConnection:
    __slots__ = ("stream", "watcher")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.watcher = _ResponseWatcher()


class UpstreamPool:
    """Keep-alive connections to one upstream, reused most-recent-first."""

    def __init__(self, host: str, port: int, max_idle: int = MAX_IDLE) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: list[_UpstreamConnection] = []

    async def _connect(self) -> _UpstreamConnection:
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise UpstreamError(f"connect failed: {exc}") from exc
        return _UpstreamConnection(stream)

    def _release(self, conn: _UpstreamConnection) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.stream.socket.close()

    async def forward(self, request: bytes, client: trio.SocketStream) -> None:
        """Send ``request`` upstream and stream the response bytes to ``client``.

        Raises ``UpstreamError`` if the upstream fails before any byte reached the client
        (the caller answers 502); a failure after that is re-raised as
        ``trio.BrokenResourceError`` so the client connection is dropped, never truncated
        silently into a keep-alive connection.
        """
        for attempt in range(2):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            stream = conn.stream
            watcher = conn.watcher
            feed = watcher.parser.feed_data
            watcher.complete = False
            forwarded = False
            try:
                await stream.send_all(request)
                while True:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        raise UpstreamError("upstream closed the connection")
                    feed(data)
                    await client.send_all(data)
                    forwarded = True
                    if watcher.complete:
                        break
            except (trio.BrokenResourceError, UpstreamError, httptools.HttpParserError) as exc:
                await stream.aclose()
                if forwarded:
                    raise trio.BrokenResourceError("upstream failed mid-response") from exc
                if reused and attempt == 0 and not isinstance(exc, httptools.HttpParserError):
                    continue  # a stale keep-alive connection: retry once on a fresh one
                raise UpstreamError(str(exc)) from exc
            if watcher.keep_alive:
                self._release(conn)
            else:
                await stream.aclose()
            return


async def handle_client(client: trio.SocketStream, pool: UpstreamPool) -> None:
    """Serve one client connection: requests are forwarded in order, one at a time."""
    host = f"[{pool.host}]" if ":" in pool.host else pool.host
    reader = _RequestReader(f"Host: {host}:{pool.port}\r\n".encode())
    feed = reader.parser.feed_data
    ready = reader.ready
    try:
        while True:
            data = await client.receive_some(READ_SIZE)
            if not data:
                return
            try:
                feed(data)
            except httptools.HttpParserError:
                await client.send_all(BAD_REQUEST)
                return
            requests = ready[:]
            ready.clear()
            for request in requests:
                try:
                    await pool.forward(request.data, client)
                except UpstreamError:
                    await client.send_all(BAD_GATEWAY)
                    return
                if not request.keep_alive:
                    return
    except trio.BrokenResourceError:
        pass
    finally:
        await client.aclose()


async def _copy(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    """Move bytes from ``source`` to ``sink`` until either side ends, then end the pipe."""
    try:
        while data := await source.receive_some(READ_SIZE):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.cancel()


class SpareConnections:
    """Upstream connections opened ahead of need, one per piped client connection.

    A pipe cannot reuse an upstream connection (it does not parse, so it never knows where a
    response ends), but it need not connect while the client waits: a background task keeps
    ``target`` connections open in advance, so the floor's TTFB is not its connect time (the
    router's pool gives it warm connections too). The connect cost is still this process's
    CPU, counted in its CPU per frame.
    """

    def __init__(self, host: str, port: int, target: int = SPARES) -> None:
        self.host = host
        self.port = port
        self.target = target
        self._spares: list[trio.SocketStream] = []
        self._wanted = trio.Event()

    async def keep_filled(self) -> None:
        while True:
            while len(self._spares) < self.target:
                try:
                    self._spares.append(await trio.open_tcp_stream(self.host, self.port))
                except OSError:
                    await trio.sleep(0.1)  # the upstream is down: the clients get a 502
            await self._wanted.wait()
            self._wanted = trio.Event()
            await trio.sleep(REFILL_DELAY)  # let a burst of clients start before refilling

    async def take(self) -> trio.SocketStream:
        self._wanted.set()
        if self._spares:
            return self._spares.pop()
        return await trio.open_tcp_stream(self.host, self.port)


_READABLE: Final = select.EPOLLIN | select.EPOLLRDHUP


def _raw(stream: trio.SocketStream) -> socket.socket:
    raw = getattr(stream.socket, "_sock", None)  # trio's socket wraps a stdlib one
    assert isinstance(raw, socket.socket)
    return raw


class Pump:
    """``--pump``: every piped connection pair moved by one task over a private epoll set."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        #: fd -> (its socket, the peer's socket, the pair's done event)
        self._pairs: dict[int, tuple[socket.socket, socket.socket, trio.Event]] = {}
        #: fd of a socket that did not take a whole write -> the rest of it
        self._pending: dict[int, bytes] = {}

    def add(self, a: trio.SocketStream, b: trio.SocketStream) -> trio.Event:
        """Pipe ``a`` and ``b``; the event is set once either side ended."""
        done = trio.Event()
        raw_a, raw_b = _raw(a), _raw(b)
        for raw, peer in ((raw_a, raw_b), (raw_b, raw_a)):
            self._pairs[raw.fileno()] = (raw, peer, done)
            self._epoll.register(raw.fileno(), _READABLE)
        return done

    def _end(self, fd: int) -> None:
        pair = self._pairs.get(fd)
        if pair is None:
            return
        raw, peer, done = pair
        for end in (raw, peer):
            self._pairs.pop(end.fileno(), None)
            self._pending.pop(end.fileno(), None)
            self._epoll.unregister(end.fileno())
        done.set()  # the handler closes both sockets through trio

    async def run(self) -> None:
        epoll, buffer, view, pairs, pending = (
            self._epoll,
            self._buffer,
            self._view,
            self._pairs,
            self._pending,
        )
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            for fd, events in epoll.poll(0, 512):
                pair = pairs.get(fd)
                if pair is None:
                    continue  # ended earlier in this batch
                raw, peer, _ = pair
                if fd in pending:  # a write was waiting for room
                    if not events & select.EPOLLOUT:
                        self._end(fd)  # hung up or failed
                        continue
                    rest = pending.pop(fd)
                    try:
                        sent = raw.send(rest)
                    except OSError:
                        self._end(fd)
                        continue
                    if sent < len(rest):
                        pending[fd] = rest[sent:]
                    else:
                        epoll.modify(fd, _READABLE)
                        epoll.modify(peer.fileno(), _READABLE)  # read its source again
                    continue
                if peer.fileno() in pending:
                    # Paused (interest 0) while its peer drains. EPOLLERR and EPOLLHUP are
                    # reported whatever the interest: the source reset or is gone, and
                    # reading it now would replace the bytes still waiting for the peer.
                    if events & (select.EPOLLERR | select.EPOLLHUP):
                        self._end(fd)
                    continue
                try:
                    n = raw.recv_into(buffer)
                except BlockingIOError:
                    continue
                except OSError:
                    self._end(fd)
                    continue
                if not n:
                    self._end(fd)
                    continue
                try:
                    sent = peer.send(view[:n])
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._end(fd)
                    continue
                if sent < n:  # backpressure: read no more of this side until the peer drains
                    pending[peer.fileno()] = bytes(view[sent:n])
                    epoll.modify(fd, 0)
                    epoll.modify(peer.fileno(), select.EPOLLOUT)


async def piped_client(
    client: trio.SocketStream, spares: SpareConnections, pump: Pump | None
) -> None:
    """Serve one client connection as a bare byte pipe to its own upstream connection:
    two copying tasks (``--pipe``), or through the pump (``--pump``)."""
    async with client:
        try:
            upstream = await spares.take()
        except OSError:
            with trio.move_on_after(1):
                await client.send_all(BAD_GATEWAY)
            return
        async with upstream:
            if pump is not None:
                await pump.add(client, upstream).wait()
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_copy, client, upstream, nursery.cancel_scope)
                nursery.start_soon(_copy, upstream, client, nursery.cancel_scope)


async def serve(
    host: str, port: int, upstream_host: str, upstream_port: int, mode: str = "proxy"
) -> None:
    """Listen on ``host:port`` and proxy (``mode`` "proxy"), pipe ("pipe") or pump ("pump")
    to the upstream, forever."""
    pool = UpstreamPool(upstream_host, upstream_port)
    spares = SpareConnections(upstream_host, upstream_port)
    pump = Pump()

    async def handler(client: trio.SocketStream) -> None:
        if mode == "proxy":
            await handle_client(client, pool)
        else:
            await piped_client(client, spares, pump if mode == "pump" else None)

    async with trio.open_nursery() as nursery:
        if mode != "proxy":
            nursery.start_soon(spares.keep_filled)
        if mode == "pump":
            nursery.start_soon(pump.run)
        await trio.serve_tcp(handler, port, host=host, backlog=4096)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=_host_port, required=True, metavar="HOST:PORT")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--pipe",
        dest="mode",
        action="store_const",
        const="pipe",
        help="the streaming floor: a bare byte pipe per connection, no HTTP parsing",
    )
    mode.add_argument(
        "--pump",
        dest="mode",
        action="store_const",
        const="pump",
        help="the pipe with all sockets moved by one task over a private epoll set",
    )
    args = parser.parse_args(argv)
    upstream_host, upstream_port = args.upstream
    try:
        trio.run(serve, args.host, args.port, upstream_host, upstream_port, args.mode or "proxy")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
