"""Embedding the router in a trio program: ``nursery.start(continuum.serve, config)``."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import trio
from prometheus_client.parser import text_string_to_metric_families

import continuum
from continuum import RouterHandle, config_from_dict
from continuum.config import MockConfig
from continuum.mock import MockUpstream
from helpers import router_config, start_mock, start_router

CHAT = "/v1/chat/completions"


def chat_body(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def http(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10.0)


def request_counts(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_requests_total":
                labels = sample.labels
                out[(labels["method"], labels["endpoint"], labels["status"])] = sample.value
    return out


async def metrics_with(
    client: httpx.AsyncClient, key: tuple[str, str, str]
) -> dict[tuple[str, str, str], float]:
    """/metrics, once the observation ``key`` has been counted (the sink is asynchronous)."""
    with trio.fail_after(10):
        while True:
            counts = request_counts((await client.get("/metrics")).text)
            if key in counts:
                return counts
            await trio.sleep(0.02)


async def assert_refused(url: str) -> None:
    """Nothing accepts connections at ``url`` any more (polled: closing is asynchronous)."""
    with trio.fail_after(5):
        while True:
            async with httpx.AsyncClient(base_url=url, timeout=2.0) as client:
                try:
                    await client.get("/health")
                except httpx.ConnectError:
                    return
                except httpx.TransportError:
                    pass  # accepted by the kernel just before the listener closed
            await trio.sleep(0.02)


async def test_serve_returns_handle_with_bound_addresses(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, ("m",))
    config = config_from_dict(
        router_config([{"name": "a", "url": url, "models": ["m"]}]), source="<test>"
    )
    handle = await nursery.start(continuum.serve, config)
    assert isinstance(handle, RouterHandle)
    assert len(handle.addresses) == 1
    match = re.fullmatch(r"127\.0\.0\.1:(\d+)", handle.addresses[0])
    assert match is not None and int(match.group(1)) > 0
    assert handle.url == f"http://{handle.addresses[0]}"
    assert set(handle.backends) == {"a"}
    # Listening already when start() returned: the first request needs no waiting.
    async with http(handle.url) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.post(CHAT, json=chat_body("m"))).status_code == 200


async def test_two_routers_in_one_process_share_nothing(nursery: trio.Nursery) -> None:
    mock_1, url_1 = await start_mock(nursery, ("model-one",), name="one")
    mock_2, url_2 = await start_mock(nursery, ("model-two",), name="two")
    router_1 = await start_router(
        nursery, router_config([{"name": "b1", "url": url_1, "models": ["model-one"]}])
    )
    router_2 = await start_router(
        nursery, router_config([{"name": "b2", "url": url_2, "models": ["model-two"]}])
    )
    assert router_1.url != router_2.url
    async with http(router_1.url) as c1, http(router_2.url) as c2:
        assert [m["id"] for m in (await c1.get("/v1/models")).json()["data"]] == ["model-one"]
        assert [m["id"] for m in (await c2.get("/v1/models")).json()["data"]] == ["model-two"]

        for _ in range(3):
            assert (await c1.post(CHAT, json=chat_body("model-one"))).status_code == 200
        assert (await c2.post(CHAT, json=chat_body("model-one"))).status_code == 404
        assert (await c1.post(CHAT, json=chat_body("model-two"))).status_code == 404

        counts_1 = await metrics_with(c1, ("POST", CHAT, "404"))
        counts_2 = await metrics_with(c2, ("POST", CHAT, "404"))
        text_2 = (await c2.get("/metrics")).text
    assert counts_1[("POST", CHAT, "200")] == 3
    assert counts_1[("POST", CHAT, "404")] == 1
    assert ("POST", CHAT, "200") not in counts_2
    assert counts_2[("POST", CHAT, "404")] == 1
    assert 'backend="b1"' not in text_2
    assert 'backend="b2"' in text_2
    assert mock_1.requests_by_path[CHAT] == 3
    assert mock_2.requests_by_path.get(CHAT, 0) == 0
    assert router_1.backends["b1"].requests == 3
    assert router_2.backends["b2"].requests == 0


async def test_shutdown_drains_in_flight_stream(nursery: trio.Nursery) -> None:
    # 20 tokens at 20/s: the stream is still running when shutdown() is called.
    mock, url = await start_mock(
        nursery, ("slow",), MockConfig(tokens_per_second=20, stream_chunks=20)
    )
    config = config_from_dict(
        router_config([{"name": "a", "url": url, "models": ["slow"]}]), source="<test>"
    )
    serve_returned = trio.Event()

    async def run(task_status: trio.TaskStatus[RouterHandle]) -> None:
        await continuum.serve(config, task_status=task_status)
        serve_returned.set()

    handle: RouterHandle = await nursery.start(run)
    raw = b""
    async with http(handle.url) as client:
        with trio.fail_after(10):
            async with client.stream("POST", CHAT, json=chat_body("slow", stream=True)) as response:
                assert response.status_code == 200
                async for data in response.aiter_raw():
                    if not raw:
                        assert mock.active_streams == 1
                        handle.shutdown()
                        await assert_refused(handle.url)
                    raw += data
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b"event: error" not in raw
    content_events = raw.count(b'"content":')
    assert content_events == 21  # the role chunk and all 20 tokens
    with trio.fail_after(10):
        await serve_returned.wait()
    await assert_refused(handle.url)


async def test_cancelling_the_nursery_stops_the_router(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, ("m",))
    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            router = await start_router(
                inner, router_config([{"name": "a", "url": url, "models": ["m"]}])
            )
            async with http(router.url) as client:
                assert (await client.post(CHAT, json=chat_body("m"))).status_code == 200
            inner.cancel_scope.cancel()
    await assert_refused(router.url)


async def test_mock_backend_runs_in_process(nursery: trio.Nursery) -> None:
    router = await start_router(
        nursery,
        router_config(
            [
                {
                    "name": "demo",
                    "type": "mock",
                    "models": ["demo-model"],
                    "mock": {"stream_chunks": 4},
                }
            ]
        ),
    )
    assert set(router.mocks) == {"demo"}
    upstream = router.mocks["demo"]
    assert isinstance(upstream, MockUpstream)
    async with openai.AsyncOpenAI(
        base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=10.0
    ) as client:
        reply = await client.chat.completions.create(
            model="demo-model", messages=[{"role": "user", "content": "laptop demo"}]
        )
        models = await client.models.list()
    assert reply.choices[0].message.content == "Mock reply to: laptop demo"
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert [m.id for m in models.data] == ["demo-model"]
    assert upstream.requests_by_path[CHAT] == 1
