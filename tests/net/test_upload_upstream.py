"""Bodies relayed to an upstream as they are produced (``Pool.start_upload``), over
HTTP/1.1 (content-length and chunked) and HTTP/2 (flow-controlled DATA frames)."""

from __future__ import annotations

import hashlib
import ssl

import pytest
import trio

from continuum.net.client.connect import make_h2_ssl_context
from continuum.net.client.exchange import Origin, PoolLimits, UpstreamError
from continuum.net.client.h2 import HTTP2Pool
from continuum.net.client.http1_pool import HTTP1Pool
from continuum.net.server.connection import ProtocolError
from h2_server import H2Server
from net.test_upload_stream import UPLOAD, Recorder, serve

HANG_GUARD = 20
LIMITS = PoolLimits(max_connections=4, connect_timeout=5.0)
BLOB = bytes(range(256)) * 8192  # 2 MiB


class Pieces:
    """A RequestBody over fixed pieces that counts how it was read."""

    def __init__(self, data: bytes, piece: int = 65536, *, sized: bool = True,
                 rewindable: bool = True) -> None:
        self.data = data
        self.piece = piece
        self.length: int | None = len(data) if sized else None
        self.offset = 0
        self.rewindable = rewindable
        self.rewinds = 0
        self.gaps = 0  # times a piece was asked for while the previous one was in flight

    async def receive_some(self) -> bytes:
        await trio.lowlevel.checkpoint()
        out = self.data[self.offset:self.offset + self.piece]
        self.offset += len(out)
        return out

    def rewind(self) -> bool:
        if not self.rewindable and self.offset:
            return False
        self.offset = 0
        self.rewinds += 1
        return True


def expected(data: bytes) -> bytes:
    return b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode())


async def upload(pool: HTTP1Pool | HTTP2Pool, target: bytes, body: Pieces,
                 ctype: bytes = b"multipart/form-data; boundary=b") -> tuple[int, bytes]:
    exchange = await pool.start_upload(b"POST", target, [(b"content-type", ctype)], body)
    try:
        return exchange.status, await exchange.read_all(64 << 20)
    finally:
        exchange.close()


async def test_http1_upload_sized_and_chunked(nursery: trio.Nursery) -> None:
    handler = Recorder()
    address = await serve(nursery, handler, max_upload_size=10 << 20)
    pool = HTTP1Pool(Origin.from_url(f"http://{address}"), LIMITS)
    with trio.fail_after(HANG_GUARD):
        assert await upload(pool, UPLOAD, Pieces(BLOB)) == (200, expected(BLOB))
        assert await upload(pool, UPLOAD, Pieces(BLOB, sized=False)) == (200, expected(BLOB))
    assert handler.requests[0].header(b"content-length") == b"%d" % len(BLOB)
    assert handler.requests[1].header(b"transfer-encoding") == b"chunked"
    assert pool.stats.opened_total == 1  # the connection was kept between the two


async def test_http1_early_refusal_is_the_answer(nursery: trio.Nursery) -> None:
    """An upstream that answers 413 at the head and closes: that answer comes back, not
    a broken pipe."""
    handler = Recorder(read=False)
    address = await serve(nursery, handler, max_upload_size=64 << 20)
    pool = HTTP1Pool(Origin.from_url(f"http://{address}"), LIMITS)
    big = BLOB * 8  # 16 MiB: more than the socket buffers hold
    with trio.fail_after(HANG_GUARD):
        status, body = await upload(pool, UPLOAD, Pieces(big))
    assert (status, body) == (400, b"refused unread")


async def test_http1_stale_connection_is_retried_when_the_body_can_start_over(
        nursery: trio.Nursery) -> None:
    handler = Recorder()
    address = await serve(nursery, handler, max_upload_size=10 << 20, keepalive_timeout=0.05)
    pool = HTTP1Pool(Origin.from_url(f"http://{address}"), LIMITS)
    data = b"abc" * 1000
    with trio.fail_after(HANG_GUARD):
        assert await upload(pool, UPLOAD, Pieces(data)) == (200, expected(data))
        await trio.sleep(0.5)  # the server closes the kept connection meanwhile
        body = Pieces(data)
        assert await upload(pool, UPLOAD, body) == (200, expected(data))
    assert body.rewinds == 1
    assert pool.stats.opened_total == 2


async def test_http1_stale_connection_fails_when_the_body_cannot_start_over(
        nursery: trio.Nursery) -> None:
    handler = Recorder()
    address = await serve(nursery, handler, max_upload_size=10 << 20, keepalive_timeout=0.05)
    pool = HTTP1Pool(Origin.from_url(f"http://{address}"), LIMITS)
    data = b"abc" * 1000
    with trio.fail_after(HANG_GUARD):
        assert await upload(pool, UPLOAD, Pieces(data)) == (200, expected(data))
        await trio.sleep(0.5)
        with pytest.raises(UpstreamError):
            await upload(pool, UPLOAD, Pieces(data, rewindable=False))
    assert pool.stats.in_use == 0


async def test_h2_upload(nursery: trio.Nursery, server_tls: ssl.SSLContext,
                         ca_file: str) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = HTTP2Pool(Origin.from_url(f"https://127.0.0.1:{port}"), LIMITS,
                     make_h2_ssl_context(ca_file))
    await nursery.start(pool.run)
    data = BLOB[:300_000]  # past the default 64 KiB window: flow control is exercised
    with trio.fail_after(HANG_GUARD):
        assert await upload(pool, b"/echo", Pieces(data, 10_000)) == (200, data)
        assert await upload(pool, b"/echo", Pieces(data, 10_000, sized=False)) == (200, data)


async def test_a_failing_body_fails_the_exchange(nursery: trio.Nursery) -> None:
    """The body's own error (its client left) comes out as is, the connection closed."""
    handler = Recorder()
    address = await serve(nursery, handler, max_upload_size=10 << 20)
    pool = HTTP1Pool(Origin.from_url(f"http://{address}"), LIMITS)

    class Broken(Pieces):
        async def receive_some(self) -> bytes:
            if self.offset:
                raise ProtocolError(400, "client went away")
            return await super().receive_some()

    with trio.fail_after(HANG_GUARD), pytest.raises(ProtocolError):
        await upload(pool, UPLOAD, Broken(BLOB))
    assert pool.stats.in_use == 0
    assert pool.stats.idle == 0
