"""hypercorn as the router's front (``server.frontend: hypercorn``): HTTP/1.1, HTTP/2 (over TLS
by ALPN, and h2c), and HTTP/3 over QUIC when ``aioquic`` is installed, serving an
:class:`~continuum.net.server.asgi.AsgiFront` on the listeners the router bound itself (so
``SO_REUSEPORT`` workers, inherited Unix sockets and port 0 work as with the native front).

Imported only when that front is chosen: the native path never imports hypercorn.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from typing import Any, final

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from .asgi import AsgiFront
from .listeners import listener_address

log = logging.getLogger("continuum.http")


class _Config(HypercornConfig):
    """hypercorn's config with the router's own TLS context: one object, reloaded in place
    (``RouterHandle.reload_tls``), where hypercorn would build its own once."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context


def _stdlib_socket(listener: trio.SocketListener) -> socket.socket:
    """A stdlib socket on a duplicate of the listener's descriptor (hypercorn wants stdlib
    sockets; the router keeps, and closes, its own)."""
    return socket.socket(fileno=os.dup(listener.socket.fileno()))


def _quic_socket(listener: trio.SocketListener) -> socket.socket | None:
    """A UDP socket on the TCP listener's host and port, for HTTP/3; None for Unix sockets."""
    family = listener.socket.family
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    host, port = listener.socket.getsockname()[:2]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@final
class HypercornFront:
    """Serves ``app`` with hypercorn's trio worker on ``listeners`` until drained.

    Same surface as ``HTTPServer`` for the supervisor: ``addresses``, ``connections`` (here:
    the requests being handled), ``ssl_context``, ``drain()`` and ``run()``.
    """

    def __init__(
        self,
        listeners: list[trio.SocketListener],
        app: AsgiFront,
        *,
        shutdown_timeout: float = 30.0,
        keepalive_timeout: float = 75.0,
        max_header_size: int = 65536,
        handshake_timeout: float = 30.0,
        websocket_max_message_size: int = 16 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        http3: bool = False,
        unlink_unix: bool = True,
    ) -> None:
        self.listeners = listeners
        self.app = app
        self.addresses = [listener_address(listener) for listener in listeners]
        self.connections = app.connections
        self.ssl_context = ssl_context
        self._cert_file = cert_file
        self._key_file = key_file
        self._http3 = http3
        self._draining = trio.Event()
        self._unix_paths = [
            a[len("unix:") :] for a in self.addresses if a.startswith("unix:") and unlink_unix
        ]
        config = _Config(ssl_context)
        config.keep_alive_timeout = keepalive_timeout
        config.graceful_timeout = shutdown_timeout
        config.h11_max_incomplete_size = max_header_size
        config.h2_max_header_list_size = max_header_size
        config.ssl_handshake_timeout = handshake_timeout
        config.websocket_max_message_size = websocket_max_message_size
        config.include_server_header = False
        config.accesslog = None  # the router writes its own access log
        config.errorlog = logging.getLogger("continuum.hypercorn")
        if ssl_context is not None:
            # Set so that hypercorn knows TLS is on, and for QUIC, which loads the files.
            config.certfile, config.keyfile = cert_file, key_file or cert_file
        self.config = config

    def drain(self) -> None:
        self._draining.set()
        self.app.drain()

    def _sockets(self) -> Sockets:
        secure: list[socket.socket] = []
        insecure: list[socket.socket] = []
        quic: list[socket.socket] = []
        for listener in self.listeners:
            (secure if self.ssl_context is not None else insecure).append(
                _stdlib_socket(listener))
            if self._http3:
                udp = _quic_socket(listener)
                if udp is not None:
                    quic.append(udp)
        if quic:  # clients learn of HTTP/3 from Alt-Svc on the TCP answers
            ports = sorted({sock.getsockname()[1] for sock in quic})
            self.config.alt_svc_headers = [f'h3=":{port}"; ma=3600' for port in ports]
        return Sockets(secure, insecure, quic)

    async def run(self) -> None:
        sockets = self._sockets()
        framework: Any = self.app  # an ASGI 3 callable; hypercorn's types are narrower
        app = wrap_app(framework, self.config.wsgi_max_body_size, "asgi")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.app.run)
                await worker_serve(app, self.config, sockets=sockets,
                                   shutdown_trigger=self._draining.wait)
                nursery.cancel_scope.cancel()
        finally:
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets,
                         *sockets.quic_sockets):
                sock.close()
            for path in self._unix_paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
