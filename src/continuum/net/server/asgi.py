"""The router's request handling driven by an ASGI server (hypercorn) instead of its own.

The seam is the handler: ``Handler(request, conn)`` is what the HTTP/1.1 server calls for each
parsed request, and :class:`AsgiConnection` is a :class:`ServerConnection` whose writes become
ASGI events. The handler (the Ingress, the proxy, the Realtime gateway) runs unchanged: the same
routes, errors, timers (the connection-wide cancel scope, swept by :meth:`AsgiFront.run`),
streaming, auth and metrics. What the ASGI server does instead of ``ServerConnection``: parsing
(HTTP/1.1, HTTP/2, HTTP/3), TLS and keep-alive; what the front adds per request: reading the
body (``server.max_request_body_size`` gives 413 through the same refuser), and one task that
notices a client that leaves (``http.disconnect``), which ends the request as a 499 the way the
native server's client watch does.

A WebSocket scope (``GET /v1/realtime``) goes through the same handler: the connection answers
:meth:`AsgiConnection.accept_websocket` with ``websocket.accept`` and an :class:`AsgiWebSocket`
(the relay's ``MessageConnection``), and an error before that with the
``websocket.http.response`` extension (a plain close where the server lacks it).

Mounted under a prefix (``root_path``), the prefix is taken off the path before routing.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, final

import trio
from trio_websocket import CloseReason, ConnectionClosed

from ...core.clock import now as clock
from ...core.http import Headers, head_lines
from ...core.realtime import NOT_AN_UPGRADE
from .connection import (
    BodyStream,
    DateCache,
    ErrorRenderer,
    Handler,
    HTTPLimits,
    ProtocolError,
    Refusal,
    Refuser,
    Request,
    ServerConnection,
    _plain_error,
)
from .watch import CLIENT_GONE

if TYPE_CHECKING:
    from ..websocket_relay import MessageConnection, RelaySettings

log = logging.getLogger("continuum.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: What the app does with a lifespan scope (the router's own start and stop, when the ASGI
#: server drives them; see ``continuum.asgi``).
LifespanHandler = Callable[[Scope, Receive, Send], Awaitable[None]]

_SLOW_CLIENT: Final = ProtocolError(408, "Client took too long to send the request")
_TOO_LARGE: Final = ProtocolError(413, "Request body too large")
#: Response headers the ASGI server owns (framing, connection management).
_SERVER_HEADERS: Final = frozenset({b"connection", b"keep-alive", b"transfer-encoding",
                                    b"content-length", b"date", b"server", b"upgrade"})
_SERVER_HEADERS_H1: Final = _SERVER_HEADERS - {b"upgrade"}


@final
class _NoStream(trio.abc.Stream):
    """The byte stream an ASGI request does not have (the ASGI server owns the socket)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise trio.ClosedResourceError("an ASGI request has no byte stream")

    async def wait_send_all_might_not_block(self) -> None:
        raise trio.ClosedResourceError("an ASGI request has no byte stream")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise trio.ClosedResourceError("an ASGI request has no byte stream")

    async def aclose(self) -> None:
        pass


_NO_STREAM: Final = _NoStream()


def _headers(headers: Headers | bytes) -> Headers:
    """``headers`` as a list (the handler may hand over pre-encoded lines)."""
    return head_lines(headers) if isinstance(headers, bytes) else headers


class AsgiConnection(ServerConnection):
    """One ASGI request (an ``http`` or ``websocket`` scope) seen as a ``ServerConnection``."""

    def __init__(self, front: AsgiFront, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(_NO_STREAM, front.limits, front.dates, front.render_error, front.refuse)
        self._asgi_send = send
        self._asgi_receive = receive
        self.websocket = scope["type"] == "websocket"
        self._head_only = scope.get("method") == "HEAD"
        #: The scope's ``client``: (host, port), or None when the server does not say.
        self._client: tuple[str, int] | None = (tuple(scope["client"]) if scope.get("client")
                                                 else None)
        self._http_refusals = "websocket.http.response" in scope.get("extensions", {})
        #: Headers the ASGI server owns; HTTP/1.1 keeps ``upgrade`` (a 426 names the protocol).
        self._dropped = (_SERVER_HEADERS_H1 if str(scope.get("http_version", "1.1"))[:1] == "1"
                         else _SERVER_HEADERS)
        #: The whole answer has been handed to the ASGI server.
        self.finished = False
        #: An upload's body, read by its handler (see :meth:`stream_body`).
        self.body_stream: BodyStream | None = None
        self._streamed = 0

    def peer_address(self) -> object:
        """The ASGI server's word for the client's address (the scope's ``client``)."""
        return self._client

    async def read_whole_body(self, limit: int, deadline: float) -> bytes | ProtocolError | None:
        """The request's body: all of it, the error that refuses it (413 past ``limit``, 408
        past ``deadline``: the sweeper's timer), or None when the client left."""
        chunks: list[bytes] = []
        size = 0
        error: ProtocolError | None = None
        self.arm_timer(deadline, _SLOW_CLIENT)
        with self._scope:
            while True:
                message = await self._asgi_receive()
                if message["type"] != "http.request":
                    return None  # http.disconnect
                chunk = bytes(message.get("body", b""))
                size += len(chunk)
                if size > limit:
                    error = _TOO_LARGE
                    break
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        self.disarm_timer()
        self._scope = trio.CancelScope()  # a scope serves one ``with``: the handler's is new
        if self.expired is not None:
            error, self.expired = self.expired, None
        if error is not None:
            return error
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def stream_body(self, scope: Scope) -> BodyStream | ProtocolError | None:
        """For an upload (a multipart body on one of ``HTTPLimits.stream_paths``): the
        :class:`BodyStream` its handler reads as the body arrives, or the 413 of a declared
        length past ``max_upload_size``; None for any other request (read whole)."""
        limits = self.limits
        if not limits.stream_paths or scope.get("method") != "POST":
            return None
        content_type = length = None
        for name, value in scope.get("headers", ()):
            name = bytes(name).lower()
            if name == b"content-type":
                content_type = bytes(value)
            elif name == b"content-length" and bytes(value).strip().isdigit():
                length = int(value)
        if (content_type is None or content_type[:10].lower() != b"multipart/"
                or request_path(scope).encode("latin-1") not in limits.stream_paths):
            return None
        if length is not None and length > limits.max_upload_size:
            return ProtocolError(413, f"Upload too large: at most {limits.max_upload_size} "
                                 "bytes")
        self._streamed = 0
        self.body_stream = BodyStream(self, length, True)
        return self.body_stream

    async def read_body(self) -> None:
        """The next piece of a streamed body from the ASGI server (``ServerConnection``
        reads it from the socket): 408 after ``request_read_timeout`` without one, 400 when
        the client leaves, 413 past ``max_upload_size``; the error is the stream's too."""
        stream = self.body_stream
        assert stream is not None
        error: ProtocolError | None = None
        message: Message = {}
        with trio.move_on_after(self.limits.request_read_timeout) as waited:
            message = await self._asgi_receive()
        if waited.cancelled_caught:
            error = _SLOW_CLIENT
        elif message["type"] != "http.request":
            error = ProtocolError(400, "Client closed the connection mid-request")
        else:
            chunk = bytes(message.get("body", b""))
            self._streamed += len(chunk)
            if self._streamed > self.limits.max_upload_size:
                error = ProtocolError(413, "Upload too large: at most "
                                      f"{self.limits.max_upload_size} bytes")
            else:
                if chunk:
                    stream.pieces.append(chunk)
                stream.complete = not message.get("more_body", False)
                return
        stream.error = error
        raise error

    async def run(self, handler: Handler, request: Request) -> None:
        """``handler`` for ``request`` under this request's cancel scope (its timers)."""
        with self._scope:
            await handler(request, self)

    def client_left(self) -> None:
        """The client is gone before its answer was complete: end the request as a 499
        (nothing more is sent), as the native server's client watch does."""
        if self.finished:
            return
        self.abort()
        self.arm_timer(-math.inf, CLIENT_GONE)
        self.expire()

    async def _send(self, message: Message) -> None:
        try:
            await self._asgi_send(message)
        except (trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # the server's way of saying the client is gone
            raise trio.BrokenResourceError(f"the ASGI server refused the message: {exc}") from exc

    def _response_headers(self, headers: Headers | bytes) -> Headers:
        out: Headers = []
        if self.request_id is not None:
            out.append((b"x-request-id", self.request_id))
        if self.extra_head:  # CORS and x-ratelimit-* lines, as the native head has them
            out.extend(_headers(self.extra_head))
        dropped = self._dropped
        out.extend((n, v) for n, v in _headers(headers) if n not in dropped)
        return out

    async def send_response(self, status: int, headers: Headers | bytes, body: bytes) -> None:
        self._responded = True
        out = self._response_headers(headers)
        out.append((b"content-length", b"%d" % len(body)))
        if self.websocket:
            await self._refuse_websocket(status, out, body)
            return
        await self._send({"type": "http.response.start", "status": status, "headers": out})
        if not self._head_only:
            self.bytes_out += len(body)
        self.finished = True
        await self._send({"type": "http.response.body",
                          "body": b"" if self._head_only else body, "more_body": False})

    async def _refuse_websocket(self, status: int, headers: Headers, body: bytes) -> None:
        self.finished = True
        if self._http_refusals:
            await self._send({"type": "websocket.http.response.start", "status": status,
                              "headers": headers})
            await self._send({"type": "websocket.http.response.body", "body": body})
            return
        await self._send({"type": "websocket.close", "code": 1008})

    async def start_chunked(self, status: int, headers: Headers | bytes) -> None:
        self._responded = True
        await self._send({"type": "http.response.start", "status": status,
                          "headers": self._response_headers(headers)})

    async def send_chunk(self, data: bytes) -> None:
        if data and not self._head_only:
            self.bytes_out += len(data)
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_chunked(self, last: bytes = b"") -> None:
        if self._head_only:
            last = b""
        self.bytes_out += len(last)
        self.finished = True
        await self._send({"type": "http.response.body", "body": last, "more_body": False})

    async def watch_disconnect(self) -> bool:
        """The front's watcher ends the request when the client leaves (see module doc)."""
        await trio.sleep_forever()

    def websocket_problem(self, request: Request) -> tuple[int, str] | None:
        if self.websocket:
            return None  # the ASGI server checked the handshake (HTTP/1.1 or HTTP/2)
        return NOT_AN_UPGRADE

    async def accept_websocket(
        self,
        request: Request,
        nursery: trio.Nursery,
        subprotocol: str | None,
        headers: Headers,
        settings: RelaySettings,
    ) -> MessageConnection:
        self._responded = True
        self.finished = True
        if self.extra_head:  # CORS and x-ratelimit-* lines, as on any other answer
            headers = [*headers, *head_lines(self.extra_head)]
        message: Message = {"type": "websocket.accept", "headers": headers}
        if subprotocol is not None:
            message["subprotocol"] = subprotocol
        await self._send(message)
        return AsgiWebSocket(self._asgi_receive, self._asgi_send, subprotocol)

    def detach(self) -> tuple[trio.abc.Stream, bytes]:
        raise RuntimeError("an ASGI request has no stream to hand over")


@final
class AsgiWebSocket:
    """An accepted ASGI WebSocket as the relay's ``MessageConnection``. The ASGI server
    answers pings and limits message sizes itself; :meth:`ping` is a no-op here."""

    def __init__(self, receive: Receive, send: Send, subprotocol: str | None) -> None:
        self._receive = receive
        self._send = send
        self._subprotocol = subprotocol
        self._closed: CloseReason | None = None

    @property
    def closed(self) -> CloseReason | None:
        return self._closed

    @property
    def subprotocol(self) -> str | None:
        return self._subprotocol

    def _gone(self, code: int, reason: str | None) -> ConnectionClosed:
        if self._closed is None:
            self._closed = CloseReason(code, reason)
        return ConnectionClosed(self._closed)

    async def get_message(self) -> str | bytes:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            if text is not None:
                return str(text)
            return bytes(message.get("bytes") or b"")
        if kind == "websocket.disconnect":
            raise self._gone(int(message.get("code", 1005)), message.get("reason"))
        raise self._gone(1011, f"unexpected ASGI message {kind!r}")

    async def send_message(self, message: str | bytes) -> None:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        event: Message = {"type": "websocket.send"}
        event["text" if isinstance(message, str) else "bytes"] = message
        try:
            await self._send(event)
        except (trio.Cancelled, ConnectionClosed):
            raise
        except Exception:
            raise self._gone(1006, None) from None

    async def ping(self, payload: bytes | None = None) -> None:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self._closed is not None:
            return
        self._closed = CloseReason(code, reason)
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason or ""})


def request_path(scope: Scope) -> str:
    """The path to route: the mount prefix (``root_path``) taken off when it is there."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class AsgiFront:
    """An ASGI 3 application serving ``handler`` (the Ingress's ``handle``) and ``refuse``.

    ``run`` sweeps the connection timers until cancelled (it must run while requests are
    served); ``drain`` makes new requests get 503. ``lifespan`` handles lifespan scopes; by
    default they are acknowledged and nothing else happens (the router runs already).
    """

    def __init__(
        self,
        handler: Handler | None = None,
        limits: HTTPLimits | None = None,
        *,
        render_error: ErrorRenderer = _plain_error,
        refuse: Refuser | None = None,
        timer_resolution: float | None = None,
    ) -> None:
        self.render_error = render_error
        self.dates = DateCache()
        self.connections: set[ServerConnection] = set()
        self.lifespan: LifespanHandler = _acknowledge_lifespan
        #: What answers requests; None until :meth:`attach` (and after :meth:`detach`):
        #: then every request gets 503.
        self.handler: Handler | None = None
        self.limits = HTTPLimits()
        self.refuse: Refuser | None = None
        self.timer_resolution = 0.5
        self.draining = False
        self._idle = trio.Event()
        if handler is not None:
            self.attach(handler, limits or HTTPLimits(), refuse=refuse,
                        timer_resolution=timer_resolution)

    def attach(self, handler: Handler, limits: HTTPLimits, *, refuse: Refuser | None = None,
               timer_resolution: float | None = None) -> None:
        """Serve requests with ``handler`` from now on (a router has started)."""
        self.handler = handler
        self.limits = limits
        self.refuse = refuse
        if timer_resolution is None:
            timer_resolution = min(limits.keepalive_timeout, limits.request_read_timeout) / 10
        self.timer_resolution = min(max(timer_resolution, 0.005), 0.5)
        self.draining = False
        self._idle = trio.Event()

    def detach(self) -> None:
        """No router behind the app any more: requests get 503 again."""
        self.handler = None

    # -- the ASGI application -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan(scope, receive, send)
        elif self.handler is None:
            await _not_running(scope, receive, send, self.render_error)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            raise RuntimeError(f"unknown ASGI scope type {kind!r}")

    def _request(self, scope: Scope, method: str, body: bytes) -> Request:
        query = scope.get("query_string", b"")
        return Request(
            method, request_path(scope), query.decode("latin-1") if query else "",
            [(bytes(n).lower(), bytes(v)) for n, v in scope.get("headers", ())], body, True,
        )

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = clock()
        conn = AsgiConnection(self, scope, receive, send)
        method = str(scope["method"])
        if self.draining:
            conn.closing = True
        stream = conn.stream_body(scope)
        if isinstance(stream, BodyStream):
            # The handler reads the body, so no watcher shares ``receive`` with it: a client
            # that leaves mid-body is a 400 from the stream; one that leaves after it is not
            # noticed before the answer.
            request = self._request(scope, method, b"")
            request.body_stream = stream
            await self._serve(conn, request, None)
            return
        body = stream or await conn.read_whole_body(self.limits.max_body_size,
                                                    started + self.limits.request_read_timeout)
        if body is None:
            return
        if isinstance(body, ProtocolError):
            await self._refuse(conn, body, method, request_path(scope), started)
            return
        await self._serve(conn, self._request(scope, method, body), receive)

    async def _refuse(self, conn: AsgiConnection, error: ProtocolError, method: str,
                      path: str, started: float) -> None:
        """A request no handler saw (408, 413): answered like the native server's."""
        refusal = Refusal(error.status, error.message, method, path, started)
        if self.refuse is not None:
            headers, body = self.refuse(refusal)
        else:
            headers, body = self.render_error(error.status, error.message)
        with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError):
            await conn.send_response(error.status, headers, body)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        conn = AsgiConnection(self, scope, receive, send)
        await self._serve(conn, self._request(scope, "GET", b""), None)

    async def _serve(self, conn: AsgiConnection, request: Request,
                     receive: Receive | None) -> None:
        """Run the handler for one request, as ``ServerConnection.serve`` does for one: its
        timers on the request's scope, its errors contained, an answer always given."""
        self.connections.add(conn)
        try:
            async with trio.open_nursery() as nursery:
                if receive is not None:
                    nursery.start_soon(_watch_disconnect, conn, receive)
                handler = self.handler
                assert handler is not None
                await conn.run(handler, request)
                nursery.cancel_scope.cancel()
            await self._finish(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except BaseExceptionGroup as group:
            errors, rest = group.split(Exception)
            if errors is not None:
                await self._internal_error(conn, errors)
            if rest is not None:
                raise rest from None
        except Exception as exc:
            await self._internal_error(conn, exc)
        finally:
            self.connections.discard(conn)
            if self.draining and not self.connections:
                self._idle.set()

    async def _finish(self, conn: AsgiConnection) -> None:
        """What the handler left unanswered: a timer's error (a 504), else a 500."""
        if conn.responded:
            return
        expired = conn.expired
        if expired is not None and expired.status:
            if expired.body is not None:
                headers, body = [(b"content-type", b"application/json")], expired.body
            else:
                headers, body = self.render_error(expired.status, expired.message)
            status = expired.status
        elif expired is not None:
            return  # ended without a response on purpose (a client that left)
        else:
            status = 500
            headers, body = self.render_error(500, "The handler sent no response")
        with trio.move_on_after(1.0):
            await conn.send_response(status, headers, body)

    async def _internal_error(self, conn: AsgiConnection, exc: BaseException) -> None:
        rid = conn.request_id.decode("latin-1") if conn.request_id is not None else "-"
        log.error("internal error on an ASGI request (request %s)", rid, exc_info=exc)
        if conn.responded:
            return
        headers, body = self.render_error(500, "Internal router error")
        with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError,
                                                          trio.ClosedResourceError):
            await conn.send_response(500, headers, body)

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Fire the requests' timers (request deadlines, stream idle gaps) until cancelled."""
        while True:
            await trio.sleep(self.timer_resolution)
            now = clock()
            for conn in list(self.connections):
                if conn.deadline <= now:
                    conn.expire()

    def drain(self) -> None:
        """Shutting down: requests already running go on; a new one is answered and ends its
        connection (``closing``); :meth:`wait_idle` returns when the last one has ended."""
        self.draining = True
        if not self.connections:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def _watch_disconnect(conn: AsgiConnection, receive: Receive) -> None:
    """End the request when its client leaves before its answer is complete (as the native
    server's client watch does: the upstream call is cancelled, the request counts as 499)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
    conn.client_left()


async def _not_running(scope: Scope, receive: Receive, send: Send,
                       render_error: ErrorRenderer) -> None:
    """A request while no router runs behind the app (before the lifespan started it)."""
    message = "The router is not running (an ASGI lifespan must start it)"
    headers, body = render_error(503, message)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 503,
                    "headers": [*headers, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1013, "reason": message})


async def _acknowledge_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
