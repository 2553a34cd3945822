"""Stored responses in Redis (``responses.store: redis``), against a real redis-server:
the store alone, a conversation continued through a second router that shares the server,
and what a Redis that goes away costs a request."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio

from continuum.actors.conversations import RedisConversationStore, StoreUnavailable
from continuum.apis.responses import StoredResponse
from continuum.mock import MockUpstream, serve_mock
from continuum.net.redis import RedisClient
from continuum.testing.redis_server import RedisServer
from helpers import router_config, start_router

HANG_GUARD = 30
MODEL = "m"


def entry(ident: str, size: int = 10) -> StoredResponse:
    return StoredResponse(ident, b'{"id":"%s"}' % ident.encode(), b"[]", b"[" + b" " * size + b"]")


async def test_put_get_delete_and_ttl(redis_server: RedisServer) -> None:
    client = RedisClient.from_url(redis_server.url)
    store = RedisConversationStore(client, prefix="t:", ttl=0.3, max_bytes=1000)
    try:
        with trio.fail_after(HANG_GUARD):
            assert await store.put(entry("resp_a"))
            got = await store.get("resp_a")
            assert got == entry("resp_a")
            assert await client.execute("EXISTS", "t:resp_a") == 1  # its own key
            assert not await store.put(entry("resp_big", 2000))  # over max_bytes
            assert await store.get("resp_big") is None
            assert await store.delete("resp_a")
            assert not await store.delete("resp_a")
            await store.put(entry("resp_b"))
            await trio.sleep(0.6)
            assert await store.get("resp_b") is None  # Redis expired it
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_store_unavailable() -> None:
    client = RedisClient.from_url("redis://127.0.0.1:1", connect_timeout=0.5)
    store = RedisConversationStore(client, prefix="t:", ttl=10, max_bytes=1000)
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(StoreUnavailable):
            await store.get("resp_x")
        with pytest.raises(StoreUnavailable):
            await store.put(entry("resp_x"))
    await store.aclose()


async def two_routers(nursery: trio.Nursery, url: str) -> tuple[MockUpstream, list[Any]]:
    mock = MockUpstream(None, (MODEL,), name="chat", seed=0,
                        endpoints=("/v1/chat/completions",))
    address = await nursery.start(serve_mock, mock)
    backend = {"name": "chat", "type": "vllm", "url": f"http://{address}", "models": [MODEL]}
    routers = [await start_router(nursery, router_config(
        [backend], responses={"store": "redis", "redis": {"url": url, "key_prefix": "e2e:"}}))
        for _ in range(2)]
    return mock, routers


def sdk(router: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                              timeout=20.0)


async def test_a_conversation_continues_through_another_router(
        nursery: trio.Nursery, redis_server: RedisServer) -> None:
    mock, (one, two) = await two_routers(nursery, redis_server.url)
    with trio.fail_after(HANG_GUARD):
        first = await sdk(one).responses.create(model=MODEL, input="remember 42")
        second = await sdk(two).responses.create(model=MODEL, input="what was it?",
                                                 previous_response_id=first.id)
        fetched = await sdk(two).responses.retrieve(first.id)
    assert second.status == "completed"
    assert b"remember 42" in (mock.last_request_body or b"")
    assert fetched.output_text == first.output_text


async def test_redis_going_away(nursery: trio.Nursery, redis_server: RedisServer) -> None:
    """Without its store a new conversation is still answered; continuing one is a 503
    that says why."""
    _, (one, _) = await two_routers(nursery, redis_server.url)
    with trio.fail_after(HANG_GUARD):
        first = await sdk(one).responses.create(model=MODEL, input="hi")
        redis_server.stop()
        fresh = await sdk(one).responses.create(model=MODEL, input="still there?")
        with pytest.raises(openai.APIStatusError) as err:
            await sdk(one).responses.create(model=MODEL, input="again",
                                            previous_response_id=first.id)
    assert fresh.status == "completed"
    assert err.value.status_code == 503
    assert "store" in err.value.message
