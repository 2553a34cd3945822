"""Listening sockets (TCP v4/v6, Unix) and the accept loop with graceful drain."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import final

import trio

from ...core.clock import now as clock
from ..fastio import raw_socket
from .connection import (
    DateCache,
    ErrorRenderer,
    Handler,
    HTTPLimits,
    Refuser,
    ServerConnection,
    _plain_error,
)
from .parking import IdleParking, OpenConnections, can_park
from .tls import accept_tls

log = logging.getLogger("continuum.http")

#: Connections accepted per wake-up at most (then other tasks get a turn).
_ACCEPT_BATCH = 256


def split_bind_address(address: str) -> tuple[str, int] | str:
    """``"host:port"``/``"[::1]:port"`` → (host, port); ``"unix:/p"`` → "/p"."""
    if address.startswith("unix:"):
        return address[len("unix:") :]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind address {address!r} is not host:port, [v6]:port or unix:/path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_address(sockname: object, family: int) -> str:
    if family == socket.AF_UNIX:
        return f"unix:{sockname}"
    assert isinstance(sockname, tuple)
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


async def _open_unix_listener(path: str, mode: int | None) -> trio.SocketListener:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _open_tcp_listener(host: str, port: int, reuse_port: bool) -> trio.SocketListener:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def open_listeners(
    addresses: Sequence[str],
    *,
    socket_mode: int | None = None,
    reuse_port: bool = False,
    inherited: Mapping[str, int] | None = None,
) -> list[trio.SocketListener]:
    """Bind every address or none: a failure closes what was opened and raises OSError.

    ``inherited`` maps addresses to listening sockets a parent process opened (by fd).
    """
    listeners: list[trio.SocketListener] = []
    try:
        for address in addresses:
            target = split_bind_address(address)
            try:
                if inherited and address in inherited:
                    family = socket.AF_UNIX if isinstance(target, str) else (
                        socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
                    sock = trio.socket.fromfd(inherited[address], family, socket.SOCK_STREAM)
                    listeners.append(trio.SocketListener(sock))
                elif isinstance(target, str):
                    listeners.append(await _open_unix_listener(target, socket_mode))
                else:
                    listeners.append(await _open_tcp_listener(*target, reuse_port))
            except OSError as exc:
                why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise OSError(exc.errno, f"cannot bind {address}: {why}") from None
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


def listener_address(listener: trio.SocketListener) -> str:
    sock = listener.socket
    return format_address(sock.getsockname(), sock.family)


@final
class HTTPServer:
    """Accepts connections on its listeners and serves each with ``handler``.

    ``drain()`` stops accepting and lets in-flight requests finish; ``run`` returns when the
    last connection has closed or ``shutdown_timeout`` after draining began.
    """

    def __init__(
        self,
        listeners: list[trio.SocketListener],
        handler: Handler,
        limits: HTTPLimits,
        *,
        shutdown_timeout: float = 30.0,
        render_error: ErrorRenderer = _plain_error,
        refuse: Refuser | None = None,
        timer_resolution: float | None = None,
        unlink_unix: bool = True,
        upgrade_paths: frozenset[str] = frozenset(),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.listeners = listeners
        self.addresses = [listener_address(listener) for listener in listeners]
        #: Connections served by a task; idle plain-TCP ones are parked after a while
        #: (``.parking``: no task, no parser) and counted in :attr:`connections` only.
        self.served: set[ServerConnection] = set()
        parks = limits.park_after > 0 and ssl_context is None and can_park()
        self._parking = IdleParking() if parks else None
        self.connections = OpenConnections(self.served, self._parking)
        self._handler = handler
        self._limits = limits
        self._shutdown_timeout = shutdown_timeout
        self._render_error = render_error
        self._refuse = refuse
        #: Paths whose WebSocket upgrades reach the handler (``ServerConnection.upgrade``).
        self.upgrade_paths = upgrade_paths
        #: TLS for every connection when set (``server.tls``): the handshake, within
        #: ``request_read_timeout``, runs in the connection's task, never the accept loop.
        self.ssl_context = ssl_context
        self._dates = DateCache()
        if timer_resolution is None:
            timer_resolution = min(limits.keepalive_timeout, limits.request_read_timeout) / 10
        if parks:
            # Parked within half of ``park_after`` of it passing, not a whole sweep later:
            # in a burst of new clients the tasks of those not yet parked are the peak.
            timer_resolution = min(timer_resolution, limits.park_after / 2)
        #: How often connection timers are checked: timeouts fire up to this much late.
        self.timer_resolution = min(max(timer_resolution, 0.005), 0.5)
        self._accept_scope = trio.CancelScope()
        self._draining = trio.Event()
        self._all_closed = trio.Event()
        #: Unix socket files removed on shutdown (not when a parent process owns them).
        self._unix_paths = [
            a[len("unix:") :] for a in self.addresses if a.startswith("unix:") and unlink_unix
        ]

    def drain(self) -> None:
        self._draining.set()
        self._accept_scope.cancel()
        if self._parking is not None:
            self._parking.close()
        for conn in list(self.served):
            conn.close_if_idle()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as conns:
                conns.start_soon(self._sweep_timers)
                if self._parking is not None:
                    resume = partial(self._resume, conns)
                    conns.start_soon(self._parking.run, resume)
                with self._accept_scope:
                    async with trio.open_nursery() as accepters:
                        for listener in self.listeners:
                            accepters.start_soon(self._accept_loop, listener, conns)
                for listener in self.listeners:
                    await listener.aclose()
                for path in self._unix_paths:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                # Draining: connections finish their current request, then close.
                conns.cancel_scope.deadline = trio.current_time() + self._shutdown_timeout
                if self.served:
                    await self._all_closed.wait()
                conns.cancel_scope.cancel()  # the sweeper
        finally:
            if self._parking is not None:
                self._parking.close()
            for listener in self.listeners:
                with contextlib.suppress(Exception):
                    await listener.aclose()

    async def _sweep_timers(self) -> None:
        """Fire connection timers (idle keep-alive, slow client, request deadlines)."""
        while True:
            await trio.sleep(self.timer_resolution)
            self._sweep(clock())

    def _sweep(self, now: float) -> None:
        """One sweep (a call of its own, so no connection stays referenced by the sweeper's
        locals while it sleeps: a closed one is freed as its task ends)."""
        parking = self._parking
        # An idle connection's deadline is when it fell idle + keepalive_timeout.
        park_by = now + self._limits.keepalive_timeout - self._limits.park_after
        for conn in list(self.served):
            if conn.deadline <= now:
                conn.expire()
            elif (parking is not None and conn.idle and conn.deadline <= park_by
                  and (sock := raw_socket(conn.stream)) is not None):
                conn.park(sock)
        if parking is not None:
            parking.expire(now)

    async def _accept_loop(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        """Accept every pending connection at once, then wait for more.

        ``SocketListener.accept`` yields after each connection, so a burst of N new clients
        took N scheduler rounds — each also running every busy connection — before the last
        one was even accepted: that showed as milliseconds of added time to first byte
        when many streams start together. Draining the kernel's queue in one go avoids it.
        """
        sock = listener.socket
        raw = getattr(sock, "_sock", None)  # trio's socket wraps a stdlib one
        if not isinstance(raw, socket.socket):
            raw = None
        while True:
            try:
                if raw is None:
                    conns.start_soon(self._serve_connection, await listener.accept())
                    continue
                await trio.lowlevel.wait_readable(sock)
                for _ in range(_ACCEPT_BATCH):
                    try:
                        client, _ = raw.accept()
                    except BlockingIOError:
                        break
                    client.setblocking(False)
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
                    conns.start_soon(self._serve_connection, stream)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed (%s); pausing accepts for 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client gave up before we accepted it
                raise

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        client: trio.abc.Stream = stream
        if self.ssl_context is not None:
            tls = await accept_tls(stream, self.ssl_context, self._limits.request_read_timeout)
            if tls is None:
                await trio.aclose_forcefully(stream)
                return
            client = tls
        await self._serve(client)

    def _resume(self, conns: trio.Nursery, sock: socket.socket, deadline: float) -> None:
        """A parked socket became readable: serve it again in a task of its own."""
        try:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        except OSError:  # reset meanwhile: nothing to serve
            sock.close()
            return
        conns.start_soon(self._serve, stream, deadline)

    async def _serve(self, client: trio.abc.Stream, idle_deadline: float | None = None,
                     received: bytes = b"") -> None:
        while True:
            conn = ServerConnection(client, self._limits, self._dates, self._render_error,
                                    self._refuse, self.upgrade_paths)
            if idle_deadline is not None:
                conn.resume(idle_deadline, received)
            if self._draining.is_set():
                conn.closing = True
            self.served.add(conn)
            received = b""
            try:
                await conn.serve(self._handler)
            finally:
                self.served.discard(conn)
                if conn.parked:
                    idle_deadline, received = conn.parked_state()
                    if not received:  # else: bytes arrived as it was parked, served below
                        sock = raw_socket(conn.stream)
                        assert sock is not None and self._parking is not None
                        self._parking.park(sock, idle_deadline)
                if not received and not self.served and self._draining.is_set():
                    self._all_closed.set()
            if not received:
                return
            client = conn.stream


async def serve_alone(
    address: str,
    handler: Handler,
    limits: HTTPLimits,
    *,
    shutdown_timeout: float = 5.0,
    render_error: ErrorRenderer = _plain_error,
    announce: Callable[[str], None] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A listener of its own beside the main ones (``metrics.bind_address``,
    ``admin.bind_address``): serve ``handler`` on ``address`` until cancelled, then drain.
    ``announce(bound address)`` runs once it listens; ``nursery.start`` returns the bound
    addresses."""
    listeners = await open_listeners([address])
    server = HTTPServer(listeners, handler, limits, shutdown_timeout=shutdown_timeout,
                        render_error=render_error)
    if announce is not None:
        announce(server.addresses[0])
    task_status.started(list(server.addresses))
    try:
        await server.run()
    finally:
        server.drain()
        for listener in listeners:
            await trio.aclose_forcefully(listener)
