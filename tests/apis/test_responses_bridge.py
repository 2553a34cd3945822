"""The Responses bridge (Responses API ↔ Chat Completions), from fixtures in
tests/fixtures/responses/ and through the openai SDK's own types, parsers and accumulator."""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._types import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent

from continuum.apis import anthropic, gemini
from continuum.apis.responses import (
    BridgeError,
    ChatBridge,
    ChatToResponsesStream,
    MemoryConversationStore,
    StoredResponse,
    parse_responses_request,
    responses_to_chat,
)
from continuum.apis.types import StreamTranslator, TranslationError
from continuum.core.sse import SSEReader

FIXTURES = Path(__file__).parent.parent / "fixtures"
HERE = FIXTURES / "responses"
RID = "resp_0123456789abcdef"
CREATED = 1741570000
DONE_AT = 1741570009
MODEL = "qwen3-8b"

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
ITEM = pydantic.TypeAdapter(ResponseItem)
CHAT = pydantic.TypeAdapter(CompletionCreateParamsNonStreaming)
CHAT_STREAM = pydantic.TypeAdapter(CompletionCreateParamsStreaming)

T = TypeVar("T")

#: The HTTP library the SDK is built on (``httpx``, or its ``httpx2`` fork in newer SDKs).
SDK_HTTP: Any = importlib.import_module(
    openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])
Handler = Callable[[Any], Any]  # an SDK_HTTP request → an SDK_HTTP response


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text())


def raw(name: str, folder: Path = HERE) -> bytes:
    return (folder / name).read_bytes()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def bridge(req: dict[str, Any], **kw: Any) -> ChatBridge:
    kw.setdefault("model", MODEL)
    kw.setdefault("response_id", RID)
    kw.setdefault("created_at", CREATED)
    return responses_to_chat(dumps(req), **kw)


def chat_of(req: dict[str, Any], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(bridge(req, **kw).body)
    return body


def sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the in-memory store's methods)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    raise AssertionError("the coroutine suspended")


def force(value: Any) -> Any:
    """Consume the lazy iterators pydantic leaves for ``Iterable`` fields (validating them)."""
    if isinstance(value, dict):
        return {k: force(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [force(v) for v in value]
    if isinstance(value, Iterator):
        return [force(v) for v in value]
    return value


def assert_valid_chat(body: dict[str, Any]) -> None:
    """The chat request validates against the openai SDK's own request types."""
    adapter = CHAT_STREAM if body.get("stream") else CHAT
    force(adapter.validate_python(body))


def events_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Responses SSE bytes → [(event name, data)], checking the framing."""
    text = data.decode()
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        name, payload = name_line[7:], json.loads(data_line[6:])
        assert payload["type"] == name
        out.append((name, payload))
    return out


def run(translator: StreamTranslator, pieces: list[bytes]) -> bytes:
    return b"".join(translator.feed(p) for p in pieces) + translator.finish()


def stream(name: str, ctx_req: dict[str, Any] | None = None) -> ChatToResponsesStream:
    b = bridge(ctx_req or {"model": "gpt-4.1", "input": "hi", "stream": True})
    return ChatToResponsesStream(b.context, clock=lambda: DONE_AT)


def check_events(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Every event validates against the SDK's event union; the sequence is well formed.
    Returns the terminal event's response."""
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    for _, data in events:
        EVENT.validate_python(data)
    names = [n for n, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    terminal = {"response.completed", "response.incomplete", "response.failed"}
    assert names[-1] in terminal and not terminal & set(names[:-1])
    if names[-1] == "response.failed":
        assert names[-2] == "error"
    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    text: dict[tuple[int, int], str] = {}
    args: dict[int, str] = {}
    for name, data in events[2:-1]:
        index: int = data.get("output_index", -1)
        if name == "response.output_item.added":
            assert index == len(added), "output indexes are given in order"
            added[index] = data["item"]
            continue
        if "output_index" in data:
            assert index in added and index not in done, name
        if "item_id" in data:
            assert data["item_id"] == added[data["output_index"]]["id"]
        if name == "response.output_text.delta":
            key = (index, data["content_index"])
            text[key] = text.get(key, "") + data["delta"]
        elif name == "response.output_text.done":
            assert data["text"] == text.get((index, data["content_index"]), "")
        elif name == "response.function_call_arguments.delta":
            args[index] = args.get(index, "") + data["delta"]
        elif name == "response.function_call_arguments.done":
            assert data["arguments"] == args.get(index, "")
        elif name == "response.output_item.done":
            assert data["item"]["id"] == added[index]["id"]
            done[index] = data["item"]
    response: dict[str, Any] = events[-1][1]["response"]
    Response.model_validate(response)
    if names[-1] != "response.failed":
        assert set(done) == set(added)
        assert response["output"] == [done[i] for i in range(len(done))]
    return response


def sdk_final(events: list[tuple[str, dict[str, Any]]]) -> Any:
    """Feed the events through the SDK's own stream accumulator; its final response."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for _, data in events:
        state.handle_event(EVENT.validate_python(data))
    return state._completed_response


def without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


# ---------------------------------------------------------------------------------------
# request: Responses → chat


@pytest.mark.parametrize("case", load("requests.json")["cases"], ids=lambda c: c["name"])
def test_request_fixtures(case: dict[str, Any]) -> None:
    b = bridge(case["responses"])
    body = json.loads(b.body)
    assert body == case["chat"]
    assert_valid_chat(body)
    assert b.stream is bool(case["responses"].get("stream"))


def test_request_echo_is_fixed_with_the_context() -> None:
    req = load("requests.json")["cases"][3]["responses"]  # structured_output
    b = bridge(req)
    echo = b.context.echo
    assert b.context.id == RID and b.context.created_at == CREATED and b.context.model == MODEL
    assert b.context.logprobs
    assert echo["text"] == req["text"]
    assert echo["reasoning"] == {"effort": "high", "summary": "auto"}
    assert echo["metadata"] == {"job": "extract"}
    assert echo["truncation"] == "auto" and echo["max_tool_calls"] == 4
    assert echo["top_logprobs"] == 3 and echo["service_tier"] == "flex"
    assert echo["store"] is True and echo["tool_choice"] == "auto"


def test_request_options() -> None:
    req = {"model": "m", "input": [{"role": "developer", "content": "d"},
                                   {"role": "user", "content": "u"}],
           "instructions": "i", "max_output_tokens": 9}
    body = chat_of(req)
    assert body["messages"][:2] == [{"role": "system", "content": "i"},
                                    {"role": "system", "content": "d"}]
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body
    body = chat_of(req, developer_role="developer", max_tokens_field="max_completion_tokens")
    assert body["messages"][:2] == [{"role": "developer", "content": "i"},
                                    {"role": "developer", "content": "d"}]
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body


def test_reasoning_items_are_dropped_or_kept() -> None:
    req = load("requests.json")["cases"][2]["responses"]  # tool_round, with a reasoning item
    assert "reasoning_content" not in json.dumps(chat_of(req))
    kept = chat_of(req, keep_reasoning=True)
    assert kept["messages"][1]["reasoning_content"] == "Two cities: two calls."
    assert kept["messages"][1]["tool_calls"][0]["id"] == "call_Oslo1"


def test_unknown_fields_pass_and_openai_only_fields_do_not() -> None:
    body = chat_of({"model": "m", "input": "x", "chat_template_kwargs": {"thinking": True},
                    "stream_options": {"include_obfuscation": False},
                    "context_management": [{"type": "compaction"}], "store": False,
                    "metadata": {"a": "b"}})
    assert body["chat_template_kwargs"] == {"thinking": True}
    for key in ("stream_options", "context_management", "store", "metadata", "input"):
        assert key not in body


def test_tool_choice_without_tools_is_not_sent() -> None:
    body = chat_of({"model": "m", "input": "x", "tool_choice": "none",
                    "parallel_tool_calls": False})
    assert "tool_choice" not in body and "parallel_tool_calls" not in body
    assert bridge({"model": "m", "input": "x", "tool_choice": "none"}).context.echo[
        "tool_choice"] == "none"


BUILT_IN_TOOLS = [
    {"type": "web_search"},
    {"type": "web_search_preview"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "computer_use_preview", "display_width": 1024, "display_height": 768,
     "environment": "browser"},
    {"type": "image_generation"},
    {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp"},
    {"type": "local_shell"},
    {"type": "custom", "name": "grammar_tool"},
]


@pytest.mark.parametrize("tool", BUILT_IN_TOOLS, ids=lambda t: t["type"])
def test_built_in_tools_are_refused_by_name(tool: dict[str, Any]) -> None:
    with pytest.raises(BridgeError) as info:
        bridge({"model": "m", "input": "x", "tools": [
            {"type": "function", "name": "f"}, tool]})
    assert repr(tool["type"]) in info.value.message
    assert info.value.param == "tools[1]"
    assert isinstance(info.value, TranslationError)
    err = json.loads(info.value.body())["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "tools[1]"


@pytest.mark.parametrize(
    ("req", "param", "words"),
    [
        ({"input": [{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-abc", "detail": "auto"}]}]},
         "input[0].content[0].file_id", "/v1/files"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_file", "file_id": "file-abc"}]}]},
         "input[0].content[0]", "file_data"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]",
         "previous_response_id"),
        ({"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]},
         "input[0]", "'web_search_call'"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "'tool'"),
        ({"input": "x", "background": True}, "background", "background"),
        ({"input": "x", "conversation": "conv_1"}, "conversation", "Conversations"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt", "prompt"),
        ({"input": "x", "tool_choice": {"type": "web_search_preview"},
          "tools": [{"type": "function", "name": "f"}]}, "tool_choice", "web_search_preview"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
         "text.format.name", "name"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "positive"),
        ({"input": "x", "temperature": "hot"}, "temperature", "number"),
        ({}, "input", "required"),
        ({"input": []}, "input", "at least one"),
        ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
         "input[0].name", "name"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id",
         "call_id"),
        ({"input": "x", "previous_response_id": ""}, "previous_response_id", "non-empty"),
        ({"input": "x", "stream": "yes"}, "stream", "boolean"),
    ],
)
def test_untranslatable_requests(req: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(BridgeError) as info:
        bridge({"model": "m", **req})
    assert info.value.param == param
    assert words in info.value.message


def test_bad_bodies() -> None:
    for body in (b"{nope", b"[1]", b"\xff"):
        with pytest.raises(BridgeError):
            parse_responses_request(body)


# ---------------------------------------------------------------------------------------
# previous_response_id and the store


def test_previous_response_not_found() -> None:
    with pytest.raises(BridgeError) as info:
        bridge({"model": "m", "input": "x", "previous_response_id": "resp_gone"})
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"
    assert json.loads(info.value.body())["error"]["code"] == "previous_response_not_found"
    other = StoredResponse("resp_other", b"{}", b"[]", b"[]")
    with pytest.raises(BridgeError):
        bridge({"model": "m", "input": "x", "previous_response_id": "resp_gone"},
               previous=other)


def tool_answer(call_id: str = "call_1") -> bytes:
    return dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
                  "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                      "role": "assistant", "content": None, "tool_calls": [
                          {"id": call_id, "type": "function",
                           "function": {"name": "get_weather",
                                        "arguments": "{\"city\":\"Oslo\"}"}}]}}]})


WEATHER_TOOL = {"type": "function", "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_chaining_sends_the_whole_conversation() -> None:
    store = MemoryConversationStore(clock=lambda: 0.0)
    first = bridge({"model": "m", "input": "Weather in Oslo?", "instructions": "Be brief.",
                    "tools": [WEATHER_TOOL]}, response_id="resp_turn1")
    answer = first.translate(200, tool_answer())
    assert answer.status == 200
    stored = first.stored(answer.body)
    assert sync(store.put(stored))
    assert stored.id == "resp_turn1"
    assert json.loads(stored.response) == json.loads(answer.body)
    assert json.loads(stored.input_items) == [
        {"type": "message", "role": "user", "id": "msg_turn1_in0", "status": "completed",
         "content": [{"type": "input_text", "text": "Weather in Oslo?"}]}]
    for item in json.loads(stored.conversation):
        ITEM.validate_python(item)

    req = parse_responses_request(dumps({
        "model": "m", "previous_response_id": "resp_turn1", "tools": [WEATHER_TOOL],
        "input": [{"type": "function_call_output", "call_id": "call_1", "output": "4°C"}]}))
    previous = sync(store.get(req.previous_response_id or ""))
    second = responses_to_chat(req, model=MODEL, previous=previous, response_id="resp_turn2")
    messages = json.loads(second.body)["messages"]
    assert messages == [  # the first turn's instructions are not carried over
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4°C"},
    ]
    assert second.context.echo["previous_response_id"] == "resp_turn1"
    text = dumps({"choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "4°C in Oslo."}}]})
    third_input = second.stored(second.translate(200, text).body)
    assert len(json.loads(third_input.conversation)) == 4
    # a turn that continues without new input (input is optional when continuing)
    again = responses_to_chat(dumps({"model": "m", "previous_response_id": "resp_turn2"}),
                              model=MODEL, previous=third_input)
    assert json.loads(again.body)["messages"][-1] == {"role": "assistant",
                                                      "content": "4°C in Oslo."}


def entry(rid: str, size: int = 10) -> StoredResponse:
    return StoredResponse(rid, b"x" * size, b"[]", b"[]")


async def test_memory_store_ttl_and_bounds() -> None:
    now = [100.0]
    store = MemoryConversationStore(clock=lambda: now[0], max_entries=3, max_bytes=100, ttl=10)
    assert await store.put(entry("a"))
    now[0] = 105
    assert await store.put(entry("b"))
    assert (await store.get("a")) is not None and len(store) == 2
    now[0] = 110  # a expires exactly now
    assert await store.get("a") is None
    assert (await store.get("b")) is not None
    assert store.bytes == entry("b").size
    # count bound: the oldest goes
    for rid in ("c", "d", "e"):
        assert await store.put(entry(rid))
    assert len(store) == 3 and await store.get("b") is None
    # byte bound: a big entry pushes older ones out; one too large is not kept at all
    assert await store.put(entry("big", 70))
    assert await store.get("c") is None and await store.get("d") is None
    assert (await store.get("e")) is not None and (await store.get("big")) is not None
    assert store.bytes <= 100
    assert not await store.put(entry("huge", 200))
    assert await store.get("huge") is None
    # replacing keeps one entry and the byte count right
    assert await store.put(entry("e", 20))
    assert store.bytes == entry("big", 70).size + entry("e", 20).size
    assert await store.delete("e") and not await store.delete("e")
    now[0] = 1000
    assert not await store.delete("big")  # expired: as if gone
    assert len(store) == 0 and store.bytes == 0
    with pytest.raises(ValueError):
        MemoryConversationStore(clock=lambda: 0.0, ttl=0)


# ---------------------------------------------------------------------------------------
# answer: chat.completion → Response


COMPLETIONS = load("completions.json")


def completion_bridge() -> ChatBridge:
    return bridge(COMPLETIONS["request"], response_id=COMPLETIONS["response_id"],
                  created_at=COMPLETIONS["created_at"])


@pytest.mark.parametrize("case", COMPLETIONS["cases"], ids=lambda c: c["name"])
def test_completion_fixtures(case: dict[str, Any]) -> None:
    b = completion_bridge()
    from continuum.apis.responses import chat_to_response

    out = chat_to_response(b.context, 200, dumps(case["chat"]),
                           completed_at=COMPLETIONS["completed_at"])
    assert out.status == 200 and out.content_type == b"application/json"
    body = json.loads(out.body)
    for key, value in case["response"].items():
        assert body[key] == value, key
    parsed = Response.model_validate(body)
    texts = [p["text"] for i in case["response"]["output"] if i["type"] == "message"
             for p in i["content"] if p["type"] == "output_text"]
    assert parsed.output_text == "".join(texts)
    assert ("completed_at" in body) == (body["status"] == "completed")


@pytest.mark.parametrize("case", COMPLETIONS["errors"], ids=lambda c: str(c["status"]))
def test_upstream_errors(case: dict[str, Any]) -> None:
    out = completion_bridge().translate(case["status"], dumps(case["upstream"]))
    assert out.status == case["status"]
    assert json.loads(out.body) == case["expected"]


def test_broken_answers() -> None:
    b = completion_bridge()
    out = b.translate(502, b"<html>Bad Gateway</html>")
    err = json.loads(out.body)["error"]
    assert out.status == 502 and "Bad Gateway" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    for body in (b"not json", b'{"object":"chat.completion"}', b'{"error":{"message":"x"}}'):
        assert b.translate(200, body).status == 502


def test_logprobs_reach_output_text() -> None:
    b = bridge({"model": "m", "input": "x", "include": ["message.output_text.logprobs"]})
    chat = {"choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hi"},
                         "logprobs": {"content": [
                             {"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                              "top_logprobs": [{"token": "Hi", "logprob": -0.1,
                                                "bytes": [72, 105]}]}]}}]}
    body = json.loads(b.translate(200, dumps(chat)).body)
    Response.model_validate(body)
    assert body["output"][0]["content"][0]["logprobs"] == [
        {"token": "Hi", "bytes": [72, 105], "logprob": -0.1,
         "top_logprobs": [{"token": "Hi", "bytes": [72, 105], "logprob": -0.1}]}]


# ---------------------------------------------------------------------------------------
# stream: chat chunks → Responses events

STREAMS = ["chat_stream_text", "chat_stream_parallel_tools", "chat_stream_reasoning"]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_fixtures(name: str) -> None:
    t = stream(name)
    events = events_of(run(t, [raw(name + ".sse")]))
    expected = [(n, d) for n, d in load(name + ".expected.json")]
    assert events == expected
    response = check_events(events)
    assert t.response == response and not t.truncated
    final = sdk_final(events)  # the SDK keeps a final response for completed ones only
    if response["status"] == "completed":
        assert final.output_text == Response.model_validate(response).output_text


@pytest.mark.parametrize("name", STREAMS)
def test_stream_split_at_every_byte(name: str) -> None:
    data = raw(name + ".sse")
    whole = run(stream(name), [data])
    for i in range(len(data) + 1):
        assert run(stream(name), [data[:i], data[i:]]) == whole, i
    assert run(stream(name), [data[i : i + 1] for i in range(len(data))]) == whole


def test_stream_sends_each_event_as_soon_as_complete() -> None:
    data = raw("chat_stream_text.sse")
    t = stream("x")
    first = t.feed(b"")
    assert [n for n, _ in events_of(first)] == ["response.created", "response.in_progress"]
    # the role chunk carries no text; the first text chunk opens the message, once whole
    second_end = data.index(b"\n\n", data.index(b"\n\n") + 2) + 2
    assert t.feed(data[: second_end - 1]) == b""
    out = t.feed(data[second_end - 1 : second_end])
    assert [n for n, _ in events_of(out)] == [
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta"]
    assert events_of(out)[-1][1]["delta"] == "Oslo"


def test_stream_matches_the_recorded_openai_shapes() -> None:
    """The OpenAI recordings the Anthropic translator's tests use, through this bridge."""
    folder = FIXTURES / "anthropic"
    for name in ("openai_stream_text.sse", "openai_stream_tool.sse"):
        data = raw(name, folder)
        events = events_of(run(stream(name), [data]))
        response = check_events(events)
        assert response["status"] == "completed"
        assert sdk_final(events) is not None
        for i in range(len(data) + 1):
            assert events_of(run(stream(name), [data[:i], data[i:]])) == events


def test_stream_truncated() -> None:
    data = raw("chat_stream_parallel_tools.sse")
    cut = data[: data.index(b'"finish_reason":"tool_calls"')]
    cut = cut[: cut.rindex(b"\r\n\r\n") + 4]
    t = stream("x")
    events = events_of(run(t, [cut]))
    assert t.truncated
    response = check_events(events)
    assert [n for n, _ in events[-2:]] == ["error", "response.failed"]
    assert events[-2][1]["code"] == "server_error"
    assert response["status"] == "failed"
    assert response["error"]["code"] == "server_error"
    assert [i["status"] for i in response["output"]] == ["completed", "incomplete", "incomplete"]
    assert response["output"][1]["arguments"] == '{"city": "Oslo"}'
    assert t.response == response
    assert t.feed(b"data: more\n\n") == b"" and t.finish() == b"" and t.error(500, "x") == b""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for _, d in events:
        state.handle_event(EVENT.validate_python(d))


def test_stream_finish_reason_without_done_ends_cleanly() -> None:
    data = raw("chat_stream_text.sse")
    t = stream("x")
    events = events_of(run(t, [data[: data.index(b"data: [DONE]")]]))
    assert not t.truncated and events[-1][0] == "response.completed"
    assert events[-1][1]["response"]["usage"]["input_tokens"] == 14


@pytest.mark.parametrize(("status", "code"), [(429, "rate_limit_exceeded"), (504, "server_error")])
def test_stream_router_error(status: int, code: str) -> None:
    data = raw("chat_stream_text.sse")
    t = stream("x")
    out = t.feed(data[:400]) + t.error(status, "upstream trouble")
    events = events_of(out)
    response = check_events(events)
    assert events[-2][1] == {"type": "error", "sequence_number": len(events) - 2,
                             "code": code, "message": "upstream trouble", "param": None}
    assert response["error"] == {"code": code, "message": "upstream trouble"}
    assert not t.truncated
    # an error before anything arrived still opens the stream properly
    events = events_of(stream("x").error(502, "no backend"))
    assert [n for n, _ in events] == ["response.created", "response.in_progress", "error",
                                      "response.failed"]
    check_events(events)


def test_stream_upstream_error_chunk() -> None:
    data = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
            b'data: {"error":{"message":"backend exploded","code":"rate_limit_exceeded"}}\n\n'
            b"data: [DONE]\n\n")
    t = stream("x")
    events = events_of(run(t, [data]))
    response = check_events(events)
    assert response["error"] == {"code": "rate_limit_exceeded", "message": "backend exploded"}
    assert response["output"][0]["content"][0]["text"] == "Hi"
    assert not t.truncated
    # "error": null is no error
    data = (b'data: {"error":null,"choices":[{"index":0,"delta":{"content":"Hi"},'
            b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    assert check_events(events_of(run(stream("x"), [data])))["status"] == "completed"
    assert completion_bridge().translate(200, dumps({
        "error": None, "choices": [{"index": 0, "message": {"content": "Hi"}}]})).status == 200


def test_stream_only_done_and_empty() -> None:
    events = events_of(run(stream("x"), [b"data: [DONE]\n\n"]))
    assert [n for n, _ in events] == ["response.created", "response.in_progress",
                                      "response.completed"]
    assert check_events(events)["output"] == []
    t = stream("x")
    events = events_of(run(t, []))
    assert t.truncated and events[-1][0] == "response.failed"


def test_stream_refusal_text_after_calls_and_late_names() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "A"}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "No"}}]},
        {"choices": [{"index": 0, "delta": {"content": "B"}}]},
        # a call whose name comes after its first argument fragment, and without index
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"id": "call_x", "function": {"arguments": "{\"a\""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"function": {"name": "f", "arguments": ":1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "after"}}]},
        # a fragment for the closed call is dropped
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"id": "call_x", "function": {"arguments": "zzz"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    data = b"".join(b"data: " + dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    events = events_of(run(stream("x"), [data]))
    response = check_events(events)
    out = response["output"]
    assert [i["type"] for i in out] == ["message", "function_call", "message"]
    assert out[0]["content"] == [
        {"type": "output_text", "text": "A", "annotations": [], "logprobs": []},
        {"type": "refusal", "refusal": "No"},
        {"type": "output_text", "text": "B", "annotations": [], "logprobs": []},
    ]
    assert out[1]["call_id"] == "call_x" and out[1]["name"] == "f"
    assert out[1]["arguments"] == '{"a":1}'
    assert out[2]["content"][0]["text"] == "after"
    final = sdk_final(events)
    assert final is not None and final.output_text == "ABafter"


def test_stream_logprobs() -> None:
    b = bridge({"model": "m", "input": "x", "stream": True,
                "include": ["message.output_text.logprobs"]})
    lp = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]}
    data = (b'data: ' + dumps({"choices": [{"index": 0, "delta": {"content": "Hi"},
                                            "logprobs": lp}]}) + b"\n\n"
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            b"data: [DONE]\n\n")
    events = events_of(run(b.stream_translator(), [data]))
    check_events(events)
    delta = next(d for n, d in events if n == "response.output_text.delta")
    assert delta["logprobs"] == [{"token": "Hi", "bytes": [72, 105], "logprob": -0.5,
                                  "top_logprobs": []}]
    part = events[-1][1]["response"]["output"][0]["content"][0]
    assert part["logprobs"] == delta["logprobs"]


# ---------------------------------------------------------------------------------------
# piped through the Anthropic and Gemini translators


class Pipeline:
    """Backend SSE → chat chunks → Responses events (what the request path will pipe)."""

    def __init__(self, first: StreamTranslator, second: ChatToResponsesStream) -> None:
        self.first, self.second = first, second

    def feed(self, data: bytes) -> bytes:
        return self.second.feed(self.first.feed(data))

    def finish(self) -> bytes:
        return self.second.feed(self.first.finish()) + self.second.finish()

    def error(self, status: int, message: str) -> bytes:
        return self.second.error(status, message)


def anthropic_pipeline() -> Pipeline:
    return Pipeline(anthropic.AnthropicToOpenAIStream(MODEL, True), stream("x"))


def gemini_pipeline() -> Pipeline:
    return Pipeline(gemini.GeminiToOpenAIStream(MODEL, True), stream("x"))


@pytest.mark.parametrize(
    ("make", "folder", "name"),
    [(anthropic_pipeline, "anthropic", "stream_text.sse"),
     (anthropic_pipeline, "anthropic", "stream_tool.sse"),
     (gemini_pipeline, "gemini", "stream_text.sse"),
     (gemini_pipeline, "gemini", "stream_function_call.sse")],
)
def test_chained_streams(make: Callable[[], Pipeline], folder: str, name: str) -> None:
    data = raw(name, FIXTURES / folder)
    whole = run(make(), [data])
    events = events_of(whole)
    response = check_events(events)
    assert response["status"] == "completed"
    assert response["usage"] is not None and response["usage"]["total_tokens"] > 0
    assert sdk_final(events) is not None
    for i in range(0, len(data) + 1, 7):
        assert run(make(), [data[:i], data[i:]]) == whole, i


def test_chained_anthropic_error_event() -> None:
    events = events_of(run(anthropic_pipeline(), [raw("stream_error.sse", FIXTURES / "anthropic")]))
    response = check_events(events)
    assert response["status"] == "failed" and response["error"]["message"] == "Overloaded"
    assert response["output"][0]["content"][0]["text"] == "Partial"


def test_chained_truncation_is_a_failure() -> None:
    data = raw("stream_text.sse", FIXTURES / "anthropic")
    pipeline = anthropic_pipeline()
    events = events_of(run(pipeline, [data[: data.index(b"event: message_delta")]]))
    assert check_events(events)["status"] == "failed"
    assert pipeline.first.truncated  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# the openai SDK end to end (its HTTP client over a transport that runs the bridge)


def chat_reply(chat: dict[str, Any]) -> dict[str, Any]:
    """A scripted chat backend: calls the tool first, then answers from its result."""
    last = chat["messages"][-1]
    message: dict[str, Any]
    if chat.get("tools") and last["role"] == "user":
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {
                "name": chat["tools"][0]["function"]["name"],
                "arguments": "{\"city\": \"Oslo\"}"}}]}
        finish = "tool_calls"
    elif "response_format" in chat:
        message = {"role": "assistant", "content": "{\"name\": \"Ada\", \"age\": 36}"}
        finish = "stop"
    else:
        said = last["content"] if isinstance(last["content"], str) else "parts"
        message = {"role": "assistant", "reasoning_content": "Thinking.",
                   "content": f"You said: {said}"}
        finish = "stop"
    return {"id": "chatcmpl-e2e", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}


def chunks_of(reply: dict[str, Any]) -> bytes:
    """A chat.completion as the chunk stream a backend would send, in small pieces."""
    message = reply["choices"][0]["message"]
    out = []
    for key in ("reasoning_content", "content"):
        text = message.get(key) or ""
        out += [{key: text[i : i + 3]} for i in range(0, len(text), 3)]
    for i, call in enumerate(message.get("tool_calls") or ()):
        args = call["function"]["arguments"]
        out.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                    "function": {"name": call["function"]["name"],
                                                 "arguments": ""}}]})
        out += [{"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 4]}}]}
                for j in range(0, len(args), 4)]
    lines = [{"choices": [{"index": 0, "delta": d}]} for d in out]
    lines.append({"choices": [{"index": 0, "delta": {},
                               "finish_reason": reply["choices"][0]["finish_reason"]}]})
    lines.append({"choices": [], "usage": reply["usage"]})
    return b"".join(b"data: " + dumps(x) + b"\n\n" for x in lines) + b"data: [DONE]\n\n"


class Router:
    """The request path in miniature: store lookup, bridge, backend, translation, store."""

    def __init__(self, via: str = "openai") -> None:
        self.store = MemoryConversationStore(clock=lambda: 0.0)
        self.via = via
        self.chat_requests: list[dict[str, Any]] = []

    def handle(self, request: Any) -> Any:
        assert request.url.path == "/v1/responses"
        try:
            req = parse_responses_request(request.content)
            previous = (sync(self.store.get(req.previous_response_id))
                        if req.previous_response_id else None)
            b = responses_to_chat(req, model=MODEL, previous=previous)
        except BridgeError as exc:
            return SDK_HTTP.Response(exc.status, content=exc.body())
        chat = json.loads(b.body)
        assert_valid_chat(chat)
        self.chat_requests.append(chat)
        reply = chat_reply(chat)
        if b.stream:
            translator = b.stream_translator()
            data = chunks_of(reply)
            out = b"".join(translator.feed(data[i : i + 5]) for i in range(0, len(data), 5))
            out += translator.finish()
            if b.store and translator.response is not None:
                sync(self.store.put(b.stored(translator.response)))
            return SDK_HTTP.Response(200, content=out,
                                  headers={"content-type": "text/event-stream"})
        answer = b.translate(200, dumps(reply))
        if b.store and answer.status == 200:
            sync(self.store.put(b.stored(answer.body)))
        return SDK_HTTP.Response(answer.status, content=answer.body,
                              headers={"content-type": "application/json"})


def client(router: Router | Handler) -> openai.OpenAI:
    """The SDK with its own HTTP client, over a transport that calls ``router``."""
    handler = router.handle if isinstance(router, Router) else router
    transport = SDK_HTTP.MockTransport(handler)
    return openai.OpenAI(base_url="http://router.test/v1", api_key="unused", max_retries=0,
                         http_client=openai.DefaultHttpxClient(transport=transport))


def test_sdk_create_and_stream() -> None:
    router = Router()
    with client(router) as c:
        r = c.responses.create(model="gpt-4.1", input="hello", instructions="Be brief.")
        assert r.status == "completed" and r.output_text == "You said: hello"
        assert [i.type for i in r.output] == ["reasoning", "message"]
        assert r.usage is not None and r.usage.total_tokens == 16
        assert r.instructions == "Be brief."
        with c.responses.stream(model="gpt-4.1", input="again") as s:
            kinds = [e.type for e in s]
            final = s.get_final_response()
        assert final.output_text == "You said: again"
        assert "response.output_text.delta" in kinds
        assert "response.reasoning_summary_text.delta" in kinds
        assert kinds[-1] == "response.completed"
        raw_events = list(c.responses.create(model="gpt-4.1", input="x", stream=True))
        assert [e.sequence_number for e in raw_events] == list(range(len(raw_events)))
        assert raw_events[-1].type == "response.completed"


def test_sdk_tool_loop_with_previous_response_id() -> None:
    router = Router()
    tools: Any = [{"type": "function", "name": "get_weather", "strict": True,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                  "required": ["city"], "additionalProperties": False}}]
    with client(router) as c:
        first = c.responses.create(model="gpt-4.1", input="Weather in Oslo?", tools=tools,
                                   instructions="Use tools.")
        call = first.output[0]
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Oslo"}
        with c.responses.stream(
            model="gpt-4.1", previous_response_id=first.id, tools=tools,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "4°C"}],
        ) as s:
            second = s.get_final_response()
        assert second.output_text == "You said: 4°C"
        assert second.previous_response_id == first.id
        third = c.responses.create(model="gpt-4.1", previous_response_id=second.id,
                                   input="thanks")
        assert third.output_text == "You said: thanks"
        with pytest.raises(openai.BadRequestError) as info:
            c.responses.create(model="gpt-4.1", previous_response_id="resp_nope", input="x")
        assert info.value.code == "previous_response_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            c.responses.create(model="gpt-4.1", input="x",
                               tools=[{"type": "web_search_preview"}])
        assert "web_search_preview" in bad.value.message
    roles = [[m["role"] for m in chat["messages"]] for chat in router.chat_requests]
    assert roles == [["system", "user"], ["user", "assistant", "tool"],
                     ["user", "assistant", "tool", "assistant", "user"]]


def test_sdk_parse_structured_output() -> None:
    class Person(pydantic.BaseModel):
        name: str
        age: int

    router = Router()
    with client(router) as c:
        parsed = c.responses.parse(model="gpt-4.1", input="Ada, 36", text_format=Person)
        assert parsed.output_parsed == Person(name="Ada", age=36)
        with c.responses.stream(model="gpt-4.1", input="Ada, 36", text_format=Person) as s:
            final = s.get_final_response()
        assert final.output_parsed == Person(name="Ada", age=36)
    fmt = router.chat_requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["name", "age"]


def anthropic_backend(request: Any) -> Any:
    """The bridge chained through the Anthropic translator, against recorded answers."""
    req = parse_responses_request(request.content)
    b = responses_to_chat(req, model=MODEL)
    up = anthropic.openai_to_anthropic_request(b.body, model="claude-x")
    sent = json.loads(up.body)
    assert sent["messages"][-1]["role"] == "user"
    if b.stream:
        pipeline = Pipeline(anthropic.AnthropicToOpenAIStream(MODEL, True), b.stream_translator())
        out = run(pipeline, [raw("stream_tool.sse", FIXTURES / "anthropic")])
        return SDK_HTTP.Response(200, content=out, headers={"content-type": "text/event-stream"})
    message = json.loads(raw("message_tool_use.json", FIXTURES / "anthropic"))["anthropic"]
    chat = anthropic.anthropic_to_openai_response(200, dumps(message), model=MODEL)
    answer = b.translate(chat.status, chat.body)
    return SDK_HTTP.Response(answer.status, content=answer.body,
                          headers={"content-type": "application/json"})


def gemini_backend(request: Any) -> Any:
    """The bridge chained through the Gemini translator, against recorded answers."""
    b = responses_to_chat(request.content, model=MODEL)
    up = gemini.openai_to_gemini_request(b.body, model="gemini-2.5-flash",
                                         stream=b.stream)
    assert json.loads(up.body)["contents"]
    if b.stream:
        pipeline = Pipeline(gemini.GeminiToOpenAIStream(MODEL, True), b.stream_translator())
        out = run(pipeline, [raw("stream_function_call.sse", FIXTURES / "gemini")])
        return SDK_HTTP.Response(200, content=out, headers={"content-type": "text/event-stream"})
    chat = gemini.gemini_to_openai_response(200, raw("tools_response.json", FIXTURES / "gemini"),
                                            model=MODEL)
    answer = b.translate(chat.status, chat.body)
    return SDK_HTTP.Response(answer.status, content=answer.body,
                          headers={"content-type": "application/json"})


@pytest.mark.parametrize("backend", [anthropic_backend, gemini_backend])
def test_sdk_through_anthropic_and_gemini(
    backend: Handler,
) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "strict": False,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    with client(backend) as c:
        plain = c.responses.create(model="m", input="Weather?", tools=tools)
        calls = [i for i in plain.output if i.type == "function_call"]
        assert calls and all(isinstance(json.loads(i.arguments), dict) for i in calls)
        with c.responses.stream(model="m", input="Weather?", tools=tools) as s:
            final = s.get_final_response()
        streamed = [i for i in final.output if i.type == "function_call"]
        assert streamed and all(isinstance(json.loads(i.arguments), dict) for i in streamed)
        assert final.usage is not None and final.usage.total_tokens > 0


# ---------------------------------------------------------------------------------------
# the SSE reader


def test_sse_reader_line_endings_and_fields() -> None:
    data = (b": comment\r\nevent: x\r\ndata: a\r\ndata:b\r\n\r\n"
            b"id: 3\rdata: c\r\rdata: d\n\ndata: e")
    expected = [b"a\nb", b"c", b"d"]
    whole = SSEReader()
    assert whole.feed(data) == expected
    assert whole.tail() == [b"e"]
    for i in range(len(data) + 1):
        r = SSEReader()
        assert r.feed(data[:i]) + r.feed(data[i:]) + r.tail() == [*expected, b"e"], i
    r = SSEReader()
    got = [p for i in range(len(data)) for p in r.feed(data[i : i + 1])] + r.tail()
    assert got == [*expected, b"e"]
    assert SSEReader().tail() == []


# ---------------------------------------------------------------------------------------
# properties

_text = st.text(min_size=1, max_size=24)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)


@st.composite
def chat_answers(draw: st.DrawFn) -> dict[str, Any]:
    """A chat answer: its message, finish reason and usage."""
    message: dict[str, Any] = {"role": "assistant"}
    if draw(st.booleans()):
        message["reasoning_content"] = draw(_text)
    message["content"] = draw(st.none() | _text)
    if draw(st.integers(0, 9)) == 0:
        message["refusal"] = draw(_text)
    calls = []
    for i in range(draw(st.integers(0, 3))):
        args = json.dumps(draw(st.dictionaries(_name, st.integers() | _text, max_size=3)))
        calls.append({"id": f"call_{i}", "type": "function",
                      "function": {"name": draw(_name), "arguments": args}})
    if calls:
        message["tool_calls"] = calls
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    usage = draw(st.none() | st.fixed_dictionaries({
        "prompt_tokens": st.integers(0, 10_000), "completion_tokens": st.integers(0, 10_000)}))
    return {"message": message, "finish": finish, "usage": usage}


def pieces(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
    bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


@st.composite
def streamed(draw: st.DrawFn) -> tuple[dict[str, Any], bytes, list[int]]:
    """A chat answer, its chunk stream (fragments of parallel calls interleaved) and the
    byte positions the stream is cut at."""
    answer = draw(chat_answers())
    message = answer["message"]
    deltas: list[dict[str, Any]] = [{"role": "assistant"}]
    for key in ("reasoning_content", "content", "refusal"):
        if message.get(key):
            deltas += [{key: p} for p in pieces(draw, message[key])]
    queues = []
    for i, call in enumerate(message.get("tool_calls", ())):
        frags = pieces(draw, call["function"]["arguments"])
        head = {"index": i, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": frags[0]}}
        queues.append([head] + [{"index": i, "function": {"arguments": f}} for f in frags[1:]])
    started = 0
    while any(queues):
        # a call starts only after the ones before it started; then fragments interleave
        live = [q for q in queues[: started + 1] if q]
        q = draw(st.sampled_from(live))
        if q is queues[started] and started + 1 < len(queues) and q[0].get("id"):
            started += 1
        deltas.append({"tool_calls": [q.pop(0)]})
    lines = [{"id": "chatcmpl-p", "choices": [{"index": 0, "delta": d}]} for d in deltas]
    lines.append({"id": "chatcmpl-p", "choices": [{"index": 0, "delta": {},
                                                    "finish_reason": answer["finish"]}]})
    if answer["usage"] is not None:
        lines.append({"id": "chatcmpl-p", "choices": [], "usage": answer["usage"]})
    data = b"".join(b"data: " + dumps(x) + b"\n\n" for x in lines) + b"data: [DONE]\n\n"
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=6)))
    return answer, data, cuts


def completion(answer: dict[str, Any]) -> bytes:
    return dumps({"id": "chatcmpl-p", "object": "chat.completion", "created": 1,
                  "model": MODEL, "usage": answer["usage"],
                  "choices": [{"index": 0, "message": answer["message"],
                               "finish_reason": answer["finish"]}]})


@settings(max_examples=200, deadline=None)
@given(streamed())
def test_property_stream_equals_whole_answer(case: tuple[dict[str, Any], bytes, list[int]]) -> None:
    answer, data, cuts = case
    b = bridge({"model": "m", "input": "x", "stream": True})
    split = [data[a:z] for a, z in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    t = ChatToResponsesStream(b.context, clock=lambda: DONE_AT)
    out = run(t, split)
    assert out == run(ChatToResponsesStream(b.context, clock=lambda: DONE_AT), [data])
    events = events_of(out)
    response = check_events(events)
    whole = json.loads(b.translate(200, completion(answer)).body)
    assert without(response, "completed_at") == without(whole, "completed_at")
    if response["status"] == "completed":
        final = sdk_final(events)
        assert final is not None and final.output_text == Response.model_validate(
            whole).output_text


@settings(max_examples=200, deadline=None)
@given(chat_answers(), st.booleans())
def test_property_output_items_round_trip(answer: dict[str, Any], keep: bool) -> None:
    """A Response's output, sent back as input, is the chat assistant message again."""
    first = bridge({"model": "m", "input": "q"})
    out = json.loads(first.translate(200, completion(answer)).body)["output"]
    if not out:
        return
    for item in out:
        ITEM.validate_python(item)
    back = chat_of({"model": "m", "input": [{"role": "user", "content": "q"}, *out]},
                   keep_reasoning=keep)
    assert_valid_chat(back)
    message = answer["message"]
    got = back["messages"][-1] if len(back["messages"]) == 2 else None
    if got is None:  # only a reasoning item came back: nothing to send
        assert [i["type"] for i in out] == ["reasoning"]
        return
    parts: list[dict[str, Any]] = []
    if message.get("content"):
        parts.append({"type": "text", "text": message["content"]})
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    expected: dict[str, Any] = {
        "role": "assistant",
        "content": (parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text"
                    else parts or None),
    }
    if message.get("tool_calls"):
        expected["tool_calls"] = message["tool_calls"]
    if keep and message.get("reasoning_content"):
        expected["reasoning_content"] = message["reasoning_content"]
    assert got == expected


@st.composite
def responses_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Random Responses requests the bridge accepts."""
    tools = draw(st.lists(_name, max_size=3, unique=True))
    items: list[Any] = []
    n = 0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "parts", "assistant", "system", "round"]))
        if kind == "user" or (kind == "round" and not tools):
            items.append({"role": "user", "content": draw(_text)})
        elif kind == "parts":
            items.append({"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": t}
                for t in draw(st.lists(_text, min_size=1, max_size=3))]})
        elif kind == "assistant":
            items.append({"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": draw(_text), "annotations": []}]})
        elif kind == "system":
            items.append({"role": draw(st.sampled_from(["system", "developer"])),
                          "content": draw(_text)})
        else:
            if draw(st.booleans()):
                items.append({"type": "reasoning", "id": f"rs_{n}", "summary": [
                    {"type": "summary_text", "text": draw(_text)}]})
            ids = []
            for _ in range(draw(st.integers(1, 2))):
                n += 1
                ids.append(f"call_{n}")
                items.append({"type": "function_call", "call_id": ids[-1],
                              "name": draw(st.sampled_from(tools)),
                              "arguments": json.dumps(draw(st.dictionaries(
                                  _name, st.integers(), max_size=2)))})
            items += [{"type": "function_call_output", "call_id": i, "output": draw(_text)}
                      for i in ids]
    req: dict[str, Any] = {"model": "m", "input": items}
    if draw(st.booleans()):
        req["instructions"] = draw(_text)
    if tools:
        req["tools"] = [{"type": "function", "name": t, "description": draw(_text),
                         "parameters": {"type": "object", "properties": {}}} for t in tools]
        req["tool_choice"] = draw(st.sampled_from(["auto", "none", "required"]) | st.builds(
            lambda t: {"type": "function", "name": t}, st.sampled_from(tools)))
    for key, strategy in (("temperature", st.floats(0, 2)), ("top_p", st.floats(0, 1)),
                          ("max_output_tokens", st.integers(1, 100_000)),
                          ("stream", st.booleans()),
                          ("reasoning", st.builds(lambda e: {"effort": e},
                                                  st.sampled_from(["low", "medium", "high"])))):
        if draw(st.booleans()):
            req[key] = draw(strategy)
    return req


@settings(max_examples=200, deadline=None)
@given(responses_requests())
def test_property_requests_make_valid_chat_for_every_backend(req: dict[str, Any]) -> None:
    b = bridge(req)
    chat = json.loads(b.body)
    assert_valid_chat(chat)
    # every tool message answers a call of an earlier assistant message
    called: set[str] = set()
    for m in chat["messages"]:
        called |= {c["id"] for c in m.get("tool_calls", ())}
        if m["role"] == "tool":
            assert m["tool_call_id"] in called
    non_system = [m for m in chat["messages"] if m["role"] not in ("system", "developer")]
    if non_system and non_system[-1]["role"] != "assistant":
        # the same body goes on through the Anthropic and Gemini translators
        anthropic.openai_to_anthropic_request(b.body, model="claude-x")
        gemini.openai_to_gemini_request(b.body, model="gemini-x",
                                        stream=b.stream)
    Response.model_validate(json.loads(b.translate(200, completion({
        "message": {"role": "assistant", "content": "ok"}, "finish": "stop",
        "usage": None})).body))
