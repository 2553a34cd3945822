"""The router's public HTTP API as real clients (openai SDK, httpx) see it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import httpx
import openai
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from continuum import RouterHandle
from continuum.mock import MockUpstream
from helpers import router_config, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}


def sdk(router: RouterHandle, api_key: str = "x") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=router.url + "/v1", api_key=api_key, max_retries=0, timeout=10.0
    )


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def chat_body(model: str = MODEL, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    return body["error"]


async def one_backend(
    nursery: trio.Nursery, models: Sequence[str] = (MODEL,), **sections: Any
) -> tuple[MockUpstream, RouterHandle]:
    mock, url = await start_mock(nursery, models)
    router = await start_router(
        nursery, router_config([{"name": "a", "url": url, "models": list(models)}], **sections)
    )
    return mock, router


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in a Prometheus text exposition."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), sample.value))
    return out


def sample_value(text: str, name: str, **labels: str) -> float | None:
    for got, value in samples(text, name):
        if all(got.get(k) == v for k, v in labels.items()):
            return value
    return None


# -- inference through the openai SDK --------------------------------------------------------


async def test_chat_completion_non_stream(nursery: trio.Nursery) -> None:
    mock, router = await one_backend(nursery)
    async with sdk(router) as client:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello router"}]
        )
    assert reply.model == MODEL
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "Mock reply to: hello router"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 2
    assert reply.usage.completion_tokens == 8
    assert reply.usage.total_tokens == 10
    assert mock.requests_by_path[CHAT] == 1


async def test_chat_stream_chunks_in_order(nursery: trio.Nursery) -> None:
    _, router = await one_backend(nursery)
    async with sdk(router) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "stream me please"}], stream=True
        )
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk async for chunk in stream]
    assert len(chunks) == 10  # role, 8 content pieces, finish
    assert all(c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert all(pieces[1:9])
    assert "".join(pieces) == "Mock reply to: stream me please"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 9 + ["stop"]


async def test_chat_stream_include_usage(nursery: trio.Nursery) -> None:
    _, router = await one_backend(nursery)
    async with sdk(router) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count my tokens"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 3
    assert last.usage.completion_tokens == 8
    assert last.usage.total_tokens == 11
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_completions_non_stream_and_stream(nursery: trio.Nursery) -> None:
    mock, router = await one_backend(nursery)
    async with sdk(router) as client:
        reply = await client.completions.create(model=MODEL, prompt="once upon a time")
        assert reply.choices[0].text == "Mock completion of: once upon a time"
        assert reply.model == MODEL
        assert reply.usage is not None and reply.usage.prompt_tokens == 4
        stream = await client.completions.create(
            model=MODEL, prompt="once upon a time", stream=True
        )
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == "Mock completion of: once upon a time"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert mock.requests_by_path["/v1/completions"] == 2


async def test_embeddings(nursery: trio.Nursery) -> None:
    mock, router = await one_backend(nursery, ("embed-model",))
    async with sdk(router) as client:
        reply = await client.embeddings.create(model="embed-model", input=["alpha", "beta"])
    assert reply.model == "embed-model"
    assert [d.index for d in reply.data] == [0, 1]
    for item in reply.data:
        assert len(item.embedding) == 8
        assert math.isclose(math.sqrt(sum(v * v for v in item.embedding)), 1.0, rel_tol=1e-4)
    assert reply.data[0].embedding != reply.data[1].embedding
    assert reply.usage.prompt_tokens == 2
    assert mock.requests_by_path["/v1/embeddings"] == 1


# -- models ------------------------------------------------------------------------------------


async def test_models_list_merged_healthy_only(nursery: trio.Nursery) -> None:
    _, url_a = await start_mock(nursery, ("m-a", "shared"), name="a")
    _, url_b = await start_mock(nursery, ("m-b", "shared"), name="b")
    mock_c, url_c = await start_mock(nursery, ("m-c",), name="c")
    mock_c.set_health_status(503)  # down from the start: its model must not be listed
    config = router_config(
        [
            {"name": "a", "url": url_a, "models": ["m-a", "shared"]},
            {"name": "b", "url": url_b, "models": ["m-b", "shared"]},
            {"name": "c", "url": url_c, "models": ["m-c"]},
        ],
        health_checks={"enabled": True, "interval": 30, "timeout": 2, "endpoint": "/health"},
    )
    router = await start_router(nursery, config)
    async with sdk(router) as client:
        page = await client.models.list()
    ids = [m.id for m in page.data]
    assert sorted(ids) == ["m-a", "m-b", "shared"]
    assert all(m.object == "model" for m in page.data)


async def test_models_retrieve_and_unknown_404(nursery: trio.Nursery) -> None:
    _, router = await one_backend(nursery, (MODEL, "other-model"))
    async with sdk(router) as client:
        model = await client.models.retrieve("other-model")
        assert model.id == "other-model"
        assert model.object == "model"
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("no-such-model")
    assert info.value.status_code == 404
    body = info.value.body
    assert isinstance(body, dict) and set(body) == ERROR_KEYS


async def test_models_retrieve_id_with_slash(nursery: trio.Nursery) -> None:
    """Hugging Face style ids ("org/name") are common behind vLLM; the SDK percent-encodes
    the "/" in ``models.retrieve``, and the router must still find the model."""
    _, router = await one_backend(nursery, ("meta-llama/Llama-3.1-8B",))
    async with sdk(router) as client:
        model = await client.models.retrieve("meta-llama/Llama-3.1-8B")
    assert model.id == "meta-llama/Llama-3.1-8B"
    async with http(router) as raw:
        response = await raw.get("/v1/models/meta-llama%2FLlama-3.1-8B")
    assert response.status_code == 200
    assert response.json()["id"] == "meta-llama/Llama-3.1-8B"


# -- error shapes --------------------------------------------------------------------------------


async def test_error_shapes(nursery: trio.Nursery) -> None:
    mock, router = await one_backend(nursery, server={"max_request_body_size": 1024})
    async with http(router) as client:
        bad_json = await client.post(CHAT, content=b'{"model": "gpt-test", "messages": [')
        assert_openai_error(bad_json, 400)

        missing = await client.post(CHAT, json={"messages": [{"role": "user", "content": "x"}]})
        error = assert_openai_error(missing, 400)
        assert error["param"] == "model"

        for not_object in (b"[1, 2, 3]", b'"just a string"', b"42"):
            assert_openai_error(await client.post(CHAT, content=not_object), 400)

        unknown = await client.post(CHAT, json=chat_body("no-such-model"))
        assert assert_openai_error(unknown, 404)["code"] == "model_not_found"

        assert_openai_error(await client.get("/v1/definitely-not-a-path"), 404)
        assert_openai_error(await client.post("/nope", json={}), 404)

        wrong_method = await client.get(CHAT)
        assert_openai_error(wrong_method, 405)
        assert "POST" in wrong_method.headers["allow"]
        wrong_models = await client.delete("/v1/models")
        assert_openai_error(wrong_models, 405)
        assert "GET" in wrong_models.headers["allow"]

        too_big = chat_body(content="x" * 2048)
        assert_openai_error(await client.post(CHAT, json=too_big), 413)

        async def chunked_body() -> Any:  # no content-length: the limit holds while reading
            for _ in range(4):
                yield b" " * 600

        assert_openai_error(await client.post(CHAT, content=chunked_body()), 413)

        # None of those reached the upstream; a good request still works afterwards.
        assert mock.requests_by_path.get(CHAT, 0) == 0
        ok = await client.post(CHAT, json=chat_body())
        assert ok.status_code == 200
    assert mock.requests_by_path[CHAT] == 1


# -- health, admin, metrics ----------------------------------------------------------------------


async def test_health_and_admin_health(nursery: trio.Nursery) -> None:
    _, url_a = await start_mock(nursery, (MODEL,), name="a")
    _, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(
        nursery,
        router_config(
            [
                {"name": "alpha", "url": url_a, "models": [MODEL]},
                {"name": "beta", "url": url_b, "models": [MODEL]},
            ]
        ),
    )
    async with http(router) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        for _ in range(4):
            assert (await client.post(CHAT, json=chat_body())).status_code == 200
        admin = await client.get("/admin/health")
    assert admin.status_code == 200
    data = admin.json()
    backends = {b["name"]: b for b in data["backends"]}
    assert set(backends) == {"alpha", "beta"}
    for backend in backends.values():
        assert backend["healthy"] is True
        assert backend["in_flight"] == 0
        assert isinstance(backend["latency_ms"], float) and backend["latency_ms"] > 0
        pool = backend["pool"]
        assert {"in_use", "idle"} <= set(pool)
        assert pool["in_use"] == 0
        assert pool["idle"] >= 1
        assert backend["models"] == [MODEL]


async def test_metrics_exact_request_counts(nursery: trio.Nursery) -> None:
    _, router = await one_backend(nursery)
    async with http(router) as client:
        for _ in range(3):
            assert (await client.post(CHAT, json=chat_body())).status_code == 200
        assert (await client.post(CHAT, json=chat_body("nope"))).status_code == 404
        labels = {"method": "POST", "endpoint": CHAT}
        text = ""
        with trio.fail_after(10):
            while True:  # observations reach the sink asynchronously
                response = await client.get("/metrics")
                assert response.status_code == 200
                text = response.text
                if (sample_value(text, "http_requests_total", status="404", **labels) or 0) >= 1:
                    break
                await trio.sleep(0.02)
    assert sample_value(text, "http_requests_total", status="200", **labels) == 3
    assert sample_value(text, "http_requests_total", status="404", **labels) == 1
    assert (
        sample_value(text, "backend_request_duration_seconds_count", backend="a", model=MODEL) == 3
    )
    assert sample_value(text, "backend_health_status", backend="a") == 1
    active = samples(text, "active_connections")
    assert len(active) == 1 and active[0][1] >= 1  # at least this very connection


# -- routing -------------------------------------------------------------------------------------


async def test_round_robin_spreads_evenly(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(
        nursery,
        router_config(
            [
                {"name": "a", "url": url_a, "models": [MODEL]},
                {"name": "b", "url": url_b, "models": [MODEL]},
            ],
            routing={"strategy": "RoundRobin"},
        ),
    )
    async with http(router) as client:
        for _ in range(20):
            assert (await client.post(CHAT, json=chat_body())).status_code == 200
    assert mock_a.requests_by_path[CHAT] == 10
    assert mock_b.requests_by_path[CHAT] == 10


async def test_models_discovered_when_not_configured(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, ("found-1", "found-2"))
    router = await start_router(nursery, router_config([{"name": "disc", "url": url}]))
    assert mock.requests_by_path.get("/v1/models", 0) >= 1
    async with sdk(router) as client:
        page = await client.models.list()
        assert sorted(m.id for m in page.data) == ["found-1", "found-2"]
        reply = await client.chat.completions.create(
            model="found-2", messages=[{"role": "user", "content": "routed"}]
        )
    assert reply.model == "found-2"
    assert reply.choices[0].message.content == "Mock reply to: routed"
    assert mock.requests_by_path[CHAT] == 1


# -- what reaches the upstream ---------------------------------------------------------------------


async def test_backend_api_key_and_headers_replace_client_credentials(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(
        nursery,
        router_config(
            [
                {
                    "name": "a",
                    "url": url,
                    "models": [MODEL],
                    "api_key": "sk-upstream-secret",
                    "headers": {"X-Org-Id": "acme", "OpenAI-Project": "proj-1"},
                }
            ]
        ),
    )
    async with http(router) as client:
        response = await client.post(
            CHAT,
            json=chat_body(),
            headers={"Authorization": "Bearer client-own-key", "X-Trace": "t-1"},
        )
    assert response.status_code == 200
    headers = mock.last_request_headers
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert not any("client-own-key" in value for value in headers.values())
    assert headers["x-org-id"] == "acme"
    assert headers["openai-project"] == "proj-1"
    assert headers["x-trace"] == "t-1"  # ordinary client headers still pass


async def test_request_body_forwarded_byte_for_byte(nursery: trio.Nursery) -> None:
    mock, router = await one_backend(nursery)
    body = (
        b'{ "temperature" :0.50,\n\t"messages":[ {"content":"h\\u00e9llo  ","role":"user"}],'
        b'  "zzz_custom": {"nested": [1, 2.0e0, null]} ,"model":"gpt-test"   }'
    )
    async with http(router) as client:
        response = await client.post(
            CHAT, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200
    assert mock.last_request_body == body
    assert json.loads(response.content)["model"] == MODEL


async def test_api_keys_blocking_mode(nursery: trio.Nursery) -> None:
    mock, router = await one_backend(
        nursery, api_keys={"mode": "blocking", "api_keys": [{"key": "k1"}]}
    )
    async with http(router) as client:
        missing = await client.post(CHAT, json=chat_body())
        assert_openai_error(missing, 401)
        wrong = await client.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer k2"})
        assert_openai_error(wrong, 401)
        assert mock.requests_by_path.get(CHAT, 0) == 0
        good = await client.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer k1"})
        assert good.status_code == 200
        assert (await client.get("/health")).status_code == 200
    assert mock.requests_by_path[CHAT] == 1
    async with sdk(router, api_key="k1") as good_client:
        assert (await good_client.models.list()).data
    async with sdk(router, api_key="wrong") as bad_client:
        with pytest.raises(openai.AuthenticationError):
            await bad_client.models.list()
