"""HTTP/1.1 server connections on trio streams, parsed with httptools (llhttp).

Why not h11 or hypercorn: a bare trio+httptools server measured ~4x h11 and ~16x
hypercorn-trio (docs/design.md). This module is the thin shell that the Ingress actor and the
mock upstream share: it parses requests (pipelined ones answered in order), enforces the size
and time limits, and gives the handler a :class:`ServerConnection` to answer on with one
``send_all`` per response where possible.

What one connection can never do to the others (see docs/operations.md, "Limits and
timeouts"):

* hold the event loop: reads yield regularly (:mod:`._fastio`), and an unfinished head is fed
  to the parser in pieces of at most :data:`_HEAD_PIECE` bytes and refused (431) once it
  passes ``max_header_size`` — httptools copies a header value that arrives in pieces on
  every piece, so an unbounded one would cost quadratic time;
* grow memory without bound: bytes a client sends during a streamed answer are kept up to
  :data:`_WATCH_BUFFER`, then it is no longer read (TCP pushes back);
* stall a write forever: a client that accepts nothing for ``write_timeout`` is dropped;
* end the server: whatever a handler raises is logged once and answered 500 (if nothing was
  sent yet) on that connection only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, final

import httptools
import msgspec
import trio

from ...core.clock import now as clock
from ...core.http import Headers, head_lines
from ...core.realtime import NOT_AN_UPGRADE, handshake_problem
from ..fastio import FastStream, raw_socket

if TYPE_CHECKING:
    from ..websocket_relay import MessageConnection, RelaySettings

log = logging.getLogger("continuum.http")


_RECEIVE_SIZE: Final = 65536
_CHECKPOINT_EVERY: Final = 8
#: An unfinished head is fed to the parser at most this many bytes at a time. (A pipelined
#: request's head may be over-counted by up to this much: the piece that began it is counted
#: whole.)
_HEAD_PIECE: Final = 4096
#: Bytes kept from a client while its streamed answer runs (a pipelined request, usually);
#: past this, the client is not read until the stream ends.
_WATCH_BUFFER: Final = 65536
#: Bodies up to this size are copied behind the head and sent with one ``send``; larger ones
#: go out with the head in one ``sendmsg``, uncopied.
_COPY_BODY_MAX: Final = 16384
#: After refusing a request whose body may still be on its way, the connection reads and
#: drops up to this many bytes for up to this long before it closes: closing with unread
#: input would reset the connection, and the client might never see the answer.
_LINGER_BYTES: Final = 1 << 20
_LINGER_SECONDS: Final = 1.0
_INF: Final = math.inf


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """Limits applied to every client connection (see ``server.*`` in the config)."""

    max_header_size: int = 65536
    max_body_size: int = 10 * 1024 * 1024
    request_read_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    #: A connection idle this long between requests is parked without a task
    #: (``.parking``); 0: never.
    park_after: float = 0.25
    #: A client that accepts no bytes of an answer for this long is disconnected.
    write_timeout: float = 60.0
    #: Paths whose ``multipart/*`` bodies are handed to the handler as they arrive
    #: (:attr:`Request.body_stream`) instead of whole; bounded by ``max_upload_size``.
    stream_paths: frozenset[bytes] = frozenset()
    max_upload_size: int = 100 * 1024 * 1024


@final
class Request(msgspec.Struct):
    """One parsed request. Header names are lower-cased; the body is complete, unless the
    request came with a :attr:`body_stream` (an upload, see ``HTTPLimits.stream_paths``):
    then ``body`` is empty and the handler reads the stream.

    ``headers`` is what goes upstream on a pass-through: change it with
    :meth:`set_header` and :meth:`drop_headers`, which keep :meth:`header`'s index right.

    A Struct: one is made per request, and its constructor runs in C."""

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    keep_alive: bool
    body_stream: BodyStream | None = None
    #: ``headers`` as a dict when each name occurs once (the parser has built it for its
    #: own checks): a lookup instead of a scan. None: scan (a repeated name, whose first
    #: value counts).
    _named: dict[bytes, bytes] | None = None

    def __repr__(self) -> str:
        # Never the fields: a header may be a credential.
        return f"<Request {self.method} {self.path}>"

    def header(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lower-case bytes), or None."""
        named = self._named
        if named is not None:
            return named.get(name)
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def set_header(self, name: bytes, value: bytes) -> None:
        """Make ``value`` the one field ``name`` (lower-case), behind the others."""
        named = self._named
        if named is None or name in named:
            self.headers = [field for field in self.headers if field[0] != name]
        self.headers.append((name, value))
        if named is not None:
            named[name] = value

    def drop_headers(self, names: tuple[bytes, ...]) -> None:
        """Remove every field named in ``names`` (lower-case)."""
        self.headers = [field for field in self.headers if field[0] not in names]
        named = self._named
        if named is not None:
            for name in names:
                named.pop(name, None)


class ProtocolError(Exception):
    """A request refused with ``status`` by the HTTP layer (or on a handler's behalf, see
    ``arm_timer``); ``body`` overrides the server's error renderer (JSON content)."""

    def __init__(self, status: int, message: str, body: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer the HTTP layer makes itself, for a request no handler saw (400, 408, 413,
    431, 501): what is known of that request, for its error body, id and log line."""

    status: int
    message: str
    method: str  # "" when the request line was not parsed
    path: str  # "" when unknown
    started: float  # clock() at the request's first byte (or when it was refused)


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


#: Method names as ``str``, decoded once rather than per request.
_METHODS: Final = {m.encode(): m for m in ("GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH",
                                           "DELETE")}


class _Parser:
    """httptools callbacks; completed requests queue up in ``ready`` (pipelining).

    :meth:`feed` bounds what httptools is given: an unfinished head (or the bytes between
    requests) in pieces of :data:`_HEAD_PIECE`, counted against ``max_header_size``; a
    content-length body up to its end exactly, so the next request's head is counted from
    its first byte; a chunked body whole, but framing that makes no progress (a trailer or
    chunk line that never ends) is counted against ``max_header_size`` too.
    """

    def __init__(self, limits: HTTPLimits, upgrade_paths: frozenset[str] = frozenset()) -> None:
        self.limits = limits
        #: Paths whose WebSocket upgrade requests go to the handler (others are refused).
        self.upgrade_paths = upgrade_paths
        #: Set once a WebSocket upgrade request was queued (the last one the parser will
        #: give): the bytes that followed its head, which belong to the new protocol.
        self.upgrade: bytes | None = None
        self.parser = httptools.HttpRequestParser(self)
        #: A list, not a deque: an empty deque holds a 64-slot block (~0.7 KB) per
        #: connection for its whole life; pipelined requests rarely queue more than a few.
        self.ready: list[Request] = []
        self.in_message = False
        self.headers_done = False
        self.expect_continue = False
        self.content_length: int | None = None
        self.chunked = False
        self._url = b""
        self._headers: Headers = []
        #: ``_headers`` as a dict, once the head is complete and each name occurs once.
        self._named: dict[bytes, bytes] | None = None
        self._header_bytes = 0
        #: Count the head's bytes field by field (and tell trailer fields apart): off only
        #: while a piece no larger than ``max_header_size`` that began between requests is
        #: parsed, since no head inside it can be larger than the piece (see ``feed``).
        self._careful = True
        self._body: list[bytes] = []
        self._body_size = 0
        #: Bytes fed since the last head completed, while no head completed (see ``feed``).
        self._head_raw = 0
        self._head_completed = False
        self._progress = False
        self._stalled = 0
        self.error: ProtocolError | None = None
        #: The body of the request being parsed goes here instead of ``_body`` (an upload).
        self.stream: BodyStream | None = None
        #: Set by the connection: makes the :class:`BodyStream` of a streamed request.
        self.open_stream: Callable[[int | None, bool], BodyStream] | None = None

    def release(self) -> None:
        """The connection is over: drop what makes it a reference cycle (httptools holds
        this parser's bound callbacks; ``open_stream`` and ``stream`` hold the connection),
        so that it is freed as its task ends, not by a collection of the cyclic garbage
        collector (which lets closed connections pile up and makes each collection walk
        them). Nothing may be fed after it."""
        del self.parser
        self.open_stream = None
        self.stream = None
        self.ready.clear()

    @property
    def method(self) -> str:
        """The method of the request being parsed ("" before its request line)."""
        return self.parser.get_method().decode("latin-1") if self._url else ""

    @property
    def path(self) -> str:
        """The path of the request being parsed ("" before its request line)."""
        return self._url.partition(b"?")[0].decode("latin-1")

    def on_message_begin(self) -> None:
        self.in_message = True
        self.headers_done = False
        self.expect_continue = False
        self.content_length = None
        self.chunked = False
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def _refuse(self, status: int, message: str) -> None:
        self.error = ProtocolError(status, message)
        raise self.error

    def _too_large(self) -> None:
        self._refuse(431, "Request header fields too large")

    def on_url(self, url: bytes) -> None:
        if self._careful:
            self._header_bytes += len(url)
            if self._header_bytes > self.limits.max_header_size:
                self._too_large()
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._careful:
            self._counted_header(name, value)
            return
        self._headers.append((name.lower(), value))

    def _counted_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_size:
            self._too_large()
        if self.headers_done:
            # A chunked body's trailer field: never a request header (it would reach auth
            # and go upstream), only counted.
            self._progress = True
            return
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self._head_completed = True
        self._careful = True  # trailer fields may follow, and pipelined heads
        headers = self._headers
        named = dict(headers)
        if len(named) == len(headers):
            self._named = named
            # Each name once (the usual head): the few that matter here, looked up.
            hosts = 1 if b"host" in named else 0
            length = named.get(b"content-length")
            if length is not None:
                try:
                    self.content_length = int(length)
                except ValueError:
                    self.content_length = None
            encoding = named.get(b"transfer-encoding")
            expect = named.get(b"expect")
            if expect is not None and expect.lower() == b"100-continue":
                self.expect_continue = True
            content_type = named.get(b"content-type")
        else:
            self._named = None
            hosts, encoding, content_type = self._repeated(headers)
        if encoding is not None:
            if encoding.strip().lower() != b"chunked":
                # Only plain chunked framing: a coding we would pass on undecoded
                # (gzip, chunked) is refused, as RFC 9112 says, rather than guessed at.
                self._refuse(501, "Transfer-Encoding "
                             f"{encoding.decode('latin-1')!r} is not supported; use chunked")
            self.chunked = True
        if hosts != 1 and self.parser.get_http_version() == "1.1":
            self._refuse(400, "An HTTP/1.1 request needs exactly one Host header "
                         f"(got {hosts})")
        if (content_type is not None and self.limits.stream_paths
                and content_type[:10].lower() == b"multipart/"
                and self._url.partition(b"?")[0] in self.limits.stream_paths):
            self._start_stream()
            return
        if self.content_length is not None and self.content_length > self.limits.max_body_size:
            self._refuse(413, "Request body too large")

    def _repeated(self, headers: Headers) -> tuple[int, bytes | None, bytes | None]:
        """A head with a repeated field name, taken field by field: the number of Host
        fields, the Transfer-Encoding values joined, and the last Content-Type."""
        hosts = 0
        encoding: bytes | None = None
        content_type: bytes | None = None
        for name, value in headers:
            if name == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
            elif name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                encoding = value if encoding is None else encoding + b"," + value
            elif name == b"expect" and value.lower() == b"100-continue":
                self.expect_continue = True
            elif name == b"content-type":
                content_type = value
        return hosts, encoding, content_type

    def fail_stream(self, error: ProtocolError) -> None:
        """The body being streamed cannot be parsed further: its reader gets ``error``."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.error = error

    def _start_stream(self) -> None:
        """Hand the request over now, its body to follow through a :class:`BodyStream`."""
        limit = self.limits.max_upload_size
        if self.content_length is not None and self.content_length > limit:
            self._refuse(413, f"Upload too large: at most {limit} bytes")
        assert self.open_stream is not None
        stream = self.stream = self.open_stream(
            None if self.chunked else self.content_length, self.parser.should_keep_alive())
        self.ready.append(self._request(b"", stream))

    def _request(self, body: bytes, stream: BodyStream | None = None) -> Request:
        path, sep, query = self._url.partition(b"?")
        parser = self.parser
        method = parser.get_method()
        return Request(
            _METHODS.get(method) or method.decode("latin-1"),
            path.decode("latin-1"),
            query.decode("latin-1") if sep else "",
            self._headers,
            body,
            parser.should_keep_alive(),
            stream,
            self._named,
        )

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if not self.chunked and self.stream is None:
            # Within content-length, and that was checked against max_body_size at the head.
            self._body.append(body)
            return
        self._progress = True
        stream = self.stream
        if stream is not None:
            if self._body_size > self.limits.max_upload_size:
                self._refuse(413, f"Upload too large: at most {self.limits.max_upload_size} "
                             "bytes")
            stream.pieces.append(body)
            return
        if self._body_size > self.limits.max_body_size:
            self._refuse(413, "Request body too large")
        self._body.append(body)

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_message_complete(self) -> None:
        self.in_message = False
        stream = self.stream
        if stream is not None:  # handed over at its head already
            stream.complete = True
            self.stream = None
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []  # the pieces go now, not at the next request
        self.ready.append(self._request(body))

    def feed(self, data: bytes | bytearray) -> None:
        size = len(data)
        limit = self.limits.max_header_size
        if size <= _HEAD_PIECE and not (self.in_message and self.headers_done):
            # The usual read: one small request (or the start of one), in one piece. A head
            # that begins in it is no larger than it: when that is within the limit, the
            # fields need no counting until that head ends.
            self._head_completed = False
            self._careful = self.in_message or size > limit
            try:
                self._feed(data)
            except _Upgraded:
                return
            if not self._careful and self.in_message:
                # That head goes on in the next piece: count it from here, over-counted
                # by what came before it in this piece.
                self._careful = True
                self._header_bytes = size
            self._count_head(size, limit)
            return
        self._careful = True
        view = memoryview(data)
        pos = 0
        while pos < size:
            if self.in_message and self.headers_done:
                if self.content_length is not None and not self.chunked:
                    # Up to the body's end exactly: the next head starts a fresh piece.
                    end = pos + self.content_length - self._body_size
                    if end <= pos:
                        end = size
                    self._feed(view[pos:end])
                    pos = min(end, size)
                    continue
                # A chunked body: whole, but framing without progress is bounded.
                self._progress = False
                self._feed(view[pos:])
                if self.in_message and self.headers_done and not self._progress:
                    self._stalled += size - pos
                    if self._stalled > limit:
                        self._refuse(431, "Chunked framing or trailer fields too large")
                else:
                    self._stalled = 0
                return
            # Between requests or inside a head: a piece at a time, counted.
            end = pos + _HEAD_PIECE
            self._head_completed = False
            try:
                self._feed(view[pos:end])
            except _Upgraded:
                assert self.upgrade is not None
                self.upgrade += bytes(view[end:])  # what follows this piece is theirs too
                return
            piece = min(end, size) - pos
            pos += piece
            self._count_head(piece, limit)

    def _count_head(self, piece: int, limit: int) -> None:
        """Count a piece fed between requests or inside a head against ``limit``."""
        if self._head_completed:
            # The piece that began an unfinished head is counted whole.
            self._head_raw = piece if self.in_message and not self.headers_done else 0
        else:
            self._head_raw += piece
        if self._head_raw > limit:
            if self.in_message:
                self._too_large()
            self._refuse(400, "Too many bytes between requests")

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops at an upgrade, after the request. A WebSocket upgrade on a path
            # that takes one is queued for the handler with the bytes after it; any other
            # is refused (the complete requests before it are still answered).
            request = self.ready[-1] if self.ready and not self.in_message else None
            if (request is not None and request.path in self.upgrade_paths
                    and _asks_for_websocket(request.headers)):
                self.upgrade = bytes(data[exc.args[0]:])
                raise _Upgraded from None
            if self.ready and not self.in_message:
                self.ready.pop()
            raise ProtocolError(400, "Protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            if self.error is not None:
                raise self.error from None
            raise ProtocolError(400, f"Malformed HTTP request: {exc}") from None


class _Upgraded(Exception):
    """The parser stopped at an accepted upgrade (``_Parser.upgrade`` holds the rest)."""


def _asks_for_websocket(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"upgrade":
            return b"websocket" in value.lower()
    return False


_SLOW_CLIENT: Final = ProtocolError(408, "Client took too long to send the request")


@final
class BodyStream:
    """The body of a request handed to its handler at the head (an upload): read it with
    :meth:`receive_some` as the client sends it.

    Nothing is read from the client until the handler asks (``Expect: 100-continue`` is
    answered then), and at most one socket read is held at a time, so an upload costs the
    router a read buffer, not its size. A wait for the client longer than
    ``request_read_timeout`` raises a 408 :class:`ProtocolError`; so do a client that leaves
    mid-body (400) and a body past ``max_upload_size`` (413). After any of them the
    connection closes once the handler has answered.
    """

    __slots__ = ("_conn", "_keep_alive", "complete", "error", "length", "pieces", "received")

    def __init__(self, conn: ServerConnection, length: int | None, keep_alive: bool) -> None:
        self._conn = conn
        self._keep_alive = keep_alive
        #: The declared ``content-length`` (None for a chunked body).
        self.length = length
        #: Body bytes parsed but not yet returned (the parser appends to it).
        self.pieces: deque[bytes] = deque()
        #: True once the whole body was parsed.
        self.complete = length == 0
        #: Bytes returned so far.
        self.received = 0
        #: Why the rest of the body cannot be read (raised once the pieces are used up).
        self.error: ProtocolError | None = None

    async def receive_some(self) -> bytes:
        """The next piece of the body; b"" once it is complete."""
        pieces = self.pieces
        while not pieces:
            if self.complete:
                self._conn.body_read(self._keep_alive)
                return b""
            if self.error is not None:
                raise self.error
            await self._conn.read_body()
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.received += len(data)
        return data

    async def read_all(self, limit: int) -> bytes:
        """The rest of the body, at most ``limit`` bytes (else a 413 ProtocolError)."""
        parts: list[bytes] = []
        size = 0
        while data := await self.receive_some():
            size += len(data)
            if size > limit:
                raise ProtocolError(413, f"Request body too large: at most {limit} bytes")
            parts.append(data)
        return b"".join(parts)

Handler = Callable[["Request", "ServerConnection"], Awaitable[None]]
ErrorRenderer = Callable[[int, str], tuple[Headers, bytes]]
#: Builds the answer to a :class:`Refusal` (headers and body); the Ingress gives it a request
#: id, the client's error shape and an access-log line.
Refuser = Callable[[Refusal], tuple[Headers, bytes]]


def _plain_error(status: int, message: str) -> tuple[Headers, bytes]:
    return [(b"content-type", b"text/plain; charset=utf-8")], message.encode() + b"\n"


class ServerConnection:
    """One client connection. Handlers answer through the ``send_*`` methods.

    The handler's whole view of its client: ``continuum.net.server.asgi.AsgiConnection``
    is the same view over one ASGI request, so the Ingress serves both fronts unchanged.

    ``closing`` set by anyone (handler, shutdown) makes the current response the last one.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        limits: HTTPLimits,
        dates: DateCache,
        render_error: ErrorRenderer = _plain_error,
        refuse: Refuser | None = None,
        upgrade_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.stream = stream
        self.io = FastStream(stream, limits.write_timeout)
        self.limits = limits
        self.closing = False
        self.idle = True
        self._dates = dates
        self._render_error = render_error
        self._refuse = refuse
        self._parser = _Parser(limits, upgrade_paths)
        if limits.stream_paths:
            self._parser.open_stream = partial(BodyStream, self)
        #: For a WebSocket upgrade request (on one of ``upgrade_paths``): the bytes read past
        #: its head (see :meth:`detach`); None for every other request.
        self.upgrade: bytes | None = None
        self._pending: list[bytes | bytearray] = []
        self._pending_size = 0
        #: A parse error met behind complete requests: raised once they are answered.
        self._deferred: ProtocolError | None = None
        self._request_started: float | None = None
        self._idle_deadline: float | None = None
        #: When the sweeper of :class:`HTTPServer` should end this connection (see
        #: ``arm_timer``): a float write per request instead of a trio deadline change.
        self.deadline = _INF
        self._timer_error: ProtocolError | None = None
        self._timer_scope: trio.CancelScope | None = None
        #: The id of the request being handled (set by the handler, cleared when it
        #: returns): every answer to it carries it as ``x-request-id``, an error the server
        #: sends on its behalf (a timer's 504) too.
        self.request_id: bytes | None = None
        #: Header lines (each ending in CRLF) every answer to the current request carries,
        #: like ``request_id``: CORS and rate-limit headers. Cleared with it.
        self.extra_head = b""
        self._peer: str | None = None
        #: Set when a timer ended the connection (status 0: closed without a response).
        self.expired: ProtocolError | None = None
        #: Body bytes of the current answer sent so far (chunk payloads for a stream).
        self.bytes_out = 0
        self._eof = False
        #: Set by :meth:`park`: the task ends and leaves the socket open (see ``.parking``).
        self.parked = False
        self._scope = trio.CancelScope()
        self._responded = False
        self._keep_alive = True
        self._head_only = False

    # -- writing -------------------------------------------------------------------------

    def _head(self, status: int, headers: Headers | bytes, extra: bytes,
              body: bytes = b"") -> bytes:
        """The response head (and ``body`` behind it): one join of a tuple, with no
        intermediate buffers (a part a response does not have is empty)."""
        rid = self.request_id
        return b"".join((
            _STATUS_LINES.get(status) or _status_line(status),
            self._dates.header(),
            # every answer says which request it answers
            b"" if rid is None else b"x-request-id: %b\r\n" % rid,
            self.extra_head,
            headers if isinstance(headers, bytes)
            # Every ``name: value`` line at C speed: one join, not four parts per field.
            else b"\r\n".join(map(b": ".join, headers)) + b"\r\n" if headers else b"",
            extra,
            b"\r\n" if self._keep_alive and not self.closing else b"connection: close\r\n\r\n",
            body,
        ))

    async def send_response(self, status: int, headers: Headers | bytes, body: bytes) -> None:
        """Head and body: one ``send`` for small bodies, one ``sendmsg`` (no copy of the
        body) for large ones; a HEAD request gets the head only. ``headers`` may be
        pre-encoded lines."""
        self._responded = True
        length = b"content-length: %d\r\n" % len(body)
        if self._head_only or not body:
            await self.io.send_all(self._head(status, headers, length))
            return
        self.bytes_out += len(body)
        if len(body) <= _COPY_BODY_MAX:
            await self.io.send_all(self._head(status, headers, length, body))
        else:
            await self.io.send_all_parts((self._head(status, headers, length), body))

    async def send_error(self, status: int, message: str) -> None:
        headers, body = self._render_error(status, message)
        await self.send_response(status, headers, body)

    async def start_chunked(self, status: int, headers: Headers | bytes) -> None:
        """Begin a streamed response (chunked transfer encoding)."""
        self._responded = True
        await self.io.send_all(self._head(status, headers, b"transfer-encoding: chunked\r\n"))

    async def send_chunk(self, data: bytes) -> None:
        if data and not self._head_only:
            self.bytes_out += len(data)
            await self.io.send_all(b"%x\r\n%b\r\n" % (len(data), data))

    async def end_chunked(self, last: bytes = b"") -> None:
        if self._head_only:
            return
        if last:
            self.bytes_out += len(last)
            await self.io.send_all(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last))
        else:
            await self.io.send_all(b"0\r\n\r\n")

    def pump_socket(self) -> socket.socket | None:
        """The plain socket a stream pump may write this streamed answer's chunks to
        (``continuum.net.stream_pump``, counting them in ``bytes_out``); None under TLS,
        through a wrapper stream, or for a HEAD request (no body is sent)."""
        return None if self._head_only else raw_socket(self.stream)

    @property
    def responded(self) -> bool:
        return self._responded

    @property
    def peer(self) -> str:
        """The client's IP address as text (``""`` for a Unix socket), read once per
        connection and only when asked (rate limits by address)."""
        peer = self._peer
        if peer is None:
            name = self.peer_address()
            peer = self._peer = str(name[0]) if isinstance(name, tuple) else ""
        return peer

    def peer_address(self) -> object:
        """What ``getpeername()`` says of the client's socket (looked at through TLS):
        ``(host, port, ...)`` over TCP, a path (``str``/``bytes``) for a Unix socket, None
        when unknown."""
        stream = self.stream
        while isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            with contextlib.suppress(OSError):
                return stream.socket.getpeername()
        return None

    # -- reading -------------------------------------------------------------------------

    async def watch_disconnect(self) -> bool:
        """Return when the client closes its side: True when the connection broke (a reset,
        a socket error), False for a clean EOF (a half-close: the client may still read).

        Runs beside a streamed response, so a client that goes away cancels the upstream
        exchange at once instead of at the next chunk. Bytes that arrive meanwhile (a
        pipelined request) are kept for the parser, up to :data:`_WATCH_BUFFER`; past that
        the client is not read any more (TCP pushes back) and this waits until cancelled.
        """
        while True:
            room = _WATCH_BUFFER - self._pending_size
            if room <= 0:
                await trio.sleep_forever()
            try:
                data = await self.io.receive_some(min(room, _RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._eof = True
                return True
            if not data:
                self._eof = True
                return False
            self._pending.append(data)
            self._pending_size += len(data)

    def close_if_idle(self) -> None:
        """Graceful shutdown: close now if between requests, else after this response."""
        self.closing = True
        if self.idle:
            self._scope.cancel()

    def park(self, sock: socket.socket) -> None:
        """Let this connection's task end, leaving its socket ``sock`` open for the server's
        idle parking (:mod:`.parking`). Only the sweeper calls it, while the connection waits
        between requests (``idle``): then no request is in flight, and bytes the wait has
        already received stay for :meth:`parked_state`.

        The wait is ended with ``notify_closing`` rather than a cancel: the receive raises
        ``ClosedResourceError`` at once, without cancel-status bookkeeping or a
        ``Cancelled`` unwinding through the connection's scope (a third of what parking
        cost). The socket stays open; the parking set watches it from here on."""
        self.parked = True
        trio.lowlevel.notify_closing(sock)

    def parked_state(self) -> tuple[float, bytes]:
        """After :meth:`serve` returned parked: the keep-alive deadline and the bytes
        received meanwhile (they begin the next request)."""
        deadline = self._idle_deadline
        return (deadline if deadline is not None else _INF), b"".join(self._pending)

    def resume(self, idle_deadline: float, received: bytes) -> None:
        """Carry on a parked connection: its keep-alive deadline is the one it fell idle
        with, and ``received`` is parsed first."""
        self._idle_deadline = idle_deadline
        if received:
            self._pending.append(received)
            self._pending_size = len(received)

    def detach(self) -> tuple[trio.abc.Stream, bytes]:
        """Hand the connection over to the protocol an upgrade request asked for: returns the
        stream and the bytes already read past the request's head (they belong to the new
        protocol). Timers are disarmed and nothing more is written or read here; the stream
        is closed when the handler returns."""
        rest = (self.upgrade or b"") + b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self.upgrade = b""
        self._responded = True
        self._keep_alive = False
        self.closing = True
        self.deadline = _INF
        return self.stream, rest

    def websocket_problem(self, request: Request) -> tuple[int, str] | None:
        """Why ``request`` cannot become a WebSocket here, as (status, message); None when
        it can. Checked before :meth:`accept_websocket`, so the refusal is an ordinary
        answer: once wsproto has refused a handshake, trio-websocket waits forever."""
        if self.upgrade is None:
            return NOT_AN_UPGRADE
        return handshake_problem(request.method, request.headers)

    async def accept_websocket(
        self,
        request: Request,
        nursery: trio.Nursery,
        subprotocol: str | None,
        headers: Headers,
        settings: RelaySettings,
    ) -> MessageConnection:
        """Complete the WebSocket handshake of ``request`` (an upgrade with no
        :meth:`websocket_problem`) with ``subprotocol`` and extra response ``headers``; the
        connection's reader runs in ``nursery``. Raises :class:`HandshakeFailed` or
        ``trio_websocket.ConnectionClosed`` when the client is gone or wsproto refused it."""
        from ..websocket_relay import accept_client, handshake_request

        target = f"{request.path}?{request.query}" if request.query else request.path
        head = handshake_request(request.method, target, request.headers)
        if self.extra_head:  # CORS and x-ratelimit-* lines, as on any other answer
            headers = [*headers, *head_lines(self.extra_head)]
        stream, rest = self.detach()
        pending = await accept_client(nursery, stream, head + rest, settings)
        return await pending.accept(subprotocol=subprotocol, extra_headers=headers)

    def use_stream(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        """Write through ``stream`` from now on (e.g. a wrapper); returns the previous one."""
        previous, self.stream = self.stream, stream
        self.io = FastStream(stream, self.limits.write_timeout)
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
        self.deadline = _INF

    def expire(self) -> None:
        """Called by the sweeper when ``deadline`` has passed."""
        self.deadline = _INF
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
        Between requests the keep-alive deadline is fixed when the connection falls idle:
        bytes that begin no request (bare CRLFs) do not move it.
        """
        parser = self._parser
        data: bytes | bytearray
        while not parser.ready:
            if self._deferred is not None:
                raise self._deferred
            if self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                self._pending_size = 0
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
                    self.arm_timer(self._request_deadline(), _SLOW_CLIENT)
                else:
                    if self.closing:
                        return None
                    self.idle = True
                    if self._idle_deadline is None:
                        self._idle_deadline = clock() + self.limits.keepalive_timeout
                    self.arm_timer(self._idle_deadline)
                try:
                    data = await self.io.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    if self.parked:  # the wait ended by park()
                        return None
                    data = b""
                if self.parked:
                    # Parked while this wait ended (its bytes go with the socket), or the
                    # client left: then the connection simply closes.
                    if data:
                        self._pending.append(data)
                        return None
                    self.parked = False
                if not data:
                    self._eof = True
                    continue
                self.idle = False
            try:
                parser.feed(data)
            except ProtocolError as exc:
                if not parser.ready:
                    raise
                self._deferred = exc  # answer the complete requests before it first
                parser.fail_stream(exc)
            if parser.in_message and self._request_started is None:
                # The whole request must arrive within request_read_timeout of its first byte.
                self._request_started = clock()
        self.idle = False
        self.deadline = _INF
        self._idle_deadline = None
        # A pipelined request already begun has its clock running from now.
        self._request_started = clock() if parser.in_message else None
        request = parser.ready.pop(0)
        if parser.upgrade is not None and not parser.ready:
            # The upgrade request, the parser's last: whatever it is answered with, nothing
            # on this connection is HTTP/1.1 after it.
            self.upgrade, parser.upgrade = parser.upgrade, None
            self.closing = True
        return request

    def body_read(self, keep_alive: bool) -> None:
        """A streamed body was read to its end: the connection may be kept alive again."""
        if not self._responded:
            self._keep_alive = keep_alive

    async def read_body(self) -> None:
        """Read once from the client and parse it: the next piece of a :class:`BodyStream`
        (see there for the errors it raises)."""
        parser = self._parser
        if parser.expect_continue:
            parser.expect_continue = False
            await self.io.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        data: bytes | bytearray = b""
        error: ProtocolError | None = None
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
        else:
            with trio.move_on_after(self.limits.request_read_timeout) as waited:
                try:
                    data = await self.io.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            if waited.cancelled_caught:
                error = _SLOW_CLIENT
            elif not data:
                self._eof = True
                error = ProtocolError(400, "Client closed the connection mid-request")
        if error is None:
            try:
                parser.feed(data)
                return
            except ProtocolError as exc:
                error = exc
        parser.fail_stream(error)
        raise error

    def _request_deadline(self) -> float:
        started = self._request_started
        return (started if started is not None else clock()) + self.limits.request_read_timeout

    def _refusal(self, error: ProtocolError) -> tuple[Headers, bytes]:
        """The answer to a request no handler saw."""
        parser = self._parser
        method, path = parser.method, parser.path
        self._head_only = method == "HEAD"
        if self._refuse is not None:
            started = self._request_started
            return self._refuse(Refusal(error.status, error.message, method, path,
                                        started if started is not None else clock()))
        return self._render_error(error.status, error.message)

    async def serve(self, handler: Handler) -> None:
        """Answer requests until the client leaves, errs, or the server drains.

        Nothing a handler raises ends more than this connection: an exception is logged
        once (with the request id) and answered with a 500 if no response had started.
        """
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
                    if request.body_stream is not None and not request.body_stream.complete:
                        self._keep_alive = False  # until the handler has read it all
                    self._responded = False
                    self._head_only = request.method == "HEAD"
                    self.bytes_out = 0
                    served += 1
                    if served % _CHECKPOINT_EVERY == 0:
                        # The fast I/O path does not yield: a busy pipelining client must
                        # not starve the other connections.
                        await trio.lowlevel.checkpoint()
                    await handler(request, self)
                    self.request_id = None
                    self.extra_head = b""
                    if not self._responded:
                        self._keep_alive = False
                        await self.send_error(500, "The handler sent no response")
                    stream = request.body_stream
                    if stream is not None and not stream.complete:
                        # The rest of an upload is not read: the connection cannot go on.
                        self._keep_alive = False
                        if not self._eof:
                            await self._linger()
                    # Not held while the next request is awaited (its body may be large).
                    request = stream = None
                    if not self._keep_alive or self.closing:
                        return
            expired = self.expired
            if error is None and expired is not None and expired.status and not self._responded:
                error = expired
            if error is not None:
                await self._send_refusal(error)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            await self._internal_error()
        except BaseExceptionGroup as group:  # an error beside a cancellation
            errors, rest = group.split(Exception)
            if errors is not None:
                await self._internal_error()
            if rest is not None:
                raise rest from None
        finally:
            self._parser.release()
            if not self.parked:
                self.idle = False  # never parked from here on: the socket is closing
                await trio.aclose_forcefully(self.stream)

    async def _send_refusal(self, error: ProtocolError) -> None:
        self._keep_alive = False
        if self.request_id is not None:
            # The handler's own request (a timer's 504): it logged the request already.
            if error.body is not None:
                headers, body = [(b"content-type", b"application/json")], error.body
            else:
                headers, body = self._render_error(error.status, error.message)
        else:
            headers, body = self._refusal(error)
        with trio.move_on_after(1.0):
            await self.send_response(error.status, headers, body)
        if not self._eof:
            await self._linger()

    async def _linger(self) -> None:
        """Half-close, then drop what the client still sends (bounded) before closing."""
        stream = self.stream
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(_LINGER_SECONDS):
            await stream.send_eof()
            left = _LINGER_BYTES
            while left > 0:
                data = await self.io.receive_some(min(left, _RECEIVE_SIZE))
                if not data:
                    break
                left -= len(data)

    async def _internal_error(self) -> None:
        """The connection-level guard: log once, answer 500 if nothing was sent yet."""
        rid = self.request_id.decode("latin-1") if self.request_id is not None else "-"
        log.exception("internal error on a client connection (request %s)", rid)
        if self._responded:
            return
        self._keep_alive = False
        headers, body = self._render_error(500, "Internal router error")
        with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError,
                                                          trio.ClosedResourceError):
            await self.send_response(500, headers, body)
