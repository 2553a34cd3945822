"""Limits that hold across instances: two router processes sharing one real redis-server.

The two routers (``python -m continuum run``, as deployed) each serve the same keys; every
test spreads its requests over both. Router A fails open when Redis is down, router B fails
closed, so the last test also shows both recover by themselves when Redis is back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from adversarial.harness import RouterProcess
from continuum.testing.redis_server import RedisServer, find_redis_server

CHAT = "/v1/chat/completions"
RPM = "sk-shared-rpm-0123456789"
TPM = "sk-shared-tpm-0123456789"
CONC = "sk-shared-conc-0123456789"
DOWN = "sk-shared-down-0123456789"
KEYS = [
    {"key": RPM, "id": "rpm", "rate_limit": 60},
    {"key": TPM, "id": "tpm", "tokens_per_minute": 6000},
    {"key": CONC, "id": "conc", "max_concurrent": 4},
    {"key": DOWN, "id": "down", "rate_limit": 100000},
]


#: Each test runs once per front (the routers are processes: the autouse front fixture
#: cannot reach them, so they name their front themselves).
pytestmark = pytest.mark.front_given


def config(redis_url: str, on_error: str, front: str) -> dict[str, Any]:
    return {
        "server": {"shutdown_timeout": "2s", "frontend": front},
        "health_checks": {"enabled": False},
        "logging": {"level": "info"},
        "api_keys": {"mode": "blocking", "api_keys": KEYS},
        "rate_limiting": {"storage": "redis",
                          "redis": {"url": redis_url, "on_error": on_error,
                                    "timeout": "300ms",
                                    # each front's pair counts apart in the one Redis
                                    "key_prefix": f"continuum-{front}:"}},
        "backends": [
            {"name": "fast", "type": "mock", "models": ["fast"]},
            {"name": "slow", "type": "mock", "models": ["slow"], "mock": {"latency": 1.0}},
        ],
    }


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer(tmp_path_factory.mktemp("shared-redis")) as server:
        yield server


@pytest.fixture(scope="module", params=["native", "hypercorn"])
def routers(request: pytest.FixtureRequest, redis: RedisServer,
            tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RouterProcess, RouterProcess]]:
    front = request.param
    workdir: Path = tmp_path_factory.mktemp(f"shared-routers-{front}")
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    with RouterProcess(config(redis.url, "allow", front), workdir / "a") as a, RouterProcess(
        config(redis.url, "deny", front), workdir / "b"
    ) as b:
        yield a, b


def body(model: str = "fast", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def spread(routers: tuple[RouterProcess, RouterProcess], key: str, count: int,
                 payload: dict[str, Any], concurrency: int = 16) -> tuple[list[httpx.Response],
                                                                           float]:
    """``count`` requests, alternating between the routers, ``concurrency`` at a time; the
    answers (bodies read) and the seconds it took."""
    clients = [httpx.AsyncClient(base_url=r.url, timeout=30.0,
                                 headers={"authorization": f"Bearer {key}"}) for r in routers]
    answers: list[httpx.Response] = []
    todo = iter(range(count))
    started = trio.current_time()

    async def worker() -> None:
        for i in todo:
            response = await clients[i % 2].post(CHAT, json=payload)
            await response.aread()
            answers.append(response)

    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as group:
                for _ in range(concurrency):
                    group.start_soon(worker)
    finally:
        for client in clients:
            await client.aclose()
    return answers, trio.current_time() - started


def assert_share(answers: list[httpx.Response], elapsed: float, limit: int) -> None:
    """About ``limit`` admitted in all (the bucket holds a minute's worth and refills at
    limit/60 per second: a run longer than 2 s is allowed what refilled meanwhile), the
    rest 429 with Retry-After, and both routers admitted some."""
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) + len(refused) == len(answers), {r.status_code for r in answers}
    upper = limit + 2 + max(0, math.ceil(elapsed - 2.0) * limit // 60)
    assert limit - 2 <= len(ok) <= upper, (len(ok), elapsed)
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert {str(r.url.port) for r in ok} == {str(r.url.port) for r in answers}


async def test_rate_limit_60_across_two_routers(
    routers: tuple[RouterProcess, RouterProcess]
) -> None:
    answers, elapsed = await spread(routers, RPM, 200, body())
    assert_share(answers, elapsed, 60)


async def test_tokens_per_minute_across_two_routers(
    routers: tuple[RouterProcess, RouterProcess]
) -> None:
    # Streams that never report usage keep their reservation (max_tokens): 6000 / 100.
    answers, elapsed = await spread(routers, TPM, 200, body(stream=True, max_tokens=100))
    assert_share(answers, elapsed, 60)
    ok = next(r for r in answers if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-tokens"] == "6000"


async def test_max_concurrent_across_two_routers(
    routers: tuple[RouterProcess, RouterProcess]
) -> None:
    for _ in range(2):  # the second round shows the leases went back
        answers, _ = await spread(routers, CONC, 12, body("slow"), concurrency=12)
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] * 4 + [429] * 8, statuses


async def test_redis_killed_then_back(
    routers: tuple[RouterProcess, RouterProcess], redis: RedisServer
) -> None:
    allow, deny = routers
    headers = {"authorization": f"Bearer {DOWN}"}
    async with httpx.AsyncClient(timeout=10.0, headers=headers) as client:
        for router in routers:
            response = await client.post(router.url + CHAT, json=body())
            assert response.status_code == 200
        redis.kill()
        try:
            for _ in range(10):
                assert (await client.post(allow.url + CHAT, json=body())).status_code == 200
                response = await client.post(deny.url + CHAT, json=body())
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "rate_limiter_unavailable"
        finally:
            await trio.to_thread.run_sync(redis.start)
        for router in routers:
            with trio.fail_after(20):
                while True:
                    response = await client.post(router.url + CHAT, json=body())
                    if "x-ratelimit-limit-requests" in response.headers:
                        break
                    await trio.sleep(0.1)
            assert response.status_code == 200
        assert "Redis at redis://127.0.0.1" in allow.log() and "failed" in allow.log()
        assert "answers again" in deny.log()
