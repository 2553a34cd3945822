"""The upstream keep-alive pool (HTTP1Pool), against the mock upstream and odd raw servers."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from continuum.mock import MockUpstream
from continuum.net.client.connect import make_ssl_context
from continuum.net.client.exchange import ConnectError, Origin, PoolLimits, UpstreamError
from continuum.net.client.http1_pool import HTTP1Pool
from continuum.net.server.connection import HTTPLimits, ServerConnection
from continuum.net.server.listeners import DateCache
from helpers import router_config, start_mock, start_router

MODEL = "mock-model"
HANG_GUARD = 10
JSON = [(b"content-type", b"application/json")]


def chat_body(content: str, model: str = MODEL) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


async def get(pool: HTTP1Pool, target: bytes = b"/v1/models") -> tuple[int, bytes]:
    exchange = await pool.start(b"GET", target, [], b"")
    try:
        return exchange.status, await exchange.read_all(1 << 20)
    finally:
        exchange.close()


async def chat(pool: HTTP1Pool, content: str, extra: list[tuple[bytes, bytes]] = []) -> str:  # noqa: B006
    exchange = await pool.start(b"POST", b"/v1/chat/completions", JSON + extra, chat_body(content))
    try:
        body = await exchange.read_all(1 << 20)
    finally:
        exchange.close()
    assert exchange.status == 200, body
    text: str = json.loads(body)["choices"][0]["message"]["content"]
    return text


# -- a raw server for behaviours the mock does not act out ----------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def raw_server(nursery: trio.Nursery, handler: Handler) -> int:
    """Serve ``handler`` per connection on 127.0.0.1:<ephemeral>; return the port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


class RequestReader:
    """Reads requests (head + content-length body) off a server-side stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def read(self) -> tuple[dict[str, str], bytes] | None:
        """The next request's headers and body, or None at EOF."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        headers = {}
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return headers, body


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def pool_for(port: int, **limits: Any) -> HTTP1Pool:
    return HTTP1Pool(Origin.from_url(f"http://127.0.0.1:{port}"), PoolLimits(**limits))


# -- reuse and the cap ----------------------------------------------------------------------------


async def test_connections_are_reused_across_sequential_requests(nursery: trio.Nursery) -> None:
    upstream, url = await start_mock(nursery, [MODEL])
    pool = HTTP1Pool(Origin.from_url(url), PoolLimits())
    with trio.fail_after(HANG_GUARD):
        for word in ("one", "two", "three", "four"):
            assert (await chat(pool, word)).endswith(word)
        status, _ = await get(pool)
    assert status == 200
    assert pool.stats.opened_total == 1
    assert pool.stats.idle == 1 and pool.stats.in_use == 0
    assert upstream.requests == 5
    pool.close()


async def test_response_with_connection_close_is_not_reused(nursery: trio.Nursery) -> None:
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        reader = RequestReader(stream)
        if await reader.read() is not None:
            await stream.send_all(ok(b"bye", b"connection: close\r\n"))
        await stream.aclose()

    pool = pool_for(await raw_server(nursery, handler))
    with trio.fail_after(HANG_GUARD):
        assert await get(pool, b"/") == (200, b"bye")
        assert await get(pool, b"/") == (200, b"bye")
    assert pool.stats.opened_total == 2
    assert connections == 2
    assert pool.stats.idle == 0


async def test_cap_limits_open_connections_under_concurrency(nursery: trio.Nursery) -> None:
    upstream, url = await start_mock(nursery, [MODEL])
    upstream.set_latency(0.2)
    pool = HTTP1Pool(Origin.from_url(url), PoolLimits(max_connections=2))
    max_in_use = 0
    max_waiting = 0
    max_opened = 0
    replies: dict[int, str] = {}

    async def monitor() -> None:
        nonlocal max_in_use, max_waiting, max_opened
        while True:
            stats = pool.stats
            max_in_use = max(max_in_use, stats.in_use)
            max_waiting = max(max_waiting, stats.waiting)
            max_opened = max(max_opened, stats.opened_total)
            await trio.sleep(0.005)

    async def one(i: int) -> None:
        replies[i] = await chat(pool, f"request {i}")

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(monitor)
            async with trio.open_nursery() as requests:
                for i in range(5):
                    requests.start_soon(one, i)
            inner.cancel_scope.cancel()
    assert sorted(replies) == [0, 1, 2, 3, 4]
    for i, text in replies.items():
        assert text.endswith(f"request {i}")
    assert max_in_use <= 2
    assert max(max_opened, pool.stats.opened_total) <= 2
    assert max_waiting >= 1, "nobody waited: the cap was not applied"
    assert upstream.requests == 5
    assert pool.stats.in_use == 0 and pool.stats.waiting == 0
    pool.close()


async def test_waiters_are_served_in_fifo_order(nursery: trio.Nursery) -> None:
    arrivals: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        reader = RequestReader(stream)
        while (request := await reader.read()) is not None:
            arrivals.append(int(request[0]["x-id"]))
            await trio.sleep(0.02)
            await stream.send_all(ok(request[0]["x-id"].encode()))

    pool = pool_for(await raw_server(nursery, handler), max_connections=1)
    completions: list[int] = []

    async def one(i: int) -> None:
        exchange = await pool.start(b"GET", b"/", [(b"x-id", str(i).encode())], b"")
        body = await exchange.read_all(1024)
        exchange.close()
        assert body == str(i).encode()
        completions.append(i)

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as requests:
            for i in range(5):
                requests.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()  # i is queued before i + 1 starts
            assert pool.stats.waiting == 4
    assert arrivals == [0, 1, 2, 3, 4]
    assert completions == [0, 1, 2, 3, 4]
    assert pool.stats.opened_total == 1


async def test_a_waiter_cancelled_in_the_queue_neither_takes_nor_loses_a_slot(
    nursery: trio.Nursery,
) -> None:
    release_first = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        reader = RequestReader(stream)
        while (request := await reader.read()) is not None:
            if request[0]["x-id"] == "first":
                await release_first.wait()
            await stream.send_all(ok(request[0]["x-id"].encode()))

    pool = pool_for(await raw_server(nursery, handler), max_connections=1)
    bodies: list[bytes] = []

    async def one(name: bytes) -> None:
        exchange = await pool.start(b"GET", b"/", [(b"x-id", name)], b"")
        bodies.append(await exchange.read_all(1024))
        exchange.close()

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as requests:
            requests.start_soon(one, b"first")
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as waiting:
                waiting.cancel()  # cancelled once it queues: the slot is the first's
                await one(b"cancelled")
            assert pool.stats.waiting == 0 and pool.stats.in_use == 1
            # Cancelled in the queue at the very moment the slot is released: the release
            # must not hand the slot to the waiter that is gone.
            async with trio.open_nursery() as queue:
                queue.start_soon(one, b"gone")
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats.waiting == 1
                queue.cancel_scope.cancel()
                release_first.set()
            await one(b"after")  # gets the slot back; a lost slot would hang here
    assert bodies == [b"first", b"after"]
    assert pool.stats.in_use == 0 and pool.stats.waiting == 0
    pool.close()


@pytest.mark.parametrize("split", [False, True], ids=["with-the-head", "after-the-head"])
async def test_response_limit_holds_however_the_body_arrives(
    nursery: trio.Nursery, split: bool,
) -> None:
    """A body that came in with its head is taken without a receive loop: the response
    limit applies to it all the same, and a whole one leaves the connection reusable."""
    body = b"x" * 100

    async def handler(stream: trio.SocketStream) -> None:
        reader = RequestReader(stream)
        while await reader.read() is not None:
            answer = ok(body)
            if split:
                await stream.send_all(answer[:-len(body)])
                await trio.sleep(0.05)
                answer = body
            await stream.send_all(answer)

    pool = pool_for(await raw_server(nursery, handler))
    with trio.fail_after(HANG_GUARD):
        exchange = await pool.start(b"GET", b"/", [], b"")
        assert await exchange.read_all(100) == body
        exchange.close()
        exchange = await pool.start(b"GET", b"/", [], b"")
        with pytest.raises(UpstreamError, match="larger than 99 bytes"):
            await exchange.read_all(99)
        exchange.close()
    assert pool.stats.opened_total == 1  # the first answer's connection served the second


# -- idle timeout ---------------------------------------------------------------------------------


async def test_reap_idle_closes_connections_past_idle_timeout(nursery: trio.Nursery) -> None:
    connections = 0
    closed_by_pool = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        reader = RequestReader(stream)
        while await reader.read() is not None:
            await stream.send_all(ok())
        closed_by_pool.set()

    pool = pool_for(await raw_server(nursery, handler), idle_timeout=0.2)
    with trio.fail_after(HANG_GUARD):
        assert await get(pool, b"/") == (200, b"ok")
        assert pool.reap_idle() == 0  # fresh: kept
        assert pool.stats.idle == 1
        await trio.sleep(0.3)
        assert pool.reap_idle() == 1
        assert pool.stats.idle == 0
        await closed_by_pool.wait()  # the upstream sees the socket closed
        assert await get(pool, b"/") == (200, b"ok")
    assert pool.stats.opened_total == 2
    assert connections == 2


async def test_expired_idle_connection_is_not_used_even_without_reaping(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_mock(nursery, [MODEL])
    pool = HTTP1Pool(Origin.from_url(url), PoolLimits(idle_timeout=0.2))
    with trio.fail_after(HANG_GUARD):
        assert (await get(pool))[0] == 200
        await trio.sleep(0.3)
        assert (await get(pool))[0] == 200
    assert pool.stats.opened_total == 2
    pool.close()


# -- stale connections and broken responses -------------------------------------------------------


async def test_stale_reused_connection_is_retried_once_on_a_fresh_one(
    nursery: trio.Nursery,
) -> None:
    connections = 0
    requests = 0
    closed = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        # Answers one request without "connection: close", then hangs up.
        nonlocal connections, requests
        connections += 1
        request = await RequestReader(stream).read()
        if request is not None:
            requests += 1
            await stream.send_all(ok(b"answer %d" % requests))
        await stream.aclose()
        closed.set()

    pool = pool_for(await raw_server(nursery, handler))
    with trio.fail_after(HANG_GUARD):
        assert await get(pool, b"/") == (200, b"answer 1")
        await closed.wait()
        await trio.sleep(0.05)  # let the FIN reach the idle client socket
        assert await get(pool, b"/") == (200, b"answer 2")  # transparently retried
    assert connections == 2
    assert requests == 2  # the retry did not send the request twice
    assert pool.stats.opened_total == 2


async def test_connection_dying_mid_response_head_is_not_retried(nursery: trio.Nursery) -> None:
    connections = 0
    requests = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections, requests
        connections += 1
        reader = RequestReader(stream)
        if await reader.read() is None:
            return
        requests += 1
        await stream.send_all(ok(b"first"))
        if await reader.read() is None:
            return
        requests += 1
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-len")  # part of a head, then gone
        await stream.aclose()

    pool = pool_for(await raw_server(nursery, handler))
    with trio.fail_after(HANG_GUARD):
        assert await get(pool, b"/") == (200, b"first")
        with pytest.raises(UpstreamError) as info:
            await get(pool, b"/")
    assert not isinstance(info.value, ConnectError)
    assert not info.value.sent_nothing
    assert connections == 1  # no retry on a new connection
    assert requests == 2
    assert pool.stats.in_use == 0 and pool.stats.idle == 0


async def test_truncated_body_is_an_error_not_a_short_answer(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        if await RequestReader(stream).read() is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await stream.aclose()

    pool = pool_for(await raw_server(nursery, handler))
    with trio.fail_after(HANG_GUARD):
        exchange = await pool.start(b"GET", b"/", [], b"")
        assert exchange.status == 200
        with pytest.raises(UpstreamError, match="before the response was complete"):
            await exchange.read_all(1 << 20)
        exchange.close()
    assert pool.stats.idle == 0  # the broken connection is not kept


# -- connect failures -----------------------------------------------------------------------------


async def test_connect_refused_is_a_connect_error_with_a_clear_message() -> None:
    with socket.socket() as bound:  # bound but not listening: connects are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        pool = pool_for(port)
        with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError) as info:
            await get(pool, b"/")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message.lower(), message
    assert info.value.sent_nothing
    assert pool.stats.in_use == 0 and pool.stats.opened_total == 0


async def test_connect_timeout_is_a_connect_error() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, connects hang.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            await trio.sleep(0.05)
            pool = pool_for(port, connect_timeout=0.3)
            with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError) as info:
                await get(pool, b"/")
        finally:
            for filler in fillers:
                filler.close()
    assert "timed out" in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.sent_nothing


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def tls_mock(
    nursery: trio.Nursery, ca: trustme.CA, upstream: MockUpstream, *names: str
) -> int:
    """The mock upstream behind TLS (cert for ``names``) on 127.0.0.1; returns the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("localhost", "127.0.0.1"))).configure_cert(context)
    dates = DateCache()

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        conn = ServerConnection(tls, HTTPLimits(), dates)
        # A client that refuses our certificate just goes away.
        with contextlib.suppress(trio.BrokenResourceError, ssl.SSLError, OSError):
            await conn.serve(upstream.handle)

    return await raw_server(nursery, handler)


async def test_tls_with_ca_file_connects(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    upstream = MockUpstream(models=[MODEL])
    port = await tls_mock(nursery, ca, upstream)
    pool = HTTP1Pool(
        Origin.from_url(f"https://localhost:{port}"), PoolLimits(), make_ssl_context(ca_file)
    )
    with trio.fail_after(HANG_GUARD):
        assert (await chat(pool, "secure")).endswith("secure")
        assert (await chat(pool, "again")).endswith("again")
    assert upstream.requests == 2
    assert pool.stats.opened_total == 1  # TLS connections are kept alive too
    pool.close()


async def test_tls_without_the_ca_fails_verification(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    upstream = MockUpstream(models=[MODEL])
    port = await tls_mock(nursery, ca, upstream)
    pool = HTTP1Pool(Origin.from_url(f"https://localhost:{port}"), PoolLimits())  # system CAs
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError) as info:
        await get(pool)
    message = str(info.value).lower()
    assert "tls" in message and "certificate" in message, message
    assert info.value.sent_nothing
    assert upstream.requests == 0


async def test_tls_hostname_mismatch_fails(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    upstream = MockUpstream(models=[MODEL])
    port = await tls_mock(nursery, ca, upstream, "other.example")
    pool = HTTP1Pool(
        Origin.from_url(f"https://localhost:{port}"), PoolLimits(), make_ssl_context(ca_file)
    )
    with trio.fail_after(HANG_GUARD), pytest.raises(ConnectError) as info:
        await get(pool)
    assert "tls" in str(info.value).lower()
    assert upstream.requests == 0


async def test_tls_verify_off_accepts_an_unknown_certificate(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    upstream = MockUpstream(models=[MODEL])
    port = await tls_mock(nursery, ca, upstream)
    pool = HTTP1Pool(
        Origin.from_url(f"https://localhost:{port}"), PoolLimits(), make_ssl_context(verify=False)
    )
    with trio.fail_after(HANG_GUARD):
        assert (await chat(pool, "unverified")).endswith("unverified")
    pool.close()


async def test_router_proxies_to_a_tls_backend_with_ca_file(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    upstream = MockUpstream(models=["tls-model"])
    port = await tls_mock(nursery, ca, upstream)
    plain, plain_url = await start_mock(nursery, ["plain-model"])
    config = router_config(
        [
            {
                "name": "secure",
                "url": f"https://localhost:{port}",
                "ca_file": ca_file,
                "models": ["tls-model"],
            },
            {"name": "plain", "url": plain_url, "models": ["plain-model"]},
        ]
    )
    handle = await start_router(nursery, config)
    router_pool = HTTP1Pool(Origin.from_url(handle.url), PoolLimits())
    with trio.fail_after(HANG_GUARD):
        exchange = await router_pool.start(
            b"POST", b"/v1/chat/completions", JSON, chat_body("through tls", "tls-model")
        )
        body = await exchange.read_all(1 << 20)
        exchange.close()
    assert exchange.status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"].endswith("through tls")
    assert dict(exchange.headers).get(b"x-continuum-backend") == b"secure"
    assert upstream.last_request_body == chat_body("through tls", "tls-model")
    assert handle.backends["secure"].pool.stats.opened_total >= 1
    assert plain.requests_by_path.get("/v1/chat/completions", 0) == 0
    router_pool.close()


# -- the response head limit (http_client.max_response_header_size) --------------------------------


def _head(size: int) -> bytes:
    """A response head of exactly ``size`` bytes (one padded header), body "ok" not included."""
    base = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: \r\n\r\n"
    return base.replace(b"x-pad: ", b"x-pad: " + b"a" * (size - len(base)))


class _Recording:
    """An httptools parser that records what it is fed."""

    def __init__(self, parser: Any, fed: list[bytes], conn: Any) -> None:
        self._parser = parser
        self._fed = fed
        self._conn = conn

    def feed_data(self, data: bytes) -> None:
        if not self._conn.headers_done:  # body bytes may come in any piece
            self._fed.append(bytes(data))
        self._parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def _connection(limit: int) -> Any:
    from continuum.net.client.http1 import HTTP1Connection

    left, _ = trio.testing.memory_stream_pair()
    return HTTP1Connection(left, None, limit)  # type: ignore[arg-type]  # raw: only for close


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 64, 1000, 1 << 20])
@pytest.mark.parametrize("extra", [0, 1])
def test_head_limit_is_exact_however_the_bytes_arrive(piece: int, extra: int) -> None:
    limit = 4096
    data = _head(limit + extra) + b"ok"
    conn = _connection(limit)
    fed: list[bytes] = []
    conn._parser = _Recording(conn._parser, fed, conn)
    try:
        for i in range(0, len(data), piece):
            chunk = data[i:i + piece]
            if conn.headers_done:
                conn._feed(chunk)
            else:
                conn._feed_head(chunk)
    except UpstreamError as exc:
        assert extra, f"a head of exactly the limit was refused: {exc}"
        assert "max_response_header_size" in str(exc)
        assert sum(map(len, fed)) <= limit  # nothing past the limit reached the parser
        return
    assert not extra, "a head over the limit was accepted"
    assert conn.headers_done and conn._status == 200
    assert b"".join(conn._body) == b"ok"
    # Only whole lines were fed while the head was incomplete: llhttp never saw half a value
    # (httptools re-copies an unfinished value on every feed, quadratic for a dripped one).
    # (the piece that ends the head may carry body bytes behind its blank line)
    assert all(p.endswith(b"\n") or b"\r\n\r\n" in p or p.startswith(b"\r\n")
               for p in fed), fed[:3]


def test_head_limit_counts_interim_heads_and_ignores_the_body_behind_the_head() -> None:
    limit = 4096
    conn = _connection(limit)
    body = b"x" * 60000
    conn._feed_head(b"HTTP/1.1 100 Continue\r\n\r\n" + _head(limit - 25).replace(
        b"content-length: 2", b"content-length: 60000") + body)
    assert conn.headers_done and len(b"".join(conn._body)) == 60000
    conn = _connection(limit)
    with pytest.raises(UpstreamError, match="larger than 4096"):
        conn._feed_head(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn._feed_head(_head(limit - 24))


async def test_never_ending_response_head_fails_at_the_limit(nursery: trio.Nursery) -> None:
    sent = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal sent
        if await RequestReader(stream).read() is None:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nx-endless: ")
            while sent < 64 << 20:  # would be 64 MiB of one header value
                await stream.send_all(b"v" * 16384)
                sent += 16384

    pool = pool_for(await raw_server(nursery, handler), max_response_header_size=32768)
    with trio.fail_after(HANG_GUARD), pytest.raises(UpstreamError, match="larger than 32768"):
        await pool.start(b"GET", b"/", [], b"")
    assert pool.stats.in_use == 0 and pool.stats.idle == 0
    assert sent < 16 << 20  # the router stopped reading long before


async def test_upstream_trailers_are_dropped_and_bounded(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        reader = RequestReader(stream)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            request = await reader.read()
            await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                  b"2\r\nok\r\n0\r\nx-trailer: sneaky\r\n\r\n")
            request = await reader.read()  # then one whose trailer never ends
            assert request is not None
            await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                  b"2\r\nok\r\n0\r\nx-endless: ")
            for _ in range(4096):  # 64 MiB if nobody stopped it
                await stream.send_all(b"t" * 16384)

    pool = pool_for(await raw_server(nursery, handler), max_response_header_size=32768)
    with trio.fail_after(HANG_GUARD):
        exchange = await pool.start(b"GET", b"/", [], b"")
        assert await exchange.read_all(1 << 20) == b"ok"
        exchange.close()
        assert exchange.headers == [(b"transfer-encoding", b"chunked")]  # no trailer
        exchange = await pool.start(b"GET", b"/", [], b"")
        with pytest.raises(UpstreamError, match="trailers without body data"):
            await exchange.read_all(1 << 30)
        exchange.close()
    assert pool.stats.in_use == 0
