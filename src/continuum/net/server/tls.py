"""TLS for client connections: the server context, its reload, and the handshake.

One ``ssl.SSLContext`` per router serves every listener. Reloading changes that context in
place (``load_cert_chain`` replaces the certificate and key for the handshakes that follow;
connections already open keep theirs), after the files were proven good on a scratch
context, so a bad file never leaves the router without a certificate. The same object can
therefore be handed to hypercorn, which builds its listeners once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Final

import trio

log = logging.getLogger("continuum.http")

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: The first byte of a TLS record carrying a handshake (a ClientHello).
_HANDSHAKE_RECORD: Final = 0x16
#: What a client speaking plain HTTP to the TLS port is told before the connection closes.
_PLAIN_HTTP_BODY: Final = (
    b'{"error":{"message":"This port speaks HTTPS: use https://","type":"invalid_request_error",'
    b'"param":null,"code":"tls_required"}}'
)
PLAIN_HTTP_ANSWER: Final = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)


def make_server_context(
    cert_file: str,
    key_file: str | None = None,
    client_ca_file: str | None = None,
    min_version: str = "1.2",
    alpn: Sequence[str] = ("http/1.1",),
) -> ssl.SSLContext:
    """A server context with ``cert_file`` (and ``key_file``; None: the key is in
    ``cert_file``); with ``client_ca_file`` a client must present a certificate that CA
    signed (mutual TLS). Raises ``OSError``/``ssl.SSLError`` for a missing or bad file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[min_version]
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(list(alpn))
    return context


def reload_server_context(
    context: ssl.SSLContext,
    cert_file: str,
    key_file: str | None = None,
    client_ca_file: str | None = None,
) -> None:
    """Re-read the files into ``context`` (new handshakes use them). They are loaded into a
    scratch context first: a missing or mismatched file raises and changes nothing. A CA of
    ``client_ca_file`` is added to those trusted; one taken out of the file stays trusted
    until the router restarts (OpenSSL cannot forget a CA)."""
    make_server_context(cert_file, key_file, client_ca_file)  # proves the files first
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)


async def _answer_plain_http(stream: trio.SocketStream) -> bool:
    """Whether the client opened with a TLS handshake. One that speaks plain HTTP instead is
    told (400, JSON) and the caller closes the connection. The first byte is peeked, never
    consumed, so the TLS layer reads the ClientHello whole."""
    sock = stream.socket
    try:
        first = await sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return False
    if not first:
        return False
    if first[0] == _HANDSHAKE_RECORD:
        return True
    if first.isalpha():  # a request line: "GET /...", "POST /..."
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(PLAIN_HTTP_ANSWER)
    return False


async def accept_tls(
    stream: trio.SocketStream, context: ssl.SSLContext, timeout: float
) -> trio.SSLStream[trio.SocketStream] | None:
    """The TLS side of a new client connection, handshake done within ``timeout``; None (the
    caller closes ``stream``) when it was plain HTTP, not TLS, too slow, or failed (a client
    without the certificate mutual TLS asks for, an unknown CA, a protocol version below
    ``min_version``: each logged at debug, as a client's mistake)."""
    tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
    with trio.move_on_after(timeout):
        if not await _answer_plain_http(stream):
            return None
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno in (errno.ECONNRESET, errno.EPIPE)):
                log.debug("TLS handshake failed: %s", cause or exc)
            return None
        return tls
    log.debug("TLS handshake not finished within %gs", timeout)
    return None
