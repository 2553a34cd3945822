"""Failure handling users rely on: retries and their limits, Retry-After cool-downs, the
circuit breaker, passive health, warm-up, timeouts, backpressure and deduplication.

Every failure is acted out by a real mock upstream on a loopback port (or is a port where
nothing listens); the router under test is a real one, started in-process.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
import trio

from continuum import RouterHandle
from continuum.config import MockConfig
from continuum.core.clock import now as clock
from continuum.mock import MockUpstream, serve_mock
from continuum.net.server.connection import Request, ServerConnection
from helpers import router_config, start_killable_mock, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}
#: Health checks that never probe during a test (the round made before serving aside).
QUIET_HEALTH = {"enabled": True, "interval": 30, "timeout": 1}


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def sdk(router: RouterHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=10.0
    )


def chat_body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def chat_count(mock: MockUpstream) -> int:
    return mock.requests_by_path.get(CHAT, 0)


def entries(*urls: str, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": "abcdefgh"[i], "url": url, "models": [MODEL], **extra}
        for i, url in enumerate(urls)
    ]


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    return body["error"]


def cooldown_left(router: RouterHandle, name: str) -> float:
    """Seconds left of a backend's Retry-After cool-down, read from the router itself."""
    return router.backends[name].cooldown_until - clock()


async def admin_backend(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    data = (await client.get("/admin/health")).json()
    return next(b for b in data["backends"] if b["name"] == name)


async def poll_admin(
    client: httpx.AsyncClient, name: str, predicate: Any, what: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Poll /admin/health until ``predicate(backend_entry)`` holds (a hang guard, not a
    latency assertion)."""
    with trio.move_on_after(timeout):
        while True:
            entry = await admin_backend(client, name)
            if predicate(entry):
                return entry
            await trio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}: {await admin_backend(client, name)}")


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("\n\n"), f"stream must end on an event boundary: {text[-200:]!r}"
    return text[:-2].split("\n\n")


def error_event(event: str) -> dict[str, Any]:
    lines = event.split("\n")
    assert lines[0] == "event: error", event
    assert lines[1].startswith("data: "), event
    error = json.loads(lines[1][len("data: ") :])["error"]
    assert set(error) == ERROR_KEYS
    return error


async def start_timed_mock(
    nursery: trio.Nursery, name: str, arrivals: list[tuple[str, float]]
) -> tuple[MockUpstream, str]:
    """A mock that also records (name, trio time) for every chat request it receives."""
    upstream = MockUpstream(models=(MODEL,), name=name, seed=0)
    inner = upstream.handle

    async def handle(request: Request, conn: ServerConnection) -> None:
        if request.path == CHAT:
            arrivals.append((name, trio.current_time()))
        await inner(request, conn)

    upstream.handle = handle  # type: ignore[method-assign]
    address = await nursery.start(serve_mock, upstream)
    return upstream, f"http://{address}"


# -- retries and Retry-After ---------------------------------------------------------------------


async def test_503_with_retry_after_fails_over_and_cools_the_backend_down(
    nursery: trio.Nursery,
) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    _mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(nursery, router_config(entries(url_a, url_b)))
    mock_a.fail_next("status", status=503)  # the mock sends "retry-after: 1" with it
    with trio.fail_after(15):
        async with http(router) as client:
            first = await client.post(CHAT, json=chat_body())
            assert first.status_code == 200, first.text
            assert first.headers["x-continuum-backend"] == "b"
            assert chat_count(mock_a) == 1
            assert (await admin_backend(client, "a"))["cooldown_seconds"] > 0
            # While a cools down, RoundRobin does not send it anything. Requests are sent
            # only while a's cool-down has a good margin left (read in-process), so a slow
            # machine sends fewer of them instead of failing.
            served = []
            while len(served) < 6 and cooldown_left(router, "a") > 0.3:
                served.append(await client.post(CHAT, json=chat_body()))
            assert served, "the cool-down was over before the first request"
            assert {r.headers["x-continuum-backend"] for r in served} == {"b"}
            assert chat_count(mock_a) == 1
            # The cool-down ends and a gets its share again.
            await poll_admin(client, "a", lambda b: b["cooldown_seconds"] == 0, "cool-down end")
            after = Counter(
                [(await client.post(CHAT, json=chat_body())).headers["x-continuum-backend"]
                 for _ in range(4)]
            )
    assert after["a"] >= 1, after
    assert chat_count(mock_a) >= 2


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
async def test_client_caused_upstream_errors_are_returned_as_is_not_retried(
    nursery: trio.Nursery, status: int
) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(nursery, router_config(entries(url_a, url_b)))
    mock_a.fail_next("status", status=status)
    mock_b.fail_next("status", status=status)
    with trio.fail_after(15):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body())
    error = assert_openai_error(response, status)
    assert error["code"] == "mock_injected_failure"
    assert f"HTTP {status}" in error["message"]
    assert response.headers["x-continuum-backend"] == "a"
    assert chat_count(mock_a) == 1
    assert chat_count(mock_b) == 0  # not retried elsewhere


async def test_retry_budget_bounds_attempts_with_failing_status(nursery: trio.Nursery) -> None:
    mocks = [(await start_mock(nursery, (MODEL,), name=n)) for n in "abc"]
    for mock, _ in mocks:
        mock.fail_next("status", count=10, status=502)
    router = await start_router(
        nursery,
        router_config(entries(*(url for _, url in mocks)), request={"max_retries": 1}),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body())
    assert_openai_error(response, 502)
    assert sum(chat_count(mock) for mock, _ in mocks) == 2  # one try + one retry


async def test_retry_budget_bounds_attempts_with_connection_resets(
    nursery: trio.Nursery,
) -> None:
    mocks = [(await start_mock(nursery, (MODEL,), name=n)) for n in "abc"]
    for mock, _ in mocks:
        mock.fail_next("reset", count=10)
    router = await start_router(
        nursery,
        router_config(entries(*(url for _, url in mocks)), request={"max_retries": 1},
                      http_client={"prewarm_connections": 0}),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body())
    error = assert_openai_error(response, 502)
    assert error["message"]
    assert sum(chat_count(mock) for mock, _ in mocks) == 2


async def test_retry_waits_a_jittered_backoff(nursery: trio.Nursery) -> None:
    arrivals: list[tuple[str, float]] = []
    mock_a, url_a = await start_timed_mock(nursery, "a", arrivals)
    mock_b, url_b = await start_timed_mock(nursery, "b", arrivals)
    router = await start_router(
        nursery,
        router_config(entries(url_a, url_b),
                      retry={"base_delay": 0.2, "jitter": True, "exponential_backoff": True},
                      http_client={"prewarm_connections": 0}),
    )
    mock_a.fail_next("reset", count=10)
    mock_b.fail_next("status", count=1, status=502)
    with trio.fail_after(15):
        async with http(router) as client:
            # a resets; b (the retry) answers 502 once: both are retried.
            response = await client.post(CHAT, json=chat_body())
    assert response.status_code in (200, 502), response.text
    names = [name for name, _ in arrivals]
    assert names[:2] == ["a", "b"], names
    gap = arrivals[1][1] - arrivals[0][1]
    # base_delay 0.2 with jitter draws from [0.1, 0.2] before the first retry.
    assert gap >= 0.095, gap


# -- circuit breaker -----------------------------------------------------------------------------

BREAKER = {"failure_threshold": 3, "timeout": 1.0, "half_open_max_requests": 1}


async def test_circuit_breaker_opens_diverts_traffic_and_recovers(
    nursery: trio.Nursery,
) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    _mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(
        nursery,
        router_config(entries(url_a, url_b), circuit_breaker=BREAKER,
                      health_checks={"passive_failure_threshold": 0}),
    )
    mock_a.fail_next("status", count=3, status=502)
    with trio.fail_after(15):
        async with http(router) as client:
            for _ in range(12):
                if chat_count(mock_a) >= 3:
                    break
                response = await client.post(CHAT, json=chat_body())
                assert response.status_code == 200, response.text  # retried on b
            assert chat_count(mock_a) == 3
            a = await admin_backend(client, "a")
            assert a["circuit_breaker"]["state"] == "open", a
            assert a["circuit_breaker"]["opened_total"] == 1
            metrics = (await client.get("/metrics")).text
            assert 'backend_circuit_breaker_state{backend="a"} 2.0' in metrics
            assert 'backend_circuit_breaker_state{backend="b"} 0.0' in metrics

            sent = 0  # only while the breaker has a good margin left (read in-process)
            while sent < 8 and router.backends["a"].breaker.retry_after > 0.3:
                response = await client.post(CHAT, json=chat_body())
                assert response.headers["x-continuum-backend"] == "b"
                sent += 1
            assert sent, "the breaker half-opened before the first request"
            assert chat_count(mock_a) == 3  # no traffic while open

            await poll_admin(client, "a",
                             lambda b: b["circuit_breaker"]["state"] == "half_open",
                             "half-open after the timeout")
            for _ in range(4):  # RoundRobin reaches a within two requests
                await client.post(CHAT, json=chat_body())
                if chat_count(mock_a) > 3:
                    break
            assert chat_count(mock_a) == 4  # the trial request
            closed = await admin_backend(client, "a")
            assert closed["circuit_breaker"]["state"] == "closed", closed
            metrics = (await client.get("/metrics")).text
            assert 'backend_circuit_breaker_state{backend="a"} 0.0' in metrics


async def test_half_open_failure_reopens_the_breaker(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    _mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(
        nursery,
        router_config(entries(url_a, url_b), circuit_breaker=BREAKER,
                      health_checks={"passive_failure_threshold": 0}),
    )
    mock_a.fail_next("status", count=4, status=502)
    with trio.fail_after(15):
        async with http(router) as client:
            while chat_count(mock_a) < 3:
                assert (await client.post(CHAT, json=chat_body())).status_code == 200
            await poll_admin(client, "a",
                             lambda b: b["circuit_breaker"]["state"] == "half_open", "half-open")
            while chat_count(mock_a) < 4:
                assert (await client.post(CHAT, json=chat_body())).status_code == 200
            a = await admin_backend(client, "a")
    assert a["circuit_breaker"]["state"] == "open", a
    assert a["circuit_breaker"]["opened_total"] == 2


async def test_single_backend_with_open_breaker_is_503_circuit_open(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(
        nursery,
        router_config(entries(url), circuit_breaker={"failure_threshold": 3, "timeout": 30},
                      health_checks={"passive_failure_threshold": 0}),
    )
    mock.fail_next("status", count=3, status=502)
    with trio.fail_after(15):
        async with http(router) as client:
            for _ in range(3):
                assert_openai_error(await client.post(CHAT, json=chat_body()), 502)
            response = await client.post(CHAT, json=chat_body())
            error = assert_openai_error(response, 503)
            assert error["code"] == "circuit_open"
            # It says why: the failure that opened the breaker.
            assert error["message"].endswith(
                "(circuit breaker open) (backend 'a', last failure: answered 502)"), error
            retry_after = response.headers["retry-after"]
            assert retry_after.isdigit() and int(retry_after) >= 1
            metrics = (await client.get("/metrics")).text
    assert 'backend_circuit_breaker_state{backend="a"} 2.0' in metrics
    assert chat_count(mock) == 3


async def test_backend_comes_back_after_failures_with_health_checks_off(
    nursery: trio.Nursery,
) -> None:
    """With health checks disabled nothing ever probes a backend, so a few failures on real
    traffic (a restart, say) must not take it out of rotation for good: once it answers
    again it gets traffic again (the circuit breaker is what guards it meanwhile)."""
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    _mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(
        nursery,
        router_config(entries(url_a, url_b),
                      circuit_breaker={"failure_threshold": 3, "timeout": 0.3}),
    )
    # e.g. a restart: three failed requests (passive_failure_threshold defaults to 3)
    mock_a.fail_next("status", count=3, status=502)
    with trio.fail_after(15):
        async with http(router) as client:
            for _ in range(12):
                if mock_a.pending_failures == 0:
                    break
                assert (await client.post(CHAT, json=chat_body())).status_code == 200
            assert mock_a.pending_failures == 0
            # a answers normally again; its breaker's timeout passes
            await poll_admin(client, "a",
                             lambda b: b["circuit_breaker"]["state"] != "open",
                             "the breaker to leave open")
            served: Counter[str] = Counter()
            for _ in range(10):
                response = await client.post(CHAT, json=chat_body())
                assert response.status_code == 200
                served[response.headers["x-continuum-backend"]] += 1
            a = await admin_backend(client, "a")
    assert served["a"] >= 1, (served, a["status"], a["reason"])


# -- passive health, warm-up ---------------------------------------------------------------------


async def test_connection_failures_mark_backend_unhealthy_before_any_probe(
    nursery: trio.Nursery,
) -> None:
    killable = await start_killable_mock(nursery, (MODEL,), name="a")
    _mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(
        nursery,
        router_config(entries(killable.url, url_b),
                      health_checks={**QUIET_HEALTH, "passive_failure_threshold": 2}),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            assert (await admin_backend(client, "a"))["healthy"] is True
            await killable.kill()
            failures_seen = 0
            for _ in range(10):
                response = await client.post(CHAT, json=chat_body())
                assert response.status_code == 200, response.text  # b answers
                a = await admin_backend(client, "a")
                failures_seen = a["failures"]
                if not a["healthy"]:
                    break
            a = await admin_backend(client, "a")
            assert a["healthy"] is False, a
            assert a["status"] == "unhealthy"
            assert failures_seen == 2
            # no traffic to it any more (it is not even tried)
            for _ in range(4):
                response = await client.post(CHAT, json=chat_body())
                assert response.headers["x-continuum-backend"] == "b"
            assert (await admin_backend(client, "a"))["failures"] == 2


async def test_warming_up_backend_gets_no_traffic_until_ready(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    _mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    mock_a.set_health_status(503)
    router = await start_router(
        nursery,
        router_config(entries(url_a, url_b),
                      health_checks={**QUIET_HEALTH, "warmup_check_interval": 0.1}),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            a = await admin_backend(client, "a")
            assert a["status"] == "warming_up", a
            assert a["healthy"] is False
            for _ in range(6):
                response = await client.post(CHAT, json=chat_body())
                assert response.status_code == 200
                assert response.headers["x-continuum-backend"] == "b"
            assert chat_count(mock_a) == 0
            mock_a.set_health_status(200)
            await poll_admin(client, "a", lambda b: b["status"] == "healthy", "warm-up end")
            served = Counter(
                [(await client.post(CHAT, json=chat_body())).headers["x-continuum-backend"]
                 for _ in range(6)]
            )
    assert served["a"] >= 1, served
    assert chat_count(mock_a) == served["a"]


async def test_all_backends_warming_up_is_503_with_retry_after(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    mock.set_health_status(503)
    router = await start_router(
        nursery,
        router_config(entries(url), health_checks={**QUIET_HEALTH,
                                                   "warmup_check_interval": 0.1}),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body())
            assert_openai_error(response, 503)
            retry_after = response.headers["retry-after"]
            assert retry_after.isdigit() and int(retry_after) >= 1
            assert chat_count(mock) == 0
            mock.set_health_status(200)
            await poll_admin(client, "a", lambda b: b["status"] == "healthy", "warm-up end")
            response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert chat_count(mock) == 1


# -- timeouts ------------------------------------------------------------------------------------


async def test_request_timeout_on_hanging_upstream_is_504(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(
        nursery, router_config(entries(url), request={"timeout": 0.5, "max_retries": 0})
    )
    mock.fail_next("hang")
    with trio.fail_after(15):
        async with sdk(router) as client:
            with pytest.raises(openai.APIStatusError) as info:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
            assert info.value.status_code == 504
            body = info.value.response.json()
            assert set(body["error"]) == ERROR_KEYS
            assert "timeout" in body["error"]["message"]
            completion = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "again"}]
            )
    assert completion.choices[0].message.content == "Mock reply to: again"
    backend = router.backends["a"]
    assert backend.in_flight == 0
    assert backend.pool.stats.in_use == 0


async def read_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, bytes]:
    raw = b""
    async with client.stream("POST", CHAT, json=body) as response:
        async for data in response.aiter_raw():
            raw += data
    return response.status_code, raw


async def assert_upstream_clean(router: RouterHandle, mock: MockUpstream,
                                client: httpx.AsyncClient) -> None:
    """The timed-out upstream stream was dropped and the pool is fit for reuse."""
    backend = router.backends["a"]
    with trio.move_on_after(5):
        while mock.active_streams or backend.pool.stats.in_use:
            await trio.sleep(0.02)
    assert mock.active_streams == 0
    assert backend.pool.stats.in_use == 0
    assert backend.in_flight == 0
    mock.tokens_per_second = 0
    for i in range(3):
        response = await client.post(CHAT, json=chat_body(f"next {i}"))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == f"Mock reply to: next {i}"
    status, raw = await read_stream(client, chat_body("streamed", stream=True))
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "data: [DONE]"
    assert not any(e.startswith("event: error") for e in events)


async def test_idle_timeout_mid_stream_sends_error_event_and_done(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(
        nursery, (MODEL,), MockConfig(tokens_per_second=1, stream_chunks=5), name="a"
    )
    router = await start_router(
        nursery, router_config(entries(url), request={"idle_timeout": 0.3})
    )
    with trio.fail_after(15):
        async with http(router) as client:
            status, raw = await read_stream(client, chat_body(stream=True))
            assert status == 200
            events = sse_events(raw)
            assert events[-1] == "data: [DONE]"
            error = error_event(events[-2])
            assert "idle_timeout" in error["message"]
            # what arrived before the gap came through
            assert len(events) >= 3
            first = json.loads(events[0][len("data: ") :])
            assert first["choices"][0]["delta"]["role"] == "assistant"
            await assert_upstream_clean(router, mock, client)


async def test_streaming_timeout_ends_a_slow_stream_with_error_and_done(
    nursery: trio.Nursery,
) -> None:
    # 20 chunks at 10/s: ~2 s if left alone; every gap (0.1 s) is well under idle_timeout.
    mock, url = await start_mock(
        nursery, (MODEL,), MockConfig(tokens_per_second=10, stream_chunks=20), name="a"
    )
    router = await start_router(
        nursery,
        router_config(entries(url), request={"streaming_timeout": 0.5, "idle_timeout": 5}),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            status, raw = await read_stream(client, chat_body(stream=True))
            assert status == 200
            events = sse_events(raw)
            assert events[-1] == "data: [DONE]"
            error = error_event(events[-2])
            assert "streaming_timeout" in error["message"]
            content = [e for e in events[:-2] if e.startswith("data: ")]
            assert 2 <= len(content) < 22  # some chunks, but not the whole answer
            await assert_upstream_clean(router, mock, client)


# -- backpressure --------------------------------------------------------------------------------


async def test_backpressure_rejects_past_in_flight_and_queue_caps(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    mock.set_latency(1.0)  # all six arrive while the first is still in flight
    router = await start_router(
        nursery, router_config(entries(url, max_in_flight=1, max_queue=1))
    )
    responses: list[httpx.Response] = []

    async def one(client: httpx.AsyncClient) -> None:
        responses.append(await client.post(CHAT, json=chat_body()))

    with trio.fail_after(15):
        async with http(router) as client, trio.open_nursery() as clients:
            for _ in range(6):
                clients.start_soon(one, client)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] >= 1, statuses
    assert statuses[429] >= 1, statuses
    assert statuses[200] <= 2, statuses  # one in flight + one queued at the time
    for response in responses:
        if response.status_code == 429:
            error = assert_openai_error(response, 429)
            assert error["code"] == "overloaded"
            # It says why: the backend's load against max_in_flight + max_queue.
            assert re.search(r"backend 'a': [2-9] requests in flight, max_in_flight 1 "
                             r"\+ max_queue 1\)$", error["message"]), error
            assert int(response.headers["retry-after"]) >= 1
    assert chat_count(mock) == statuses[200]
    assert router.backends["a"].in_flight == 0


# -- deduplication -------------------------------------------------------------------------------


async def test_identical_concurrent_requests_share_one_upstream_call(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    mock.set_latency(1.0)  # long enough for all ten to join the first one's call
    router = await start_router(
        nursery,
        router_config(entries(url), cache={"deduplication": {"enabled": True, "ttl": 5}}),
    )
    body = chat_body("same question", temperature=0)
    responses: list[httpx.Response] = []

    async def one(client: httpx.AsyncClient) -> None:
        responses.append(await client.post(CHAT, json=body))

    with trio.fail_after(15):
        async with http(router) as client:
            async with trio.open_nursery() as clients:
                for _ in range(10):
                    clients.start_soon(one, client)
            assert chat_count(mock) == 1
            assert [r.status_code for r in responses] == [200] * 10
            assert len({r.content for r in responses}) == 1
            outcomes = Counter(r.headers["x-continuum-dedup"] for r in responses)
            assert outcomes == {"miss": 1, "shared": 9}

            repeat = await client.post(CHAT, json=body)
            assert repeat.status_code == 200
            assert repeat.headers["x-continuum-dedup"] == "hit"
            assert repeat.content == responses[0].content
            assert chat_count(mock) == 1

            metrics = (await client.get("/metrics")).text
    assert 'deduplication_events_total{event="hit"} 1.0' in metrics
    assert 'deduplication_events_total{event="shared"} 9.0' in metrics
    assert 'deduplication_events_total{event="miss"} 1.0' in metrics


async def test_non_deterministic_and_streaming_requests_are_not_deduplicated(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    mock.set_latency(0.1)
    router = await start_router(
        nursery,
        router_config(entries(url), cache={"deduplication": {"enabled": True, "ttl": 5}}),
    )
    sampled = chat_body("creative", temperature=0.7)
    streamed = chat_body("streamed", temperature=0, stream=True)
    responses: list[httpx.Response] = []
    streams: list[tuple[int, bytes]] = []

    async def one(client: httpx.AsyncClient) -> None:
        responses.append(await client.post(CHAT, json=sampled))

    async def one_stream(client: httpx.AsyncClient) -> None:
        streams.append(await read_stream(client, streamed))

    with trio.fail_after(15):
        async with http(router) as client:
            async with trio.open_nursery() as clients:
                for _ in range(3):
                    clients.start_soon(one, client)
                for _ in range(3):
                    clients.start_soon(one_stream, client)
            assert chat_count(mock) == 6
            for response in responses:
                assert response.status_code == 200
                assert "x-continuum-dedup" not in response.headers
            for status, raw in streams:
                assert status == 200
                assert sse_events(raw)[-1] == "data: [DONE]"
            # and again, sequentially: no stored answer either
            await client.post(CHAT, json=sampled)
            await read_stream(client, streamed)
    assert chat_count(mock) == 8
