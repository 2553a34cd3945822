"""Observability as operators see it: /metrics after known traffic (exact values and label
sets), metrics auth and the separate metrics listener, the access log, request ids,
``x-continuum-overhead-ms`` and W3C trace context — through a real router in front of real
mock upstreams on loopback ports.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import re
from collections import defaultdict
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from continuum import RouterHandle
from continuum.actors.metrics import serve_metrics
from continuum.config import MockConfig, MockFailure
from continuum.core.sse import usage_from_body, usage_from_sse_tail
from continuum.observability.logs import JSONFormatter
from continuum.observability.tracing import new_traceparent, valid_traceparent
from helpers import router_config, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
FAST_RETRY = {"base_delay": 0.001, "max_delay": 0.002, "jitter": False}
NO_PREWARM = {"prewarm_connections": 0}
HAVE_OTEL_SDK = importlib.util.find_spec("opentelemetry.sdk") is not None

Labels = frozenset[tuple[str, str]]


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def chat_body(content: str = "hello there", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    """sample name → {label set → value}."""
    out: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][frozenset(sample.labels.items())] = sample.value
    return out


def labels(**kw: str) -> Labels:
    return frozenset(kw.items())


async def scrape(client: httpx.AsyncClient, **kw: Any) -> dict[str, dict[Labels, float]]:
    response = await client.get("/metrics", **kw)
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


def sse_usage(text: str) -> tuple[int, int]:
    """(prompt, completion) from a streamed answer's final usage chunk, read client-side."""
    for line in reversed(text.splitlines()):
        if line.startswith("data: {") and '"usage"' in line:
            usage = json.loads(line[6:]).get("usage")
            if usage:
                return usage["prompt_tokens"], usage["completion_tokens"]
    raise AssertionError("no usage chunk in the stream")


# -- /metrics after known traffic -----------------------------------------------------------


async def test_metrics_after_known_traffic(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_mock(nursery, (MODEL,), name="a")
    mock_b, url_b = await start_mock(nursery, (MODEL,), name="b")
    router = await start_router(nursery, router_config(
        [{"name": "a", "url": url_a, "models": [MODEL]},
         {"name": "b", "url": url_b, "models": [MODEL]}],
        retry=FAST_RETRY, http_client=NO_PREWARM,
    ))
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    served: dict[str, int] = defaultdict(int)
    with trio.fail_after(20):
        async with http(router) as client:
            for i in range(4):
                response = await client.post(CHAT, json=chat_body(f"question number {i}"))
                assert response.status_code == 200, response.text
                backend = response.headers["x-continuum-backend"]
                served[backend] += 1
                usage = response.json()["usage"]
                tokens[(backend, "prompt")] += usage["prompt_tokens"]
                tokens[(backend, "completion")] += usage["completion_tokens"]
            # A stream that asks for the final usage chunk.
            async with client.stream("POST", CHAT, json=chat_body(
                "stream me something", stream=True, stream_options={"include_usage": True},
            )) as response:
                assert response.status_code == 200
                text = (await response.aread()).decode()
                stream_backend = response.headers["x-continuum-backend"]
            served[stream_backend] += 1
            prompt, completion = sse_usage(text)
            tokens[(stream_backend, "prompt")] += prompt
            tokens[(stream_backend, "completion")] += completion
            # One retry: the next request on a fails with 503, b answers it.
            mock_a.fail_next("status", status=503)
            for _ in range(2):
                response = await client.post(CHAT, json=chat_body("after the failure"))
                assert response.status_code == 200, response.text
                backend = response.headers["x-continuum-backend"]
                served[backend] += 1
                usage = response.json()["usage"]
                tokens[(backend, "prompt")] += usage["prompt_tokens"]
                tokens[(backend, "completion")] += usage["completion_tokens"]
            assert mock_a.pending_failures == 0
            # Unknown model: a 404, no backend involved.
            assert (await client.post(CHAT, json=chat_body(model="nope"))).status_code == 404
            m = await scrape(client)

    requests = m["http_requests_total"]
    chat = {k: v for k, v in requests.items() if ("endpoint", CHAT) in k}
    assert chat == {
        labels(method="POST", endpoint=CHAT, status="200"): 7.0,
        labels(method="POST", endpoint=CHAT, status="404"): 1.0,
    }
    assert m["http_request_duration_seconds_count"][labels(method="POST", endpoint=CHAT)] == 8

    # Seven requests reached a backend; the 404 did not.
    assert m["continuum_overhead_seconds_count"] == {labels(): 7.0}
    assert m["continuum_overhead_seconds_sum"][labels()] > 0

    assert m["continuum_retries_total"] == {labels(backend="a"): 1.0}
    assert m["continuum_failovers_total"] == {}

    expected_tokens = {
        labels(backend=b, model=MODEL, direction=d): float(n) for (b, d), n in tokens.items()
    }
    assert m["continuum_tokens_total"] == expected_tokens
    assert all(v > 0 for v in expected_tokens.values())

    durations = m["backend_request_duration_seconds_count"]
    assert durations == {labels(backend=b, model=MODEL): float(n) for b, n in served.items()}

    stream_key = labels(backend=stream_backend, model=MODEL)
    assert m["continuum_time_to_first_token_seconds_count"] == {stream_key: 1.0}
    assert m["continuum_stream_chunk_gap_seconds_count"] == {stream_key: 1.0}

    pool = m["continuum_pool_connections"]
    assert set(pool) == {labels(backend=b, state=s) for b in "ab"
                         for s in ("idle", "in_use", "waiting")}
    for b in "ab":
        assert pool[labels(backend=b, state="in_use")] == 0
        assert pool[labels(backend=b, state="waiting")] == 0
        assert pool[labels(backend=b, state="idle")] == 1  # one keep-alive connection reused

    assert m["backend_health_status"] == {labels(backend="a"): 1.0, labels(backend="b"): 1.0}
    assert m["active_connections"][labels()] >= 1
    assert m["backend_circuit_breaker_state"] == {labels(backend="a"): 0.0,
                                                  labels(backend="b"): 0.0}
    assert mock_b.requests_by_path.get(CHAT, 0) >= 1


async def test_failover_and_unknown_model_label(nursery: trio.Nursery) -> None:
    down = MockConfig(failures=(MockFailure(kind="status", status=503),))
    _mock_a, url_a = await start_mock(nursery, ("big",), name="a", config=down)
    _mock_b, url_b = await start_mock(nursery, ("small",), name="b")
    router = await start_router(nursery, router_config(
        [{"name": "a", "url": url_a, "models": ["big"]},
         {"name": "b", "url": url_b, "models": ["small"]}],
        fallbacks={"big": ["small"]}, retry=FAST_RETRY, http_client=NO_PREWARM,
    ))
    with trio.fail_after(20):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body(model="big"))
            assert response.status_code == 200, response.text
            assert response.headers["x-continuum-backend"] == "b"
            m = await scrape(client)
    assert m["continuum_failovers_total"] == {labels(model="big"): 1.0}
    assert m["continuum_retries_total"] == {labels(backend="a"): 1.0}


# -- /metrics access ------------------------------------------------------------------------


async def test_metrics_basic_auth(nursery: trio.Nursery) -> None:
    _mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}],
        metrics={"auth": {"enabled": True, "username": "prom", "password": "s3cret"}},
    ))
    async with http(router) as client:
        denied = await client.get("/metrics")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Basic")
        assert (await client.get("/metrics", auth=("prom", "wrong"))).status_code == 401
        ok = await client.get("/metrics", auth=("prom", "s3cret"))
        assert ok.status_code == 200
        assert "http_requests_total" in ok.text


async def test_separate_metrics_listener(nursery: trio.Nursery) -> None:
    _mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}],
        metrics={"bind_address": "127.0.0.1:0",
                 "auth": {"enabled": True, "username": "prom", "password": "pw"}},
    ))
    async with http(router) as client:
        assert (await client.post(CHAT, json=chat_body())).status_code == 200
        # Not on the main port any more.
        assert (await client.get("/metrics", auth=("prom", "pw"))).status_code == 404
    addresses = await nursery.start(serve_metrics, router.metrics, router.config.metrics)
    async with httpx.AsyncClient(base_url=f"http://{addresses[0]}", timeout=10.0) as mc:
        assert (await mc.get("/metrics")).status_code == 401
        m = await scrape(mc, auth=("prom", "pw"))
        assert m["http_requests_total"][
            labels(method="POST", endpoint=CHAT, status="200")] == 1.0
        assert (await mc.get("/v1/models", auth=("prom", "pw"))).status_code == 404
        # HEAD like GET without a body, as on the main port; other methods name both.
        head = await mc.head("/metrics", auth=("prom", "pw"))
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] != "0"
        post = await mc.post("/metrics", auth=("prom", "pw"))
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_metrics_disabled_feeds_nothing(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """``metrics.enabled: false``: no endpoint, and requests are not observed at all (the
    registry stays empty: a switched-off feature costs the request path nothing); the
    access log still has its line."""
    _mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}], metrics={"enabled": False}))
    caplog.set_level(logging.INFO, logger="continuum.access")
    async with http(router) as client:
        for _ in range(3):
            assert (await client.post(CHAT, json=chat_body())).status_code == 200
        assert (await client.get("/metrics")).status_code == 404
    access = [r for r in caplog.records if r.name == "continuum.access"]
    assert len([r for r in access if CHAT in r.getMessage()]) == 3
    rendered = parse_metrics((await router.metrics.render_local()).decode())
    assert not rendered.get("http_requests_total")
    assert not rendered.get("http_request_duration_seconds_count")


def test_metrics_bind_address_is_validated() -> None:
    from continuum import config_from_dict
    from continuum.config import ConfigError

    base = router_config([{"name": "m", "type": "mock"}])
    with pytest.raises(ConfigError, match=r"metrics\.bind_address"):
        config_from_dict({**base, "metrics": {"bind_address": "nonsense"}})
    with pytest.raises(ConfigError, match=r"tracing\.endpoint"):
        config_from_dict({**base, "tracing": {"enabled": True, "endpoint": "ftp://x"}})


# -- headers --------------------------------------------------------------------------------


async def test_request_id_generated_echoed_and_forwarded(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}]))
    async with http(router) as client:
        first = await client.post(CHAT, json=chat_body())
        rid = first.headers["x-request-id"]
        assert rid and mock.last_request_headers["x-request-id"] == rid
        second = await client.post(CHAT, json=chat_body())
        assert second.headers["x-request-id"] != rid
        mine = await client.post(CHAT, json=chat_body(), headers={"x-request-id": "req-42"})
        assert mine.headers["x-request-id"] == "req-42"
        assert mock.last_request_headers["x-request-id"] == "req-42"
        async with client.stream("POST", CHAT, json=chat_body(stream=True)) as streamed:
            await streamed.aread()
            rid = streamed.headers["x-request-id"]
        assert mock.last_request_headers["x-request-id"] == rid
        # Errors carry it too.
        missing = await client.post(CHAT, json=chat_body(model="nope"),
                                    headers={"x-request-id": "req-err"})
        assert missing.status_code == 404
        assert missing.headers["x-request-id"] == "req-err"


async def test_request_id_forwarded_on_translated_calls(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,), config=MockConfig(api="anthropic"))
    router = await start_router(nursery, router_config(
        [{"name": "claude", "type": "anthropic", "url": url, "api_key": "k",
          "models": [MODEL]}]))
    async with http(router) as client:
        response = await client.post(CHAT, json=chat_body())
        assert response.status_code == 200, response.text
        assert mock.last_request_headers["x-request-id"] == response.headers["x-request-id"]
        assert response.json()["usage"]["prompt_tokens"] > 0
        m = await scrape(client)
    assert m["continuum_tokens_total"][
        labels(backend="claude", model=MODEL, direction="completion")] > 0


async def test_overhead_header_is_numeric(nursery: trio.Nursery) -> None:
    _mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}]))
    async with http(router) as client:
        plain = await client.post(CHAT, json=chat_body())
        async with client.stream("POST", CHAT, json=chat_body(stream=True)) as streamed:
            await streamed.aread()
        for response in (plain, streamed):
            value = response.headers["x-continuum-overhead-ms"]
            assert re.fullmatch(r"\d+\.\d{3}", value), value
            assert 0.0 <= float(value) < 1000.0
            assert response.headers["x-continuum-backend"] == "m"


# -- tracing --------------------------------------------------------------------------------


async def test_client_traceparent_is_forwarded(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}]))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with http(router) as client:
        await client.post(CHAT, json=chat_body(),
                          headers={"traceparent": parent, "tracestate": "vendor=1"})
        assert mock.last_request_headers["traceparent"] == parent
        assert mock.last_request_headers["tracestate"] == "vendor=1"
        # Tracing off: nothing is invented.
        await client.post(CHAT, json=chat_body())
        assert "traceparent" not in mock.last_request_headers


@pytest.mark.skipif(HAVE_OTEL_SDK, reason="checks the path without opentelemetry-sdk")
async def test_tracing_without_sdk_warns_and_generates_traceparent(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="continuum.tracing")
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}], tracing={"enabled": True}))
    warnings = [r for r in caplog.records if r.name == "continuum.tracing"]
    assert len(warnings) == 1 and "opentelemetry-sdk" in warnings[0].getMessage()
    async with http(router) as client:
        await client.post(CHAT, json=chat_body())
        generated = mock.last_request_headers["traceparent"]
        assert valid_traceparent(generated.encode())
        await client.post(CHAT, json=chat_body())
        assert mock.last_request_headers["traceparent"].split("-")[1] != generated.split("-")[1]
        parent = new_traceparent(random.Random()).decode()
        await client.post(CHAT, json=chat_body(), headers={"traceparent": parent})
        assert mock.last_request_headers["traceparent"] == parent


@pytest.mark.skipif(not HAVE_OTEL_SDK, reason="needs opentelemetry-sdk")
async def test_tracing_with_sdk_parents_the_upstream_call(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}], tracing={"enabled": True}))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with http(router) as client:
        response = await client.post(CHAT, json=chat_body(), headers={"traceparent": parent})
        assert response.status_code == 200
    upstream = mock.last_request_headers["traceparent"]
    assert valid_traceparent(upstream.encode())
    assert upstream.split("-")[1] == parent.split("-")[1]  # same trace
    assert upstream.split("-")[2] != parent.split("-")[2]  # the attempt span is the parent


class _ZeroRandom(random.Random):
    """A generator whose every draw is 0: the one case where an id would be all zeros."""

    def getrandbits(self, k: int, /) -> int:
        return 0


def test_generated_traceparents_are_valid_and_distinct() -> None:
    rng = random.Random()
    parents = {new_traceparent(rng) for _ in range(1000)}
    assert len(parents) == 1000 and all(valid_traceparent(p) for p in parents)
    assert len({p.split(b"-")[1] for p in parents}) == 1000  # a new trace id each time
    # An all-zero draw would be an invalid id (W3C): it becomes 1 instead.
    assert new_traceparent(_ZeroRandom()) == b"00-%032x-%016x-01" % (1, 1)
    assert valid_traceparent(new_traceparent(_ZeroRandom()))


def test_traceparent_validation() -> None:
    assert valid_traceparent(new_traceparent(random.Random()))
    assert valid_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert not valid_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")
    assert not valid_traceparent(b"garbage")
    assert not valid_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")


# -- access log -----------------------------------------------------------------------------


async def test_access_log_line(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="continuum.access")
    _mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}],
        api_keys={"mode": "blocking", "api_keys": [{"key": "sk-very-secret-key"}]},
    ))
    prompt = "my confidential prompt text"
    async with http(router) as client:
        response = await client.post(
            CHAT, json=chat_body(prompt), headers={"authorization": "Bearer sk-very-secret-key"})
        assert response.status_code == 200
        async with client.stream("POST", CHAT, json=chat_body(prompt, stream=True),
                                 headers={"authorization": "Bearer sk-very-secret-key"}) as s:
            await s.aread()
    records = [r for r in caplog.records if r.name == "continuum.access"]
    assert len(records) == 2
    plain, streamed = records
    assert plain.levelno == logging.INFO
    text = plain.getMessage()
    for part in (response.headers["x-request-id"], "POST", CHAT, "status=200",
                 f"model={MODEL}", "backend=m", "duration_ms=", "upstream_ms=",
                 "attempts=1", "stream=no", f"bytes_out={len(response.content)}"):
        assert part in text, (part, text)
    assert "stream=yes" in streamed.getMessage()

    line = JSONFormatter().format(plain)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["logger"] == "continuum.access" and entry["level"] == "info"
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["method"] == "POST" and entry["path"] == CHAT
    assert entry["status"] == 200 and entry["model"] == MODEL and entry["backend"] == "m"
    assert entry["attempts"] == 1 and entry["stream"] is False
    assert entry["bytes_out"] == len(response.content)
    assert entry["duration_ms"] >= entry["upstream_ms"] > 0
    assert json.loads(JSONFormatter().format(streamed))["stream"] is True
    for record in records:
        for output in (record.getMessage(), JSONFormatter().format(record)):
            assert "sk-very-secret-key" not in output
            assert "confidential" not in output


async def test_access_log_off(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="continuum.access")
    _mock, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}], logging={"access_log": False}))
    async with http(router) as client:
        assert (await client.post(CHAT, json=chat_body())).status_code == 200
        assert (await client.get("/health")).status_code == 200
    assert not [r for r in caplog.records if r.name == "continuum.access"]


# -- usage scanning -------------------------------------------------------------------------


def test_usage_scans() -> None:
    assert usage_from_body(b'{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":5}}') \
        == (3, 5)
    assert usage_from_body(b'{"usage":{"input_tokens":7,"output_tokens":2}}') == (7, 2)
    assert usage_from_body(b'{"id":"x"}') is None
    assert usage_from_body(b'not json "usage"') is None
    tail = (b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9}}\n\n'
            b"data: [DONE]\n\n")
    assert usage_from_sse_tail(tail) == (4, 9)
    assert usage_from_sse_tail(b'data: {"choices":[],"usage":null}\n\ndata: [DONE]\n\n') \
        is None
    assert usage_from_sse_tail(b"data: [DONE]\n\n") is None
