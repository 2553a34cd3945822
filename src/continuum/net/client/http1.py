"""Upstream HTTP/1.1 exchanges on pooled trio streams, parsed with httptools.

The pool's interface (:class:`Exchange`: status, headers, ``receive_some``, ``close``) does
not mention HTTP/1.1, so an HTTP/2 pool can stand behind the same calls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, final

import httptools
import trio

from ..fastio import FastStream

if TYPE_CHECKING:
    from .http1_pool import HTTP1Pool

Headers = list[tuple[bytes, bytes]]

_RECEIVE_SIZE = 65536
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


@final
class HTTP1Connection:
    """One keep-alive HTTP/1.1 connection to an upstream; owned by an :class:`HTTP1Pool`."""

    __slots__ = (
        "_body",
        "_chunked",
        "_content_length",
        "_head_fed",
        "_head_limit",
        "_headers",
        "_held",
        "_parser",
        "_status",
        "can_reuse",
        "complete",
        "headers_done",
        "io",
        "last_used",
        "raw",
        "received_any",
        "reused",
        "stream",
    )

    def __init__(
        self, stream: trio.abc.Stream, raw: trio.SocketStream, head_limit: int = DEFAULT_MAX_HEAD
    ) -> None:
        self.stream = stream
        self.io = FastStream(stream)
        self.raw = raw
        self.reused = False
        self.last_used = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self._body: deque[bytes] = deque()
        self._status = 0
        self._content_length = False
        self._chunked = False
        self.headers_done = False
        self.complete = False
        self.can_reuse = False
        self.received_any = False
        self._head_limit = head_limit
        self._head_fed = 0  # bytes of response head(s) given to the parser so far
        self._held = bytearray()  # an unfinished head line, not given to the parser yet

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field: never a header of the answer (_receive bounds them)
        name = name.lower()
        if name == b"content-length":
            self._content_length = True
        elif name == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim response: ignore it and wait for the real one
            self._headers = []
            return
        self._status = status
        self.headers_done = True
        self._head_fed = 0  # from now on: bytes without body data (see _receive)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True
            # llhttp resets its flags after this callback: read keep-alive now.
            self.can_reuse = bool(self._parser.should_keep_alive())

    # lifecycle
    def reset_for_request(self) -> None:
        self._headers = []
        self._body.clear()
        self._status = 0
        self._content_length = False
        self._chunked = False
        self.headers_done = False
        self.complete = False
        self.can_reuse = False
        self.received_any = False
        self._head_fed = 0
        self._held.clear()

    @property
    def keep_alive(self) -> bool:
        return self.complete and self.can_reuse

    def close(self) -> None:
        """Close at once, without TLS close_notify: used for dirty or abandoned exchanges."""
        self.raw.socket.close()

    async def _receive(self) -> None:
        try:
            data = await self.io.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamError(
                f"upstream connection failed: {exc or type(exc).__name__}",
                sent_nothing=False,
            ) from exc
        if not data:
            if self.headers_done and not self._content_length and not self._chunked:
                self.complete = True  # close-delimited body
                self._parser = httptools.HttpResponseParser(self)  # unusable for reuse
                return
            raise UpstreamError(
                "upstream closed the connection before the response was complete"
                if self.received_any
                else "upstream closed the connection without a response"
            )
        self.received_any = True
        if not self.headers_done:
            self._feed_head(data)
            return
        body = self._body
        pending = len(body)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"malformed response from upstream: {exc}") from exc
        if not self._chunked:
            return
        if len(body) == pending and not self.complete:
            # Bytes that carried no body: chunk framing, chunk extensions, trailers. Bounded
            # like a head, or an endless trailer would grow inside httptools unseen.
            self._head_fed += len(data)
            if self._head_fed > self._head_limit:
                raise UpstreamError(
                    f"upstream sent more than {self._head_limit} bytes of chunk framing or "
                    "trailers without body data (http_client.max_response_header_size)")
        elif self._head_fed:
            self._head_fed = 0

    def _feed(self, data: bytes | bytearray) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"malformed response from upstream: {exc}") from exc

    def _feed_head(self, data: bytes | bytearray) -> None:
        """Feed response-head bytes, bounded by the head limit as they arrive.

        llhttp hands an unfinished header value over piece by piece and httptools joins the
        pieces by copying, so a value dripped a byte at a time costs quadratic time. Only
        whole lines are fed (an unfinished one waits in ``_held``), which keeps it linear,
        and nothing past the limit is fed at all.
        """
        limit = self._head_limit
        held = self._held
        if b"\n" not in data:  # still inside one line
            held += data
            if self._head_fed + len(held) > limit:
                raise self._too_large()
            return
        start = 0
        if held:
            start = max(len(held) - 3, 0)  # the blank line may straddle the two pieces
            held += data
            data = bytes(held)
            held.clear()
        # When what was fed ended with a line, a leading CRLF is the blank line after it.
        end = -2 if self._head_fed and data[:2] == b"\r\n" else data.find(b"\r\n\r\n", start)
        if end != -1:
            if self._head_fed + end + 4 > limit:
                raise self._too_large()
            self._feed(data)  # the whole head, and the body bytes behind it
            if not self.headers_done:  # that was an interim (1xx) head
                self._head_fed += len(data)
            return
        if self._head_fed + len(data) > limit:
            raise self._too_large()
        cut = data.rfind(b"\n") + 1
        self._feed(data[:cut])
        self._head_fed += cut
        if not self.headers_done:
            held += data[cut:]
        elif cut < len(data):  # a head ended by bare LFs: the rest is body
            self._feed(data[cut:])

    def _too_large(self) -> UpstreamError:
        return UpstreamError(
            f"upstream response head larger than {self._head_limit} bytes "
            "(http_client.max_response_header_size)"
        )

    async def receive_head(self) -> tuple[int, Headers]:
        while not self.headers_done:
            await self._receive()
        return self._status, self._headers

    async def receive_some(self) -> bytes:
        body = self._body
        while not body:
            if self.complete:
                return b""
            await self._receive()
        if len(body) == 1:
            return body.popleft()
        data = b"".join(body)
        body.clear()
        return data


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
        return await read_body(self.receive_some, limit)

    def unread(self, data: bytes) -> None:
        if self._conn is not None:
            self._conn._body.appendleft(data)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)
