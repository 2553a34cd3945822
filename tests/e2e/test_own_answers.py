"""What the router answers by itself, as a newcomer meets it: readiness, the model list with
aliases, the cool-down 503, and error messages that stay readable whatever the client sent.

Real routers on loopback ports, real mock upstreams, real clients (httpx, the openai SDK,
raw sockets for HEAD on a kept-alive connection).
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import trio

from continuum import RouterHandle
from continuum.core.clock import now as clock
from continuum.mock import MockUpstream, serve_mock
from continuum.net.server.connection import Request, ServerConnection
from helpers import router_config, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}
HANG_GUARD = 15
#: Probes often enough that a test sees a change within a fraction of a second.
FAST_HEALTH = {"enabled": True, "interval": 0.1, "timeout": 1, "unhealthy_threshold": 1,
               "healthy_threshold": 1}


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def sdk(router: RouterHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                              timeout=10.0)


def chat_body(model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    error: dict[str, Any] = body["error"]
    return error


async def wait_for_status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    with trio.fail_after(HANG_GUARD):
        while True:
            response = await client.get(path)
            if response.status_code == status:
                return response
            await trio.sleep(0.02)


# -- /ready --------------------------------------------------------------------------------------


async def test_ready_follows_backend_health_while_health_stays_up(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(nursery, router_config(
        [{"name": "alpha", "url": url_a, "models": [MODEL]},
         {"name": "beta", "url": url_b, "models": [MODEL]}],
        health_checks=FAST_HEALTH,
    ))
    async with http(router) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "healthy_backends": 2}

        mock_a.set_health_status(500)  # one down: still ready
        with trio.fail_after(HANG_GUARD):
            while router.backends["alpha"].healthy:
                await trio.sleep(0.02)
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["healthy_backends"] == 1

        mock_b.set_health_status(500)  # both down: not ready, and it says why
        not_ready = await wait_for_status(client, "/ready", 503)
        error = assert_openai_error(not_ready, 503)
        assert error["code"] == "not_ready"
        assert "alpha: unhealthy (probe answered 500)" in error["message"]
        assert "beta: unhealthy" in error["message"]
        assert not_ready.headers["retry-after"] == "1"
        assert (await client.get("/health")).status_code == 200  # liveness is not readiness

        mock_b.set_health_status(200)
        await wait_for_status(client, "/ready", 200)


async def test_not_ready_while_no_backend_has_a_model(nursery: trio.Nursery) -> None:
    """Healthy but with nothing to serve (discovery failed): not ready either."""
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    mock.set_health_status(500)  # its /v1/models fails: discovery gets nothing
    router = await start_router(nursery, router_config([{"name": "lister", "url": url}]))
    async with http(router) as client:
        response = await client.get("/ready")
        error = assert_openai_error(response, 503)
        assert "lister: serves no model yet" in error["message"]
        assert (await client.get("/health")).status_code == 200


async def test_ready_and_health_answer_head_on_a_kept_alive_connection(
    nursery: trio.Nursery,
) -> None:
    """Load balancers send HEAD. The answer has GET's status and headers and no body, so
    the next answer on the same connection is read correctly."""
    _, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(nursery, router_config([{"name": "a", "url": url,
                                                         "models": [MODEL]}]))
    host, _, port = router.url.removeprefix("http://").rpartition(":")
    with trio.fail_after(HANG_GUARD):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            b"HEAD /ready HTTP/1.1\r\nhost: x\r\n\r\n"
            b"HEAD /health HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        received = b""
        while received.count(b"HTTP/1.1 ") < 3 or not received.endswith(b"}"):
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed early: {received!r}"
            received += chunk
        await stream.aclose()
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"200"], received
    for head_answer in answers[:2]:
        assert head_answer.endswith(b"\r\n\r\n"), f"HEAD answered with a body: {received!r}"
    assert answers[2].endswith(b'{"status":"ready","healthy_backends":1}')


# -- /v1/models: aliases, trailing slash ----------------------------------------------------------


async def test_models_list_shows_aliases_marked_and_retrievable(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, (MODEL, "other"), name="a")
    router = await start_router(nursery, router_config(
        [{"name": "a", "url": url, "models": [MODEL, "other"]}],
        model_aliases={"friendly": MODEL, "nobody-serves-it": "missing-model"},
    ))
    async with sdk(router) as client:
        page = await client.models.list()
        alias = await client.models.retrieve("friendly")
        served = await client.models.retrieve(MODEL)
    assert [m.id for m in page.data] == ["friendly", MODEL, "other"]  # an unserved alias: no
    entries = {m.id: m.model_dump() for m in page.data}
    assert entries["friendly"]["continuum"] == {"alias_of": MODEL}
    assert entries["friendly"]["object"] == "model" and entries["friendly"]["owned_by"] == "a"
    assert "continuum" not in entries[MODEL]
    assert alias.id == "friendly" and alias.model_dump()["continuum"] == {"alias_of": MODEL}
    assert "continuum" not in served.model_dump()
    async with http(router) as raw:
        gone = await raw.get("/v1/models/nobody-serves-it")
    assert assert_openai_error(gone, 404)["code"] == "model_not_found"


async def test_models_with_a_trailing_slash_is_the_list(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(nursery, router_config([{"name": "a", "url": url,
                                                         "models": [MODEL]}]))
    async with http(router) as client:
        plain = await client.get("/v1/models")
        slash = await client.get("/v1/models/")
    assert slash.status_code == 200, slash.text
    assert slash.json() == plain.json()
    assert [m["id"] for m in slash.json()["data"]] == [MODEL]


# -- error messages ------------------------------------------------------------------------------


async def test_long_model_names_are_cut_in_error_messages(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(nursery, router_config([{"name": "a", "url": url,
                                                         "models": [MODEL]}]))
    huge = "m" * 100_000
    async with http(router) as client:
        chat = await client.post(CHAT, json=chat_body(huge))
        lookup = await client.get("/v1/models/" + "n" * 10_000)
    for response, length in ((chat, "100,000"), (lookup, "10,000")):
        error = assert_openai_error(response, 404)
        assert error["code"] == "model_not_found"
        assert len(error["message"]) < 300, len(error["message"])
        assert f"({length} characters)" in error["message"]


# -- the cool-down 503 ---------------------------------------------------------------------------


async def start_503_once(nursery: trio.Nursery, retry_after: bytes) -> tuple[MockUpstream, str]:
    """A mock whose first chat request gets 503 with ``Retry-After: retry_after``."""
    upstream = MockUpstream(models=(MODEL,), name="a", seed=0)
    inner = upstream.handle
    pending = [True]

    async def handle(request: Request, conn: ServerConnection) -> None:
        if request.path == CHAT and pending:
            pending.clear()
            body = b'{"error": {"message": "busy", "type": "x", "param": null, "code": null}}'
            await conn.send_response(
                503, [(b"content-type", b"application/json"), (b"retry-after", retry_after)],
                body,
            )
            return
        await inner(request, conn)

    upstream.handle = handle  # type: ignore[method-assign]
    address = await nursery.start(serve_mock, upstream)
    return upstream, f"http://{address}"


async def test_cooling_down_backend_gets_a_503_that_says_so(nursery: trio.Nursery) -> None:
    mock, url = await start_503_once(nursery, b"5")
    router = await start_router(nursery, router_config([{"name": "a", "url": url,
                                                         "models": [MODEL]}]))
    backend = router.backends["a"]
    async with http(router) as client:
        first = await client.post(CHAT, json=chat_body())
        assert first.status_code == 503  # the upstream's own answer, passed on
        left_before = backend.cooldown_until - clock()
        second = await client.post(CHAT, json=chat_body())
        left_after = backend.cooldown_until - clock()
        admin = (await client.get("/admin/health")).json()["backends"][0]
    error = assert_openai_error(second, 503)
    assert error["code"] == "cooling_down"
    assert "cooling down" in error["message"] and "Retry-After" in error["message"]
    assert "No healthy backend" not in error["message"]
    # Retry-After: the seconds left, rounded up (never down to a moment that is too soon).
    allowed = {str(n) for n in range(math.ceil(left_after), math.ceil(left_before) + 1)}
    assert second.headers["retry-after"] in allowed, (second.headers["retry-after"], allowed)
    assert f"available again in {second.headers['retry-after']} s" in error["message"]
    assert admin["healthy"] is True and admin["cooldown_seconds"] > 0
    assert mock.requests_by_path.get(CHAT, 0) == 0  # the 503 was ours; the mock saw nothing


async def test_cool_down_retry_after_is_rounded_up(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(nursery, router_config([{"name": "a", "url": url,
                                                         "models": [MODEL]}]))
    backend = router.backends["a"]
    async with http(router) as client:
        # What an upstream "Retry-After" sets, with a fraction a round() would lose.
        backend.cooldown_until = clock() + 2.45
        before = backend.cooldown_until - clock()
        response = await client.post(CHAT, json=chat_body())
        after = backend.cooldown_until - clock()
    assert_openai_error(response, 503)
    allowed = {str(n) for n in range(math.ceil(after), math.ceil(before) + 1)}
    assert response.headers["retry-after"] in allowed, (response.headers["retry-after"], allowed)


async def test_mock_retry_after_one_second_then_cooling_down(nursery: trio.Nursery) -> None:
    """The issue's case: one upstream 503 with Retry-After: 1, then every request while it
    lasts gets the cool-down answer (not "no healthy backend"), and afterwards a 200."""
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(nursery, router_config([{"name": "a", "url": url,
                                                         "models": [MODEL]}]))
    mock.fail_next("status", status=503)
    async with http(router) as client:
        assert (await client.post(CHAT, json=chat_body())).status_code == 503
        if router.backends["a"].cooldown_until - clock() > 0.3:  # else the machine stalled
            response = await client.post(CHAT, json=chat_body())
            assert assert_openai_error(response, 503)["code"] == "cooling_down"
            assert response.headers["retry-after"] == "1"
        with trio.fail_after(HANG_GUARD):
            while router.backends["a"].cooldown_until > clock():
                await trio.sleep(0.05)
        assert (await client.post(CHAT, json=chat_body())).status_code == 200


async def test_unavailable_reason_counts_only_backends_that_serve_the_path(
    nursery: trio.Nursery,
) -> None:
    """An Anthropic backend cannot serve /v1/embeddings: when the OpenAI one is cooling
    down, the answer is the cool-down, not "every backend is at capacity"."""
    _, url_openai = await start_mock(nursery, (MODEL,), name="o")
    anthropic = MockUpstream(None, (MODEL,), name="c", api="anthropic")
    address = await nursery.start(serve_mock, anthropic)
    router = await start_router(nursery, router_config([
        {"name": "o", "url": url_openai, "models": [MODEL]},
        {"name": "c", "type": "anthropic", "url": f"http://{address}", "api_key": "k",
         "models": [MODEL]},
    ]))
    router.backends["o"].cooldown_until = clock() + 30
    async with http(router) as client:
        response = await client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    error = assert_openai_error(response, 503)
    assert error["code"] == "cooling_down", error
