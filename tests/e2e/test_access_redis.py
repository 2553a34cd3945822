"""Rate and concurrency limits stored in a real redis-server: one round trip per request at
most (none when no limit applies), leases given back, tokens reconciled, TLS and a
password, and what happens while Redis is down (on_error allow / deny) and after."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from continuum import RouterHandle
from continuum.config import MockConfig
from continuum.net.redis import RedisClient
from continuum.testing.redis_server import RedisServer, RedisServerError, TLSFiles
from helpers import router_config, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
KEY = "sk-redis-key-0123456789"
OPEN = "sk-unlimited-0123456789"


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def redis_router(nursery: trio.Nursery, url: str, *, keys: list[dict[str, Any]],
                       mock: MockConfig | None = None, **redis: Any) -> RouterHandle:
    _, upstream = await start_mock(nursery, (MODEL,), mock)
    return await start_router(nursery, router_config(
        [{"name": "a", "url": upstream, "models": [MODEL]}],
        api_keys={"api_keys": keys},
        rate_limiting={"storage": "redis", "redis": {"url": url, **redis}},
    ))


async def evalsha_calls(redis: RedisClient) -> int:
    """EVALSHA calls the server has run since its start (INFO commandstats)."""
    info = (await redis.execute("INFO", "commandstats")).decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_limits_in_redis_one_round_trip(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    router = await redis_router(nursery, redis_server.url, keys=[
        {"key": KEY, "id": "k1", "rate_limit": 5}, {"key": OPEN, "id": "open"}])
    async with RedisClient.from_url(redis_server.url) as redis, httpx.AsyncClient(
        base_url=router.url, timeout=10.0
    ) as client:
        start = await evalsha_calls(redis)
        remaining = []
        for _ in range(5):
            response = await client.post(CHAT, json=chat(), headers=bearer(KEY))
            assert response.status_code == 200
            remaining.append(response.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["4", "3", "2", "1", "0"]
        refused = await client.post(CHAT, json=chat(), headers=bearer(KEY))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        # One EVALSHA per limited request (admission; nothing to settle: no lease, no
        # tokens), none for requests no limit applies to.
        assert await evalsha_calls(redis) == start + 6
        for _ in range(3):
            response = await client.post(CHAT, json=chat(), headers=bearer(OPEN))
            assert response.status_code == 200
            assert "x-ratelimit-limit-requests" not in response.headers
        assert await evalsha_calls(redis) == start + 6
        assert await redis.execute("EXISTS", "continuum:rq:api_key:k1") == 1


async def test_leases_and_tokens_settle_in_the_background(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    router = await redis_router(nursery, redis_server.url, keys=[
        {"key": KEY, "id": "k1", "max_concurrent": 2, "tokens_per_minute": 1000}],
        mock=MockConfig(latency=0.3), key_prefix="t1:")
    statuses: list[int] = []
    async with RedisClient.from_url(redis_server.url) as redis, httpx.AsyncClient(
        base_url=router.url, timeout=10.0
    ) as client:

        async def one() -> None:
            response = await client.post(CHAT, json=chat(max_tokens=100), headers=bearer(KEY))
            statuses.append(response.status_code)

        async with trio.open_nursery() as group:
            for _ in range(5):
                group.start_soon(one)
            await trio.sleep(0.15)
            assert await redis.execute("ZCARD", "t1:cc:api_key:k1") == 2  # two leases held
        assert sorted(statuses) == [200, 200, 429, 429, 429]
        # Settled off the request path, promptly: no lease left, tokens refunded down to
        # the usage (a few tokens, not 2 x 100).
        with trio.fail_after(5):
            while await redis.execute("ZCARD", "t1:cc:api_key:k1") != 0:
                await trio.sleep(0.02)
        tat = float(await redis.execute("GET", "t1:tk:api_key:k1"))
        now_s, now_us = await redis.execute("TIME")
        owed = (tat - (int(now_s) * 1e6 + int(now_us))) / 1e6 * (1000 / 60)  # tokens
        assert owed < 100, owed
        # Five more in a row all fit: their leases go back as each ends.
        for _ in range(5):
            response = await client.post(CHAT, json=chat(max_tokens=100), headers=bearer(KEY))
            assert response.status_code == 200, response.text


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_redis_down_then_back(
    nursery: trio.Nursery, redis_server: RedisServer, on_error: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="continuum.access")
    router = await redis_router(nursery, redis_server.url, keys=[
        {"key": KEY, "id": "k1", "rate_limit": 1000}], on_error=on_error, timeout="200ms")
    async with httpx.AsyncClient(base_url=router.url, timeout=10.0) as client:
        response = await client.post(CHAT, json=chat(), headers=bearer(KEY))
        assert response.status_code == 200 and "x-ratelimit-limit-requests" in response.headers
        redis_server.kill()
        expected = 200 if on_error == "allow" else 503
        for _ in range(20):
            response = await client.post(CHAT, json=chat(), headers=bearer(KEY))
            assert response.status_code == expected, response.text
            assert "x-ratelimit-limit-requests" not in response.headers
        if on_error == "deny":
            error = response.json()["error"]
            assert error["code"] == "rate_limiter_unavailable"
            assert response.headers["retry-after"] == "1"
        text = (await client.get("/metrics")).text
        assert 'continuum_redis_errors_total{call="admit",error=' in text
        failing = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failing) == 1, [r.getMessage() for r in caplog.records]  # rate-limited
        # Back on the same port: limits apply again by themselves, within the back-off.
        await trio.to_thread.run_sync(redis_server.start)
        with trio.fail_after(15):
            while True:
                response = await client.post(CHAT, json=chat(), headers=bearer(KEY))
                if "x-ratelimit-limit-requests" in response.headers:
                    break
                await trio.sleep(0.1)
        assert response.status_code == 200
        assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_tls_and_a_password_never_shown(
    nursery: trio.Nursery, redis_servers: Callable[..., RedisServer], tls_files: TLSFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    try:
        server = redis_servers(tls=tls_files, password="s3cret-redis-pw")
    except RedisServerError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        raise
    assert server.url.startswith("rediss://:s3cret-redis-pw@")
    router = await redis_router(nursery, server.url, ca_file=tls_files.ca_file,
                                keys=[{"key": KEY, "rate_limit": 2}])
    async with httpx.AsyncClient(base_url=router.url, timeout=10.0) as client:
        statuses = [(await client.post(CHAT, json=chat(), headers=bearer(KEY))).status_code
                    for _ in range(3)]
        assert statuses == [200, 200, 429]
        texts = [(await client.get(path)).text for path in ("/metrics", "/admin/health")]
    for text in [*texts, *(r.getMessage() for r in caplog.records)]:
        assert "s3cret-redis-pw" not in text and KEY not in text


async def test_a_wrong_password_follows_on_error(
    nursery: trio.Nursery, redis_servers: Callable[..., RedisServer],
) -> None:
    server = redis_servers(password="right")
    url = server.url.replace(":right@", ":wrong@")
    router = await redis_router(nursery, url, keys=[{"key": KEY, "rate_limit": 2}],
                                on_error="deny")
    async with httpx.AsyncClient(base_url=router.url, timeout=10.0) as client:
        response = await client.post(CHAT, json=chat(), headers=bearer(KEY))
        assert response.status_code == 503
        assert "wrong" not in response.text
