"""Hostile callers of access control, against router processes: huge and malformed keys,
floods of unknown keys and of forwarded client addresses, thousands of X-Forwarded-For
hops, hostile CORS preflights, garbage networks in the config, and a Redis that answers
slowly. Each is answered promptly in the client's error shape (or served), a second client
is served meanwhile, and the router's memory stays bounded: per-client state is capped, not
grown per key or per address."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from harness import (
    RawClient,
    RouterProcess,
    Usage,
    assert_bounded,
    assert_error_shape,
    attack_rounds,
    chat_body,
    http_request,
    one_request,
    raw_client,
    router_config,
    served_during,
)

from continuum.net.redis import RedisClient
from continuum.testing.redis_server import RedisServer, find_redis_server

GOOD = "sk-hostile-good-0123456789"
CHAT = "/v1/chat/completions"


def chat(headers: list[tuple[str, str]], path: str = CHAT) -> bytes:
    return http_request("POST", path, chat_body(),
                        headers=[("content-type", "application/json"), *headers])


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """Blocking keys, per-client limits by address behind a trusted local proxy, CORS."""
    config = router_config(
        api_keys={"mode": "blocking", "api_keys": [{"key": GOOD, "id": "good"}]},
        rate_limiting={"limits": {"per_client": {"requests_per_second": 1000,
                                                 "burst_capacity": 1000}},
                       "trusted_proxies": ["127.0.0.1"]},
        cors={"enabled": True, "allowed_origins": ["https://*.example.com"]},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-access")) as process:
        process.baseline = Usage.of(process)  # type: ignore[attr-defined]
        yield process
        process.assert_alive()


async def send_many(address: str, requests: list[bytes], expect: int) -> None:
    """Send ``requests`` on one keep-alive connection, each answered ``expect``."""
    async with raw_client(address) as client:
        for request in requests:
            await client.send(request)
            response = await client.read_response()
            assert response.status == expect, response


async def test_huge_and_malformed_keys_are_401(router: RouterProcess) -> None:
    cases = [
        [("authorization", "Bearer " + "k" * 60_000)],
        [("x-api-key", "k" * 60_000)],
        [("authorization", "Bearer ")],
        [("authorization", "Basic Z29vZDpnb29k")],
        [("authorization", "Bearer " + GOOD[:-1])],
        [("authorization", "Bearer " + GOOD + "x")],
        [("x-api-key", "\tsk-\xfe weird\t")],
        [("authorization", f"Bearer {GOOD}\xff")],
    ]
    for headers in cases:
        for path in (CHAT, "/v1/messages"):
            response = await one_request(router.address, chat(headers, path))
            assert response is not None
            assert_error_shape(response, 401, anthropic=path == "/v1/messages")
            assert GOOD not in response.body.decode("latin-1")
    response = await one_request(router.address, chat([("authorization", f"Bearer {GOOD}")]))
    assert response is not None and response.status == 200


async def test_a_flood_of_unknown_keys(router: RouterProcess) -> None:
    """Thousands of distinct wrong keys, from several connections at once: each a prompt
    401, no state kept per key (RSS flat), other clients served."""
    before = Usage.of(router)
    deadline = trio.current_time() + 2.5
    sent = 0

    async def attacker(index: int) -> None:
        nonlocal sent
        async with raw_client(router.address) as client:
            while trio.current_time() < deadline:
                key = os.urandom(24).hex()
                await client.send(chat([("authorization", f"Bearer sk-{index}-{key}")]))
                response = await client.read_response()
                assert response.status == 401, response
                sent += 1

    async with served_during(router.address, chat=False), trio.open_nursery() as group:
        for i in range(4):
            group.start_soon(attacker, i)
    assert sent > 500, sent
    await assert_bounded(router, before, rss_mib=16)


@pytest.fixture(scope="module")
def open_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    """No keys; per-client limits by (forwarded) address."""
    config = router_config(
        rate_limiting={"limits": {"per_client": {"requests_per_second": 100,
                                                 "burst_capacity": 100}},
                       "trusted_proxies": ["127.0.0.0/8"]},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-access-open")) as process:
        yield process
        process.assert_alive()


async def test_distinct_client_addresses_do_not_grow_memory(open_router: RouterProcess) -> None:
    async def flood(start: int, count: int) -> None:
        requests = [chat([("x-forwarded-for", f"11.{(start + i) >> 16 & 255}."
                                              f"{(start + i) >> 8 & 255}.{(start + i) & 255}")])
                    for i in range(count)]
        async with trio.open_nursery() as group:
            for part in range(4):
                group.start_soon(send_many, open_router.address, requests[part::4], 200)

    await flood(0, 3000)  # warms up what every request allocates once
    before = Usage.of(open_router)
    async with served_during(open_router.address):
        await flood(100_000, 3000)
        await flood(200_000, 3000)
    # 6,000 new clients: a few MiB of cached checks (capped: core.limits.MAX_CACHED_CHECKS,
    # tests/core/test_limits.py) and idle buckets swept as they expire.
    await assert_bounded(open_router, before, rss_mib=12)


async def test_thousands_of_forwarded_hops(open_router: RouterProcess) -> None:
    """One header of ~4,000 hops, and 600 headers of one hop each: a bounded walk, an
    answer in well under a second each, the second client served meanwhile."""
    long_header = ", ".join(f"127.0.{i >> 8 & 255}.{i & 255}" for i in range(4000))
    many = [("x-forwarded-for", f"127.0.0.{i % 250}") for i in range(600)]
    garbage = [("x-forwarded-for", "nonsense\xff, [::1, " + "9" * 200 + ", ,,,")]
    cases = ([("x-forwarded-for", long_header)], many, garbage)
    async with served_during(open_router.address):
        for n in attack_rounds(seconds=0.5, least=3 * len(cases)):
            headers = cases[n % len(cases)]
            with trio.fail_after(2):
                response = await one_request(open_router.address, chat(headers))
            assert response is not None and response.status in (200, 429), response


async def test_hostile_cors_preflights(router: RouterProcess) -> None:
    asked = ", ".join(f"x-h{i}" for i in range(3000))
    cases = [
        ([("origin", "https://a.example.com"), ("access-control-request-method", "POST"),
          ("access-control-request-headers", asked)], 204),
        ([("origin", "https://a.example.com.evil.net"),
          ("access-control-request-method", "POST")], 403),
        ([("origin", "https://a.example.com"), ("access-control-request-method", "P" * 5000)],
         403),
        ([("origin", "null"), ("access-control-request-method", "POST")], 403),
        ([("origin", "https://\xff.example.com"), ("access-control-request-method", "POST")],
         204),
        ([("origin", ""), ("access-control-request-method", "POST")], 403),
    ]
    async with served_during(router.address, chat=False):
        for n in attack_rounds(seconds=0.5, least=20 * len(cases)):
            headers, status = cases[n % len(cases)]
            response = await one_request(router.address,
                                         http_request("OPTIONS", CHAT, headers=headers))
            assert response is not None and response.status == status, response
            if status == 403:
                assert_error_shape(response, 403)
                assert response.header("access-control-allow-origin") is None


def test_garbage_networks_in_the_config_stop_the_router(tmp_path: Path) -> None:
    for key, value in (("whitelist", "10.0.0.0/99"), ("trusted_proxies", "not-an-ip"),
                       ("whitelist", "1.2.3.4, 5.6.7.8"), ("trusted_proxies", "\x00")):
        config = tmp_path / "bad.yaml"
        config.write_text(
            "server: {bind_address: '127.0.0.1:0'}\n"
            f"rate_limiting:\n  {key}: [{value!r}]\n"
            "backends: [{name: m, type: mock}]\n".replace("'\\x00'", '"\\0"'))
        for command in ("check", "run"):
            done = subprocess.run([sys.executable, "-m", "continuum", command, str(config)],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, (command, value, done.stderr)
            assert f"rate_limiting.{key}[0]" in done.stderr
            assert "Traceback" not in done.stderr


# -- a Redis that answers slowly -------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer(tmp_path_factory.mktemp("slow-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_router(slow_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[RouterProcess]:
    config = router_config(
        api_keys={"api_keys": [{"key": GOOD, "id": "good", "rate_limit": 100000}]},
        rate_limiting={"storage": "redis",
                       "redis": {"url": slow_redis.url, "timeout": "200ms",
                                 "on_error": "allow"}},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-access-redis")) as process:
        yield process
        process.assert_alive()


async def test_redis_replying_slowly(redis_router: RouterProcess, slow_redis: RedisServer
                                     ) -> None:
    """Redis stops answering for 3 s (CLIENT PAUSE): limited requests wait at most the
    timeout (then on_error: allow), the rest are not slowed at all, other clients are
    served, and the limits come back by themselves."""
    auth = [("authorization", f"Bearer {GOOD}")]
    response = await one_request(redis_router.address, chat(auth))
    assert response is not None and response.header("x-ratelimit-limit-requests")
    async with RedisClient.from_url(slow_redis.url) as redis:
        await redis.execute("CLIENT", "PAUSE", 3000, "ALL")
    slowest = 0.0
    async with served_during(redis_router.address):
        end = trio.current_time() + 2.5
        while trio.current_time() < end:
            started = trio.current_time()
            response = await one_request(redis_router.address, chat(auth))
            slowest = max(slowest, trio.current_time() - started)
            assert response is not None and response.status == 200, response
    assert slowest < 1.5, slowest  # the 200 ms timeout, and a loaded machine's margin
    with trio.fail_after(15):
        while True:
            response = await one_request(redis_router.address, chat(auth))
            assert response is not None and response.status == 200
            if response.header("x-ratelimit-limit-requests"):
                break
            await trio.sleep(0.1)
    assert "Redis at" in redis_router.log()


async def test_a_raw_client_cannot_stall_admission(redis_router: RouterProcess) -> None:
    """A client that sends a limited request and never reads the answer holds nothing the
    others need (admission is one shielded, bounded call; settling is off the path)."""
    auth = [("authorization", f"Bearer {GOOD}")]
    clients: list[RawClient] = []
    try:
        for _ in range(50):
            client = await RawClient.tcp(redis_router.address, receive_buffer=4096)
            clients.append(client)
            await client.send(chat(auth))
        async with served_during(redis_router.address):
            await trio.sleep(1.0)
    finally:
        for client in clients:
            await client.aclose()
