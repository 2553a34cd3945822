"""Backends that fail, as clients of the router see it: retries, failover, timeouts,
broken streams, disconnecting clients and health checks. Every failure is real: a mock
upstream acting it out, a mock that was killed, or a port where nothing listens."""

from __future__ import annotations

import contextlib
import json
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from continuum import RouterHandle
from continuum.config import MockConfig
from continuum.mock import MockUpstream
from helpers import refused_url, router_config, start_killable_mock, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def chat_body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert "Traceback" not in response.text
    return body["error"]


def backends(*urls: str) -> list[dict[str, Any]]:
    names = "abcdefgh"
    return [{"name": names[i], "url": url, "models": [MODEL]} for i, url in enumerate(urls)]


def chat_count(mock: MockUpstream) -> int:
    return mock.requests_by_path.get(CHAT, 0)


async def two_backends(
    nursery: trio.Nursery, **sections: Any
) -> tuple[MockUpstream, MockUpstream, RouterHandle]:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(nursery, router_config(backends(url_a, url_b), **sections))
    return mock_a, mock_b, router


async def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
    assert predicate(), f"timed out waiting for {what}"


async def admin_backend(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    data = (await client.get("/admin/health")).json()
    return next(b for b in data["backends"] if b["name"] == name)


# -- failover ----------------------------------------------------------------------------------


async def test_failover_when_a_backend_is_killed(nursery: trio.Nursery) -> None:
    killable = await start_killable_mock(nursery, (MODEL,))
    mock_a = killable.upstream
    mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(
        nursery, router_config(backends(killable.url, url_b), request={"max_retries": 1})
    )
    async with http(router) as client:
        for _ in range(4):
            assert (await client.post(CHAT, json=chat_body())).status_code == 200
        assert chat_count(mock_a) == 2
        await killable.kill()
        served_before = chat_count(mock_b)
        for _ in range(10):
            response = await client.post(CHAT, json=chat_body())
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "Mock reply to: hi"
    assert chat_count(mock_b) == served_before + 10


async def test_all_backends_down_is_502(nursery: trio.Nursery) -> None:
    router = await start_router(
        nursery, router_config(backends(refused_url(nursery), refused_url(nursery)))
    )
    async with http(router) as client:
        with trio.fail_after(10):
            response = await client.post(CHAT, json=chat_body())
        error = assert_openai_error(response, 502)
        assert error["message"]
        # and it keeps answering, not hanging
        with trio.fail_after(10):
            again = await client.post(CHAT, json=chat_body(), headers={"connection": "close"})
        assert_openai_error(again, 502)


@pytest.mark.parametrize("status", [503, 502, 429])
async def test_retryable_upstream_status_goes_to_other_backend(
    nursery: trio.Nursery, status: int
) -> None:
    mock_a, mock_b, router = await two_backends(nursery)
    mock_a.fail_next("status", count=100, status=status)
    async with http(router) as client:
        for _ in range(4):
            response = await client.post(CHAT, json=chat_body())
            assert response.status_code == 200, response.text
            assert response.headers["x-continuum-backend"] == "b"
    assert mock_a.pending_failures < 100  # a was tried (and failed) ...
    assert chat_count(mock_b) == 4  # ... and b answered every request


async def test_upstream_400_is_returned_as_is_and_not_retried(nursery: trio.Nursery) -> None:
    mock_a, mock_b, router = await two_backends(nursery)
    mock_a.fail_next("status", status=400)
    mock_b.fail_next("status", status=400)
    async with http(router) as client:
        response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 400
    error = response.json()["error"]
    assert "Injected failure: HTTP 400" in error["message"]
    assert error["code"] == "mock_injected_failure"
    # exactly one backend saw the request: no retry on a client error
    assert sorted([chat_count(mock_a), chat_count(mock_b)]) == [0, 1]


async def test_reset_before_response_fails_over(nursery: trio.Nursery) -> None:
    mock_a, mock_b, router = await two_backends(nursery)
    mock_a.fail_next("reset", count=100)
    async with http(router) as client:
        for _ in range(4):
            response = await client.post(CHAT, json=chat_body())
            assert response.status_code == 200, response.text
            assert response.headers["x-continuum-backend"] == "b"
    assert mock_a.pending_failures < 100
    assert chat_count(mock_b) == 4


# -- timeouts ------------------------------------------------------------------------------------


async def test_hanging_upstream_is_504_and_router_stays_responsive(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(
        nursery, router_config(backends(url), request={"timeout": 0.5, "max_retries": 0})
    )
    mock.fail_next("hang")
    async with http(router) as client:
        with trio.fail_after(10):
            response = await client.post(CHAT, json=chat_body())
        error = assert_openai_error(response, 504)
        assert error["type"]
        admin = (await client.get("/admin/health")).json()["backends"][0]
        assert admin["in_flight"] == 0
        assert admin["pool"]["in_use"] == 0
        assert (await client.get("/health")).status_code == 200
        after = await client.post(CHAT, json=chat_body())
        assert after.status_code == 200


async def test_request_timeout_before_the_head_counts_as_a_failure(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(
        nursery, router_config(backends(url), request={"timeout": 0.3, "max_retries": 0})
    )
    mock.fail_next("hang")
    async with http(router) as client:
        with trio.fail_after(10):
            assert_openai_error(await client.post(CHAT, json=chat_body()), 504)
        a = await admin_backend(client, "a")
    assert a["failures"] == 1 and a["requests"] == 1
    assert a["circuit_breaker"]["consecutive_failures"] == 1


async def silent_upstream(nursery: trio.Nursery, *, head: bool) -> tuple[str, list[int]]:
    """An upstream that reads a request, then sends nothing (or only an SSE head) until the
    router gives up. Returns its URL and a list that gets one entry per request."""
    seen: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while b"\r\n\r\n" not in data:
                more = await stream.receive_some(65536)
                if not more:
                    return
                data += more
            seen.append(1)
            if head:
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                      b"transfer-encoding: chunked\r\n\r\n")
            while await stream.receive_some(65536):  # until the router closes
                pass

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", seen


@pytest.mark.parametrize("head", [False, True], ids=["no-head", "head-only"])
async def test_stream_first_byte_timeout_is_retried_on_another_backend(
    nursery: trio.Nursery, head: bool
) -> None:
    url_a, seen = await silent_upstream(nursery, head=head)
    _mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(nursery, router_config(
        backends(url_a, url_b), request={"idle_timeout": 0.3, "timeout": 10, "max_retries": 1}))
    async with http(router) as client:
        with trio.fail_after(10):
            for _ in range(2):  # round robin: one of them goes to the silent backend first
                response = await client.post(CHAT, json=chat_body(stream=True))
                assert response.status_code == 200, response.text
                assert response.headers["x-continuum-backend"] == "b"
                assert response.text.rstrip().endswith("data: [DONE]")
                assert "error" not in response.text
        a = await admin_backend(client, "a")
    assert len(seen) == 1
    assert a["failures"] == 1 and a["in_flight"] == 0 and a["pool"]["in_use"] == 0


@pytest.mark.parametrize("head", [False, True], ids=["no-head", "head-only"])
async def test_stream_first_byte_timeout_without_another_backend_is_504(
    nursery: trio.Nursery, head: bool
) -> None:
    url, seen = await silent_upstream(nursery, head=head)
    router = await start_router(nursery, router_config(
        backends(url), request={"idle_timeout": 0.3, "timeout": 10}))
    async with http(router) as client:
        with trio.fail_after(10):
            response = await client.post(CHAT, json=chat_body(stream=True))
            error = assert_openai_error(response, 504)
            assert error["code"] == "upstream_timeout"
            assert "request.idle_timeout" in error["message"]
            messages = await client.post("/v1/messages", json={
                "model": MODEL, "max_tokens": 5, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]})
    assert messages.status_code == 504
    assert messages.json()["type"] == "error"  # the Anthropic shape on /v1/messages
    assert router.backends["a"].failures == 2 and len(seen) == 2


async def test_client_leaving_a_plain_request_is_499_and_cancels_the_upstream_call(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(backends(url)))
    backend = router.backends["a"]
    mock.fail_next("hang")  # the upstream would never answer
    host, _, port = router.url.removeprefix("http://").rpartition(":")
    body = json.dumps(chat_body()).encode()
    caplog.set_level("INFO", logger="continuum.access")
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            f"POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode() + body)
        await wait_until(lambda: backend.in_flight == 1, 5.0, "the request to reach upstream")
        await stream.aclose()
        # The router notices within a check period or two, well before any timeout.
        await wait_until(lambda: backend.in_flight == 0, 5.0, "the upstream call to stop")
    assert backend.pool.stats.in_use == 0
    assert backend.failures == 0  # the client's departure is not the backend's fault
    assert backend.breaker.snapshot().consecutive_failures == 0
    await wait_until(lambda: any("status=499" in r.getMessage() for r in caplog.records),
                     5.0, "the access log line")
    async with http(router) as client:
        after = await client.post(CHAT, json=chat_body())
        assert after.status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'status="499"' in metrics


# -- broken streams ------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("\n\n"), "the stream must end on an event boundary"
    return text[:-2].split("\n\n")


async def test_stream_reset_mid_way_ends_with_error_event_and_done(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(backends(url)))
    mock.fail_next("reset_mid_stream")
    raw = b""
    async with http(router) as client:
        with trio.fail_after(10):
            async with client.stream("POST", CHAT, json=chat_body(stream=True)) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for data in response.aiter_raw():
                    raw += data
    events = sse_events(raw)
    assert events[-1] == "data: [DONE]"
    error_event = events[-2]
    lines = error_event.split("\n")
    assert lines[0] == "event: error"
    assert lines[1].startswith("data: ")
    error = json.loads(lines[1][len("data: ") :])["error"]
    assert set(error) == ERROR_KEYS
    # The chunks sent before the reset reached the client, intact and in order.
    before = events[:-2]
    assert len(before) == 2
    first = json.loads(before[0][len("data: ") :])
    assert first["choices"][0]["delta"]["role"] == "assistant"
    second = json.loads(before[1][len("data: ") :])
    assert second["choices"][0]["delta"]["content"]


async def test_malformed_upstream_json_is_passed_through(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(backends(url)))
    mock.fail_next("malformed")
    async with http(router) as client:
        response = await client.post(CHAT, json=chat_body())
        # The router does not parse answers: status and (broken) body come through as sent,
        # in a well-formed HTTP response.
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(response.content)
        assert response.content.startswith(b"{")
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
        assert (await client.post(CHAT, json=chat_body())).json()["model"] == MODEL


async def test_client_disconnect_mid_stream_releases_upstream(nursery: trio.Nursery) -> None:
    # 200 tokens at 20/s: 10 s if nobody stops it; the router must stop it much sooner.
    mock, url = await start_mock(
        nursery, (MODEL,), MockConfig(tokens_per_second=20, stream_chunks=200)
    )
    router = await start_router(nursery, router_config(backends(url)))
    backend = router.backends["a"]
    host, _, port = router.url.removeprefix("http://").rpartition(":")
    body = json.dumps(chat_body(stream=True)).encode()
    request = (
        f"POST {CHAT} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(request)
        received = b""
        while b"data: " not in received or b"\n\n" not in received.split(b"data: ", 1)[1]:
            chunk = await stream.receive_some(65536)
            assert chunk, "router closed the connection before the first chunk"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert mock.active_streams == 1
        await stream.aclose()

    await wait_until(lambda: mock.active_streams == 0, 5.0, "the upstream stream to stop")
    await wait_until(lambda: backend.pool.stats.in_use == 0, 5.0, "the pool slot to free")
    assert backend.in_flight == 0

    # The abandoned upstream connection must not be reused: following requests all work.
    async with http(router) as client:
        for _ in range(5):
            response = await client.post(CHAT, json=chat_body())
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"].startswith("Mock reply")
    assert backend.pool.stats.in_use == 0


# -- health checks -------------------------------------------------------------------------------

HEALTH = {
    "enabled": True,
    "interval": 0.2,
    "timeout": 0.5,
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
}


async def test_unhealthy_backend_gets_no_traffic_until_it_recovers(
    nursery: trio.Nursery,
) -> None:
    mock_a, _, router = await two_backends(nursery, health_checks=HEALTH)
    async with http(router) as client:
        assert (await admin_backend(client, "a"))["healthy"] is True
        mock_a.set_health_status(500)
        with trio.fail_after(5):
            while (await admin_backend(client, "a"))["healthy"]:
                await trio.sleep(0.05)
        status = await admin_backend(client, "a")
        assert status["status"] == "unhealthy"
        models = (await client.get("/v1/models")).json()["data"]
        assert [m["owned_by"] for m in models if m["id"] == MODEL] == ["b"]

        before_a = chat_count(mock_a)
        for _ in range(6):
            response = await client.post(CHAT, json=chat_body())
            assert response.status_code == 200
            assert response.headers["x-continuum-backend"] == "b"
        assert chat_count(mock_a) == before_a

        mock_a.set_health_status(200)
        with trio.fail_after(5):
            while not (await admin_backend(client, "a"))["healthy"]:
                await trio.sleep(0.05)
        served = set()
        for _ in range(6):
            response = await client.post(CHAT, json=chat_body())
            assert response.status_code == 200
            served.add(response.headers["x-continuum-backend"])
        assert served == {"a", "b"}
    assert chat_count(mock_a) > before_a


async def test_all_backends_unhealthy_is_503_with_retry_after(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    mock_a.set_health_status(500)
    mock_b.set_health_status(500)
    router = await start_router(
        nursery, router_config(backends(url_a, url_b), health_checks=HEALTH)
    )
    async with http(router) as client:
        response = await client.post(CHAT, json=chat_body())
        assert_openai_error(response, 503)
        retry_after = response.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1
    assert chat_count(mock_a) == chat_count(mock_b) == 0


async def _garbled_lists(nursery: trio.Nursery) -> str:
    """An upstream whose every answer is a 200 with a body that is no model list."""

    async def answer(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(65536):
                body = b"<html>not a list</html>"
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                      b"content-length: %d\r\n\r\n%b" % (len(body), body))

    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["openai", "gemini"])
async def test_an_unreadable_model_list_at_start_up_is_a_backend_failure_not_a_crash(
    nursery: trio.Nursery, kind: str
) -> None:
    """Discovery reads upstream input: a garbled list leaves the backend serving no model;
    `serve` still starts and answers (the Gemini parser's error once ended it)."""
    url = await _garbled_lists(nursery)
    _good, good_url = await start_mock(nursery, ("other",))
    router = await start_router(nursery, router_config([
        {"name": "garbled", "type": kind, "url": url, "api_key": "k"},
        {"name": "fine", "url": good_url},
    ], health_checks={"enabled": True, "interval": "1s"}))
    with trio.fail_after(10):
        async with http(router) as client:
            listed = (await client.get("/v1/models")).json()
            assert [m["id"] for m in listed["data"]] == ["other"]
            ok = await client.post(CHAT, json={**chat_body(), "model": "other"})
            assert ok.status_code == 200, ok.text
