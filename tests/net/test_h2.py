"""HTTP2Pool against a small local HTTP/2 server (trio + h2, TLS by trustme, ALPN h2)."""

from __future__ import annotations

import json
import os
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio
import trustme

from continuum.net.client.connect import make_h2_ssl_context, negotiate_protocol
from continuum.net.client.exchange import ConnectError, Origin, PoolLimits
from continuum.net.client.h2 import HTTP2Exchange, HTTP2Pool, open_pool
from continuum.net.client.http1_pool import HTTP1Pool
from h2_server import H2Server
from helpers import refused_url

HANG_GUARD = 20


# -- fixtures --------------------------------------------------------------------------------


def client_tls(ca_file: str) -> ssl.SSLContext:
    return make_h2_ssl_context(ca_file)


LIMITS = PoolLimits(max_connections=4, connect_timeout=5.0)


async def running_pool(
    nursery: trio.Nursery,
    url: str,
    ctx: ssl.SSLContext | None,
    limits: PoolLimits = LIMITS,
    **kwargs: float | int,
) -> HTTP2Pool:
    pool = HTTP2Pool(Origin.from_url(url), limits, ctx, **kwargs)  # type: ignore[arg-type]
    await nursery.start(pool.run)
    return pool


async def call(
    pool: HTTP2Pool | HTTP1Pool, target: bytes, body: bytes = b"", method: bytes = b"POST"
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    exchange = await pool.start(method, target, [(b"content-type", b"application/json")], body)
    try:
        data = await exchange.read_all(64 << 20)
    finally:
        exchange.close()
    return exchange.status, exchange.headers, data


# -- tests -----------------------------------------------------------------------------------


async def test_round_trip(nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}/base", client_tls(ca_file))
    with trio.fail_after(HANG_GUARD):
        exchange = await pool.start(
            b"POST",
            b"/json?x=1",
            [
                (b"Content-Type", b"application/json"),
                (b"Connection", b"keep-alive"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Host", b"wrong"),
                (b"X-Custom", b"yes"),
            ],
            b'{"hello": "world"}',
        )
        assert isinstance(exchange, HTTP2Exchange)
        body = await exchange.read_all(1 << 20)
        exchange.close()
    assert exchange.status == 200
    assert (b"content-type", b"application/json") in exchange.headers
    assert (b"x-served-by", b"h2-test") in exchange.headers
    assert all(not name.startswith(b":") for name, _ in exchange.headers)
    doc = json.loads(body)
    assert doc["method"] == "POST"
    assert doc["path"] == "/base/json?x=1"
    assert doc["authority"] == f"127.0.0.1:{port}"
    assert doc["scheme"] == "https"
    assert doc["body"] == '{"hello": "world"}'
    assert doc["headers"]["x-custom"] == "yes"
    assert doc["headers"]["content-length"] == "18"
    for hop in ("connection", "transfer-encoding", "host"):
        assert hop not in doc["headers"]
    stats = pool.stats
    assert (stats.in_use, stats.idle, stats.waiting, stats.opened_total) == (0, 1, 0, 1)
    pool.close()


async def test_get_without_body_and_h2c(nursery: trio.Nursery) -> None:
    server = H2Server(None)  # prior-knowledge h2c on plain TCP
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"http://127.0.0.1:{port}", None)
    with trio.fail_after(HANG_GUARD):
        status, _, body = await call(pool, b"/json", method=b"GET")
    assert status == 200
    doc = json.loads(body)
    assert doc["scheme"] == "http" and doc["method"] == "GET" and doc["body"] == ""
    assert "content-length" not in doc["headers"]


async def test_100_concurrent_streams_on_one_connection(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls, max_streams=128)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", client_tls(ca_file))
    results: list[int] = []

    async def one(i: int) -> None:
        status, _, body = await call(pool, b"/barrier?n=100", b'{"i": %d}' % i)
        assert json.loads(body)["body"] == f'{{"i": {i}}}'
        results.append(status)

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            for i in range(100):
                inner.start_soon(one, i)
    assert results == [200] * 100
    assert len(server.conns) == 1  # every stream shared one connection ...
    assert server.conns[0].max_open == 100  # ... all open at the same time
    assert pool.stats.opened_total == 1


async def test_max_concurrent_streams_respected_with_one_connection(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls, max_streams=10)
    port = await server.start(nursery)
    limits = PoolLimits(max_connections=1, connect_timeout=5.0)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", client_tls(ca_file), limits)
    waiting_seen = 0

    async def one() -> None:
        status, _, _ = await call(pool, b"/slow?delay=0.02")
        assert status == 200

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            for _ in range(60):
                inner.start_soon(one)
            await trio.sleep(0.01)
            waiting_seen = pool.stats.waiting
    assert len(server.conns) == 1
    assert server.conns[0].max_open == 10
    assert len(server.conns[0].responses) == 60
    assert waiting_seen > 0  # the rest queued for a stream slot
    assert pool.stats.in_use == 0 and pool.stats.waiting == 0


async def test_max_concurrent_streams_opens_more_connections(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls, max_streams=10)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", client_tls(ca_file))

    async def one() -> None:
        status, _, _ = await call(pool, b"/slow?delay=0.1")
        assert status == 200

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            for _ in range(40):
                inner.start_soon(one)
    assert 1 < len(server.conns) <= LIMITS.max_connections
    assert all(c.max_open <= 10 for c in server.conns)
    assert sum(len(c.responses) for c in server.conns) == 40


@pytest.mark.parametrize("stream_window", [65535, 1 << 20])
async def test_large_bodies_exercise_flow_control(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str, stream_window: int
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = await running_pool(
        nursery, f"https://127.0.0.1:{port}", client_tls(ca_file), stream_window=stream_window
    )
    bodies = [os.urandom(size) for size in (1 << 20, 3 << 20, 4 << 20, (2 << 20) + 17)]

    async def echo(body: bytes) -> None:
        status, headers, data = await call(pool, b"/echo", body)
        assert status == 200
        assert (b"content-length", b"%d" % len(body)) in headers
        assert data == body

    with trio.fail_after(HANG_GUARD * 3):
        async with trio.open_nursery() as inner:
            for body in bodies:
                inner.start_soon(echo, body)
        status, _, data = await call(pool, b"/big?size=%d" % (4 << 20), method=b"GET")
    assert status == 200 and len(data) == 4 << 20
    assert len(server.conns) == 1


async def test_streamed_response_arrives_in_pieces(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", client_tls(ca_file))
    with trio.fail_after(HANG_GUARD):
        exchange = await pool.start(b"GET", b"/stream?n=5&gap=0.05", [], b"")
        pieces: list[bytes] = []
        sent_at_first_piece = None
        while piece := await exchange.receive_some():
            if sent_at_first_piece is None:
                sent_at_first_piece = server.frames_sent.get(exchange.stream_id, 0)
            pieces.append(piece)
        exchange.close()
    assert b"".join(pieces) == b"".join(b"piece %d\n" % i for i in range(5))
    assert len(pieces) >= 2
    assert sent_at_first_piece is not None and sent_at_first_piece < 5


async def test_goaway_mid_load(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    # After 30 requests arrive on the first connection the server sends GOAWAY naming the 10th
    # as the last it will process, then answers those 10 (slowly) and ignores the other 20.
    # Those 20 were never processed, so the pool sends each once more on a new connection.
    server = H2Server(server_tls, goaway_after=30, goaway_last_index=9)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", client_tls(ca_file))
    ok: list[int] = []

    async def one(i: int) -> None:
        status, _, body = await call(pool, b"/slow?delay=0.3", b'{"i": %d}' % i)
        assert status == 200 and json.loads(body)["body"] == f'{{"i": {i}}}'
        ok.append(i)

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            for i in range(30):
                inner.start_soon(one, i)
    first = server.conns[0]
    assert sorted(ok) == list(range(30))  # no caller saw the GOAWAY
    assert len(first.responses) == 10  # in-flight streams <= last_stream_id finished there
    assert max(first.responses) < min(first.ignored)
    assert len(first.ignored) == 20
    assert sum(len(c.responses) for c in server.conns[1:]) == 20  # retried elsewhere
    with trio.fail_after(HANG_GUARD):
        while not first.closed:  # the drained connection is closed by the client
            await trio.sleep(0.01)
    assert pool.stats.opened_total == len(server.conns) >= 2


async def test_close_mid_stream_resets_it(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", client_tls(ca_file))
    with trio.fail_after(HANG_GUARD):
        exchange = await pool.start(b"GET", b"/stream?n=1000&gap=0.01", [], b"")
        assert await exchange.receive_some()
        exchange.close()
        assert await exchange.receive_some() == b""  # closed: nothing more
        while exchange.stream_id not in server.resets:
            await trio.sleep(0.01)
        assert pool.stats.in_use == 0
        status, _, _ = await call(pool, b"/json")
    assert status == 200
    assert len(server.conns) == 1  # the connection stayed usable


async def test_cancelled_request_resets_stream(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", client_tls(ca_file))

    async def slow_request(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await pool.start(b"POST", b"/slow?delay=5", [], b"{}")

    with trio.fail_after(HANG_GUARD):
        scope = await nursery.start(slow_request)
        # Cancelled once the server has the stream open, not after a guessed delay (a slow
        # TLS handshake would otherwise be cancelled before any stream existed).
        while not (server.conns and server.conns[0].open_streams):
            await trio.sleep(0.01)
        scope.cancel()
        while not server.resets:
            await trio.sleep(0.01)
        status, _, _ = await call(pool, b"/json")
    assert status == 200 and len(server.conns) == 1
    assert pool.stats.in_use == 0


async def test_tls_verification_failure(nursery: trio.Nursery, server_tls: ssl.SSLContext) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = await running_pool(nursery, f"https://127.0.0.1:{port}", make_h2_ssl_context())
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError) as info:
        await pool.start(b"GET", b"/json", [], b"")
    assert "TLS handshake failed" in str(info.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert info.value.sent_nothing
    assert pool.stats.waiting == 0


async def test_connection_refused(nursery: trio.Nursery) -> None:
    url = refused_url(nursery)  # held, never listening: refused for the whole test
    port = int(url.rpartition(":")[2])
    pool = await running_pool(nursery, url, None)
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError) as info:
        await pool.start(b"GET", b"/", [], b"")
    assert f"cannot connect to 127.0.0.1:{port}" in str(info.value)
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError):
        await pool.prewarm(1)


async def test_unanswered_ping_drops_connection(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls, freeze_after_handshake=True)
    port = await server.start(nursery)
    pool = await running_pool(
        nursery, f"https://127.0.0.1:{port}", client_tls(ca_file),
        ping_interval=0.1, ping_timeout=0.1,
    )
    with trio.fail_after(HANG_GUARD):
        assert await pool.prewarm(4) == 1
        assert pool.stats.idle == 1
        while pool.stats.idle:  # the PING goes unanswered: the connection is dropped
            await trio.sleep(0.02)


async def test_ping_keeps_idle_connection(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    pool = await running_pool(
        nursery, f"https://127.0.0.1:{port}", client_tls(ca_file),
        ping_interval=0.05, ping_timeout=5.0,
    )
    with trio.fail_after(HANG_GUARD):
        await call(pool, b"/json")
        while server.pings < 3:
            await trio.sleep(0.02)
        status, _, _ = await call(pool, b"/json")
    assert status == 200 and len(server.conns) == 1


async def test_reap_idle_and_close(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    # idle_timeout well above an OS scheduling stall between call() and reap_idle()
    limits = PoolLimits(max_connections=4, idle_timeout=0.3, connect_timeout=5.0)
    pool = HTTP2Pool(Origin.from_url(f"https://127.0.0.1:{port}"), limits, client_tls(ca_file))
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            await inner.start(pool.run)
            await call(pool, b"/json")
            assert pool.reap_idle() == 0
            await trio.sleep(0.35)
            assert pool.reap_idle() == 1
            while not server.conns[0].closed:
                await trio.sleep(0.01)
            assert pool.stats.idle == 0
            await call(pool, b"/json")  # a fresh connection
            exchange = await pool.start(b"GET", b"/stream?n=3&gap=0.05", [], b"")
            pool.close()  # busy connection: closes after its stream
            with pytest.raises(ConnectError):
                await pool.start(b"GET", b"/json", [], b"")
            assert await exchange.read_all(1 << 20) == b"piece 0\npiece 1\npiece 2\n"
            exchange.close()
        # run() returned on its own once the last connection closed
    assert pool.stats.opened_total == 2


async def test_open_pool_auto_picks_h2(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    origin = Origin.from_url(f"https://127.0.0.1:{port}")
    with trio.fail_after(HANG_GUARD):
        pool = await open_pool(origin, LIMITS, "auto", nursery, ca_file=ca_file)
        assert isinstance(pool, HTTP2Pool)
        assert pool.stats.opened_total == 1 and pool.stats.idle == 1
        status, _, _ = await call(pool, b"/json")
    assert status == 200
    assert len(server.conns) == 1  # the negotiating connection was reused
    pool.close()


async def _http1_tls_server(
    nursery: trio.Nursery, ctx: ssl.SSLContext, connections: list[int]
) -> int:
    async def handle(tcp: trio.SocketStream) -> None:
        connections.append(1)
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        try:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                _, buf = buf.split(b"\r\n\r\n", 1)
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except trio.BrokenResourceError:
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_open_pool_auto_falls_back_to_http1(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    connections: list[int] = []
    port = await _http1_tls_server(nursery, ctx, connections)
    origin = Origin.from_url(f"https://127.0.0.1:{port}")
    with trio.fail_after(HANG_GUARD):
        pool = await open_pool(origin, LIMITS, "auto", nursery, ca_file=ca_file)
        assert isinstance(pool, HTTP1Pool)
        status, _, body = await call(pool, b"/v1/models", method=b"GET")
    assert (status, body) == (200, b"ok")
    assert len(connections) == 1 and pool.stats.opened_total == 1
    pool.close()


async def test_open_pool_modes(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls)
    port = await server.start(nursery)
    origin = Origin.from_url(f"https://127.0.0.1:{port}")
    with trio.fail_after(HANG_GUARD):
        never = await open_pool(origin, LIMITS, "never", nursery, ca_file=ca_file)
        assert isinstance(never, HTTP1Pool)
        always = await open_pool(origin, LIMITS, "always", nursery, ca_file=ca_file)
        assert isinstance(always, HTTP2Pool)
        assert always.stats.opened_total == 0  # lazy
        assert (await call(always, b"/json"))[0] == 200
        plain = await open_pool(Origin.from_url("http://127.0.0.1:1"), LIMITS, "auto", nursery)
        assert isinstance(plain, HTTP1Pool)
    assert len(server.conns) == 1
    always.close()


async def test_always_against_http1_only_server(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    port = await _http1_tls_server(nursery, ctx, [])
    origin = Origin.from_url(f"https://127.0.0.1:{port}")
    with trio.fail_after(HANG_GUARD):
        assert await negotiate_protocol(origin, make_h2_ssl_context(ca_file), 5.0) == "http/1.1"
        pool = await open_pool(origin, LIMITS, "always", nursery, ca_file=ca_file)
        with pytest.raises(ConnectError, match="did not negotiate HTTP/2"):
            await pool.start(b"GET", b"/", [], b"")
    pool.close()


async def test_h2c_against_http1_server(nursery: trio.Nursery) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    port = listeners[0].socket.getsockname()[1]
    pool = await running_pool(nursery, f"http://127.0.0.1:{port}", None)
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError) as info:
        await pool.start(b"GET", b"/", [], b"")
    message = str(info.value)
    assert "does not speak HTTP/2" in message or "during the HTTP/2 handshake" in message


async def test_requests_behind_failed_prewarm_do_not_hang(nursery: trio.Nursery) -> None:
    pool = await running_pool(nursery, refused_url(nursery), None)
    errors: list[BaseException] = []

    async def request() -> None:
        try:
            await pool.start(b"GET", b"/", [], b"")
        except ConnectError as exc:
            errors.append(exc)

    async def prewarm() -> None:
        try:
            await pool.prewarm(1)
        except ConnectError as exc:
            errors.append(exc)

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(prewarm)
            for _ in range(5):
                inner.start_soon(request)
    assert len(errors) == 6
    assert pool.stats.waiting == 0 and pool.stats.in_use == 0


async def test_response_header_list_over_the_limit_fails(nursery: trio.Nursery) -> None:
    from continuum.net.client.exchange import UpstreamError

    server = H2Server(None)
    port = await server.start(nursery)
    limits = PoolLimits(max_connections=4, connect_timeout=5.0, max_response_header_size=4096)
    pool = await running_pool(nursery, f"http://127.0.0.1:{port}", None, limits)
    with trio.fail_after(HANG_GUARD):
        status, headers, body = await call(pool, b"/bighead?size=3000", method=b"GET")
        assert status == 200 and body == b"ok" and len(dict(headers)[b"x-pad"]) == 3000
        with pytest.raises(UpstreamError, match="max_response_header_size"):
            await call(pool, b"/bighead?size=20000", method=b"GET")  # CONTINUATION frames
        # The connection's HPACK state is gone with it; the next request gets a new one.
        status, _, body = await call(pool, b"/json", method=b"GET")
    assert status == 200 and pool.stats.opened_total == 2


def test_header_block_is_refused_before_it_is_decoded() -> None:
    """A never-ending run of CONTINUATION frames fails at the limit, without waiting for
    END_HEADERS (h2 would buffer 64 frames and then spend ~0.4 s decoding them)."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    from continuum.net.client.h2_protocol import BoundedHeaderBlocks

    buffer = BoundedHeaderBlocks(4096)
    buffer.max_frame_size = 16384
    first = HeadersFrame(1)
    first.data = b"\x00" * 3000
    buffer.add_data(first.serialize())
    assert list(buffer) == []  # held until END_HEADERS
    more = ContinuationFrame(1)
    more.data = b"\x00" * 3000
    buffer.add_data(more.serialize())
    with pytest.raises(h2.exceptions.DenialOfServiceError, match="larger than 4096"):
        list(buffer)


async def test_control_frame_flood_without_reading_drops_the_connection(
    nursery: trio.Nursery,
) -> None:
    """A server that floods PINGs and never reads our ACKs: the connection is dropped once
    our queued output passes its bound, instead of growing without end."""
    from hyperframe.frame import PingFrame

    from continuum.net.client.exchange import UpstreamError

    flooded = 0

    async def flood(stream: trio.SocketStream) -> None:
        nonlocal flooded
        server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        server.initiate_connection()
        await stream.send_all(server.data_to_send())
        await stream.receive_some(65536)  # the preface and SETTINGS; then never read again
        burst = PingFrame(0, opaque_data=b"flooding").serialize() * 4096
        try:
            while flooded < 1 << 30:
                await stream.send_all(burst)
                flooded += len(burst)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, flood, listeners)
    port = listeners[0].socket.getsockname()[1]
    pool = await running_pool(nursery, f"http://127.0.0.1:{port}", None)
    with trio.fail_after(HANG_GUARD), pytest.raises(UpstreamError, match="does not read"):
        await call(pool, b"/json", method=b"GET")
    assert flooded < 256 << 20
