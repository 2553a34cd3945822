"""No pool churn: connections past ``pool_max_idle_per_host`` survive waves of requests and
are trimmed only once they stayed idle; connect/close counts reach /metrics; upstream
sockets carry TCP keepalive as configured."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from continuum.config import config_from_dict
from continuum.net.client.exchange import Origin, PoolLimits
from continuum.net.client.h2 import HTTP2Pool
from continuum.net.client.http1_pool import HTTP1Pool
from h2_server import H2Server
from helpers import router_config, start_mock, start_router

MODEL = "mock-model"
HANG_GUARD = 20
WAVE = 40
IDLE_CAP = 5
JSON = [(b"content-type", b"application/json")]
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()


async def one(pool: HTTP1Pool) -> None:
    exchange = await pool.start(b"POST", b"/v1/chat/completions", JSON, BODY)
    try:
        await exchange.read_all(1 << 20)
    finally:
        exchange.close()
    assert exchange.status == 200


async def wave(pool: HTTP1Pool, size: int) -> None:
    async with trio.open_nursery() as requests:
        for _ in range(size):
            requests.start_soon(one, pool)


async def test_waves_larger_than_the_idle_cap_reuse_their_connections(
    nursery: trio.Nursery,
) -> None:
    upstream, url = await start_mock(nursery, [MODEL])
    upstream.set_latency(0.05)  # every request of a wave is in flight at once
    pool = HTTP1Pool(Origin.from_url(url), PoolLimits(
        max_connections=WAVE, max_idle=IDLE_CAP, idle_timeout=60.0, trim_after=30.0))
    with trio.fail_after(HANG_GUARD):
        for _ in range(4):
            await wave(pool, WAVE)
            pool.reap_idle()  # the sweep between waves: nothing has stayed idle yet
    stats = pool.stats
    # Closing the connections past the cap at release made this 40 + 3 x 35 = 145.
    assert stats.opened_total <= WAVE
    assert stats.closed_total == 0
    assert stats.idle == stats.opened_total
    assert upstream.requests == 4 * WAVE
    pool.close()
    assert pool.stats.closed_total == stats.opened_total


async def test_connections_past_the_cap_are_trimmed_once_they_stayed_idle(
    nursery: trio.Nursery,
) -> None:
    upstream, url = await start_mock(nursery, [MODEL])
    upstream.set_latency(0.05)
    pool = HTTP1Pool(Origin.from_url(url), PoolLimits(
        max_connections=WAVE, max_idle=IDLE_CAP, idle_timeout=60.0, trim_after=0.3))
    with trio.fail_after(HANG_GUARD):
        await wave(pool, WAVE)
        opened = pool.stats.opened_total
        assert opened > IDLE_CAP
        assert pool.reap_idle() == 0  # just used: kept
        await trio.sleep(0.5)
        assert pool.reap_idle() == opened - IDLE_CAP
        assert pool.stats.idle == IDLE_CAP
        assert pool.stats.closed_total == opened - IDLE_CAP
        assert pool.reap_idle() == 0  # the cap itself stays until idle_timeout
        await one(pool)  # and is reused
    assert pool.stats.opened_total == opened
    pool.close()


async def test_under_the_cap_idle_timeout_alone_closes(nursery: trio.Nursery) -> None:
    _upstream, url = await start_mock(nursery, [MODEL])
    pool = HTTP1Pool(Origin.from_url(url), PoolLimits(
        max_connections=4, max_idle=4, idle_timeout=0.2, trim_after=0.01))
    with trio.fail_after(HANG_GUARD):
        await wave(pool, 2)
        await trio.sleep(0.05)
        assert pool.reap_idle() == 0  # past trim_after, but within the cap
        await trio.sleep(0.3)
        assert pool.reap_idle() == pool.stats.opened_total
    assert pool.stats.idle == 0
    pool.close()


def keepalive_options(sock: trio.socket.SocketType) -> tuple[int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


needs_linux_keepalive = pytest.mark.skipif(
    not hasattr(socket, "TCP_KEEPIDLE"), reason="TCP_KEEPIDLE is Linux's"
)


@needs_linux_keepalive
async def test_upstream_sockets_carry_tcp_keepalive(nursery: trio.Nursery) -> None:
    _upstream, url = await start_mock(nursery, [MODEL])
    on = HTTP1Pool(Origin.from_url(url), PoolLimits(tcp_keepalive=7.0))
    off = HTTP1Pool(Origin.from_url(url), PoolLimits(tcp_keepalive=0.0))
    with trio.fail_after(HANG_GUARD):
        await one(on)
        await one(off)
    (conn,) = on._idle
    assert keepalive_options(conn.raw.socket) == (1, 7, 7, 3)
    (plain,) = off._idle
    assert plain.raw.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    on.close()
    off.close()


def counter(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels["backend"]] = sample.value
    return out


@needs_linux_keepalive
async def test_router_counts_connects_and_sets_keepalive_from_config(
    nursery: trio.Nursery,
) -> None:
    upstream, url = await start_mock(nursery, [MODEL])
    upstream.set_latency(0.05)
    router = await start_router(nursery, router_config(
        [{"name": "a", "url": url, "models": [MODEL]}],
        server={"connection_pool_size": WAVE},
        http_client={"prewarm_connections": 0, "pool_max_idle_per_host": IDLE_CAP,
                     "tcp_keepalive_interval": "12s"},
    ))
    limits = httpx.Limits(max_connections=WAVE, max_keepalive_connections=WAVE)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=router.url, timeout=10.0, limits=limits) as client:

        async def request() -> None:
            response = await client.post("/v1/chat/completions", json=payload)
            assert response.status_code == 200, response.text

        with trio.fail_after(HANG_GUARD):
            for _ in range(3):
                async with trio.open_nursery() as requests:
                    for _ in range(WAVE):
                        requests.start_soon(request)
            text = (await client.get("/metrics")).text
    opened = counter(text, "continuum_upstream_connections_opened_total")
    closed = counter(text, "continuum_upstream_connections_closed_total")
    assert 0 < opened["a"] <= WAVE  # not 3 waves x the excess over the idle cap
    assert closed.get("a", 0.0) == 0.0
    pool = router.backends["a"].pool
    assert isinstance(pool, HTTP1Pool)
    conn = pool._idle[-1]
    assert keepalive_options(conn.raw.socket)[:3] == (1, 12, 12)


@needs_linux_keepalive
async def test_http2_connections_carry_keepalive_and_are_counted_closed(
    nursery: trio.Nursery,
) -> None:
    server = H2Server(None)  # prior-knowledge h2c
    port = await server.start(nursery)
    limits = PoolLimits(max_connections=4, max_idle=0, idle_timeout=60.0, trim_after=0.2,
                        tcp_keepalive=9.0)
    pool = HTTP2Pool(Origin.from_url(f"http://127.0.0.1:{port}"), limits)
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            await inner.start(pool.run)
            exchange = await pool.start(b"GET", b"/json", [], b"")
            await exchange.read_all(1 << 20)
            exchange.close()
            (conn,) = pool._conns
            assert keepalive_options(conn.raw.socket) == (1, 9, 9, 3)
            # Past the idle cap (0), but just used: the sweep keeps it until trim_after.
            assert pool.reap_idle() == 0
            await trio.sleep(0.3)
            assert pool.reap_idle() == 1
            while pool.stats.closed_total == 0:
                await trio.sleep(0.01)
            pool.close()
    assert (pool.stats.opened_total, pool.stats.closed_total) == (1, 1)


def test_stream_timeouts_default_to_long_reasoning_and_keepalive_to_30_s() -> None:
    config = config_from_dict(router_config([{"name": "a", "url": "http://127.0.0.1:9"}]))
    assert config.request.idle_timeout == 600.0  # a stream's silence between events
    assert config.request.streaming_timeout == 1800.0
    assert config.http_client.tcp_keepalive_interval == 30.0
    off = config_from_dict(router_config([{"name": "a", "url": "http://127.0.0.1:9"}],
                                         http_client={"tcp_keepalive_interval": 0}))
    assert off.http_client.tcp_keepalive_interval == 0.0


async def test_counts_carry_over_a_backend_replaced_by_a_reload(nursery: trio.Nursery) -> None:
    """A reload that replaces backend ``a`` (another URL: a new actor and pool, the old one
    drains): its connection counters go on from where they were, counting both pools."""
    _, first = await start_mock(nursery, [MODEL], name="first")
    _, second = await start_mock(nursery, [MODEL], name="second")
    data = router_config([{"name": "a", "url": first, "models": [MODEL]}],
                         http_client={"prewarm_connections": 0})
    router = await start_router(nursery, data)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=router.url, timeout=10.0) as client:

        async def counts() -> tuple[float, float]:
            text = (await client.get("/metrics")).text
            return (counter(text, "continuum_upstream_connections_opened_total").get("a", 0.0),
                    counter(text, "continuum_upstream_connections_closed_total").get("a", 0.0))

        with trio.fail_after(HANG_GUARD):
            assert (await client.post("/v1/chat/completions", json=payload)).is_success
            assert await counts() == (1.0, 0.0)
            old = router.backends["a"]
            await router.reconfigurer.propose(config_from_dict(
                {**data, "backends": [{"name": "a", "url": second, "models": [MODEL]}]},
                source="<test>"), source="test", who="tester")
            assert router.backends["a"] is not old
            assert (await client.post("/v1/chat/completions", json=payload)).is_success
            # The new pool opened one: 2 in all, not the old figure again.
            assert (await counts())[0] == 2.0
            # The old pool closes its connection once drained: counted too.
            while (await counts())[1] < 1.0:
                await trio.sleep(0.05)
            assert await counts() == (2.0, 1.0)
