"""continuum.mock speaking the Anthropic Messages API and the Gemini generateContent API."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

from continuum.config import MockConfig, MockFailure
from continuum.mock import MockUpstream, add_mock_arguments, mock_config_from_args, serve_mock
from continuum.testing._replies import split_pieces

MODELS = ("m1", "org/m2")
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
GEMINI_HEADERS = {"x-goog-api-key": "g-test"}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}
GEMINI_TOOLS = [
    {
        "functionDeclarations": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
            }
        ]
    }
]
ANTHROPIC_ORDER = [
    "message_start",
    "ping",
    "content_block_start",
    *["content_block_delta"] * 8,
    "content_block_stop",
    "message_delta",
    "message_stop",
]


class Mock:
    def __init__(self, upstream: MockUpstream, address: str, client: httpx.AsyncClient) -> None:
        self.upstream = upstream
        self.address = address
        self.client = client


Factory = Callable[..., Awaitable[Mock]]


@pytest.fixture
async def make_mock(nursery: trio.Nursery) -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    async def make(api: str, config: MockConfig | None = None, **kwargs: Any) -> Mock:
        upstream = MockUpstream(config, MODELS, seed=3, drip_delay=0.002, api=api, **kwargs)
        address = await nursery.start(serve_mock, upstream)
        client = httpx.AsyncClient(base_url=f"http://{address}", timeout=10.0)
        clients.append(client)
        return Mock(upstream, address, client)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def claude(make_mock: Factory) -> Mock:
    return await make_mock("anthropic")


@pytest.fixture
async def gemini(make_mock: Factory) -> Mock:
    return await make_mock("gemini")


def message(text: str = "hello   there\nworld", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m1",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(extra)
    return body


def contents(text: str = "hello   there\nworld", **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


def anthropic_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of an Anthropic SSE body; checks the framing."""
    frames = body.decode().split("\n\n")
    assert frames[-1] == ""
    events = []
    for frame in frames[:-1]:
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: "), frame
        assert data_line.startswith("data: "), frame
        name, data = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    return events


def gemini_events(body: bytes) -> list[dict[str, Any]]:
    frames = body.split(b"\r\n\r\n")
    assert frames[-1] == b""
    out = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: "), frame
        out.append(json.loads(frame[len(b"data: ") :]))
    return out


async def wait_no_streams(upstream: MockUpstream) -> None:
    """The server's side of a stream ends a moment after the client has read it all."""
    with trio.fail_after(5):
        while upstream.active_streams:
            await trio.sleep(0.001)


# -- construction and the CLI ----------------------------------------------------------------


def test_api_comes_from_config_and_keyword_overrides() -> None:
    assert MockUpstream().api == "openai"
    assert MockUpstream(MockConfig(api="gemini")).api == "gemini"
    assert MockUpstream(MockConfig(api="gemini"), api="anthropic").api == "anthropic"
    with pytest.raises(ValueError, match="api must be one of"):
        MockUpstream(api="cohere")


def test_cli_api_option() -> None:
    parser = argparse.ArgumentParser()
    add_mock_arguments(parser)
    assert mock_config_from_args(parser.parse_args([])).api == "openai"
    assert mock_config_from_args(parser.parse_args(["--api", "anthropic"])).api == "anthropic"
    with pytest.raises(SystemExit):
        parser.parse_args(["--api", "cohere"])


# -- Anthropic: messages ---------------------------------------------------------------------


async def test_anthropic_message(claude: Mock) -> None:
    response = await claude.client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "m1"
    assert body["content"] == [{"type": "text", "text": "Mock reply to: hello there world"}]
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] == 3
    assert body["usage"]["output_tokens"] == 8
    assert claude.upstream.requests_by_path == {"/v1/messages": 1}
    assert claude.upstream.last_request_headers["x-api-key"] == "sk-ant-test"
    assert json.loads(claude.upstream.last_request_body or b"") == message()


async def test_anthropic_last_user_text_with_blocks_and_system(claude: Mock) -> None:
    body = message(system=[{"type": "text", "text": "be brief"}])
    body["messages"] = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"},
                                     {"type": "text", "text": "part"}]},
    ]
    response = await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    reply = response.json()
    assert reply["content"][0]["text"] == "Mock reply to: second part"
    assert reply["usage"]["input_tokens"] == 2 + 1 + 1 + 2


async def test_anthropic_max_tokens_cuts_the_answer(claude: Mock) -> None:
    response = await claude.client.post(
        "/v1/messages", json=message(max_tokens=3), headers=ANTHROPIC_HEADERS
    )
    body = response.json()
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 3
    full = "Mock reply to: hello there world"
    assert body["content"][0]["text"] == "".join(split_pieces(full, 8)[:3])


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "m1", "messages": [{"role": "user", "content": "x"}]}, 400, "max_tokens"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "m1", "max_tokens": 5}, 400, "messages"),
        ({"model": "m1", "max_tokens": 5, "messages": []}, 400, "messages"),
        ({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
         404, "model: nope"),
    ],
)
async def test_anthropic_bad_requests(
    claude: Mock, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error"
    expected = "invalid_request_error" if status == 400 else "not_found_error"
    assert error["error"]["type"] == expected
    assert fragment in error["error"]["message"]


async def test_anthropic_bad_json(claude: Mock) -> None:
    response = await claude.client.post(
        "/v1/messages", content=b"{nope", headers=ANTHROPIC_HEADERS
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_anthropic_stream_event_order_is_exact(claude: Mock) -> None:
    response = await claude.client.post(
        "/v1/messages", json=message(stream=True), headers=ANTHROPIC_HEADERS
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = anthropic_events(response.content)
    assert [name for name, _ in events] == ANTHROPIC_ORDER
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["model"] == "m1" and start["role"] == "assistant"
    assert start["usage"]["input_tokens"] == 3
    assert events[2][1] == {
        "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    assert "".join(d["text"] for d in deltas) == "Mock reply to: hello there world"
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 8},
    }
    await wait_no_streams(claude.upstream)


async def test_anthropic_stream_max_tokens(claude: Mock) -> None:
    response = await claude.client.post(
        "/v1/messages", json=message(stream=True, max_tokens=2), headers=ANTHROPIC_HEADERS
    )
    events = anthropic_events(response.content)
    assert [n for n, _ in events].count("content_block_delta") == 2
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2][1]["usage"]["output_tokens"] == 2


async def test_anthropic_stream_chunks_are_separate_http_chunks(make_mock: Factory) -> None:
    mock = await make_mock("anthropic", MockConfig(stream_chunks=3))
    async with mock.client.stream(
        "POST", "/v1/messages", json=message(stream=True), headers=ANTHROPIC_HEADERS
    ) as response:
        chunks = [chunk async for chunk in response.aiter_raw()]
    assert len(chunks) >= 2
    names = [n for n, _ in anthropic_events(b"".join(chunks))]
    assert names.count("content_block_delta") == 3


# -- Anthropic: tool use ------------------------------------------------------------------


async def test_anthropic_tool_use(claude: Mock) -> None:
    body = message("What's the Weather in Paris?", tools=[WEATHER_TOOL, {"name": "other"}])
    response = await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    reply = response.json()
    assert reply["stop_reason"] == "tool_use"
    [block] = reply["content"]
    assert block["type"] == "tool_use"
    assert block["id"].startswith("toolu_")
    assert block["name"] == "get_weather"
    assert block["input"] == {"location": "Paris"}


async def test_anthropic_tool_use_stream(claude: Mock) -> None:
    body = message("weather please", tools=[WEATHER_TOOL], stream=True)
    response = await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    events = anthropic_events(response.content)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    block = events[2][1]["content_block"]
    assert block["type"] == "tool_use" and block["input"] == {}
    assert block["name"] == "get_weather" and block["id"].startswith("toolu_")
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert len(deltas) > 1
    assert all(d["type"] == "input_json_delta" for d in deltas)
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"location": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("text", "extra", "expect_tool"),
    [
        ("weather?", {}, True),
        ("tell me a joke", {}, False),
        ("weatherman", {}, False),  # a whole word only
        ("tell me a joke", {"tool_choice": {"type": "any"}}, True),
        ("weather?", {"tool_choice": {"type": "none"}}, False),
    ],
)
async def test_anthropic_tool_trigger_rules(
    claude: Mock, text: str, extra: dict[str, Any], expect_tool: bool
) -> None:
    body = message(text, tools=[WEATHER_TOOL], **extra)
    reply = (await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert (reply["stop_reason"] == "tool_use") is expect_tool
    # no tools, no tool use
    plain = (
        await claude.client.post("/v1/messages", json=message(text), headers=ANTHROPIC_HEADERS)
    ).json()
    assert plain["stop_reason"] == "end_turn"


async def test_anthropic_tool_choice_names_the_tool(claude: Mock) -> None:
    body = message("hi", tools=[WEATHER_TOOL, {"name": "other"}],
                   tool_choice={"type": "tool", "name": "other"})
    reply = (await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert reply["content"][0]["name"] == "other"


async def test_anthropic_tool_result_ends_the_loop(claude: Mock) -> None:
    body = message(tools=[WEATHER_TOOL])
    body["messages"] = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"location": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "weather: sunny"}]},
    ]
    reply = (await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert reply["stop_reason"] == "end_turn"
    assert reply["content"][0]["text"] == "Mock reply to: weather: sunny"


# -- Anthropic: count_tokens, models, auth, routing ----------------------------------------


async def test_anthropic_count_tokens_matches_usage(claude: Mock) -> None:
    body = message("one two three four", system="you are terse")
    counted = await claude.client.post(
        "/v1/messages/count_tokens",
        json={k: v for k, v in body.items() if k != "max_tokens"},
        headers=ANTHROPIC_HEADERS,
    )
    assert counted.status_code == 200
    assert counted.json() == {"input_tokens": 7}
    usage = (
        await claude.client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    ).json()["usage"]
    assert usage["input_tokens"] == 7
    unknown = await claude.client.post(
        "/v1/messages/count_tokens", json={**body, "model": "x"}, headers=ANTHROPIC_HEADERS
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"


async def test_anthropic_models(claude: Mock) -> None:
    response = await claude.client.get("/v1/models", headers=ANTHROPIC_HEADERS)
    assert response.status_code == 200
    body = response.json()
    assert body["has_more"] is False
    assert body["first_id"] == "m1" and body["last_id"] == "org/m2"
    assert [m["id"] for m in body["data"]] == list(MODELS)
    for model in body["data"]:
        assert model["type"] == "model"
        assert model["display_name"]
        assert model["created_at"].endswith("Z")
    page = (await claude.client.get("/v1/models?limit=1", headers=ANTHROPIC_HEADERS)).json()
    assert [m["id"] for m in page["data"]] == ["m1"] and page["has_more"] is True
    rest = (
        await claude.client.get("/v1/models?after_id=m1", headers=ANTHROPIC_HEADERS)
    ).json()
    assert [m["id"] for m in rest["data"]] == ["org/m2"] and rest["has_more"] is False
    one = await claude.client.get("/v1/models/org/m2", headers=ANTHROPIC_HEADERS)
    assert one.json()["id"] == "org/m2"
    missing = await claude.client.get("/v1/models/nope", headers=ANTHROPIC_HEADERS)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "k"}, 400, "invalid_request_error"),
        ({}, 401, "authentication_error"),
        ({"authorization": "Basic x", "anthropic-version": "2023-06-01"}, 401,
         "authentication_error"),
    ],
)
async def test_anthropic_requires_headers(
    claude: Mock, headers: dict[str, str], status: int, kind: str
) -> None:
    for method, path in (("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"),
                         ("GET", "/v1/models")):
        response = await claude.client.request(
            method, path, json=message() if method == "POST" else None, headers=headers
        )
        assert response.status_code == status, path
        assert response.json() == {
            "type": "error", "error": {"type": kind, "message": response.json()["error"]["message"]}
        }
    health = await claude.client.get("/health")
    assert health.status_code == 200


async def test_anthropic_accepts_a_bearer_key(claude: Mock) -> None:
    headers = {"authorization": "Bearer sk-ant", "anthropic-version": "2023-06-01"}
    response = await claude.client.post("/v1/messages", json=message(), headers=headers)
    assert response.status_code == 200


async def test_anthropic_unknown_path_and_method(claude: Mock) -> None:
    response = await claude.client.post(
        "/v1/chat/completions", json=message(), headers=ANTHROPIC_HEADERS
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    wrong = await claude.client.get("/v1/messages", headers=ANTHROPIC_HEADERS)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["type"] == "error"


# -- Anthropic: failures -----------------------------------------------------------------


async def test_anthropic_injected_status_shapes(claude: Mock) -> None:
    claude.upstream.fail_next("status", status=529)
    response = await claude.client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS)
    assert response.status_code == 529
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}
    }
    for status, kind in ((429, "rate_limit_error"), (500, "api_error"), (401,
                         "authentication_error")):
        claude.upstream.fail_next("status", status=status)
        response = await claude.client.post(
            "/v1/messages", json=message(stream=True), headers=ANTHROPIC_HEADERS
        )
        assert response.status_code == status
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == kind


async def test_anthropic_failures_aim_at_messages_only(claude: Mock) -> None:
    claude.upstream.fail_next("status", status=500)
    counted = await claude.client.post(
        "/v1/messages/count_tokens", json=message(), headers=ANTHROPIC_HEADERS
    )
    assert counted.status_code == 200
    assert claude.upstream.pending_failures == 1
    models = await claude.client.get("/v1/models", headers=ANTHROPIC_HEADERS)
    assert models.status_code == 200
    response = await claude.client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS)
    assert response.status_code == 500
    assert claude.upstream.pending_failures == 0
    # aimed at one path
    claude.upstream.fail_next("status", status=503, path="/v1/models")
    models = await claude.client.get("/v1/models", headers=ANTHROPIC_HEADERS)
    assert models.status_code == 503
    assert models.json()["type"] == "error"


async def test_anthropic_configured_failures(make_mock: Factory) -> None:
    config = MockConfig(failures=(MockFailure(kind="status", status=529, rate=1.0),))
    mock = await make_mock("anthropic", config)
    response = await mock.client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS)
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"
    counted = await mock.client.post(
        "/v1/messages/count_tokens", json=message(), headers=ANTHROPIC_HEADERS
    )
    assert counted.status_code == 200


async def test_anthropic_auth_is_checked_before_failures(claude: Mock) -> None:
    claude.upstream.fail_next("status", status=500)
    response = await claude.client.post("/v1/messages", json=message())
    assert response.status_code == 401
    assert claude.upstream.pending_failures == 1


async def test_anthropic_malformed_and_resets(claude: Mock) -> None:
    claude.upstream.fail_next("malformed")
    response = await claude.client.post(
        "/v1/messages", json=message(stream=True), headers=ANTHROPIC_HEADERS
    )
    assert response.status_code == 200
    text = response.text
    assert text.startswith("event: message_start\ndata: {")
    assert "[DONE]" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.split("data: ", 1)[1])
    claude.upstream.fail_next("reset_mid_stream")
    with pytest.raises(httpx.TransportError):
        await claude.client.post(
            "/v1/messages", json=message(stream=True), headers=ANTHROPIC_HEADERS
        )
    claude.upstream.fail_next("reset")
    with pytest.raises(httpx.TransportError):
        await claude.client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS)
    ok = await claude.client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS)
    assert ok.status_code == 200


async def test_anthropic_unhealthy_models(claude: Mock) -> None:
    claude.upstream.set_health_status(529)
    response = await claude.client.get("/v1/models", headers=ANTHROPIC_HEADERS)
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"
    assert (await claude.client.get("/health")).status_code == 529


async def test_anthropic_stream_pacing_lower_bound(make_mock: Factory) -> None:
    mock = await make_mock("anthropic", MockConfig(tokens_per_second=50, stream_chunks=5))
    start = time.monotonic()
    response = await mock.client.post(
        "/v1/messages", json=message(stream=True), headers=ANTHROPIC_HEADERS
    )
    elapsed = time.monotonic() - start
    assert response.status_code == 200
    assert elapsed >= 5 / 50 * 0.9


# -- Anthropic: the official SDK -----------------------------------------------------------


async def test_anthropic_sdk_create_and_stream(claude: Mock) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.AsyncAnthropic(
        api_key="sk-ant-test", base_url=f"http://{claude.address}", max_retries=0
    )
    async with client:
        reply = await client.messages.create(
            model="m1", max_tokens=64, messages=[{"role": "user", "content": "hi sdk"}]
        )
        assert reply.content[0].type == "text"
        assert reply.content[0].text == "Mock reply to: hi sdk"
        assert reply.stop_reason == "end_turn"
        assert reply.usage.output_tokens == 8
        sent = claude.upstream.last_request_headers
        assert sent["anthropic-version"]
        assert sent.get("x-api-key") == "sk-ant-test" or (
            sent.get("authorization") == "Bearer sk-ant-test"
        )

        async with client.messages.stream(
            model="m1", max_tokens=64, messages=[{"role": "user", "content": "hi sdk"}]
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(texts) == "Mock reply to: hi sdk"
        assert final.content[0].text == "Mock reply to: hi sdk"
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens == 8

        raw = await client.messages.create(
            model="m1", max_tokens=64, stream=True,
            messages=[{"role": "user", "content": "hi"}],
        )
        kinds = [event.type async for event in raw]
        assert kinds == [k for k in ANTHROPIC_ORDER if k != "ping"]  # the SDK drops pings

        models = await client.models.list()
        assert [m.id for m in models.data] == list(MODELS)
        counted = await client.messages.count_tokens(
            model="m1", messages=[{"role": "user", "content": "a b c"}]
        )
        assert counted.input_tokens == 3


async def test_anthropic_sdk_tool_use_and_errors(claude: Mock) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.AsyncAnthropic(
        api_key="sk-ant-test", base_url=f"http://{claude.address}", max_retries=0
    )
    async with client:
        async with client.messages.stream(
            model="m1", max_tokens=64, tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "weather in Paris?"}],
        ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        block = final.content[0]
        assert block.type == "tool_use"
        assert block.name == "get_weather"
        assert block.input == {"location": "Paris"}

        claude.upstream.fail_next("status", status=529)
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(
                model="m1", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.status_code == 529
        assert info.value.body["error"]["type"] == "overloaded_error"
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(
                model="nope", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
            )


# -- Gemini: generateContent ---------------------------------------------------------------


async def test_gemini_generate_content(gemini: Mock) -> None:
    response = await gemini.client.post(
        "/v1beta/models/m1:generateContent", json=contents(), headers=GEMINI_HEADERS
    )
    assert response.status_code == 200
    body = response.json()
    assert body["candidates"] == [
        {
            "content": {"parts": [{"text": "Mock reply to: hello there world"}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ]
    assert body["usageMetadata"] == {
        "promptTokenCount": 3, "candidatesTokenCount": 8, "totalTokenCount": 11
    }
    assert body["modelVersion"] == "m1"
    assert gemini.upstream.requests_by_path == {"/v1beta/models/m1:generateContent": 1}
    assert gemini.upstream.last_request_headers["x-goog-api-key"] == "g-test"


async def test_gemini_key_query_snake_case_and_model_with_slash(gemini: Mock) -> None:
    body = {
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "first"}]},
            {"role": "model", "parts": [{"text": "ok"}]},
            {"parts": [{"text": "second"}, {"text": "turn"}]},
        ],
        "generation_config": {"max_output_tokens": 100},
    }
    response = await gemini.client.post("/v1beta/models/org/m2:generateContent?key=k", json=body)
    assert response.status_code == 200
    reply = response.json()
    assert reply["candidates"][0]["content"]["parts"][0]["text"] == "Mock reply to: second turn"
    assert reply["usageMetadata"]["promptTokenCount"] == 2 + 1 + 1 + 2
    assert reply["modelVersion"] == "org/m2"


async def test_gemini_max_output_tokens(gemini: Mock) -> None:
    body = contents(generationConfig={"maxOutputTokens": 3})
    reply = (
        await gemini.client.post(
            "/v1beta/models/m1:generateContent", json=body, headers=GEMINI_HEADERS
        )
    ).json()
    assert reply["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert reply["usageMetadata"]["candidatesTokenCount"] == 3


@pytest.mark.parametrize(
    ("path", "body", "status", "rpc"),
    [
        ("/v1beta/models/nope:generateContent", contents(), 404, "NOT_FOUND"),
        ("/v1beta/models/nope:streamGenerateContent?alt=sse", contents(), 404, "NOT_FOUND"),
        ("/v1beta/models/m1:generateContent", {}, 400, "INVALID_ARGUMENT"),
        ("/v1beta/models/m1:generateContent", {"contents": []}, 400, "INVALID_ARGUMENT"),
        ("/v1beta/models/m1:generateContent", [1], 400, "INVALID_ARGUMENT"),
        ("/v1beta/models/m1:generateContent", {"contents": 5}, 400, "INVALID_ARGUMENT"),
    ],
)
async def test_gemini_bad_requests(
    gemini: Mock, path: str, body: Any, status: int, rpc: str
) -> None:
    response = await gemini.client.post(path, json=body, headers=GEMINI_HEADERS)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status
    assert error["status"] == rpc
    assert error["message"]


async def test_gemini_stream_sse(gemini: Mock) -> None:
    response = await gemini.client.post(
        "/v1beta/models/m1:streamGenerateContent?alt=sse", json=contents(),
        headers=GEMINI_HEADERS,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = gemini_events(response.content)
    assert len(events) == 8
    texts = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]
    assert "".join(texts) == "Mock reply to: hello there world"
    for event in events[:-1]:
        assert "finishReason" not in event["candidates"][0]
        assert "usageMetadata" not in event
        assert event["candidates"][0]["content"]["role"] == "model"
        assert event["modelVersion"] == "m1"
    last = events[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == {
        "promptTokenCount": 3, "candidatesTokenCount": 8, "totalTokenCount": 11
    }
    await wait_no_streams(gemini.upstream)


async def test_gemini_stream_without_alt_is_a_json_array(gemini: Mock) -> None:
    response = await gemini.client.post(
        "/v1beta/models/m1:streamGenerateContent", json=contents(), headers=GEMINI_HEADERS
    )
    assert response.status_code == 200
    chunks = response.json()
    assert isinstance(chunks, list) and len(chunks) == 8
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_gemini_stream_max_tokens(gemini: Mock) -> None:
    response = await gemini.client.post(
        "/v1beta/models/m1:streamGenerateContent?alt=sse",
        json=contents(generationConfig={"maxOutputTokens": 2}), headers=GEMINI_HEADERS,
    )
    events = gemini_events(response.content)
    assert len(events) == 2
    assert events[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"


# -- Gemini: function calls ---------------------------------------------------------------


async def test_gemini_function_call(gemini: Mock) -> None:
    body = contents("How is the weather today?", tools=GEMINI_TOOLS)
    reply = (
        await gemini.client.post(
            "/v1beta/models/m1:generateContent", json=body, headers=GEMINI_HEADERS
        )
    ).json()
    candidate = reply["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    assert candidate["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}
    ]
    stream = await gemini.client.post(
        "/v1beta/models/m1:streamGenerateContent?alt=sse", json=body, headers=GEMINI_HEADERS
    )
    [event] = gemini_events(stream.content)
    assert event["candidates"][0]["content"]["parts"] == candidate["content"]["parts"]
    assert event["candidates"][0]["finishReason"] == "STOP"
    assert "usageMetadata" in event


@pytest.mark.parametrize(
    ("text", "tool_config", "expect"),
    [
        ("weather?", None, "get_weather"),
        ("a joke", None, None),
        ("a joke", {"functionCallingConfig": {"mode": "ANY"}}, "get_weather"),
        ("a joke", {"function_calling_config": {"mode": "ANY",
                                                "allowed_function_names": ["x"]}}, "x"),
        ("weather?", {"functionCallingConfig": {"mode": "NONE"}}, None),
    ],
)
async def test_gemini_function_call_rules(
    gemini: Mock, text: str, tool_config: dict[str, Any] | None, expect: str | None
) -> None:
    body = contents(text, tools=GEMINI_TOOLS)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    reply = (
        await gemini.client.post(
            "/v1beta/models/m1:generateContent", json=body, headers=GEMINI_HEADERS
        )
    ).json()
    part = reply["candidates"][0]["content"]["parts"][0]
    if expect is None:
        assert "text" in part
    else:
        assert part["functionCall"]["name"] == expect


async def test_gemini_function_response_ends_the_loop(gemini: Mock) -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "weather in Paris?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"weather": "sunny"}}}]},
        ],
        "tools": GEMINI_TOOLS,
    }
    reply = (
        await gemini.client.post(
            "/v1beta/models/m1:generateContent", json=body, headers=GEMINI_HEADERS
        )
    ).json()
    text = reply["candidates"][0]["content"]["parts"][0]["text"]
    assert text == 'Mock reply to: {"weather":"sunny"}'


# -- Gemini: countTokens, models, auth ----------------------------------------------------


async def test_gemini_count_tokens(gemini: Mock) -> None:
    response = await gemini.client.post(
        "/v1beta/models/m1:countTokens", json=contents("a b c d"), headers=GEMINI_HEADERS
    )
    assert response.json() == {"totalTokens": 4}
    wrapped = await gemini.client.post(
        "/v1beta/models/m1:countTokens",
        json={"generateContentRequest": {"model": "models/m1", **contents("a b")}},
        headers=GEMINI_HEADERS,
    )
    assert wrapped.json() == {"totalTokens": 2}


async def test_gemini_models(gemini: Mock) -> None:
    response = await gemini.client.get("/v1beta/models", headers=GEMINI_HEADERS)
    assert response.status_code == 200
    body = response.json()
    assert [m["name"] for m in body["models"]] == ["models/m1", "models/org/m2"]
    assert "nextPageToken" not in body
    for model in body["models"]:
        assert model["displayName"]
        assert {"generateContent", "streamGenerateContent"} <= set(
            model["supportedGenerationMethods"]
        )
    page = (await gemini.client.get("/v1beta/models?pageSize=1&key=k")).json()
    assert [m["name"] for m in page["models"]] == ["models/m1"]
    rest = (
        await gemini.client.get(f"/v1beta/models?pageSize=1&pageToken={page['nextPageToken']}",
                                headers=GEMINI_HEADERS)
    ).json()
    assert [m["name"] for m in rest["models"]] == ["models/org/m2"]
    one = await gemini.client.get("/v1beta/models/m1", headers=GEMINI_HEADERS)
    assert one.json()["name"] == "models/m1"
    missing = await gemini.client.get("/v1beta/models/nope", headers=GEMINI_HEADERS)
    assert missing.status_code == 404
    assert missing.json()["error"]["status"] == "NOT_FOUND"


async def test_gemini_requires_a_key(gemini: Mock) -> None:
    for method, path in (("POST", "/v1beta/models/m1:generateContent"),
                         ("POST", "/v1beta/models/m1:streamGenerateContent?alt=sse"),
                         ("GET", "/v1beta/models")):
        response = await gemini.client.request(
            method, path, json=contents() if method == "POST" else None
        )
        assert response.status_code == 403, path
        error = response.json()["error"]
        assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    empty = await gemini.client.post("/v1beta/models/m1:generateContent?key=", json=contents())
    assert empty.status_code == 400
    assert empty.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert (await gemini.client.get("/health")).status_code == 200


async def test_gemini_unknown_paths(gemini: Mock) -> None:
    for path in ("/v1beta/models/m1:explode", "/v1/chat/completions", "/v1beta/other"):
        response = await gemini.client.post(path, json=contents(), headers=GEMINI_HEADERS)
        assert response.status_code == 404, path
        assert response.json()["error"]["status"] == "NOT_FOUND"
    wrong = await gemini.client.get("/v1beta/models/m1:generateContent", headers=GEMINI_HEADERS)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == 405


# -- Gemini: failures and pacing ----------------------------------------------------------


async def test_gemini_injected_failures(gemini: Mock) -> None:
    gemini.upstream.fail_next("status", status=503)
    response = await gemini.client.post(
        "/v1beta/models/m1:streamGenerateContent?alt=sse", json=contents(),
        headers=GEMINI_HEADERS,
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == 503 and error["status"] == "UNAVAILABLE"
    gemini.upstream.fail_next("status", status=429)
    response = await gemini.client.post(
        "/v1beta/models/m1:generateContent", json=contents(), headers=GEMINI_HEADERS
    )
    assert response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    # countTokens and the model list are not inference: untouched by default
    gemini.upstream.fail_next("status", status=500)
    counted = await gemini.client.post(
        "/v1beta/models/m1:countTokens", json=contents(), headers=GEMINI_HEADERS
    )
    assert counted.status_code == 200
    assert (await gemini.client.get("/v1beta/models", headers=GEMINI_HEADERS)).status_code == 200
    assert gemini.upstream.pending_failures == 1
    gemini.upstream.clear_failures()
    gemini.upstream.fail_next("reset", path="/v1beta/models")
    with pytest.raises(httpx.TransportError):
        await gemini.client.get("/v1beta/models", headers=GEMINI_HEADERS)


async def test_gemini_configured_failures_and_malformed(make_mock: Factory) -> None:
    config = MockConfig(failures=(MockFailure(kind="malformed", rate=1.0),))
    mock = await make_mock("gemini", config)
    response = await mock.client.post(
        "/v1beta/models/m1:streamGenerateContent?alt=sse", json=contents(),
        headers=GEMINI_HEADERS,
    )
    assert response.status_code == 200
    [frame, rest] = response.content.split(b"\r\n\r\n")
    assert rest == b"" and frame.startswith(b"data: {")
    with pytest.raises(json.JSONDecodeError):
        json.loads(frame[len(b"data: ") :])
    plain = await mock.client.post(
        "/v1beta/models/m1:generateContent", json=contents(), headers=GEMINI_HEADERS
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.content)


async def test_gemini_unhealthy_models(gemini: Mock) -> None:
    gemini.upstream.set_health_status(503)
    response = await gemini.client.get("/v1beta/models", headers=GEMINI_HEADERS)
    assert response.status_code == 503
    assert response.json()["error"]["status"] == "UNAVAILABLE"


async def test_gemini_stream_pacing_lower_bound(make_mock: Factory) -> None:
    mock = await make_mock("gemini", MockConfig(tokens_per_second=50, stream_chunks=5))
    mock.upstream.set_latency(0.05)
    start = time.monotonic()
    response = await mock.client.post(
        "/v1beta/models/m1:streamGenerateContent?alt=sse", json=contents(),
        headers=GEMINI_HEADERS,
    )
    elapsed = time.monotonic() - start
    assert len(gemini_events(response.content)) == 5
    assert elapsed >= (0.05 + 5 / 50) * 0.9


# -- Gemini: the OpenAI-compatible endpoint -----------------------------------------------


async def test_gemini_openai_compatible_endpoint(gemini: Mock) -> None:
    auth = {"authorization": "Bearer g-test"}
    chat = {"model": "m1", "messages": [{"role": "user", "content": "hi there"}]}
    response = await gemini.client.post("/v1beta/openai/chat/completions", json=chat,
                                        headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Mock reply to: hi there"
    models = (await gemini.client.get("/v1beta/openai/models", headers=auth)).json()
    assert [m["id"] for m in models["data"]] == list(MODELS)
    one = await gemini.client.get("/v1beta/openai/models/org/m2", headers=GEMINI_HEADERS)
    assert one.json()["id"] == "org/m2"
    streamed = await gemini.client.post(
        "/v1beta/openai/chat/completions", json={**chat, "stream": True}, headers=auth
    )
    assert streamed.text.endswith("data: [DONE]\n\n")
    missing = await gemini.client.post("/v1beta/openai/chat/completions", json=chat)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    gemini.upstream.fail_next("status", status=503)
    failed = await gemini.client.post("/v1beta/openai/chat/completions", json=chat, headers=auth)
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "mock_injected_failure"
    unknown = await gemini.client.post("/v1beta/openai/nope", json=chat, headers=auth)
    assert unknown.status_code == 404
    assert "message" in unknown.json()["error"]


async def test_gemini_openai_endpoint_with_the_openai_sdk(gemini: Mock) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(
        api_key="g-test", base_url=f"http://{gemini.address}/v1beta/openai/", max_retries=0
    )
    async with client:
        reply = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content == "Mock reply to: hello"
        stream = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == "Mock reply to: hello"
