"""End to end with real SDKs: the ``openai`` and ``anthropic`` SDKs through a real router
to mock Anthropic, Gemini and OpenAI upstreams on loopback ports.

Covers every client endpoint ↔ backend API pair of ``continuum.apis.calls``: OpenAI chat →
Anthropic Messages / Gemini generateContent (and Gemini's OpenAI-compatible endpoint),
Anthropic ``/v1/messages`` → OpenAI chat / Anthropic pass-through / Gemini (double
translation), ``count_tokens``, ``/v1/responses``, and the error shapes of each side.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from continuum import RouterHandle
from continuum.mock import MockUpstream, serve_mock
from helpers import router_config, start_router

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
MOCK_CHUNKS = 8  # MockUpstream's default stream_chunks: one piece per output token

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}
ANTHROPIC_WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}
PARIS = {"location": "Paris"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- helpers ----------------------------------------------------------------------------


async def start_api_mock(
    nursery: trio.Nursery, api: str, models: tuple[str, ...]
) -> tuple[MockUpstream, str]:
    """A mock upstream speaking ``api`` (``helpers.start_mock`` has no ``api`` argument)."""
    upstream = MockUpstream(None, models, name=f"mock-{api}", seed=0, api=api)
    address = await nursery.start(serve_mock, upstream)
    return upstream, f"http://{address}"


def anthropic_backend(url: str, models: tuple[str, ...] = ("claude-x",),
                      name: str = "claude") -> dict[str, Any]:
    return {"name": name, "type": "anthropic", "url": url, "api_key": "k",
            "models": list(models)}


def gemini_backend(url: str, models: tuple[str, ...] = ("gemini-x",), name: str = "gem",
                   **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "gemini", "url": url, "api_key": "gk",
            "models": list(models), **extra}


def openai_backend(url: str, models: tuple[str, ...] = ("gpt-test",),
                   name: str = "oai") -> dict[str, Any]:
    return {"name": name, "type": "openai", "url": url, "api_key": "ok",
            "models": list(models)}


async def router_with(nursery: trio.Nursery, *backends: dict[str, Any]) -> RouterHandle:
    return await start_router(nursery, router_config(list(backends)))


def oai(router: RouterHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                              timeout=10.0)


def claude(router: RouterHandle, http_client: Any = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=router.url, api_key="x", max_retries=0,
                                    timeout=10.0, http_client=http_client)


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def mock_text(text: str) -> str:
    """What every mock answers to ``text`` (short inputs: no cut, no padding)."""
    return f"Mock reply to: {text}"


def upstream_json(mock: MockUpstream) -> dict[str, Any]:
    assert mock.last_request_body is not None
    data: dict[str, Any] = json.loads(mock.last_request_body)
    return data


async def sse_events(response: httpx.Response) -> list[tuple[str | None, str]]:
    """``(event, data)`` pairs of an SSE response, in order."""
    events: list[tuple[str | None, str]] = []
    buffer = ""
    async for text in response.aiter_text():
        buffer += text.replace("\r\n", "\n")
        while "\n\n" in buffer:
            raw, buffer = buffer.split("\n\n", 1)
            name: str | None = None
            data: list[str] = []
            for line in raw.split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
            if name is not None or data:
                events.append((name, "\n".join(data)))
    assert not buffer.strip(), f"unterminated SSE event: {buffer!r}"
    return events


def strip_ids(value: Any) -> Any:
    """``value`` with every ``id`` field blanked (message ids are random per request)."""
    if isinstance(value, dict):
        return {k: ("<id>" if k == "id" else strip_ids(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_ids(v) for v in value]
    return value


# -- a canned OpenAI upstream (a fixed tool-call answer, independent of the mock) -----------


def _tool_call_completion(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-canned", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_canned", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            }]},
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }).encode()


def _tool_call_stream(model: str) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }) + "\n\n"

    first = {"role": "assistant", "content": None, "tool_calls": [{
        "index": 0, "id": "call_canned", "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}]}
    parts = ['{"loca', 'tion": "Pa', 'ris"}']
    out = chunk(first)
    for part in parts:
        out += chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
    out += chunk({}, "tool_calls")
    out += "data: [DONE]\n\n"
    return out.encode()


class CannedToolUpstream:
    """A minimal OpenAI-compatible HTTP/1.1 server whose chat answer is always one
    ``get_weather`` tool call (plain or streamed). Records the request bodies it got."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, v in (line.split(":", 1) for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                if method == "POST" and path == CHAT:
                    request = json.loads(body)
                    self.bodies.append(request)
                    if request.get("stream"):
                        payload, ctype = _tool_call_stream(request["model"]), "text/event-stream"
                    else:
                        payload, ctype = _tool_call_completion(request["model"]), \
                            "application/json"
                    status = "200 OK"
                else:
                    payload, ctype, status = b'{"error": {"message": "no"}}', \
                        "application/json", "404 Not Found"
                await stream.send_all(
                    f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n"
                    f"content-length: {len(payload)}\r\n\r\n".encode() + payload
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def serve(self, *, task_status: trio.TaskStatus[str]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(f"http://127.0.0.1:{port}")


# == 1. openai SDK → /v1/chat/completions → Anthropic backend ==========================


async def test_openai_to_anthropic_non_stream(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    with trio.fail_after(20):
        async with oai(router) as client:
            reply = await client.chat.completions.create(
                model="claude-x",
                messages=[{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": "hello there"}],
            )
    assert reply.object == "chat.completion"
    assert reply.model == "claude-x"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == mock_text("hello there")
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    # input tokens: words of system + last user message (mock rule); one piece = one token
    assert reply.usage.prompt_tokens == 5
    assert reply.usage.completion_tokens == MOCK_CHUNKS
    assert reply.usage.total_tokens == 5 + MOCK_CHUNKS

    # The upstream got a proper Anthropic Messages request.
    assert mock.requests_by_path.get(MESSAGES) == 1
    sent = upstream_json(mock)
    assert sent["model"] == "claude-x"
    assert sent["system"] == "You are terse."
    assert all(m["role"] != "system" for m in sent["messages"])
    assert sent["messages"][-1]["role"] == "user"
    assert sent["max_tokens"] == 4096  # client sent none: the backend's default_max_tokens
    headers = mock.last_request_headers
    assert headers.get("x-api-key") == "k"
    assert headers.get("anthropic-version")
    assert "authorization" not in headers  # the client's "Bearer x" never leaves the router


async def test_openai_to_anthropic_stream(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    chunks = []
    with trio.fail_after(20):
        async with oai(router) as client:
            stream = await client.chat.completions.create(
                model="claude-x", messages=user("stream please"), stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:  # the SDK consumes [DONE] itself
                chunks.append(chunk)
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.model == "claude-x" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == mock_text("stream please")
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # the finish chunk comes after every content chunk
    last_content = max(i for i, c in enumerate(with_choices) if c.choices[0].delta.content)
    finish_at = next(i for i, c in enumerate(with_choices) if c.choices[0].finish_reason)
    assert finish_at >= last_content
    # include_usage: a final chunk with no choices and the usage
    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.prompt_tokens == 2
    assert final.usage.completion_tokens == MOCK_CHUNKS
    assert final.usage.total_tokens == 2 + MOCK_CHUNKS
    assert all(c.usage is None for c in chunks[:-1])
    assert upstream_json(mock)["stream"] is True
    assert isinstance(upstream_json(mock)["max_tokens"], int)


async def test_openai_to_anthropic_tool_call(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    with trio.fail_after(20):
        async with oai(router) as client:
            reply = await client.chat.completions.create(
                model="claude-x", messages=user("What is the weather in Paris?"),
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
            )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == PARIS
    # the tool was declared the Anthropic way
    sent = upstream_json(mock)
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["input_schema"]["properties"] == {"location": {"type": "string"}}


async def test_openai_to_anthropic_streamed_tool_call(nursery: trio.Nursery) -> None:
    _mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    chunks = []
    with trio.fail_after(20):
        async with oai(router) as client:
            stream = await client.chat.completions.create(
                model="claude-x", messages=user("weather in Paris"), stream=True,
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
            )
            async for chunk in stream:
                chunks.append(chunk)
    names: list[str] = []
    ids: list[str] = []
    arguments = ""
    finish = []
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                assert tc.index == 0
                if tc.id:
                    ids.append(tc.id)
                if tc.function and tc.function.name:
                    names.append(tc.function.name)
                if tc.function and tc.function.arguments:
                    arguments += tc.function.arguments
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert names == ["get_weather"]
    assert len(ids) == 1
    assert json.loads(arguments) == PARIS
    assert finish == ["tool_calls"]


# == 2. openai SDK → Gemini backend ====================================================


async def test_openai_to_gemini_non_stream(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, gemini_backend(url))
    with trio.fail_after(20):
        async with oai(router) as client:
            reply = await client.chat.completions.create(
                model="gemini-x",
                messages=[{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "hello gemini"}],
            )
    assert reply.model == "gemini-x"
    assert reply.choices[0].message.content == mock_text("hello gemini")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 4
    assert reply.usage.completion_tokens == MOCK_CHUNKS
    assert reply.usage.total_tokens == 4 + MOCK_CHUNKS
    assert mock.requests_by_path.get("/v1beta/models/gemini-x:generateContent") == 1
    headers = mock.last_request_headers
    assert headers.get("x-goog-api-key") == "gk"
    assert "authorization" not in headers
    sent = upstream_json(mock)
    system = sent.get("systemInstruction") or sent.get("system_instruction")
    assert system["parts"] == [{"text": "Be brief."}]
    assert [c["role"] for c in sent["contents"]] == ["user"]


async def test_openai_to_gemini_stream(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, gemini_backend(url))
    chunks = []
    with trio.fail_after(20):
        async with oai(router) as client:
            stream = await client.chat.completions.create(
                model="gemini-x", messages=user("stream gemini"), stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                chunks.append(chunk)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == mock_text("stream gemini")
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.prompt_tokens == 2
    assert final.usage.completion_tokens == MOCK_CHUNKS
    assert mock.requests_by_path.get("/v1beta/models/gemini-x:streamGenerateContent") == 1
    assert mock.last_request_headers.get("x-goog-api-key") == "gk"


async def test_openai_to_gemini_tool_calls(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, gemini_backend(url))
    with trio.fail_after(20):
        async with oai(router) as client:
            reply = await client.chat.completions.create(
                model="gemini-x", messages=user("weather in Paris?"),
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
            )
            stream = await client.chat.completions.create(
                model="gemini-x", messages=user("weather in Paris?"), stream=True,
                tools=[WEATHER_TOOL],  # type: ignore[list-item]
            )
            chunks = [chunk async for chunk in stream]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == PARIS
    sent = upstream_json(mock)
    declarations = sent["tools"][0].get("functionDeclarations") or \
        sent["tools"][0].get("function_declarations")
    assert declarations[0]["name"] == "get_weather"

    names, arguments, finish = [], "", []
    for chunk in chunks:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                if tc.function and tc.function.name:
                    names.append(tc.function.name)
                if tc.function and tc.function.arguments:
                    arguments += tc.function.arguments
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    assert names == ["get_weather"]
    assert json.loads(arguments) == PARIS
    assert finish == ["tool_calls"]


async def test_openai_to_gemini_openai_compat_mode(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, gemini_backend(url, gemini_api="openai"))
    body = {"model": "gemini-x", "messages": user("compat mode"), "temperature": 0.5,
            "x_unknown_field": {"kept": True}}
    raw = json.dumps(body, separators=(",", ":")).encode()
    with trio.fail_after(20):
        async with http(router) as client:
            response = await client.post(CHAT, content=raw,
                                         headers={"content-type": "application/json"})
        async with oai(router) as sdk:
            stream = await sdk.chat.completions.create(
                model="gemini-x", messages=user("compat stream"), stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == mock_text("compat mode")
    assert text == mock_text("compat stream")
    assert mock.requests_by_path.get("/v1beta/openai/chat/completions") == 2
    assert not any(":generateContent" in p or ":streamGenerateContent" in p
                   for p in mock.requests_by_path)


async def test_openai_to_gemini_openai_compat_bytes_untouched(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, gemini_backend(url, gemini_api="openai"))
    raw = json.dumps({"model": "gemini-x", "messages": user("bytes please"),
                      "x_unknown_field": [1, 2]}, indent=1).encode()
    with trio.fail_after(20):
        async with http(router) as client:
            response = await client.post(CHAT, content=raw,
                                         headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert mock.last_request_body == raw
    headers = mock.last_request_headers
    assert headers.get("authorization") == "Bearer gk"  # the backend's key, not the client's


# == 3. anthropic SDK → /v1/messages → OpenAI backend =================================


async def test_messages_to_openai_non_stream(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "openai", ("gpt-test",))
    router = await router_with(nursery, openai_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            message = await client.messages.create(
                model="gpt-test", max_tokens=100, system="Be nice.",
                messages=[{"role": "user", "content": "hi claude front"}],
            )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "gpt-test"
    assert message.content[0].type == "text"
    assert message.content[0].text == mock_text("hi claude front")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 5
    assert message.usage.output_tokens == MOCK_CHUNKS
    # the upstream got an OpenAI chat request
    assert mock.requests_by_path.get(CHAT) == 1
    sent = upstream_json(mock)
    assert sent["messages"][0] == {"role": "system", "content": "Be nice."}
    assert sent["messages"][-1]["role"] == "user"
    assert mock.last_request_headers.get("authorization") == "Bearer ok"
    assert "x-api-key" not in mock.last_request_headers


async def test_messages_to_openai_sdk_stream(nursery: trio.Nursery) -> None:
    _mock, url = await start_api_mock(nursery, "openai", ("gpt-test",))
    router = await router_with(nursery, openai_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client, client.messages.stream(
            model="gpt-test", max_tokens=100,
            messages=[{"role": "user", "content": "stream front door"}],
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(pieces) == mock_text("stream front door")
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text"
    assert final.content[0].text == mock_text("stream front door")
    assert final.usage.output_tokens == MOCK_CHUNKS
    assert final.usage.input_tokens == 3


async def test_messages_to_openai_raw_event_sequence(nursery: trio.Nursery) -> None:
    _mock, url = await start_api_mock(nursery, "openai", ("gpt-test",))
    router = await router_with(nursery, openai_backend(url))
    body = {"model": "gpt-test", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "exact events"}]}
    with trio.fail_after(20):
        async with http(router) as client, client.stream(
            "POST", MESSAGES, json=body,
            headers={"x-api-key": "x", "anthropic-version": "2023-06-01"},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await sse_events(response)
    names = [name for name, _ in events]
    assert names == (["message_start", "content_block_start"]
                     + ["content_block_delta"] * MOCK_CHUNKS
                     + ["content_block_stop", "message_delta", "message_stop"]), names
    datas = [json.loads(data) for _, data in events]
    assert all(d["type"] == n for d, n in zip(datas, names, strict=True))
    assert "[DONE]" not in [data for _, data in events]
    start = datas[0]["message"]
    assert start["role"] == "assistant" and start["content"] == []
    assert start["stop_reason"] is None
    assert datas[1]["content_block"] == {"type": "text", "text": ""}
    assert datas[1]["index"] == 0
    deltas = datas[2:2 + MOCK_CHUNKS]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == mock_text("exact events")
    assert datas[-3] == {"type": "content_block_stop", "index": 0}
    assert datas[-2]["delta"]["stop_reason"] == "end_turn"
    assert datas[-2]["usage"]["output_tokens"] == MOCK_CHUNKS


async def test_messages_to_openai_mock_tool_use(nursery: trio.Nursery) -> None:
    """The tools reach the OpenAI mock translated, and its tool call (arguments generated
    from the schema, docs/mock.md) comes back as a ``tool_use`` block."""
    mock, url = await start_api_mock(nursery, "openai", ("gpt-test",))
    router = await router_with(nursery, openai_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            message = await client.messages.create(
                model="gpt-test", max_tokens=100, tools=[ANTHROPIC_WEATHER_TOOL],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "weather in Paris"}],
            )
    sent = upstream_json(mock)
    assert sent["tools"] == [WEATHER_TOOL]
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert set(block.input) == {"location"} and isinstance(block.input["location"], str)
    assert message.stop_reason == "tool_use"


async def test_messages_to_openai_tool_use(nursery: trio.Nursery) -> None:
    """A real OpenAI tool-call answer (canned upstream) becomes a ``tool_use`` block."""
    upstream = CannedToolUpstream()
    url = await nursery.start(upstream.serve)
    router = await router_with(nursery, openai_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            message = await client.messages.create(
                model="gpt-test", max_tokens=100, tools=[ANTHROPIC_WEATHER_TOOL],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "weather in Paris"}],
            )
            async with client.messages.stream(
                model="gpt-test", max_tokens=100, tools=[ANTHROPIC_WEATHER_TOOL],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "weather in Paris"}],
            ) as stream:
                async for _ in stream:
                    pass
                streamed = await stream.get_final_message()
    for msg in (message, streamed):
        assert msg.stop_reason == "tool_use"
        blocks = [b for b in msg.content if b.type == "tool_use"]
        assert len(blocks) == 1
        block = blocks[0]
        assert block.name == "get_weather"
        assert block.input == PARIS
        assert block.id
    assert upstream.bodies[0]["tools"] == [WEATHER_TOOL]
    assert upstream.bodies[1]["stream"] is True


# == 4. anthropic SDK → /v1/messages → Anthropic backend (pass-through) ================


async def test_messages_pass_through_body_untouched(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    sent_bodies: list[bytes] = []

    async def capture(request: Any) -> None:
        if request.url.path == MESSAGES:
            sent_bodies.append(request.content)

    # the SDK's own client class (it may not be ``httpx``'s), with a hook seeing the bytes
    hc = anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [capture]})
    with trio.fail_after(20):
        async with claude(router, http_client=hc) as client:
            message = await client.messages.create(
                model="claude-x", max_tokens=64, system="Sys prompt.", extra_body={"top_k": 5},
                messages=[{"role": "user", "content": "pass me through"}],
                metadata={"user_id": "u-1"},
            )
    assert message.content[0].type == "text"
    assert message.content[0].text == mock_text("pass me through")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 5
    assert len(sent_bodies) == 1
    assert mock.last_request_body == sent_bodies[0]
    headers = mock.last_request_headers
    assert headers.get("x-api-key") == "k"  # the backend's key replaced the client's
    assert headers.get("anthropic-version")
    assert "authorization" not in headers


async def test_messages_pass_through_stream_unchanged(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    body = {"model": "claude-x", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "raw stream"}]}
    headers = {"x-api-key": "x", "anthropic-version": "2023-06-01"}
    with trio.fail_after(20):
        async with http(router) as client, client.stream(
            "POST", MESSAGES, json=body, headers=headers
        ) as response:
            assert response.status_code == 200
            via_router = await sse_events(response)
        # the same request straight to the mock, for comparison
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as direct, direct.stream(
            "POST", MESSAGES, json=body, headers=headers
        ) as response:
            direct_events = await sse_events(response)
    normalise = [(n, strip_ids(json.loads(d))) for n, d in via_router]
    expected = [(n, strip_ids(json.loads(d))) for n, d in direct_events]
    assert normalise == expected
    names = [n for n, _ in via_router]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "ping" in names  # the mock's own event: nothing was re-synthesised

    # and through the SDK
    with trio.fail_after(20):
        async with claude(router) as sdk, sdk.messages.stream(
            model="claude-x", max_tokens=64,
            messages=[{"role": "user", "content": "sdk stream"}],
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert text == mock_text("sdk stream")
    assert final.stop_reason == "end_turn"
    assert mock.requests_by_path.get(MESSAGES) == 3


async def test_count_tokens_anthropic_backend(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            counted = await client.messages.count_tokens(
                model="claude-x", system="one two",
                messages=[{"role": "user", "content": "three four five"}],
            )
    assert counted.input_tokens == 5
    assert mock.requests_by_path.get("/v1/messages/count_tokens") == 1
    assert mock.last_request_headers.get("x-api-key") == "k"


async def test_count_tokens_openai_only_model_is_refused(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "openai", ("gpt-test",))
    router = await router_with(nursery, openai_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            with pytest.raises(anthropic.APIStatusError) as caught:
                await client.messages.count_tokens(
                    model="gpt-test", messages=[{"role": "user", "content": "count me"}],
                )
    error = caught.value
    assert error.status_code in (400, 404)
    body = error.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] in ("not_found_error", "invalid_request_error")
    assert "count_tokens" in body["error"]["message"]
    assert mock.requests == 0 or "/v1/messages/count_tokens" not in mock.requests_by_path


# == 5. anthropic SDK → /v1/messages → Gemini backend (double translation) =============


async def test_messages_to_gemini(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, gemini_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            message = await client.messages.create(
                model="gemini-x", max_tokens=100,
                messages=[{"role": "user", "content": "double hop"}],
            )
            async with client.messages.stream(
                model="gemini-x", max_tokens=100,
                messages=[{"role": "user", "content": "double stream"}],
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == mock_text("double hop")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 2
    assert message.usage.output_tokens == MOCK_CHUNKS
    assert text == mock_text("double stream")
    assert final.stop_reason == "end_turn"
    assert mock.requests_by_path.get("/v1beta/models/gemini-x:generateContent") == 1
    assert mock.requests_by_path.get("/v1beta/models/gemini-x:streamGenerateContent") == 1
    assert mock.last_request_headers.get("x-goog-api-key") == "gk"


async def test_messages_to_gemini_tool_use(nursery: trio.Nursery) -> None:
    _mock, url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, gemini_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            message = await client.messages.create(
                model="gemini-x", max_tokens=100, tools=[ANTHROPIC_WEATHER_TOOL],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "weather in Paris"}],
            )
            async with client.messages.stream(
                model="gemini-x", max_tokens=100, tools=[ANTHROPIC_WEATHER_TOOL],  # type: ignore[list-item]
                messages=[{"role": "user", "content": "weather in Paris"}],
            ) as stream:
                async for _ in stream:
                    pass
                streamed = await stream.get_final_message()
    for msg in (message, streamed):
        assert msg.stop_reason == "tool_use"
        blocks = [b for b in msg.content if b.type == "tool_use"]
        assert len(blocks) == 1
        assert blocks[0].name == "get_weather"
        assert blocks[0].input == PARIS


# == 6. errors ===========================================================================


async def test_messages_unknown_model_anthropic_shape(nursery: trio.Nursery) -> None:
    _mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    with trio.fail_after(20):
        async with claude(router) as client:
            with pytest.raises(anthropic.NotFoundError) as caught:
                await client.messages.create(
                    model="no-such-model", max_tokens=10,
                    messages=[{"role": "user", "content": "hi"}],
                )
    assert caught.value.status_code == 404
    body = caught.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]
    assert set(body) == {"type", "error"}


async def test_messages_bad_json_anthropic_shape(nursery: trio.Nursery) -> None:
    _mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    with trio.fail_after(20):
        async with http(router) as client:
            response = await client.post(
                MESSAGES, content=b'{"model": "claude-x", "messages": [',
                headers={"content-type": "application/json", "x-api-key": "x",
                         "anthropic-version": "2023-06-01"},
            )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


async def test_anthropic_upstream_429_reaches_openai_client_openai_shaped(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url))
    mock.fail_next("status", status=429)
    with trio.fail_after(20):
        async with oai(router) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="claude-x", messages=user("hi"))
    error = caught.value
    assert error.status_code == 429
    body = error.response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], dict)
    assert body["error"]["message"]
    assert body["error"]["type"] == "rate_limit_error"
    assert body.get("type") != "error"  # not Anthropic's envelope
    assert error.response.headers.get("retry-after") == "1"
    assert mock.requests_by_path.get(MESSAGES) == 1
    assert mock.pending_failures == 0


async def test_anthropic_529_retried_on_another_backend(nursery: trio.Nursery) -> None:
    mock_a, url_a = await start_api_mock(nursery, "anthropic", ("claude-x",))
    mock_b, url_b = await start_api_mock(nursery, "anthropic", ("claude-x",))
    router = await router_with(nursery, anthropic_backend(url_a, name="a"),
                               anthropic_backend(url_b, name="b"))
    mock_a.fail_next("status", status=529)
    replies = []
    with trio.fail_after(20):
        async with oai(router) as client:
            # round robin: within two requests "a" is tried first once
            for _ in range(4):
                replies.append(await client.chat.completions.create(
                    model="claude-x", messages=user("overloaded?")))
                if mock_a.pending_failures == 0:
                    break
    assert mock_a.pending_failures == 0, "backend a was never tried"
    assert all(r.choices[0].message.content == mock_text("overloaded?") for r in replies)
    total = mock_a.requests_by_path.get(MESSAGES, 0) + mock_b.requests_by_path.get(MESSAGES, 0)
    assert total == len(replies) + 1  # exactly one retry: the 529


async def test_messages_upstream_error_in_anthropic_shape_from_openai_backend(
    nursery: trio.Nursery,
) -> None:
    """An OpenAI backend's 400 on the front door comes back in Anthropic's error shape."""
    mock, url = await start_api_mock(nursery, "openai", ("gpt-test",))
    router = await router_with(nursery, openai_backend(url))
    mock.fail_next("status", status=400)
    with trio.fail_after(20):
        async with claude(router) as client:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await client.messages.create(
                    model="gpt-test", max_tokens=10,
                    messages=[{"role": "user", "content": "hi"}],
                )
    body = caught.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


# == 7. /v1/responses ====================================================================


async def test_responses_passed_through_to_openai_backend(nursery: trio.Nursery) -> None:
    mock, url = await start_api_mock(nursery, "openai", ("gpt-test",))
    router = await router_with(nursery, openai_backend(url))
    raw = json.dumps({"model": "gpt-test", "input": "hello responses"}).encode()
    with trio.fail_after(20):
        async with http(router) as client:
            response = await client.post("/v1/responses", content=raw,
                                         headers={"content-type": "application/json"})
    # the body reaches the OpenAI mock byte for byte, and its answer comes back
    assert mock.requests_by_path.get("/v1/responses") == 1
    assert mock.last_request_body == raw
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "response" and body["model"] == "gpt-test"
    assert body["output"][0]["content"][0]["text"] == "Mock reply to: hello responses"


async def test_responses_bridged_for_anthropic_and_gemini_only_models(
    nursery: trio.Nursery,
) -> None:
    """/v1/responses reaches backends without the Responses API through the bridge (the
    whole bridge is tested in test_responses_e2e.py)."""
    a_mock, a_url = await start_api_mock(nursery, "anthropic", ("claude-x",))
    g_mock, g_url = await start_api_mock(nursery, "gemini", ("gemini-x",))
    router = await router_with(nursery, anthropic_backend(a_url), gemini_backend(g_url))
    with trio.fail_after(20):
        async with http(router) as client:
            for model in ("claude-x", "gemini-x"):
                response = await client.post("/v1/responses",
                                             json={"model": model, "input": "hi"})
                assert response.status_code == 200, response.text
                assert response.json()["output"][0]["content"][0]["text"] == (
                    "Mock reply to: hi")
    assert a_mock.requests_by_path["/v1/messages"] == 1
    assert g_mock.requests == 1


@pytest.mark.parametrize("api", ["gemini", "anthropic"])
async def test_discovery_reads_every_page_of_a_model_list(nursery: trio.Nursery,
                                                          api: str) -> None:
    """Gemini's and Anthropic's model lists come in pages (at most 1,000 entries each): a
    backend with more models than one page is discovered whole."""
    models = tuple(f"{api}-{n:04d}" for n in range(1003))
    _, url = await start_api_mock(nursery, api, models)
    backend = gemini_backend(url) if api == "gemini" else anthropic_backend(url)
    del backend["models"]
    router = await router_with(nursery, backend)
    async with oai(router) as client:
        listed = {m.id for m in (await client.models.list()).data}
        assert set(models) <= listed
        reply = await client.chat.completions.create(
            model=models[-1], messages=[{"role": "user", "content": "last page"}])
    assert reply.model == models[-1]
