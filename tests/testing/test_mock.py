"""continuum.mock: the OpenAI-compatible mock upstream, as clients see it."""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from continuum.config import MockConfig, MockFailure
from continuum.mock import (
    MockUpstream,
    add_mock_arguments,
    parse_mock_failure,
    run_mock_from_args,
    serve_mock,
)
from continuum.testing._failures import FailurePlan, parse_fail_spec
from continuum.testing._replies import split_pieces

MODELS = ("m1", "org/m2")


class Mock:
    """A served MockUpstream, its address and an httpx client for it."""

    def __init__(self, upstream: MockUpstream, address: str, client: httpx.AsyncClient) -> None:
        self.upstream = upstream
        self.address = address
        self.client = client


@pytest.fixture
async def mock(nursery: trio.Nursery) -> AsyncIterator[Mock]:
    upstream = MockUpstream(models=MODELS, seed=7, drip_delay=0.002)
    address = await nursery.start(serve_mock, upstream)
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10.0) as client:
        yield Mock(upstream, address, client)


def chat(content: str = "hello   there\nworld", **extra: Any) -> dict[str, Any]:
    return {"model": "m1", "messages": [{"role": "user", "content": content}], **extra}


def sse_data(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    events = body.decode().split("\n\n")
    assert events[-1] == ""
    payloads = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        payloads.append(event[len("data: ") :])
    return payloads


# -- raw HTTP, for what httpx hides (chunk framing, resets, drips) ---------------------------


async def raw_request(address: str, request: bytes) -> trio.SocketStream:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(request)
    return stream


def post(path: str, body: dict[str, Any], *, close: bool = True) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n{'connection: close' + chr(13) + chr(10) if close else ''}"
        "\r\n"
    ).encode() + data


async def read_until_eof(stream: trio.SocketStream) -> tuple[bytes, list[bytes]]:
    """Everything until EOF, and the individual reads (a drip shows as many tiny ones)."""
    reads: list[bytes] = []
    while data := await stream.receive_some(65536):
        reads.append(data)
    return b"".join(reads), reads


async def read_all_or_reset(stream: trio.SocketStream) -> tuple[bytes, bool]:
    """Everything until EOF or a connection reset, and whether it was a reset."""
    data = bytearray()
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        return bytes(data), True
    return bytes(data), False


def parse_chunked(raw: bytes) -> tuple[bytes, list[bytes]]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


# -- endpoints -----------------------------------------------------------------------------


async def test_chat_completion(mock: Mock) -> None:
    r = await mock.client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "m1"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "Mock reply to: hello there world"}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


async def test_chat_answer_is_deterministic_and_echoes_last_user_message(mock: Mock) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
    ]
    bodies = [
        (await mock.client.post("/v1/chat/completions", json={"model": "m1", "messages": messages}))
        .json() for _ in range(2)
    ]
    contents = [b["choices"][0]["message"]["content"] for b in bodies]
    assert contents == ["Mock reply to: second"] * 2
    assert bodies[0]["id"] != bodies[1]["id"]


async def test_chat_max_tokens_truncates_with_finish_reason_length(mock: Mock) -> None:
    r = await mock.client.post("/v1/chat/completions", json=chat(max_tokens=3))
    choice = r.json()["choices"][0]
    full = split_pieces("Mock reply to: hello there world", 8)
    assert choice["message"]["content"] == "".join(full[:3])
    assert choice["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3


async def test_chat_stream_event_sequence(mock: Mock) -> None:
    r = await mock.client.post("/v1/chat/completions", json=chat(stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked"
    payloads = sse_data(r.content)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 1 + 8 + 1
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert all(contents)
    assert "".join(contents) == "Mock reply to: hello there world"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 9
    assert chunks[-1]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"
    }
    assert all("usage" not in c for c in chunks)


async def test_chat_stream_include_usage(mock: Mock) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    r = await mock.client.post("/v1/chat/completions", json=body)
    payloads = sse_data(r.content)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_each_sse_event_is_its_own_chunk(mock: Mock) -> None:
    mock.upstream.stream_chunks = 4
    stream = await raw_request(mock.address, post("/v1/chat/completions", chat(stream=True)))
    raw, _ = await read_until_eof(stream)
    _, chunks = parse_chunked(raw)
    assert len(chunks) == 1 + 4 + 1 + 1
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1
               for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"


async def test_text_completion(mock: Mock) -> None:
    r = await mock.client.post("/v1/completions", json={"model": "m1", "prompt": "say  hi"})
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "Mock completion of: say hi"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10}

    r = await mock.client.post("/v1/completions", json={"model": "m1", "prompt": [1, 2, 3]})
    assert r.json()["usage"]["prompt_tokens"] == 3


async def test_text_completion_stream(mock: Mock) -> None:
    body = {"model": "m1", "prompt": "say hi", "stream": True,
            "stream_options": {"include_usage": True}}
    r = await mock.client.post("/v1/completions", json=body)
    payloads = sse_data(r.content)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 8 + 1 + 1
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks[:-2]) == "Mock completion of: say hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8


async def test_embeddings(mock: Mock) -> None:
    r = await mock.client.post("/v1/embeddings", json={"model": "m1", "input": "hello world"})
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == "m1"
    [item] = body["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert len(item["embedding"]) == 8
    assert math.isclose(math.fsum(v * v for v in item["embedding"]), 1.0)
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}

    r = await mock.client.post(
        "/v1/embeddings",
        json={"model": "m1", "input": ["hello world", [1, 2, 3], "other"], "dimensions": 5},
    )
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(len(d["embedding"]) == 5 for d in data)
    assert data[0]["embedding"] != data[2]["embedding"]
    assert r.json()["usage"]["prompt_tokens"] == 2 + 3 + 1

    again = await mock.client.post(
        "/v1/embeddings", json={"model": "m1", "input": ["other"], "dimensions": 5}
    )
    assert again.json()["data"][0]["embedding"] == data[2]["embedding"]


async def test_embeddings_base64_matches_floats(mock: Mock) -> None:
    request = {"model": "m1", "input": "abc", "dimensions": 6}
    floats = (await mock.client.post("/v1/embeddings", json=request)).json()["data"][0]
    encoded = (
        await mock.client.post("/v1/embeddings", json={**request, "encoding_format": "base64"})
    ).json()["data"][0]
    decoded = struct.unpack("<6f", base64.b64decode(encoded["embedding"]))
    assert decoded == pytest.approx(floats["embedding"], rel=1e-6)


async def test_models(mock: Mock) -> None:
    r = await mock.client.get("/v1/models")
    assert r.json() == {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock"}
            for m in MODELS
        ],
    }
    r = await mock.client.get("/v1/models/org/m2")
    assert r.status_code == 200
    assert r.json()["id"] == "org/m2"
    r = await mock.client.get("/v1/models/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"

    mock.upstream.set_models(["new"])
    assert [m["id"] for m in (await mock.client.get("/v1/models")).json()["data"]] == ["new"]
    r = await mock.client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 404


async def test_health_and_warm_up(mock: Mock) -> None:
    r = await mock.client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    mock.upstream.set_health_status(503)
    for path in ("/health", "/v1/models", "/v1/models/m1"):
        r = await mock.client.get(path)
        assert r.status_code == 503, path
        assert r.json()["error"]["code"] == "model_loading"
    # inference is not gated by the health status
    assert (await mock.client.post("/v1/chat/completions", json=chat())).status_code == 200
    mock.upstream.set_health_status(200)
    assert (await mock.client.get("/v1/models")).status_code == 200


def assert_openai_error(r: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"] == code
    return error


async def test_errors(mock: Mock) -> None:
    c = mock.client
    error = assert_openai_error(await c.post("/v1/chat/completions", content=b"{nope"), 400, None)
    assert error == {**error, "type": "invalid_request_error", "param": None}
    assert_openai_error(await c.post("/v1/chat/completions", content=b""), 400, None)
    assert_openai_error(await c.post("/v1/embeddings", content=b"[1]"), 400, None)
    error = assert_openai_error(
        await c.post("/v1/chat/completions", json={"messages": []}), 400, None
    )
    assert error["param"] == "model"
    error = assert_openai_error(
        await c.post("/v1/chat/completions", json={"model": "m1", "messages": []}), 400, None
    )
    assert error["param"] == "messages"
    assert_openai_error(
        await c.post("/v1/embeddings", json={"model": "m1", "input": {"x": 1}}), 400, None
    )
    error = assert_openai_error(
        await c.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404,
        "model_not_found",
    )
    assert "gpt-9" in error["message"]
    assert_openai_error(await c.get("/v1/unknown"), 404, "not_found")
    r = await c.get("/v1/chat/completions")
    assert_openai_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_openai_error(await c.delete("/v1/models"), 405, "method_not_allowed")


async def test_counters_and_last_request(mock: Mock) -> None:
    up = mock.upstream
    await mock.client.get("/health")
    await mock.client.get("/health")
    await mock.client.post(
        "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-test"}
    )
    await mock.client.get("/v1/models")  # a GET does not replace the last request
    assert up.requests == 4
    assert up.requests_by_path == {"/health": 2, "/v1/chat/completions": 1, "/v1/models": 1}
    assert up.last_request_headers["authorization"] == "Bearer sk-test"
    assert up.last_request_body is not None
    assert json.loads(up.last_request_body) == chat()
    assert up.active_streams == 0


async def test_two_upstreams_are_independent(nursery: trio.Nursery) -> None:
    a, b = MockUpstream(models=["a"]), MockUpstream(models=["b"], name="other")
    addr_a = await nursery.start(serve_mock, a)
    addr_b = await nursery.start(serve_mock, b)
    a.fail_next("status", status=500)
    async with httpx.AsyncClient() as c:
        rb = await c.post(f"http://{addr_b}/v1/chat/completions", json=chat() | {"model": "b"})
        ra = await c.post(f"http://{addr_a}/v1/chat/completions", json=chat() | {"model": "a"})
        models_b = (await c.get(f"http://{addr_b}/v1/models")).json()["data"]
    assert (ra.status_code, rb.status_code) == (500, 200)
    assert models_b[0]["owned_by"] == "other"
    assert (a.requests, b.requests) == (1, 2)


async def test_openai_sdk_against_the_mock(mock: Mock) -> None:
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"http://{mock.address}/v1", api_key="sk-test", max_retries=0
    )
    try:
        messages: Any = [{"role": "user", "content": "hi"}]
        r = await client.chat.completions.create(model="m1", messages=messages)
        assert r.choices[0].message.content == "Mock reply to: hi"
        stream = await client.chat.completions.create(
            model="m1", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert "".join(parts) == "Mock reply to: hi"
        assert usage is not None and usage.completion_tokens == 8
        # the SDK asks for base64 embeddings and decodes them itself
        e = await client.embeddings.create(model="m1", input=["a", "b"])
        assert [len(d.embedding) for d in e.data] == [8, 8]
        assert [m.id async for m in client.models.list()] == list(MODELS)
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="zz", prompt="x")
    finally:
        await client.close()
    assert mock.upstream.last_request_headers["authorization"] == "Bearer sk-test"


# -- latency and pacing (lower bounds only) ------------------------------------------------


async def test_latency_delays_the_response(mock: Mock) -> None:
    mock.upstream.set_latency(0.2)
    start = time.monotonic()
    r = await mock.client.get("/health")
    assert r.status_code == 200
    assert time.monotonic() - start >= 0.19


async def test_tokens_per_second_paces_the_stream(mock: Mock) -> None:
    mock.upstream.tokens_per_second = 40.0  # 8 content chunks → at least 0.2 s
    start = time.monotonic()
    arrivals: list[float] = []
    async with mock.client.stream(
        "POST", "/v1/chat/completions", json=chat(stream=True)
    ) as r:
        async for _ in r.aiter_lines():
            arrivals.append(time.monotonic())
    assert arrivals[-1] - start >= 8 / 40 - 0.01


async def test_tokens_per_second_from_config(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockConfig(tokens_per_second=50.0, stream_chunks=5), ["m1"])
    address = await nursery.start(serve_mock, upstream)
    start = time.monotonic()
    async with httpx.AsyncClient() as c:
        r = await c.post(f"http://{address}/v1/completions",
                         json={"model": "m1", "prompt": "x", "stream": True})
    assert len(sse_data(r.content)) == 5 + 1 + 1
    assert time.monotonic() - start >= 5 / 50 - 0.01


async def test_active_streams_drops_when_the_client_leaves(mock: Mock) -> None:
    mock.upstream.tokens_per_second = 5.0
    stream = await raw_request(mock.address, post("/v1/chat/completions", chat(stream=True)))
    first = await stream.receive_some(65536)
    assert first.startswith(b"HTTP/1.1 200")
    assert mock.upstream.active_streams == 1
    await stream.aclose()
    with trio.fail_after(5):
        while mock.upstream.active_streams:
            await trio.sleep(0.01)


# -- failure injection, as a client sees it -----------------------------------------------------


async def test_fail_status(mock: Mock) -> None:
    mock.upstream.fail_next("status", count=2, status=503)
    for _ in range(2):
        r = await mock.client.post("/v1/chat/completions", json=chat())
        error = assert_openai_error(r, 503, "mock_injected_failure")
        assert error["type"] == "service_unavailable"
        assert r.headers["retry-after"] == "1"
    assert (await mock.client.post("/v1/chat/completions", json=chat())).status_code == 200
    mock.upstream.fail_next("status", status=429)
    r = await mock.client.post("/v1/embeddings", json={"model": "m1", "input": "x"})
    assert_openai_error(r, 429, "mock_injected_failure")


async def test_fail_reset_is_a_connection_error(mock: Mock) -> None:
    mock.upstream.fail_next("reset")
    with pytest.raises(httpx.TransportError):
        await mock.client.post("/v1/chat/completions", json=chat())
    # raw: no response byte at all, then a reset (or EOF where the RST raced the read)
    mock.upstream.fail_next("reset")
    stream = await raw_request(mock.address, post("/v1/completions", {"model": "m1"}))
    assert await read_all_or_reset(stream) == (b"", True)
    # the upstream is fine afterwards
    assert (await mock.client.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_fail_hang_times_out_the_client(mock: Mock) -> None:
    mock.upstream.fail_next("hang")
    with pytest.raises(httpx.ReadTimeout):
        await mock.client.post("/v1/chat/completions", json=chat(), timeout=0.3)
    assert (await mock.client.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_fail_drip_sends_one_byte_at_a_time(mock: Mock) -> None:
    mock.upstream.fail_next("drip")
    start = time.monotonic()
    request = post("/v1/completions", {"model": "m1", "prompt": "x"})
    stream = await raw_request(mock.address, request)
    raw, reads = await read_until_eof(stream)
    elapsed = time.monotonic() - start
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["choices"][0]["text"] == "Mock completion of: x"
    assert len(reads) > len(raw) // 2  # many tiny reads, not one
    assert elapsed >= len(raw) * 0.002 * 0.9


async def test_fail_drip_through_httpx(mock: Mock) -> None:
    mock.upstream.drip_delay = 0.0
    mock.upstream.stream_chunks = 2
    mock.upstream.fail_next("drip")
    r = await mock.client.post("/v1/chat/completions", json=chat(stream=True))
    assert sse_data(r.content)[-1] == "[DONE]"


async def test_fail_malformed(mock: Mock) -> None:
    mock.upstream.fail_next("malformed")
    r = await mock.client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)

    mock.upstream.fail_next("malformed")
    r = await mock.client.post("/v1/chat/completions", json=chat(stream=True))
    assert r.status_code == 200
    payloads = sse_data(r.content)
    assert payloads[-1] == "[DONE]"
    with pytest.raises(json.JSONDecodeError):
        json.loads(payloads[0])


async def test_fail_reset_mid_stream_truncates(mock: Mock) -> None:
    mock.upstream.fail_next("reset_mid_stream")
    received: list[str] = []
    with pytest.raises(httpx.TransportError):
        async with mock.client.stream(
            "POST", "/v1/chat/completions", json=chat(stream=True)
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line:
                    received.append(line)
    assert len(received) <= 2
    assert "data: [DONE]" not in received
    with trio.fail_after(5):
        while mock.upstream.active_streams:
            await trio.sleep(0.01)


async def test_fail_reset_mid_stream_on_a_plain_response(mock: Mock) -> None:
    mock.upstream.fail_next("reset_mid_stream")
    with pytest.raises(httpx.TransportError):
        await mock.client.post("/v1/chat/completions", json=chat())


async def test_failures_target_inference_paths_unless_told(mock: Mock) -> None:
    up = mock.upstream
    up.fail_next("status", status=500)
    assert (await mock.client.get("/v1/models")).status_code == 200
    assert (await mock.client.get("/health")).status_code == 200
    assert up.pending_failures == 1
    up.clear_failures()
    up.fail_next("reset", path="/v1/models")
    assert (await mock.client.post("/v1/chat/completions", json=chat())).status_code == 200
    with pytest.raises(httpx.TransportError):
        await mock.client.get("/v1/models")
    assert up.pending_failures == 0


async def test_fail_next_takes_precedence_over_configured(nursery: trio.Nursery) -> None:
    config = MockConfig(failures=(MockFailure(kind="status", status=502),))
    upstream = MockUpstream(config, ["m1"])
    address = await nursery.start(serve_mock, upstream)
    upstream.fail_next("status", status=418)
    async with httpx.AsyncClient(base_url=f"http://{address}") as c:
        codes = [(await c.post("/v1/chat/completions", json=chat())).status_code
                 for _ in range(3)]
    assert codes == [418, 502, 502]


async def test_configured_failure_rate_is_seeded(nursery: trio.Nursery) -> None:
    config = MockConfig(failures=(MockFailure(kind="status", status=503, rate=0.3),))

    async def run(seed: int) -> list[int]:
        upstream = MockUpstream(config, ["m1"], seed=seed)
        address = await nursery.start(serve_mock, upstream)
        async with httpx.AsyncClient(base_url=f"http://{address}") as c:
            return [(await c.post("/v1/embeddings", json={"model": "m1", "input": "x"}))
                    .status_code for _ in range(100)]

    first, again = await run(3), await run(3)
    assert first == again
    assert set(first) == {200, 503}
    assert 10 <= first.count(503) <= 50


async def test_cancelling_the_server_ends_hangs_and_drips() -> None:
    upstream = MockUpstream(models=["m1"], drip_delay=1.0)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_mock, upstream)
            upstream.fail_next("hang")
            upstream.fail_next("drip")
            hung = await raw_request(address, post("/v1/chat/completions", chat()))
            dripping = await raw_request(address, post("/v1/chat/completions", chat()))
            assert await dripping.receive_some(10) == b"H"
            nursery.cancel_scope.cancel()
    # both connections end (EOF or reset), neither gets a complete answer
    assert not (await read_all_or_reset(hung))[0]
    assert not (await read_all_or_reset(dripping))[0].endswith(b"}")


# -- sans-IO pieces ------------------------------------------------------------------------------


def test_split_pieces() -> None:
    assert split_pieces("abcdefgh", 3) == ["abc", "def", "gh"]
    assert split_pieces("ab", 4) == ["a", "b", ".", "."]
    assert split_pieces("abc", 0) == []


def test_parse_fail_spec() -> None:
    assert parse_fail_spec("reset") == ("reset", 500, 1.0)
    assert parse_fail_spec("status:503") == ("status", 503, 1.0)
    assert parse_fail_spec("status:429@0.25") == ("status", 429, 0.25)
    assert parse_fail_spec("hang@0") == ("hang", 500, 0.0)
    for bad in ("explode", "status:abc", "status:99", "reset@2", "reset@x", ""):
        with pytest.raises(ValueError):
            parse_fail_spec(bad)


def test_failure_plan_rate_zero_never_fires() -> None:
    import random

    plan = FailurePlan([MockFailure(kind="reset", rate=0.0)], random.Random(1))
    assert all(plan.pick("/v1/chat/completions") is None for _ in range(200))


def test_fail_next_rejects_unknown_kind() -> None:
    upstream = MockUpstream()
    with pytest.raises(ValueError, match="unknown failure kind"):
        upstream.fail_next("explode")
    with pytest.raises(ValueError):
        upstream.fail_next("status", status=1000)


# -- command line ------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_mock_arguments(parser)
    return parser.parse_args(argv)


def test_cli_defaults() -> None:
    args = parse()
    assert args.bind == "127.0.0.1:9000"
    assert args.models == ("mock-model",)
    assert (args.latency, args.tokens_per_second, args.stream_chunks) == (0.0, 0.0, 8)
    assert args.fail is None


def test_cli_parses_fail() -> None:
    args = parse(
        "--models", "a, b", "--latency", "0.5", "--tokens-per-second", "20",
        "--stream-chunks", "3", "--fail", "status:503@0.2", "--fail", "reset", "--fail", "drip@0.5",
    )
    assert args.models == ("a", "b")
    assert args.fail == [
        MockFailure(kind="status", status=503, rate=0.2),
        MockFailure(kind="reset", status=500, rate=1.0),
        MockFailure(kind="drip", status=500, rate=0.5),
    ]
    assert parse_mock_failure("malformed@1") == MockFailure(kind="malformed")


@pytest.mark.parametrize(
    "argv",
    [
        ["--fail", "explode"],
        ["--fail", "status:600"],
        ["--fail", "reset@1.5"],
        ["--stream-chunks", "0"],
        ["--latency", "-1"],
        ["--models", ","],
    ],
)
def test_cli_rejects_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_bind_failure_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_mock_from_args(parse("--bind", "256.0.0.1:1")) == 1
    assert "cannot bind" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery")
def test_cli_serves_until_ctrl_c() -> None:
    script = (
        "import sys; from continuum.mock import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "--bind", "127.0.0.1:0", "--models", "cli-model",
         "--fail", "status:503@0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.split()[4]
        models = httpx.get(f"{url}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["cli-model"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
