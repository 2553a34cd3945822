"""HTTP/1.1 server connections on trio streams, parsed with httptools (llhttp).

Why not h11 or hypercorn: DESIGN.md measured a bare trio+httptools server at ~4x h11 and
~16x hypercorn-trio. This module is the thin shell that the Ingress actor and the mock
upstream share: it parses requests (pipelined ones answered in order), enforces the size
and time limits, and gives the handler a :class:`ServerConnection` to answer on with one
``send_all`` per response where possible.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, final

import httptools
import trio

from .._clock import now as clock
from ._fastio import FastStream

log = logging.getLogger("continuum.http")

Headers = list[tuple[bytes, bytes]]

_RECEIVE_SIZE: Final = 65536
_CHECKPOINT_EVERY: Final = 8


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """Limits applied to every client connection (see ``server.*`` in the config)."""

    max_header_size: int = 65536
    max_body_size: int = 10 * 1024 * 1024
    request_read_timeout: float = 30.0
    keepalive_timeout: float = 75.0


@final
class Request:
    """One parsed request. Header names are lower-cased; the body is complete."""

    __slots__ = ("body", "headers", "http_version", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        body: bytes,
        keep_alive: bool,
        http_version: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http_version = http_version

    def header(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ProtocolError(Exception):
    """A request refused with ``status`` by the HTTP layer (or on a handler's behalf, see
    ``arm_timer``); ``body`` overrides the server's error renderer (JSON content)."""

    def __init__(self, status: int, message: str, body: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES: Final[dict[int, bytes]] = {s.value: _status_line(s.value) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else _status_line(status)


@final
class DateCache:
    """The ``date`` header, formatted at most once a second (formatdate costs ~5 µs)."""

    __slots__ = ("_header", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


class _Parser:
    """httptools callbacks; completed requests queue up in ``ready`` (pipelining)."""

    def __init__(self, limits: HTTPLimits) -> None:
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[Request] = deque()
        self.in_message = False
        self.headers_done = False
        self.expect_continue = False
        self.content_length: int | None = None
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self.error: ProtocolError | None = None

    def on_message_begin(self) -> None:
        self.in_message = True
        self.headers_done = False
        self.expect_continue = False
        self.content_length = None
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def _too_large(self) -> None:
        self.error = ProtocolError(431, "Request header fields too large")
        raise self.error

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_size:
            self._too_large()
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_size:
            self._too_large()
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
            elif name == b"expect" and value.lower() == b"100-continue":
                self.expect_continue = True
        if self.content_length is not None and self.content_length > self.limits.max_body_size:
            self.error = ProtocolError(413, "Request body too large")
            raise self.error

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_size:
            self.error = ProtocolError(413, "Request body too large")
            raise self.error
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        url = self._url
        path, sep, query = url.partition(b"?")
        parser = self.parser
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self.ready.append(
            Request(
                parser.get_method().decode("latin-1"),
                path.decode("latin-1"),
                query.decode("latin-1") if sep else "",
                self._headers,
                body,
                parser.should_keep_alive(),
                parser.get_http_version(),
            )
        )

    def feed(self, data: bytes | bytearray) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ProtocolError(400, "Protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            if self.error is not None:
                raise self.error from None
            raise ProtocolError(400, f"Malformed HTTP request: {exc}") from None


_SLOW_CLIENT: Final = ProtocolError(408, "Client took too long to send the request")

Handler = Callable[["Request", "ServerConnection"], Awaitable[None]]
ErrorRenderer = Callable[[int, str], tuple[Headers, bytes]]


def _plain_error(status: int, message: str) -> tuple[Headers, bytes]:
    return [(b"content-type", b"text/plain; charset=utf-8")], message.encode() + b"\n"


@final
class ServerConnection:
    """One client connection. Handlers answer through the ``send_*`` methods.

    ``closing`` set by anyone (handler, shutdown) makes the current response the last one.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        limits: HTTPLimits,
        dates: DateCache,
        render_error: ErrorRenderer = _plain_error,
    ) -> None:
        self.stream = stream
        self.io = FastStream(stream)
        self.limits = limits
        self.closing = False
        self.idle = True
        self._dates = dates
        self._render_error = render_error
        self._parser = _Parser(limits)
        self._pending: list[bytes | bytearray] = []
        self._request_deadline: float | None = None
        #: When the sweeper of :class:`HTTPServer` should end this connection (see
        #: ``arm_timer``): a float write per request instead of a trio deadline change.
        self.deadline = math.inf
        self._timer_error: ProtocolError | None = None
        self._timer_scope: trio.CancelScope | None = None
        #: The id of the request being handled (set by the handler), echoed on an error
        #: the server sends on its behalf (a timer's 504).
        self.request_id: bytes | None = None
        #: Set when a timer ended the connection (status 0: closed without a response).
        self.expired: ProtocolError | None = None
        self._eof = False
        self._scope = trio.CancelScope()
        self._responded = False
        self._keep_alive = True

    # -- writing -------------------------------------------------------------------------

    def _head(self, status: int, headers: Headers | bytes, extra: bytes) -> bytearray:
        head = bytearray(status_line(status))
        head += self._dates.header()
        if isinstance(headers, bytes):
            head += headers
        else:
            for name, value in headers:
                head += name + b": " + value + b"\r\n"
        head += extra
        if not self._keep_alive or self.closing:
            head += b"connection: close\r\n"
        head += b"\r\n"
        return head

    async def send_response(self, status: int, headers: Headers | bytes, body: bytes) -> None:
        """Head and body in one ``send_all``. ``headers`` may be pre-encoded lines."""
        self._responded = True
        data = self._head(status, headers, b"content-length: %d\r\n" % len(body))
        data += body
        await self.io.send_all(data)

    async def send_error(self, status: int, message: str) -> None:
        headers, body = self._render_error(status, message)
        await self.send_response(status, headers, body)

    async def start_chunked(self, status: int, headers: Headers | bytes) -> None:
        """Begin a streamed response (chunked transfer encoding)."""
        self._responded = True
        await self.io.send_all(self._head(status, headers, b"transfer-encoding: chunked\r\n"))

    async def send_chunk(self, data: bytes) -> None:
        if data:
            await self.io.send_all(b"%x\r\n%b\r\n" % (len(data), data))

    async def end_chunked(self, last: bytes = b"") -> None:
        if last:
            await self.io.send_all(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last))
        else:
            await self.io.send_all(b"0\r\n\r\n")

    @property
    def responded(self) -> bool:
        return self._responded

    # -- reading -------------------------------------------------------------------------

    async def watch_disconnect(self) -> None:
        """Return when the client closes its side (or the socket fails).

        Runs beside a streamed response, so a client that goes away cancels the upstream
        exchange at once instead of at the next chunk. Bytes that arrive meanwhile (a
        pipelined request) are kept for the parser.
        """
        while True:
            try:
                data = await self.io.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._eof = True
                return
            self._pending.append(data)

    def close_if_idle(self) -> None:
        """Graceful shutdown: close now if between requests, else after this response."""
        self.closing = True
        if self.idle:
            self._scope.cancel()

    def use_stream(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        """Write through ``stream`` from now on (e.g. a wrapper); returns the previous one."""
        previous, self.stream = self.stream, stream
        self.io = FastStream(stream)
        return previous

    def arm_timer(
        self,
        deadline: float,
        error: ProtocolError | None = None,
        scope: trio.CancelScope | None = None,
    ) -> None:
        """At ``deadline`` the server's sweeper cancels ``scope`` — or, without one, ends
        this connection: everything in flight on it is cancelled, then ``error`` (if given
        and no response has started) is sent and the connection closed. Handlers use it
        for their own deadlines: a trio deadline per request, or per streamed chunk, costs
        more than the rest of the handler."""
        self._timer_error = error
        self._timer_scope = scope
        self.deadline = deadline

    def disarm_timer(self) -> None:
        self.deadline = math.inf

    def expire(self) -> None:
        """Called by the sweeper when ``deadline`` has passed."""
        self.deadline = math.inf
        if self._timer_scope is not None:
            self._timer_scope.cancel()
            return
        self.expired = self._timer_error or ProtocolError(0, "")
        self._scope.cancel()

    def abort(self) -> None:
        """Drop the connection without a response (for deliberate resets and hangs)."""
        self._responded = True
        self.closing = True
        self._keep_alive = False

    async def _next_request(self) -> Request | None:
        """The next complete request, or None when the client is done.

        Timeouts arm the sweeper on the one connection-wide cancel scope (entered in
        :meth:`serve`) instead of opening a scope, or moving a trio deadline, per receive.
        """
        parser = self._parser
        data: bytes | bytearray
        while not parser.ready:
            if self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
            elif self._eof:
                if parser.in_message:
                    raise ProtocolError(400, "Client closed the connection mid-request")
                return None
            else:
                if parser.in_message:
                    if parser.expect_continue and parser.headers_done:
                        parser.expect_continue = False
                        await self.io.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.idle = False
                    self.arm_timer(self._request_deadline or clock(), _SLOW_CLIENT)
                else:
                    if self.closing:
                        return None
                    self.idle = True
                    self.arm_timer(clock() + self.limits.keepalive_timeout)
                try:
                    data = await self.io.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._eof = True
                    continue
                self.idle = False
            parser.feed(data)
            if parser.in_message and self._request_deadline is None:
                # The whole request must arrive within request_read_timeout of its first byte.
                self._request_deadline = clock() + self.limits.request_read_timeout
        self.idle = False
        self.deadline = math.inf
        self._request_deadline = (
            clock() + self.limits.request_read_timeout if parser.in_message else None
        )
        return parser.ready.popleft()

    async def serve(self, handler: Handler) -> None:
        """Answer requests until the client leaves, errs, or the server drains."""
        try:
            error: ProtocolError | None = None
            served = 0
            with self._scope:
                while True:
                    try:
                        request = await self._next_request()
                    except ProtocolError as exc:
                        error = exc
                        break
                    if request is None:
                        return
                    self._keep_alive = request.keep_alive
                    self._responded = False
                    served += 1
                    if served % _CHECKPOINT_EVERY == 0:
                        # The fast I/O path does not yield: a busy pipelining client must
                        # not starve the other connections.
                        await trio.lowlevel.checkpoint()
                    await handler(request, self)
                    if not self._responded:
                        self._keep_alive = False
                        await self.send_error(500, "The handler sent no response")
                    if not self._keep_alive or self.closing:
                        return
            expired = self.expired
            if error is None and expired is not None and expired.status and not self._responded:
                error = expired
            if error is not None:
                self._keep_alive = False
                if error.body is not None:
                    headers, body = [(b"content-type", b"application/json")], error.body
                else:
                    headers, body = self._render_error(error.status, error.message)
                if self.request_id is not None:  # the timed-out request's id
                    headers = [*headers, (b"x-request-id", self.request_id)]
                with trio.move_on_after(1.0):
                    await self.send_response(error.status, headers, body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

