"""Relay one WebSocket session between a client and an upstream, on trio-websocket.

The pieces, in the order a session uses them:

1. :func:`accept_client` takes a client connection whose HTTP request the ingress has already
   parsed. trio-websocket cannot be handed a parsed request (wsproto parses the handshake
   itself), so the request is written back as bytes (:func:`handshake_request`) and replayed
   ahead of the socket by :class:`ReplayStream`; the result is a ``WebSocketRequest`` not yet
   answered, so the upstream can be tried before the client's handshake completes.
2. :func:`open_upstream` connects to the backend: TCP (and TLS) opened here rather than by
   trio-websocket, so the ``Host`` header of an IPv6 backend is right and the backend's own
   TLS context is used, then the handshake. Every way it can fail becomes one
   :class:`UpstreamConnectError`, raised within ``connect_timeout``: trio-websocket itself
   raises a refusal inside the reader task's nursery and waits forever on a peer that closes
   during the handshake.
3. :func:`relay` moves messages both ways until one side ends, then closes the other, and
   returns :class:`RelayStats`.

:func:`proxy` strings 2 and 3 together for one backend after 1, and :func:`relay_upgrade` all
three; a router with several backends runs its own retry loop over :func:`open_upstream`.

Backpressure: each connection has trio-websocket's message queue (``message_queue_size``);
its reader stops reading the socket while the queue is full, and each direction's pump holds
one message while it waits to send it. A side that does not read therefore stops the other
side's reads, and the memory one session can hold is bounded by about
``(message_queue_size + 2) x max_message_size`` per direction plus the socket buffers.

Compression: trio-websocket negotiates no extension on either hop, so a client's offer of
permessage-deflate is declined and every frame is plain; the observer reads text as sent.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, final

import trio
import trio_websocket
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
)

from ..core.http import Headers
from ..core.realtime import (
    UpstreamTarget,
    client_subprotocol,
    close_reason,
    error_event,
    is_abnormal_close,
    relayed_close_code,
    split_subprotocols,
)

log = logging.getLogger("continuum.websocket")

#: Called with every upstream-to-client text message (usage, metrics). Must be cheap.
Observer = Callable[[str], None]

#: Base64 audio makes large messages; trio-websocket's own default (1 MiB) is too small.
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
#: trio-websocket closes with 1009 and this reason when a peer's message is too large.
_TOO_BIG_PREFIX: Final = "Exceeded maximum message size"


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Limits of one relayed session (both hops)."""

    #: Largest message accepted from either side (larger closes that side with 1009).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Messages trio-websocket queues per connection before it stops reading the socket.
    message_queue_size: int = 1
    #: Bytes asked of the socket per read (trio-websocket's default of 4 KiB makes a
    #: megabyte message take hundreds of reads).
    receive_buffer_size: int = 65536
    #: Seconds between keep-alive pings on each hop; 0 sends none.
    ping_interval: float = 20.0
    #: A hop whose pong has not arrived this long after the ping is taken for dead.
    ping_timeout: float = 20.0
    #: TCP connect, TLS and the upstream handshake, together.
    connect_timeout: float = 10.0
    #: How long closing both hops may take once the session has ended.
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.max_message_size < 1 or self.message_queue_size < 0:
            raise ValueError("max_message_size must be >= 1 and message_queue_size >= 0")
        if self.ping_interval < 0 or self.ping_timeout <= 0:
            raise ValueError("ping_interval must be >= 0 and ping_timeout > 0")


DEFAULT_SETTINGS: Final = RelaySettings()


class MessageConnection(Protocol):
    """What the relay needs of each hop: trio-websocket's ``WebSocketConnection`` has it, and
    so does the ASGI front's WebSocket (``continuum.net.server.asgi``). A closed hop raises
    ``trio_websocket.ConnectionClosed``."""

    @property
    def closed(self) -> CloseReason | None: ...

    @property
    def subprotocol(self) -> str | None: ...

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def ping(self, payload: bytes | None = None) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


# --- the client's side ---------------------------------------------------------------------


class _Wrapper(trio.abc.Stream):
    """A stream over ``stream`` that changes only how it receives."""

    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@final
class ReplayStream(_Wrapper):
    """A stream that yields ``prefix`` before what ``stream`` receives: the bytes the ingress
    read already (the handshake request and anything the client sent after it)."""

    __slots__ = ("_prefix",)

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        super().__init__(stream)
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        prefix = self._prefix
        if prefix:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(prefix):
                self._prefix = b""
                return prefix
            self._prefix = prefix[max_bytes:]
            return prefix[:max_bytes]
        return await self.stream.receive_some(max_bytes)


def handshake_request(method: str, target: str, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The request head an HTTP parser has already consumed, written back for wsproto.
    ``target`` is the path with its query (``/v1/realtime?model=m``)."""
    out = bytearray(f"{method} {target} HTTP/1.1\r\n".encode("latin-1"))
    for name, value in headers:
        out += name + b": " + value + b"\r\n"
    out += b"\r\n"
    return bytes(out)


@contextlib.contextmanager
def _outliving(nursery: trio.Nursery, grace: float) -> Iterator[None]:
    """Shield the block (a connection's reader task) from a cancellation of ``nursery`` for
    ``grace`` seconds more. When the router shuts down by cancelling the session, the relay
    still closes both hops properly, and a close handshake needs the readers running; the
    watcher that starts the grace period runs in ``nursery`` and is cancelled with it."""
    keep = trio.CancelScope(shield=True)
    watcher = trio.CancelScope()

    async def watch() -> None:
        with watcher:
            try:
                await trio.sleep_forever()
            finally:
                keep.deadline = min(keep.deadline, trio.current_time() + grace)

    nursery.start_soon(watch)
    try:
        with keep:
            yield
    finally:
        watcher.cancel()


class HandshakeFailed(Exception):
    """The client's handshake did not reach a ``WebSocketRequest`` (wsproto refused it, and
    has answered the client itself, or the client went away)."""


async def _run_client(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    head: bytes,
    settings: RelaySettings,
    *,
    task_status: trio.TaskStatus[WebSocketRequest] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Owns the client connection's reader task (see :func:`_outliving`)."""
    replay = ReplayStream(stream, head)
    request: WebSocketRequest | None = None
    with _outliving(nursery, settings.close_timeout):
        async with trio.open_nursery() as inner:
            with trio.move_on_after(settings.connect_timeout):
                request = await trio_websocket.wrap_server_stream(
                    inner,
                    replay,
                    message_queue_size=settings.message_queue_size,
                    max_message_size=settings.max_message_size,
                    receive_buffer_size=settings.receive_buffer_size,
                )
            if request is None:
                await trio.aclose_forcefully(replay)  # ends the reader task if it still waits
            else:
                task_status.started(request)
    if request is None:
        raise HandshakeFailed("the client's WebSocket handshake was not accepted by wsproto")


async def accept_client(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    head: bytes,
    settings: RelaySettings = DEFAULT_SETTINGS,
) -> WebSocketRequest:
    """Start a server-side WebSocket on a client connection whose handshake request (``head``,
    plus any bytes read after it) was already read from ``stream``. Returns the request, to be
    answered with ``accept(subprotocol=...)`` or ``reject(status, body=...)``; raises
    :class:`HandshakeFailed` when wsproto refused it (it has answered the client).

    The connection's reader task runs in ``nursery`` until the connection closes.
    """
    request: WebSocketRequest = await nursery.start(_run_client, nursery, stream, head, settings)
    return request


# --- the upstream's side --------------------------------------------------------------------


class UpstreamConnectError(Exception):
    """The upstream WebSocket could not be opened. ``status`` and ``body`` are the upstream's
    refusal of the handshake (None and b"" when it never answered)."""

    def __init__(
        self, message: str, *, status: int | None = None, body: bytes = b"", timeout: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.timeout = timeout

    @property
    def retryable(self) -> bool:
        """Worth trying another backend: no answer, or a 408, 429 or 5xx refusal."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


@final
class _HandshakeGuard(_Wrapper):
    """Cancels the handshake wait when the upstream ends the connection before answering
    (trio-websocket would wait for the handshake forever)."""

    __slots__ = ("_scope",)

    def __init__(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        super().__init__(stream)
        self._scope: trio.CancelScope | None = scope

    def opened(self) -> None:
        self._scope = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self._scope is not None:
                self._scope.cancel()
            raise
        if not data and self._scope is not None:
            self._scope.cancel()
        return data


async def _open_stream(
    target: UpstreamTarget, ssl_context: ssl.SSLContext | None
) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream(target.host, target.port)
    if not target.secure:
        return tcp
    context = ssl_context or ssl.create_default_context()
    tls = trio.SSLStream(tcp, context, server_hostname=target.host, https_compatible=True)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _run_upstream(
    nursery: trio.Nursery,
    target: UpstreamTarget,
    subprotocols: Sequence[str],
    headers: Headers,
    settings: RelaySettings,
    ssl_context: ssl.SSLContext | None,
    *,
    task_status: trio.TaskStatus[WebSocketConnection] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Owns one upstream connection: its own nursery holds the reader task, so a refused
    handshake (raised by that task) is caught here and not in the session's nursery, and the
    reader outlives a cancellation long enough to close (see :func:`_outliving`)."""
    stream: trio.abc.Stream | None = None
    started = False
    try:
        with _outliving(nursery, settings.close_timeout):
            async with trio.open_nursery() as inner:
                with trio.move_on_after(settings.connect_timeout) as deadline:
                    stream = await _open_stream(target, ssl_context)
                    with trio.CancelScope() as handshake:
                        guard = _HandshakeGuard(stream, handshake)
                        # Annotated as socket/TLS streams only; it uses any trio stream.
                        connection = await trio_websocket.wrap_client_stream(
                            inner,
                            guard,  # type: ignore[arg-type]
                            target.host_header,
                            target.resource,
                            subprotocols=list(subprotocols),
                            extra_headers=headers,
                            message_queue_size=settings.message_queue_size,
                            max_message_size=settings.max_message_size,
                            receive_buffer_size=settings.receive_buffer_size,
                        )
                        guard.opened()
                        task_status.started(connection)
                        started = True
                    if handshake.cancelled_caught:
                        raise UpstreamConnectError(
                            f"{target.url} closed the connection during the WebSocket handshake"
                        )
                if deadline.cancelled_caught:
                    raise UpstreamConnectError(
                        f"{target.url} did not complete the WebSocket handshake within "
                        f"{settings.connect_timeout:g}s",
                        timeout=True,
                    )
    except BaseExceptionGroup as group:
        if started:
            raise
        leaves = _leaves(group)
        for exc in leaves:
            if isinstance(exc, ConnectionRejected):
                raise UpstreamConnectError(
                    f"{target.url} refused the WebSocket handshake with {exc.status_code}",
                    status=exc.status_code,
                    body=exc.body or b"",
                ) from None
        for exc in leaves:
            if isinstance(exc, UpstreamConnectError):
                raise exc from None
            if isinstance(exc, OSError | trio.BrokenResourceError):
                raise UpstreamConnectError(f"cannot connect to {target.url}: {exc}") from None
        raise
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)


async def open_upstream(
    nursery: trio.Nursery,
    target: UpstreamTarget,
    *,
    subprotocols: Sequence[str] = (),
    headers: Headers | None = None,
    settings: RelaySettings = DEFAULT_SETTINGS,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocketConnection:
    """Open the upstream WebSocket (``headers``: the backend's credentials and the forwarded
    client headers). Raises :class:`UpstreamConnectError` within ``connect_timeout``. The
    connection's task runs in ``nursery`` until the connection closes."""
    connection: WebSocketConnection = await nursery.start(
        _run_upstream, nursery, target, tuple(subprotocols), list(headers or []), settings,
        ssl_context,
    )
    return connection


# --- the relay ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayStats:
    """What one relayed session did, for metrics and the access log. Text messages are counted
    in characters (equal to bytes for the ASCII JSON the Realtime API sends)."""

    #: client to upstream
    client_messages: int
    client_bytes: int
    #: upstream to client
    upstream_messages: int
    upstream_bytes: int
    duration: float
    #: "client" or "upstream" (that side closed), "upstream_error" (the client got an error
    #: event and 1011), "client_timeout" (the client stopped answering pings or reading),
    #: "cancelled" (the relay was cancelled: both sides got 1001)
    ended_by: str
    #: The close code the ending side sent (1006: none, the connection just ended).
    close_code: int | None
    close_reason: str | None
    #: The message of the error event sent to the client, if any.
    error: str | None


def _code_and_reason(reason: CloseReason | None) -> tuple[int, str | None]:
    """A close as (code, reason); no close frame at all counts as 1006."""
    return (1006, None) if reason is None else (reason.code, reason.reason)


async def _cut(connection: MessageConnection) -> None:
    """Close ``connection`` without waiting for its peer: trio-websocket's ``aclose`` closes
    the stream when it is cancelled (a no-op on a connection already closed)."""
    with trio.CancelScope(shield=True), trio.move_on_after(0):
        await connection.aclose()


@final
class _Relay:
    """One session's pumps, keep-alives and counters. The first side to end decides how the
    session closes (``_end``); the rest is cancelled."""

    def __init__(
        self,
        client: MessageConnection,
        upstream: MessageConnection,
        settings: RelaySettings,
        observer: Observer | None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.settings = settings
        self.observer = observer
        self.client_messages = 0
        self.client_bytes = 0
        self.upstream_messages = 0
        self.upstream_bytes = 0
        self.ended_by = "cancelled"
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.error: str | None = None
        self._ended = False
        self._stalled_pumps = 0
        #: A pump is inside send_message (it may be held there by a peer that does not read).
        self.sending_up = False
        self.sending_down = False
        self._unresponsive: MessageConnection | None = None
        self._scope: trio.CancelScope | None = None

    def _end(self, ended_by: str, code: int | None, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.ended_by, self.close_code, self.close_reason = ended_by, code, reason
        assert self._scope is not None
        self._scope.cancel()

    def _stalled(self) -> None:
        """A pump found its destination closed. The destination's own pump normally ends the
        session once it has drained; when both pumps stopped this way (both sides closed at
        once) nobody would, so the session ends here as the upstream's close says."""
        self._stalled_pumps += 1
        if self._stalled_pumps == 2:
            closed = self.upstream.closed
            if closed is not None and not is_abnormal_close(closed.code):
                self._end("upstream", closed.code, closed.reason)
            else:
                self._end("client", *_code_and_reason(self.client.closed))

    def _observe(self, message: str) -> None:
        observer = self.observer
        assert observer is not None
        try:
            observer(message)
        except Exception:
            log.warning("realtime observer failed; the session goes on unobserved", exc_info=True)
            self.observer = None

    async def _client_to_upstream(self) -> None:
        client, upstream = self.client, self.upstream
        while True:
            try:
                message = await client.get_message()
            except ConnectionClosed as exc:
                self._end("client", *_code_and_reason(exc.reason))
                return
            self.sending_up = True
            try:
                await upstream.send_message(message)
            except ConnectionClosed:
                self._stalled()  # the upstream has ended: its own pump reports how, after draining
                return
            self.sending_up = False
            self.client_messages += 1
            self.client_bytes += len(message)

    async def _upstream_to_client(self) -> None:
        client, upstream = self.client, self.upstream
        while True:
            try:
                message = await upstream.get_message()
            except ConnectionClosed as exc:
                code, text = _code_and_reason(exc.reason)
                if is_abnormal_close(code):
                    self._upstream_failed("the upstream connection was lost", code)
                elif code == 1009 and text is not None and text.startswith(_TOO_BIG_PREFIX):
                    self._upstream_failed(
                        f"the upstream sent a message larger than {self.settings.max_message_size}"
                        " bytes", code,
                    )
                else:
                    self._end("upstream", code, text)
                return
            if self.observer is not None and isinstance(message, str):
                self._observe(message)
            self.sending_down = True
            try:
                await client.send_message(message)
            except ConnectionClosed:
                self._stalled()  # the client has ended: its own pump reports how
                return
            self.sending_down = False
            self.upstream_messages += 1
            self.upstream_bytes += len(message)

    def _upstream_failed(self, message: str, code: int | None) -> None:
        if not self._ended:
            self.error = message
        self._end("upstream_error", code, None)

    def _held_back(self, is_upstream: bool) -> bool:
        """Whether the pump that reads this hop is waiting to send to the other hop: then this
        hop's reader has stopped at a full queue, its pong waits unread behind messages the
        other hop does not take (fast enough), and it is the other hop that is not keeping up.
        A dead hop sends nothing, so its pump is idle and it is blamed itself."""
        return self.sending_down if is_upstream else self.sending_up

    async def _keepalive(self, connection: MessageConnection, is_upstream: bool) -> None:
        interval, timeout = self.settings.ping_interval, self.settings.ping_timeout
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(timeout) as waiting:
                try:
                    await connection.ping()
                except ConnectionClosed:
                    return  # the pumps see it too
            if waiting.cancelled_caught:
                self._timed_out(is_upstream, self._held_back(is_upstream))
                return

    def _timed_out(self, is_upstream: bool, held_back: bool) -> None:
        """A ping on one hop went unanswered: end the session, blaming the hop that stopped."""
        timeout = self.settings.ping_timeout
        dead_upstream = is_upstream != held_back
        if not self._ended:
            self._unresponsive = self.upstream if dead_upstream else self.client
        if not dead_upstream:
            self._end("client_timeout", None, None)
        elif held_back:
            self._upstream_failed(f"the upstream stopped reading for {timeout:g}s", None)
        else:
            self._upstream_failed(f"the upstream did not answer a ping within {timeout:g}s", None)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._client_to_upstream)
            nursery.start_soon(self._upstream_to_client)
            if self.settings.ping_interval > 0:
                nursery.start_soon(self._keepalive, self.client, False)
                nursery.start_soon(self._keepalive, self.upstream, True)

    async def close(self) -> None:
        """Close both hops as the ending side asks, within ``close_timeout`` in all."""
        if self._unresponsive is not None:  # no close handshake to wait for: cut it now
            await _cut(self._unresponsive)
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.close_timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_client)
                nursery.start_soon(self._close_upstream)
        # Whatever did not close in time is cut off.
        await _cut(self.client)
        await _cut(self.upstream)

    async def _close_client(self) -> None:
        client = self.client
        if self.ended_by == "upstream":
            code = relayed_close_code(self.close_code or 1000)
            await client.aclose(code, self.close_reason)
        elif self.ended_by == "upstream_error":
            message = self.error or "the upstream failed"
            with contextlib.suppress(ConnectionClosed):
                await client.send_message(error_event(message))
            await client.aclose(1011, close_reason(message))
        elif self.ended_by == "cancelled":
            await client.aclose(1001, "the router is shutting down")
        else:
            await client.aclose()  # it closed (or stopped answering): finish our side

    async def _close_upstream(self) -> None:
        upstream = self.upstream
        if self.ended_by == "client":
            code = self.close_code or 1000
            if is_abnormal_close(code):
                await upstream.aclose(1001, "the client went away")
            else:
                await upstream.aclose(relayed_close_code(code), self.close_reason)
        elif self.ended_by == "client_timeout":
            await upstream.aclose(1001, "the client stopped answering")
        elif self.ended_by == "cancelled":
            await upstream.aclose(1001, "the router is shutting down")
        else:
            await upstream.aclose()

    def stats(self, duration: float) -> RelayStats:
        return RelayStats(
            self.client_messages, self.client_bytes, self.upstream_messages, self.upstream_bytes,
            duration, self.ended_by, self.close_code, self.close_reason, self.error,
        )


async def relay(
    client: MessageConnection,
    upstream: MessageConnection,
    *,
    settings: RelaySettings = DEFAULT_SETTINGS,
    observer: Observer | None = None,
    report: Callable[[RelayStats], None] | None = None,
) -> RelayStats:
    """Relay messages both ways until a side ends; close the other side accordingly; return
    the counters. Text and binary messages go through as they are. ``observer`` sees every
    upstream-to-client text message before it is sent (an exception from it is logged and
    the session continues unobserved).

    How it ends: a side's close code and reason go to the other side (1005 becomes 1000). An
    upstream that vanishes (no close frame), sends a message larger than ``max_message_size``
    or misses a ping gives the client an ``error`` event and a 1011 close. A client that
    vanishes or misses a ping closes the upstream with 1001. Cancelling ``relay`` closes both
    with 1001. Both connections are closed when it returns. ``report`` gets the counters too,
    even when ``relay`` is cancelled (then it raises instead of returning them).
    """
    session = _Relay(client, upstream, settings, observer)
    started = trio.current_time()
    try:
        await session.run()
    finally:
        await session.close()
        if report is not None:
            report(session.stats(trio.current_time() - started))
    return session.stats(trio.current_time() - started)


async def proxy(
    request: WebSocketRequest,
    nursery: trio.Nursery,
    target: UpstreamTarget,
    *,
    headers: Headers | None = None,
    settings: RelaySettings = DEFAULT_SETTINGS,
    observer: Observer | None = None,
    ssl_context: ssl.SSLContext | None = None,
    refusal_body: Callable[[int, str], bytes] | None = None,
) -> RelayStats | UpstreamConnectError:
    """One session against one backend: open the upstream with the client's subprotocols
    (minus the key subprotocol), then accept the client with the upstream's choice, then
    :func:`relay`. When the upstream cannot be opened the client's handshake is refused
    (the upstream's own refusal status and body when it gave one, else 502, or 504 after
    ``connect_timeout``; ``refusal_body(status, message)`` renders the body) and the error
    is returned. A router with several backends calls :func:`open_upstream` in its own
    retry loop instead."""
    offered = list(request.proposed_subprotocols)
    _, upstream_protocols = split_subprotocols(offered)
    try:
        upstream = await open_upstream(
            nursery, target, subprotocols=upstream_protocols, headers=headers,
            settings=settings, ssl_context=ssl_context,
        )
    except UpstreamConnectError as exc:
        status = exc.status or (504 if exc.timeout else 502)
        # The upstream's own error body when it is JSON (OpenAI's is), else one of ours.
        body = exc.body if exc.status and exc.body.lstrip().startswith(b"{") else b""
        if not body and refusal_body is not None:
            body = refusal_body(status, exc.message)
        extra = [(b"content-type", b"application/json")] if body else []
        with contextlib.suppress(ConnectionClosed):
            await request.reject(status, extra_headers=extra, body=body or None)
        return exc
    try:
        client = await request.accept(
            subprotocol=client_subprotocol(upstream.subprotocol, offered)
        )
    except ConnectionClosed:
        with trio.CancelScope(shield=True), trio.move_on_after(settings.close_timeout):
            await upstream.aclose(1001, "the client went away")
        return RelayStats(0, 0, 0, 0, 0.0, "client", 1006, None, None)
    return await relay(client, upstream, settings=settings, observer=observer)


async def relay_upgrade(
    stream: trio.abc.Stream,
    head: bytes,
    target: UpstreamTarget,
    *,
    headers: Headers | None = None,
    settings: RelaySettings = DEFAULT_SETTINGS,
    observer: Observer | None = None,
    ssl_context: ssl.SSLContext | None = None,
    refusal_body: Callable[[int, str], bytes] | None = None,
) -> RelayStats | UpstreamConnectError | HandshakeFailed:
    """A whole session on a client connection whose upgrade request was already read
    (``head``: see :func:`accept_client`), against one backend (see :func:`proxy`). Returns
    when both connections are closed; the caller closes ``stream``."""
    async with trio.open_nursery() as nursery:
        try:
            request = await accept_client(nursery, stream, head, settings)
        except HandshakeFailed as exc:
            return exc
        return await proxy(
            request, nursery, target, headers=headers, settings=settings, observer=observer,
            ssl_context=ssl_context, refusal_body=refusal_body,
        )
