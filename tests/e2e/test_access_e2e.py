"""Client keys, scopes, models, rate and concurrency limits (in memory) and CORS, as real
clients see them: httpx, the openai SDK, the anthropic SDK, and a browser's requests."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from continuum import RouterHandle
from continuum.config import MockConfig
from continuum.mock import MockUpstream
from helpers import router_config, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
GOOD = "sk-good-0123456789"
READER = "sk-reader-0123456789"
MINI = "sk-mini-only-0123456789"
OFF = "sk-disabled-0123456789"
OLD = "sk-expired-0123456789"
HASHED = "sk-hashed-0123456789"
KEYS = [
    {"key": GOOD, "id": "good"},
    {"key": READER, "id": "reader", "scopes": ["read"]},
    {"key": MINI, "id": "mini", "models": ["gpt-4o-mini*"]},
    {"key": OFF, "id": "off", "enabled": False},
    {"key": OLD, "id": "old", "expires_at": "2020-01-01T00:00:00Z"},
    {"key_sha256": hashlib.sha256(HASHED.encode()).hexdigest(), "id": "hashed"},
]


def chat(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def anthropic_body(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}],
            **extra}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def router_with(
    nursery: trio.Nursery, models: Sequence[str] = (MODEL,), *, mock: MockConfig | None = None,
    backends: int = 1, **sections: Any,
) -> tuple[list[MockUpstream], RouterHandle]:
    mocks, entries = [], []
    for i in range(backends):
        upstream, url = await start_mock(nursery, models, mock, name=f"m{i}")
        mocks.append(upstream)
        entries.append({"name": f"b{i}", "url": url, "models": list(models)})
    router = await start_router(nursery, router_config(entries, **sections))
    return mocks, router


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def openai_sdk(router: RouterHandle, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0,
                              timeout=10.0)


def anthropic_sdk(router: RouterHandle, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=router.url, api_key=key, max_retries=0,
                                    timeout=10.0)


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def anthropic_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return dict(body["error"])


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# -- keys: 401 -------------------------------------------------------------------------------


async def test_blocking_mode_refuses_every_bad_key_alike(nursery: trio.Nursery) -> None:
    (mock,), router = await router_with(nursery, api_keys={"mode": "blocking", "api_keys": KEYS})
    async with http(router) as client:
        messages = set()
        for headers, reason in (({}, "missing"), (bearer("sk-nope"), "unknown"),
                                (bearer(OFF), "disabled"), (bearer(OLD), "expired"),
                                ({"x-api-key": "sk-nope"}, "unknown")):
            error = openai_error(await client.post(CHAT, json=chat(), headers=headers), 401)
            assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
            messages.add(error["message"])
            response = await client.post(MESSAGES, json=anthropic_body(), headers=headers)
            error = anthropic_error(response, 401)
            assert error["type"] == "authentication_error"
            messages.add(error["message"])
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert await metric(client, "auth_failures_total", reason=reason) >= 2
        assert len(messages) == 1  # the same words whatever the reason
        assert mock.requests_by_path.get(CHAT, 0) == 0
        # Good keys, whichever header carries them; a hashed one too.
        for headers in (bearer(GOOD), {"x-api-key": GOOD}, bearer(HASHED),
                        {"authorization": f"bearer  {GOOD}"}):
            assert (await client.post(CHAT, json=chat(), headers=headers)).status_code == 200
        # Liveness stays open.
        for path in ("/health", "/healthz"):
            assert (await client.get(path)).status_code == 200
    assert mock.requests_by_path[CHAT] == 4


async def test_401_with_the_sdks(nursery: trio.Nursery) -> None:
    _, router = await router_with(nursery, api_keys={"mode": "blocking", "api_keys": KEYS})
    # Unknown, disabled, expired (no key at all: the SDKs refuse to send a request without
    # one; the raw HTTP test above covers it).
    for key in ("sk-nope", OFF, OLD):
        async with openai_sdk(router, key) as oai:
            with pytest.raises(openai.AuthenticationError) as info:
                await oai.chat.completions.create(model=MODEL, messages=[
                    {"role": "user", "content": "hi"}])
            assert info.value.status_code == 401
            with pytest.raises(openai.AuthenticationError):
                await oai.models.list()
        async with anthropic_sdk(router, key) as ant:
            with pytest.raises(anthropic.AuthenticationError) as err:
                await ant.messages.create(model=MODEL, max_tokens=16, messages=[
                    {"role": "user", "content": "hi"}])
            assert err.value.status_code == 401
            assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    async with openai_sdk(router, GOOD) as oai:
        reply = await oai.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    async with anthropic_sdk(router, GOOD) as ant:  # x-api-key
        message = await ant.messages.create(model=MODEL, max_tokens=16, messages=[
            {"role": "user", "content": "hi"}])
        assert message.content


# -- keys: 403 ------------------------------------------------------------------------------


async def test_scopes_and_models_with_the_sdks(nursery: trio.Nursery) -> None:
    models = (MODEL, "gpt-4o-mini", "gpt-4o-mini-2024")
    (mock,), router = await router_with(
        nursery, models, api_keys={"mode": "blocking", "api_keys": KEYS},
        model_aliases={"fast": "gpt-4o-mini", "sneaky": MODEL},
    )
    user = [{"role": "user", "content": "hi"}]
    async with openai_sdk(router, READER) as oai:
        assert (await oai.models.list()).data  # read
        with pytest.raises(openai.PermissionDeniedError) as info:
            await oai.chat.completions.create(model=MODEL, messages=user)  # type: ignore[arg-type]
        assert info.value.status_code == 403 and "'write' scope" in str(info.value)
    async with anthropic_sdk(router, READER) as ant:
        with pytest.raises(anthropic.PermissionDeniedError) as err:
            await ant.messages.create(model=MODEL, max_tokens=16, messages=user)  # type: ignore[arg-type]
        assert err.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    before = mock.requests_by_path.get(CHAT, 0)
    async with openai_sdk(router, MINI) as oai:
        for allowed in ("gpt-4o-mini", "gpt-4o-mini-2024", "fast"):  # globs; aliases resolve
            await oai.chat.completions.create(model=allowed, messages=user)  # type: ignore[arg-type]
        for refused in (MODEL, "sneaky"):  # an alias does not open another model
            with pytest.raises(openai.PermissionDeniedError) as info:
                await oai.chat.completions.create(model=refused, messages=user)  # type: ignore[arg-type]
            assert info.value.code == "model_not_allowed"
    assert mock.requests_by_path.get(CHAT, 0) == before + 3
    async with anthropic_sdk(router, MINI) as ant:
        with pytest.raises(anthropic.PermissionDeniedError):
            await ant.messages.create(model=MODEL, max_tokens=16, messages=user)  # type: ignore[arg-type]
    async with http(router) as client:
        assert await metric(client, "auth_failures_total", reason="scope") == 2
        assert await metric(client, "auth_failures_total", reason="model") == 3


async def test_fallbacks_stay_within_the_keys_models(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_mock(nursery, ("gpt-4o-mini",), name="a")
    mock_b, url_b = await start_mock(nursery, ("other",), name="b")
    router = await start_router(nursery, router_config(
        [{"name": "a", "url": url_a, "models": ["gpt-4o-mini"]},
         {"name": "b", "url": url_b, "models": ["other"]}],
        api_keys={"api_keys": KEYS}, fallbacks={"gpt-4o-mini": ["other"]},
        retry={"base_delay": 0},
    ))
    mock_a.fail_next("status", 10, 503)
    async with http(router) as client:
        response = await client.post(CHAT, json=chat("gpt-4o-mini"), headers=bearer(MINI))
        assert response.status_code == 503  # 'other' is not the key's to use
        assert mock_b.requests_by_path.get(CHAT, 0) == 0
        mock_a.clear_failures()
        mock_a.fail_next("status", 10, 503)
        response = await client.post(CHAT, json=chat("gpt-4o-mini"), headers=bearer(GOOD))
        assert response.status_code == 200 and mock_b.requests_by_path[CHAT] == 1


async def test_permissive_mode(nursery: trio.Nursery) -> None:
    _, router = await router_with(nursery, ("gpt-4o-mini", MODEL), api_keys={"api_keys": KEYS})
    async with http(router) as client:
        for headers in ({}, bearer("anything"), bearer(OFF)):  # anonymous
            assert (await client.post(CHAT, json=chat(), headers=headers)).status_code == 200
        # A recognised key keeps its restrictions.
        openai_error(await client.post(CHAT, json=chat(), headers=bearer(MINI)), 403)
        openai_error(await client.post(CHAT, json=chat(), headers=bearer(READER)), 403)


async def test_access_log_names_the_key_never_the_key_itself(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, router = await router_with(nursery, api_keys={
        "mode": "blocking", "api_keys": [*KEYS, {"key": "sk-no-id-key-wxyz"}]})
    async with http(router) as client:
        await client.post(CHAT, json=chat(), headers=bearer(GOOD))
        await client.post(CHAT, json=chat(), headers=bearer("sk-no-id-key-wxyz"))
        await client.post(CHAT, json=chat(), headers=bearer(OFF))
    # The hypercorn front logs once its handler returns, which may be after the client
    # has read the answer: wait (bounded) for the third line.
    lines: list[str] = []
    with trio.move_on_after(5):
        while len(lines) < 3:
            await trio.sleep(0.01)
            lines = [r.getMessage() for r in caplog.records if r.name == "continuum.access"]
    assert lines[0].endswith("key=good") and lines[1].endswith("key=...wxyz")
    assert lines[2].endswith("key=-") and "status=401" in lines[2]
    for record in caplog.records:
        text = record.getMessage() + json.dumps(getattr(record, "access", {}))
        for secret in (GOOD, "sk-no-id-key-wxyz", OFF):
            assert secret not in text


# -- rate limits in memory ------------------------------------------------------------------


async def test_a_keys_rate_limit(nursery: trio.Nursery) -> None:
    keys = [{"key": GOOD, "id": "good", "rate_limit": 5}, {"key": READER, "id": "other"}]
    (mock,), router = await router_with(nursery, api_keys={"api_keys": keys})
    async with http(router) as client:
        remaining = []
        for _ in range(5):
            response = await client.post(CHAT, json=chat(), headers=bearer(GOOD))
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit-requests"] == "5"
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
            assert response.headers["x-ratelimit-reset-requests"].endswith("s")
        assert remaining == [4, 3, 2, 1, 0]
        served = mock.requests_by_path[CHAT]
        refused = await client.post(CHAT, json=chat(), headers=bearer(GOOD))
        error = openai_error(refused, 429)
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
        assert "API key good" in error["message"] and GOOD not in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 13
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert mock.requests_by_path[CHAT] == served  # refused before any upstream call
        error = anthropic_error(
            await client.post(MESSAGES, json=anthropic_body(), headers=bearer(GOOD)), 429)
        assert error["type"] == "rate_limit_error"
        # Another key, and keyless requests, are not limited (nothing applies to them:
        # no headers either).
        other = await client.post(CHAT, json=chat(), headers=bearer(READER))
        assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
        assert await metric(client, "rate_limited_total", limit="requests",
                            scope="api_key") == 2
    async with openai_sdk(router, GOOD) as oai:
        with pytest.raises(openai.RateLimitError) as info:
            await oai.chat.completions.create(model=MODEL, messages=[
                {"role": "user", "content": "hi"}])
        assert info.value.status_code == 429 and info.value.code == "rate_limit_exceeded"
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert info.value.response.headers["x-ratelimit-limit-requests"] == "5"
    async with anthropic_sdk(router, GOOD) as ant:
        with pytest.raises(anthropic.RateLimitError) as err:
            await ant.messages.create(model=MODEL, max_tokens=16, messages=[
                {"role": "user", "content": "hi"}])
        assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_streams_carry_the_headers(nursery: trio.Nursery) -> None:
    _, router = await router_with(
        nursery, api_keys={"api_keys": [{"key": GOOD, "rate_limit": 100}]})
    async with http(router) as client, client.stream(
        "POST", CHAT, json=chat(stream=True), headers=bearer(GOOD)
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        assert "[DONE]" in (await response.aread()).decode()


async def test_tokens_are_reserved_then_reconciled(nursery: trio.Nursery) -> None:
    keys = [{"key": GOOD, "id": "good", "tokens_per_minute": 1000}]
    _, router = await router_with(nursery, api_keys={"api_keys": keys},
                                  rate_limiting={"default_token_reservation": 300})
    async with http(router) as client:
        # Plain answers report usage (a few tokens): each reservation of 400 is refunded
        # down to it, so far more than 1000 / 400 requests fit.
        for _ in range(6):
            response = await client.post(CHAT, json=chat(max_tokens=400), headers=bearer(GOOD))
            assert response.status_code == 200, response.text
            assert response.headers["x-ratelimit-limit-tokens"] == "1000"
        # Streams that never report usage keep their reservation (the default, 300):
        # the bucket empties after a few of them.
        statuses = []
        for _ in range(5):
            async with client.stream("POST", CHAT, json=chat(stream=True),
                                     headers=bearer(GOOD)) as response:
                await response.aread()
                statuses.append(response.status_code)
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429, statuses
        assert await metric(client, "rate_limited_total", limit="tokens",
                            scope="api_key") >= 1


async def test_a_stream_with_usage_is_reconciled(nursery: trio.Nursery) -> None:
    keys = [{"key": GOOD, "tokens_per_minute": 1000}]
    _, router = await router_with(nursery, api_keys={"api_keys": keys})
    async with http(router) as client:
        # 8 x 500 reserved from a bucket of 1000: it works only because each stream's final
        # usage chunk gives back what it did not use.
        for _ in range(8):
            async with client.stream(
                "POST", CHAT, headers=bearer(GOOD),
                json=chat(stream=True, max_tokens=500, stream_options={"include_usage": True}),
            ) as response:
                body = (await response.aread()).decode()
                assert response.status_code == 200, body
                assert '"usage"' in body


async def test_max_concurrent(nursery: trio.Nursery) -> None:
    keys = [{"key": GOOD, "id": "good", "max_concurrent": 2}]
    _, router = await router_with(nursery, mock=MockConfig(latency=0.5),
                                  api_keys={"api_keys": keys})
    statuses: list[int] = []
    async with http(router) as client:

        async def one() -> None:
            response = await client.post(CHAT, json=chat(), headers=bearer(GOOD))
            statuses.append(response.status_code)

        async with trio.open_nursery() as group:
            for _ in range(6):
                group.start_soon(one)
        assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
        # The leases went back when the requests ended.
        assert (await client.post(CHAT, json=chat(), headers=bearer(GOOD))).status_code == 200
        assert await metric(client, "rate_limited_total", limit="concurrency",
                            scope="api_key") == 4


async def test_per_client_by_address_and_trusted_proxies(nursery: trio.Nursery) -> None:
    _, router = await router_with(nursery, rate_limiting={
        "limits": {"per_client": {"requests_per_second": 0.01, "burst_capacity": 2}},
        "trusted_proxies": ["127.0.0.1"],
        "whitelist": ["10.9.9.9"],
    })

    async def statuses(client: httpx.AsyncClient, n: int, **headers: str) -> list[int]:
        out = []
        for _ in range(n):
            out.append((await client.post(CHAT, json=chat(), headers=headers)).status_code)
        return out

    async with http(router) as client:
        # Behind the (trusted) local proxy, each forwarded client has its own bucket; the
        # rightmost untrusted hop counts, not what the client wrote on the left.
        assert await statuses(client, 3, **{"x-forwarded-for": "1.1.1.1"}) == [200, 200, 429]
        assert await statuses(client, 2, **{"x-forwarded-for": "6.6.6.6, 2.2.2.2"}) == [200, 200]
        assert await statuses(client, 1, **{"x-forwarded-for": "2.2.2.2"}) == [429]
        assert await statuses(client, 1, **{"x-forwarded-for": "9.9.9.9, 1.1.1.1"}) == [429]
        assert await statuses(client, 2, **{"x-real-ip": "3.3.3.3"}) == [200, 200]
        # Whitelisted: never limited, no headers.
        response = await client.post(CHAT, json=chat(), headers={"x-forwarded-for": "10.9.9.9"})
        assert "x-ratelimit-limit-requests" not in response.headers
        assert await statuses(client, 4, **{"x-forwarded-for": "10.9.9.9"}) == [200] * 4
        # A key is its own client, whatever its address.
        assert await statuses(client, 2, authorization="Bearer a-key-of-mine") == [200, 200]
    _, untrusting = await router_with(nursery, rate_limiting={
        "limits": {"per_client": {"requests_per_second": 0.01, "burst_capacity": 2}}})
    async with http(untrusting) as client:  # no trusted proxy: the header is ignored
        assert await statuses(client, 1, **{"x-forwarded-for": "4.4.4.4"}) == [200]
        assert await statuses(client, 2, **{"x-forwarded-for": "5.5.5.5"}) == [200, 429]


async def test_bypass_keys_model_and_global_limits(nursery: trio.Nursery) -> None:
    keys = [{"key": GOOD, "id": "good"}, {"key": READER, "id": "ops"}]
    _, router = await router_with(
        nursery, (MODEL, "big"), api_keys={"api_keys": keys},
        rate_limiting={
            "limits": {"per_model": {"bi*": {"requests_per_second": 0.01, "burst_capacity": 1}},
                       "global": {"requests_per_second": 0.01, "burst_capacity": 4}},
            "bypass_keys": ["ops", "sk-raw-bypass-key"],
        })
    async with http(router) as client:
        assert (await client.post(CHAT, json=chat("big"), headers=bearer(GOOD))).status_code == 200
        error = openai_error(await client.post(CHAT, json=chat("big"), headers=bearer(GOOD)),
                             429)
        assert "model 'big'" in error["message"]
        for _ in range(3):
            assert (await client.post(CHAT, json=chat(), headers=bearer(GOOD))).status_code == 200
        error = openai_error(await client.post(CHAT, json=chat(), headers=bearer(GOOD)), 429)
        assert "the router" in error["message"]
        # Bypass keys (by id, or the key itself even when unknown) are not limited at all.
        for headers in (bearer(READER), bearer("sk-raw-bypass-key")):
            for model in ("big", MODEL):
                response = await client.post(CHAT, json=chat(model), headers=headers)
                assert response.status_code == 200
                assert "x-ratelimit-limit-requests" not in response.headers
        assert await metric(client, "rate_limited_total", limit="requests", scope="model") == 1
        assert await metric(client, "rate_limited_total", limit="requests", scope="global") == 1


async def test_per_backend_moves_on_then_refuses(nursery: trio.Nursery) -> None:
    mocks, router = await router_with(nursery, backends=2, rate_limiting={
        "limits": {"per_backend": {"requests_per_second": 0.01, "burst_capacity": 2}}})
    async with http(router) as client:
        for _ in range(4):
            response = await client.post(CHAT, json=chat())
            assert response.status_code == 200, response.text
            assert response.headers["x-ratelimit-limit-requests"] == "2"
        assert [m.requests_by_path[CHAT] for m in mocks] == [2, 2]
        refused = await client.post(CHAT, json=chat())
        error = openai_error(refused, 429)
        assert "backend" in error["message"] and int(refused.headers["retry-after"]) >= 1
        assert [m.requests_by_path[CHAT] for m in mocks] == [2, 2]
        assert await metric(client, "rate_limited_total", limit="requests",
                            scope="backend") == 1


async def test_disabled_rate_limiting_enforces_nothing(nursery: trio.Nursery) -> None:
    keys = [{"key": GOOD, "rate_limit": 1, "max_concurrent": 1}]
    _, router = await router_with(nursery, api_keys={"api_keys": keys},
                                  rate_limiting={"enabled": False})
    async with http(router) as client:
        for _ in range(3):
            response = await client.post(CHAT, json=chat(), headers=bearer(GOOD))
            assert response.status_code == 200
            assert "x-ratelimit-limit-requests" not in response.headers


async def test_api_keys_file(nursery: trio.Nursery, tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- {{key: {GOOD}, id: from-file, rate_limit: 1}}\n")
    _, router = await router_with(nursery, api_keys={"mode": "blocking",
                                                     "api_keys_file": str(keys)})
    async with http(router) as client:
        assert (await client.post(CHAT, json=chat(), headers=bearer(GOOD))).status_code == 200
        assert (await client.post(CHAT, json=chat(), headers=bearer(GOOD))).status_code == 429
        openai_error(await client.post(CHAT, json=chat(), headers=bearer(READER)), 401)


# -- CORS ---------------------------------------------------------------------------------


async def test_cors_as_a_browser_sends_it(nursery: trio.Nursery) -> None:
    keys = [{"key": GOOD, "id": "good", "rate_limit": 100}]
    _, router = await router_with(nursery, api_keys={"mode": "blocking", "api_keys": keys},
                                  cors={"enabled": True,
                                        "allowed_origins": ["https://app.example.com",
                                                            "http://localhost:*"]})
    app = "https://app.example.com"
    async with http(router) as client:
        # The preflight: no key (browsers never send credentials on it).
        preflight = await client.options(CHAT, headers={
            "origin": app, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-stainless-os"})
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == app
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == (
            "authorization, content-type, x-stainless-os")
        assert preflight.headers["access-control-max-age"] == "600"
        assert "origin" in preflight.headers["vary"]
        # The actual request: the page may read the answer and the rate-limit headers.
        response = await client.post(CHAT, json=chat(), headers={**bearer(GOOD), "origin": app})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == app
        exposed = response.headers["access-control-expose-headers"]
        for name in ("x-request-id", "x-ratelimit-remaining-requests", "retry-after"):
            assert name in exposed
        # Errors carry them too (or the page could not read why).
        refused = await client.post(CHAT, json=chat(), headers={"origin": app})
        openai_error(refused, 401)
        assert refused.headers["access-control-allow-origin"] == app
        # A pattern origin; a foreign origin gets no allow header, its preflight a 403.
        local = await client.get("/v1/models", headers={**bearer(GOOD),
                                                         "origin": "http://localhost:5173"})
        assert local.headers["access-control-allow-origin"] == "http://localhost:5173"
        evil = await client.post(CHAT, json=chat(), headers={**bearer(GOOD),
                                                             "origin": "https://evil.example"})
        assert evil.status_code == 200 and "access-control-allow-origin" not in evil.headers
        denied = await client.options(CHAT, headers={"origin": "https://evil.example",
                                                     "access-control-request-method": "POST"})
        assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers
        # Without an Origin nothing changes.
        plain = await client.post(CHAT, json=chat(), headers=bearer(GOOD))
        assert "access-control-allow-origin" not in plain.headers
        # A method outside allowed_methods is refused at preflight.
        put = await client.options(CHAT, headers={"origin": app,
                                                  "access-control-request-method": "PUT"})
        assert put.status_code == 403


async def test_cors_any_origin_and_credentials(nursery: trio.Nursery) -> None:
    _, star = await router_with(nursery, cors={"enabled": True})
    _, creds = await router_with(nursery, cors={"enabled": True, "allow_credentials": True,
                                                "allowed_headers": ["content-type"]})
    origin = {"origin": "tauri://localhost"}
    async with http(star) as client:
        response = await client.post(CHAT, json=chat(), headers=origin)
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
    async with http(creds) as client:
        response = await client.post(CHAT, json=chat(), headers=origin)
        assert response.headers["access-control-allow-origin"] == "tauri://localhost"
        assert response.headers["access-control-allow-credentials"] == "true"
        refused = await client.options(CHAT, headers={
            **origin, "access-control-request-method": "POST",
            "access-control-request-headers": "x-api-key"})
        assert refused.status_code == 403
    # CORS off: OPTIONS is just a method this path does not take.
    _, off = await router_with(nursery)
    async with http(off) as client:
        response = await client.options(CHAT, headers={**origin,
                                                       "access-control-request-method": "POST"})
        assert response.status_code == 405


# -- the planned handlers (the Responses bridge) ----------------------------------------------


async def test_responses_bridge_keeps_the_keys_models_and_limits(nursery: trio.Nursery) -> None:
    from continuum.mock import serve_mock

    mock = MockUpstream(None, ("bridged",), name="up", seed=0,
                        endpoints=("/v1/chat/completions",))
    address = await nursery.start(serve_mock, mock)
    keys = [{"key": GOOD, "id": "good", "rate_limit": 2, "tokens_per_minute": 100000},
            {"key": MINI, "id": "mini", "models": ["gpt-4o-mini*"]}]
    router = await start_router(nursery, router_config(
        [{"name": "up", "type": "vllm", "url": f"http://{address}", "api_key": "k",
          "models": ["bridged"]}],
        api_keys={"mode": "blocking", "api_keys": keys}))
    body = {"model": "bridged", "input": "hello", "max_output_tokens": 50}
    async with http(router) as client:
        error = openai_error(await client.post("/v1/responses", json=body,
                                               headers=bearer(MINI)), 403)
        assert error["code"] == "model_not_allowed"
        assert mock.requests_by_path.get(CHAT, 0) == 0
        openai_error(await client.post("/v1/responses", json=body), 401)
        for remaining in ("1", "0"):
            response = await client.post("/v1/responses", json=body, headers=bearer(GOOD))
            assert response.status_code == 200, response.text
            assert response.headers["x-ratelimit-limit-requests"] == "2"
            assert response.headers["x-ratelimit-remaining-requests"] == remaining
            assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        served = mock.requests_by_path[CHAT]
        refused = await client.post("/v1/responses", json=body, headers=bearer(GOOD))
        assert openai_error(refused, 429)["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        assert mock.requests_by_path[CHAT] == served == 2
