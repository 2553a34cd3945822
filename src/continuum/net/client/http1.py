"""One upstream HTTP/1.1 connection on a trio stream, its responses parsed with httptools
(the pool that owns it is :mod:`.http1_pool`)."""

from __future__ import annotations

import socket
from collections import deque
from typing import Final, final

import httptools
import trio

from ...core.http import Headers
from ..fastio import FastStream, raw_socket
from .exchange import DEFAULT_MAX_HEAD, UpstreamError

_RECEIVE_SIZE = 65536
#: The answer's fields that say how its body is framed.
_FRAMING: Final = frozenset((b"content-length", b"transfer-encoding"))


def _malformed(exc: httptools.HttpParserError) -> UpstreamError:
    return UpstreamError(f"malformed response from upstream: {exc}")


def _failed(exc: BaseException) -> UpstreamError:
    return UpstreamError(f"upstream connection failed: {exc or type(exc).__name__}",
                         sent_nothing=False)


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
        if name in _FRAMING:  # one set lookup for the other fields
            if name == b"content-length":
                self._content_length = True
            else:
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
        """Before each request. Not reset: ``_status`` (read only once a new head set it)
        and ``_held`` (empty once a head is complete, and only a connection whose last
        answer completed is used again)."""
        self._headers = []
        self._body.clear()
        self._content_length = False
        self._chunked = False
        self.headers_done = False
        self.complete = False
        self.can_reuse = False
        self.received_any = False
        self._head_fed = 0

    def close(self) -> None:
        """Close at once, without TLS close_notify: used for dirty or abandoned exchanges."""
        self.raw.socket.close()

    async def _receive(self) -> None:
        try:
            data = await self.io.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _failed(exc) from exc
        self._received(data)

    def receive_ready(self) -> bool:
        """Read and parse what the socket holds now, without waiting: the stream pump's
        read once epoll said the socket is readable (plain sockets only). False when
        nothing was ready; the body parsed is taken with :meth:`take_body`."""
        try:
            data = self.io.receive_nowait(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _failed(exc) from exc
        if data is None:
            return False
        self._received(data)
        return True

    def _received(self, data: bytes | bytearray) -> None:
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
            raise _malformed(exc) from exc
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
            raise _malformed(exc) from exc

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

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the body (see :meth:`Exchange.unread`)."""
        self._body.appendleft(data)

    def pump_socket(self) -> socket.socket | None:
        """The plain socket under this connection, for the stream pump to watch (it reads
        through :meth:`receive_ready`); None under TLS."""
        return raw_socket(self.stream)

    def take_body(self) -> bytes:
        """The body bytes parsed and not yet returned (b"" if none), without waiting."""
        body = self._body
        if not body:
            return b""
        if len(body) == 1:
            return body.popleft()
        data = b"".join(body)
        body.clear()
        return data

    async def receive_some(self) -> bytes:
        body = self._body
        while not body:
            if self.complete:
                return b""
            await self._receive()
        return self.take_body()


