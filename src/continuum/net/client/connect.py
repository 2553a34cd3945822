"""Opening a connection to an origin: TCP, then TLS with the ALPN list of the pool that
asks (HTTP/1.1 only, or h2 first), every failure mapped to :class:`ConnectError` here."""

from __future__ import annotations

import socket
import ssl

import trio

from .exchange import ConnectError, Origin


def make_ssl_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context()  # the system's trust store ...
    if ca_file is not None:
        ctx.load_verify_locations(cafile=ca_file)  # ... plus the backend's own CA bundle
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


#: Unanswered keepalive probes before the kernel declares an upstream connection dead.
KEEPALIVE_PROBES = 3


def set_keepalive(sock: trio.socket.SocketType, interval: float) -> None:
    """TCP keepalive on ``sock``: the first probe after ``interval`` idle seconds, then one
    every ``interval``; :data:`KEEPALIVE_PROBES` unanswered ones reset the connection. Why:
    a stream from a model that thinks for minutes is a silent socket, and a NAT or a dead
    peer on the way must be noticed (and idle pooled connections kept alive through
    middleboxes) without waiting for the read timeout. ``interval`` <= 0: keepalive off."""
    if interval <= 0:
        return
    seconds = max(1, round(interval))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS has only TCP_KEEPALIVE (the idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
    elif hasattr(socket, "TCP_KEEPALIVE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPALIVE, seconds)
    if hasattr(socket, "TCP_KEEPINTVL"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, seconds)
    if hasattr(socket, "TCP_KEEPCNT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


async def open_transport(
    origin: Origin, ssl_context: ssl.SSLContext | None, connect_timeout: float,
    keepalive: float = 0.0,
) -> tuple[trio.abc.Stream, trio.SocketStream, str | None]:
    """TCP (and TLS, when given a context) to ``origin``: (stream, raw TCP stream, the ALPN
    protocol), with TCP keepalive every ``keepalive`` seconds (0: off). Every failure —
    refused, unreachable, TLS, timeout — is a ConnectError, mapped here for every pool."""
    try:
        with trio.fail_after(connect_timeout):
            raw = await trio.open_tcp_stream(origin.host, origin.port)
            try:
                set_keepalive(raw.socket, keepalive)
            except BaseException:
                raw.socket.close()
                raise
            if ssl_context is None:
                return raw, raw, None
            tls = trio.SSLStream(
                raw, ssl_context, server_hostname=origin.host, https_compatible=True
            )
            try:
                await tls.do_handshake()
            except BaseException:
                raw.socket.close()
                raise
            return tls, raw, tls.selected_alpn_protocol()
    except trio.TooSlowError:
        raise ConnectError(
            f"connect to {origin.host}:{origin.port} timed out", sent_nothing=True
        ) from None
    except (OSError, trio.BrokenResourceError) as exc:
        reason = _connect_failure_reason(exc)
        raise ConnectError(
            f"cannot connect to {origin.host}:{origin.port}: {reason}", sent_nothing=True
        ) from exc


def _connect_failure_reason(exc: BaseException) -> str:
    """The root cause, e.g. "Connection refused", not trio's "all attempts ... failed"."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return f"TLS handshake failed: {exc.__cause__}"
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError):
        exc = cause
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def make_h2_ssl_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """Like :func:`make_ssl_context`, but offering ALPN ``h2`` first, then ``http/1.1``.

    Keep it separate from the HTTP/1.1 pool's context: an SSLContext carries one ALPN list,
    and an HTTP/1.1 pool must never end up on a connection the server switched to h2.
    """
    ctx = make_ssl_context(ca_file, verify)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


async def negotiate_protocol(
    origin: Origin, ssl_context: ssl.SSLContext, connect_timeout: float
) -> str:
    """The protocol the origin picks by ALPN ("h2" or "http/1.1"); the connection is closed."""
    _, raw, alpn = await open_transport(origin, ssl_context, connect_timeout)
    raw.socket.close()
    return alpn or "http/1.1"
