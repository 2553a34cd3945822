"""The OpenAI mock's features beyond plain text: tools, ``n``, ``response_format``,
``logprobs``, ``seed``, the Responses API, and its answers to hostile requests (always a
clear 400, never a crash or a hang)."""

from __future__ import annotations

import argparse
import enum
import json
import typing
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest
import trio

from continuum.config import MockConfig, MockFailure
from continuum.mock import MockUpstream, add_mock_arguments, serve_mock
from continuum.testing._responses import ResponseStore
from continuum.testing._schema import MAX_DEPTH, Generator, SchemaError, check_schema

GUARD = 10  # seconds: every request here answers in milliseconds


class Mock:
    def __init__(self, upstream: MockUpstream, address: str, client: httpx.AsyncClient) -> None:
        self.upstream = upstream
        self.address = address
        self.client = client

    async def chat(self, **body: Any) -> httpx.Response:
        body.setdefault("model", "m1")
        body.setdefault("messages", [{"role": "user", "content": "hello"}])
        with trio.fail_after(GUARD):
            return await self.client.post("/v1/chat/completions", json=body)

    async def responses(self, **body: Any) -> httpx.Response:
        body.setdefault("model", "m1")
        with trio.fail_after(GUARD):
            return await self.client.post("/v1/responses", json=body)


@pytest.fixture
async def mock(nursery: trio.Nursery) -> AsyncIterator[Mock]:
    upstream = MockUpstream(MockConfig(stream_chunks=4), models=("m1",), seed=1)
    address = await nursery.start(serve_mock, upstream)
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=GUARD) as client:
        yield Mock(upstream, address, client)


def sse(body: bytes) -> list[dict[str, Any]]:
    """The JSON ``data:`` payloads of an SSE body (``[DONE]`` left out)."""
    out = []
    for event in body.decode().split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def function(name: str, parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters, **extra}}


WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["location", "unit", "days"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"]}
TOOLS = [function("get_weather", WEATHER), function("get_time", TIME)]


class Kind(enum.StrEnum):
    cat = "cat"
    dog = "dog"


class Owner(pydantic.BaseModel):
    name: str
    email: str | None


class Animal(pydantic.BaseModel):
    kind: Kind
    legs: int = pydantic.Field(ge=0, le=8)
    weight: float = pydantic.Field(gt=0, lt=100)
    owner: Owner | None
    tags: list[str] = pydantic.Field(min_length=1, max_length=3)
    friends: list[Animal]


SCHEMAS: list[dict[str, Any]] = [
    WEATHER,
    Animal.model_json_schema(),
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "id": {"type": "string", "format": "uuid"},
                                      "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d+$"},
                                      "ratio": {"type": "number", "multipleOf": 0.25,
                                                "exclusiveMinimum": 0, "maximum": 1},
                                      "pair": {"type": "array", "prefixItems": [
                                          {"type": "integer"}, {"type": "string"}],
                                          "items": False, "minItems": 2},
                                      "map": {"type": "object",
                                              "additionalProperties": {"type": "integer"}},
                                      "either": {"anyOf": [{"type": "integer"},
                                                           {"type": "boolean"}]},
                                      "const": {"const": 7},
                                      "several": {"type": ["string", "null"]},
                                      "unique": {"type": "array", "uniqueItems": True,
                                                 "minItems": 2, "items": {"enum": [1, 2, 3]}},
                                      "merged": {"allOf": [
                                          {"type": "object",
                                           "properties": {"a": {"type": "integer"}},
                                           "required": ["a"]},
                                          {"properties": {"b": {"type": "string"}},
                                           "required": ["b"]}]}},
     "required": ["when", "id", "code", "ratio", "pair", "map", "either", "const", "several",
                  "unique", "merged"]},
]


# -- tools in chat completions ---------------------------------------------------------------------


async def test_tool_calls_have_valid_arguments_and_finish_tool_calls(mock: Mock) -> None:
    r = await mock.chat(tools=TOOLS, messages=[{"role": "user", "content": "weather in Oslo"}])
    assert r.status_code == 200, r.text
    [choice] = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and message["role"] == "assistant"
    [call] = message["tool_calls"]  # the user named the weather: only that tool
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
    assert r.json()["usage"]["completion_tokens"] >= 1


async def test_parallel_rule_and_tool_choice(mock: Mock) -> None:
    async def names(**body: Any) -> list[str]:
        r = await mock.chat(tools=TOOLS, **body)
        assert r.status_code == 200, r.text
        calls = r.json()["choices"][0]["message"].get("tool_calls") or []
        return [c["function"]["name"] for c in calls]

    assert await names() == ["get_weather", "get_time"]  # no tool named: all, in order
    assert await names(parallel_tool_calls=False) == ["get_weather"]
    assert await names(tool_choice="none") == []
    assert await names(tool_choice="required") == ["get_weather", "get_time"]
    named = {"type": "function", "function": {"name": "get_time"}}
    assert await names(tool_choice=named) == ["get_time"]
    allowed = {"type": "allowed_tools",
               "allowed_tools": {"mode": "required", "tools": [named]}}
    assert await names(tool_choice=allowed) == ["get_time"]
    assert await names(messages=[{"role": "user", "content": "what time is it?"}]) == [
        "get_time"]


async def test_a_tool_result_ends_the_loop_with_text(mock: Mock) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain, 12C"},
    ]
    r = await mock.chat(tools=TOOLS, messages=messages)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "Mock reply to: rain, 12C"
    forced = await mock.chat(tools=TOOLS, messages=messages, tool_choice="required")
    assert forced.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_streamed_tool_calls_match_the_plain_answer(mock: Mock) -> None:
    body: dict[str, Any] = {"tools": TOOLS, "stream_options": {"include_usage": True}}
    plain = (await mock.chat(**body)).json()
    r = await mock.chat(stream=True, **body)
    chunks = sse(r.content)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for fragment in delta.get("tool_calls", ()):
            index = fragment["index"]
            if index not in calls:  # the first fragment: id, type, name, empty arguments
                assert set(fragment) == {"index", "id", "type", "function"}
                assert fragment["function"]["arguments"] == ""
                calls[index] = {"id": fragment["id"], "type": "function",
                                "function": {"name": fragment["function"]["name"],
                                             "arguments": ""}}
            else:
                assert set(fragment) == {"index", "function"}
                assert set(fragment["function"]) == {"arguments"}
                calls[index]["function"]["arguments"] += fragment["function"]["arguments"]
    assert [calls[i] for i in sorted(calls)] == plain["choices"][0]["message"]["tool_calls"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == (
        "tool_calls")
    assert chunks[-1]["usage"] == plain["usage"]


async def test_same_request_same_answer_and_seed_changes_it(mock: Mock) -> None:
    body: dict[str, Any] = {"tools": [function("pick", {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
                                         "c": {"type": "number"}},
        "required": ["a", "b", "c"]})]}

    async def arguments(**extra: Any) -> str:
        r = await mock.chat(**body, **extra)
        return str(r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])

    first = await arguments()
    assert await arguments() == first
    seeded = {await arguments(seed=s) for s in range(5)}
    assert len(seeded) >= 4
    assert await arguments(seed=3) == await arguments(seed=3)


# -- n, formats, logprobs --------------------------------------------------------------------------


async def test_n_choices_plain_and_streamed(mock: Mock) -> None:
    r = await mock.chat(n=3)
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["message"]["content"] for c in choices] == [
        "Mock reply to: hello", "Mock reply #2 to: hello", "Mock reply #3 to: hello"]
    assert r.json()["usage"]["completion_tokens"] == 3 * 4
    streamed = sse((await mock.chat(n=2, stream=True)).content)
    texts = ["", ""]
    for chunk in streamed:
        choice = chunk["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == ["Mock reply to: hello", "Mock reply #2 to: hello"]
    assert [c["choices"][0]["index"] for c in streamed[:4]] == [0, 1, 0, 1]


@pytest.mark.parametrize("schema", SCHEMAS, ids=["weather", "pydantic", "keywords"])
async def test_json_schema_content_validates(mock: Mock, schema: dict[str, Any]) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    for n in (1, 3):
        r = await mock.chat(response_format=response_format, n=n, seed=n)
        assert r.status_code == 200, r.text
        for choice in r.json()["choices"]:
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    streamed = sse((await mock.chat(response_format=response_format, stream=True)).content)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed)
    jsonschema.validate(json.loads(text), schema)


async def test_strict_json_schema_rules(mock: Mock) -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    spec = {"name": "Loose", "schema": loose, "strict": True}
    r = await mock.chat(response_format={"type": "json_schema", "json_schema": spec})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "'additionalProperties' is required to be supplied and to be false" in (
        error["message"])
    assert error["param"] == "response_format.json_schema.schema"
    partial = {**loose, "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
               "additionalProperties": False}
    spec = {"name": "Partial", "schema": partial, "strict": True}
    r = await mock.chat(response_format={"type": "json_schema", "json_schema": spec})
    assert r.status_code == 400 and "Missing 'b'" in r.json()["error"]["message"]
    spec["strict"] = False  # the same schema is fine when not strict
    assert (await mock.chat(response_format={"type": "json_schema",
                                             "json_schema": spec})).status_code == 200
    tool = function("f", loose, strict=True)
    r = await mock.chat(tools=[tool])
    assert r.status_code == 400 and "function 'f'" in r.json()["error"]["message"]


async def test_json_object(mock: Mock) -> None:
    r = await mock.chat(response_format={"type": "json_object"})
    assert r.status_code == 400 and "json" in r.json()["error"]["message"]
    r = await mock.chat(response_format={"type": "json_object"},
                        messages=[{"role": "user", "content": "answer in JSON"}])
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {
        "reply": "Mock reply to: answer in JSON"}


async def test_openai_sdk_parse_with_a_recursive_pydantic_model(mock: Mock) -> None:
    def run() -> tuple[Any, Any]:
        client = openai.OpenAI(base_url=f"http://{mock.address}/v1", api_key="k",
                               max_retries=0, timeout=GUARD)
        parsed = client.chat.completions.parse(
            model="m1", messages=[{"role": "user", "content": "an animal"}],
            response_format=Animal, tools=[openai.pydantic_function_tool(Owner)],
            tool_choice="none")
        with client.chat.completions.stream(
            model="m1", messages=[{"role": "user", "content": "who owns it?"}],
            tools=[openai.pydantic_function_tool(Owner)],
        ) as stream:
            for _ in stream:
                pass
            streamed = stream.get_final_completion()
        return parsed, streamed

    with trio.fail_after(GUARD * 2):
        parsed, streamed = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    assert isinstance(parsed.choices[0].message.parsed, Animal)
    [call] = streamed.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, Owner)


async def test_logprobs(mock: Mock) -> None:
    r = await mock.chat(logprobs=True, top_logprobs=3)
    [choice] = r.json()["choices"]
    content = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == entry["token"]
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops),
                                                      reverse=True)
    streamed = sse((await mock.chat(logprobs=True, top_logprobs=3, stream=True)).content)
    entries = [e for c in streamed if (c["choices"][0]["logprobs"] or {}).get("content")
               for e in c["choices"][0]["logprobs"]["content"]]
    assert entries == content
    assert (await mock.chat()).json()["choices"][0]["logprobs"] is None
    bad = await mock.chat(top_logprobs=2)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"
    assert (await mock.chat(logprobs=True, top_logprobs=21)).status_code == 400


# -- the Responses API -----------------------------------------------------------------------------


async def test_responses_create_retrieve_delete(mock: Mock) -> None:
    r = await mock.responses(input=[{"role": "user", "content": "hi there"}],
                             instructions="be brief", metadata={"k": "v"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["id"].startswith("resp_") and body["metadata"] == {"k": "v"}
    [message] = body["output"]
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["content"][0] == {"type": "output_text", "text": "Mock reply to: hi there",
                                     "annotations": [], "logprobs": []}
    assert body["usage"]["input_tokens"] == 2 + 2 and body["usage"]["output_tokens"] == 4
    with trio.fail_after(GUARD):
        got = await mock.client.get(f"/v1/responses/{body['id']}")
        items = await mock.client.get(f"/v1/responses/{body['id']}/input_items")
        deleted = await mock.client.delete(f"/v1/responses/{body['id']}")
        gone = await mock.client.get(f"/v1/responses/{body['id']}")
        wrong = await mock.client.put(f"/v1/responses/{body['id']}")
    assert got.json() == body
    assert [i["content"] for i in items.json()["data"]] == ["hi there"]
    assert deleted.json() == {"id": body["id"], "object": "response", "deleted": True}
    assert gone.status_code == 404 and "not found" in gone.json()["error"]["message"]
    assert wrong.status_code == 405


async def test_responses_previous_response_id_and_tools(mock: Mock) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    first = (await mock.responses(input="weather in Lima?", tools=tools)).json()
    [call] = first["output"]
    assert call["type"] == "function_call" and call["status"] == "completed"
    jsonschema.validate(json.loads(call["arguments"]), WEATHER)
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "hot"}
    second = (await mock.responses(previous_response_id=first["id"], tools=tools,
                                   input=[output])).json()
    assert second["output"][0]["content"][0]["text"] == "Mock reply to: hot"
    assert second["usage"]["input_tokens"] > first["usage"]["input_tokens"]
    unknown = await mock.responses(previous_response_id="resp_nope", input="hi")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "previous_response_not_found"
    orphan = await mock.responses(input=[output])  # no previous response: no such call
    assert orphan.status_code == 400 and "No tool call found" in orphan.json()["error"][
        "message"]
    unstored = (await mock.responses(input="hi", store=False)).json()
    with trio.fail_after(GUARD):
        assert (await mock.client.get(f"/v1/responses/{unstored['id']}")).status_code == 404


async def test_responses_stream_event_sequence(mock: Mock) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    for body, items in (({"input": "hi"}, "message"),
                        ({"input": "weather?", "tools": tools}, "function_call")):
        with trio.fail_after(GUARD):
            r = await mock.client.post("/v1/responses", json={"model": "m1", "stream": True,
                                                               **body})
        raw = [e for e in r.content.decode().split("\n\n") if e]
        events = sse(r.content)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert all(chunk.startswith(f"event: {e['type']}\n") for chunk, e in
                   zip(raw, events, strict=True))
        final = events[-1]["response"]
        assert events[0]["type"] == "response.created" and events[-1]["type"] == (
            "response.completed")
        assert events[0]["response"]["id"] == final["id"]
        assert final["output"][0]["type"] == items
        plain = (await mock.responses(**body)).json()
        assert plain["output"][0].get("arguments") == final["output"][0].get("arguments")
        if items == "function_call":
            deltas = "".join(e["delta"] for e in events
                             if e["type"] == "response.function_call_arguments.delta")
            assert deltas == final["output"][0]["arguments"]


async def test_responses_text_format_and_max_output_tokens(mock: Mock) -> None:
    schema = Animal.model_json_schema()
    fmt = {"type": "json_schema", "name": "animal", "schema": schema}
    body = (await mock.responses(input="an animal", text={"format": fmt})).json()
    Animal.model_validate_json(body["output"][0]["content"][0]["text"])
    cut = (await mock.responses(input="hi", max_output_tokens=2)).json()
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    with trio.fail_after(GUARD):
        r = await mock.client.post("/v1/responses", json={"model": "m1", "input": "hi",
                                                           "stream": True,
                                                           "max_output_tokens": 2})
    assert sse(r.content)[-1]["type"] == "response.incomplete"


def test_response_store_is_bounded() -> None:
    store = ResponseStore(limit=2)
    upstream = MockUpstream(models=("m",), responses_store=store)
    assert upstream.responses is store
    from continuum.testing import _openai as oai
    from continuum.testing import _responses as responses

    ids = []
    for i in range(3):
        settings = oai.Settings(("m",), 4, 0.0, f"{i:04d}", 0)
        reply = responses.create(b'{"model": "m", "input": "hi"}', settings, store)
        assert isinstance(reply, oai.Reply)
        ids.append(json.loads(reply.body)["id"])
    assert len(store) == 2 and store.get(ids[0]) is None and store.get(ids[2]) is not None


# -- hostile requests: a clear 400, never a crash or a hang ----------------------------------------


def nested_object(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


HOSTILE: list[tuple[str, Any, str]] = [
    ("deep", nested_object(MAX_DEPTH + 5), "nests more than"),
    ("endless recursion", {"type": "object", "$defs": {"N": {
        "type": "object", "properties": {"next": {"$ref": "#/$defs/N"}},
        "required": ["next"]}}, "properties": {"n": {"$ref": "#/$defs/N"}},
        "required": ["n"]}, "recursive without a way to end"),
    ("self reference", {"$ref": "#"}, "go round in a circle"),
    ("huge enum", {"type": "object", "properties": {"e": {"enum": list(range(5000))}}},
     "more than 1000 enum values"),
    ("type is a number", {"type": "object", "properties": {"a": {"type": 5}}}, "'type'"),
    ("properties is a list", {"type": "object", "properties": []}, "'properties'"),
    ("required is a string", {"type": "object", "required": "a"}, "'required'"),
    ("enum is empty", {"type": "object", "properties": {"a": {"enum": []}}}, "'enum'"),
    ("missing ref", {"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}},
     "can't be resolved"),
    ("remote ref", {"type": "object", "properties": {"a": {"$ref": "https://x/s.json"}}},
     "Only local references"),
    ("huge minItems", {"type": "object", "properties": {"a": {"type": "array",
                                                              "minItems": 10**9}},
                       "required": ["a"]}, "'minItems' above"),
    ("value explosion", {"type": "object", "properties": {"a": {"type": "array",
        "minItems": 200, "items": {"type": "array", "minItems": 200,
                                   "items": {"type": "integer"}}}}, "required": ["a"]},
     "more values than the mock generates"),
    ("long strings", {"type": "object", "properties": {"a": {"type": "array",
        "minItems": 256, "items": {"type": "string", "minLength": 4096}}}, "required": ["a"]},
     "longer strings"),
    ("bad bounds", {"type": "object", "properties": {"a": {"type": "integer", "minimum": 5,
                                                           "maximum": 1}}, "required": ["a"]},
     "below 'minimum'"),
    ("catastrophic pattern", {"type": "object", "properties": {"a": {
        "type": "string", "pattern": "^(a+)+$"}}}, "exponential"),
    ("not a schema", {"type": "object", "properties": {"a": "string"}}, "must be an object"),
    ("false schema", {"type": "object", "properties": {"a": False}, "required": ["a"]},
     "never be satisfied"),
    ("root not an object", {"type": "array"}, "type: \"object\""),
]


@pytest.mark.parametrize(("schema", "words"), [(s, w) for _, s, w in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
async def test_hostile_tool_schemas_get_a_clear_400(
    mock: Mock, schema: Any, words: str
) -> None:
    r = await mock.chat(tools=[function("f", schema)])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert (await mock.chat()).status_code == 200  # and the mock is still fine


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 10**6}, "n"),
        ({"n": "3"}, "n"),
        ({"tools": [function(f"f{i}", {"type": "object"}) for i in range(200)]}, "tools"),
        ({"tools": [function("f", {"type": "object"})] * 2}, "tools"),
        ({"tools": [function("bad name!", {"type": "object"})]}, "tools[0].function.name"),
        ({"tools": "all of them"}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema.name"),
    ],
)
async def test_bad_parameters_get_a_400_naming_them(
    mock: Mock, body: dict[str, Any], param: str
) -> None:
    r = await mock.chat(**body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_deeply_nested_json_body_is_a_400(mock: Mock) -> None:
    deep = b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "tools": ' + (
        b"[" * 100_000 + b"]" * 100_000 + b"}")
    for path in ("/v1/chat/completions", "/v1/responses"):
        with trio.fail_after(GUARD):
            r = await mock.client.post(path, content=deep,
                                       headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text


async def test_hostile_responses_requests(mock: Mock) -> None:
    recursive = HOSTILE[1][1]
    cases: list[dict[str, Any]] = [
        {"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": recursive}]},
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                            "schema": nested_object(100)}}},
        {"input": 42},
        {"input": [{"role": "wizard", "content": "hi"}]},
        {"input": "hi", "top_logprobs": 99},
        {},
    ]
    for body in cases:
        r = await mock.responses(**body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["message"]


def test_recursive_schema_with_an_exit_is_generated_bounded() -> None:
    import random

    tree = {"type": "object", "$defs": {"T": {
        "type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/T"}},
                                         "up": {"anyOf": [{"$ref": "#/$defs/T"},
                                                          {"type": "null"}]}},
        "required": ["kids", "up"]}}, "properties": {"root": {"$ref": "#/$defs/T"}},
        "required": ["root"]}
    check_schema(tree, strict=False, label="t")
    value = Generator(random.Random(1)).generate(tree)
    jsonschema.validate(value, tree)
    with pytest.raises(SchemaError):
        check_schema({"type": "object", "properties": {"a": {"type": "object"}}}, strict=True,
                     label="t")


# -- the command line ------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_mock_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(("text", "seconds"),
                         [("50ms", 0.05), ("1.5s", 1.5), ("1m30s", 90.0), ("0.25", 0.25),
                          ("2", 2.0), ("250us", 0.00025)])
def test_cli_latency_accepts_config_durations(text: str, seconds: float) -> None:
    assert parse("--latency", text).latency == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "-1", "-5ms", "nan", "inf", ""])
def test_cli_latency_rejects_non_durations(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(f"--latency={text}")
    assert exc.value.code == 2
    assert "not a duration" in capsys.readouterr().err


def test_cli_help_lists_every_fail_kind(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="mock")
    add_mock_arguments(parser)
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    kinds = typing.get_args(typing.get_type_hints(MockFailure)["kind"])
    assert len(kinds) >= 6
    for kind in kinds:
        assert kind in text, kind


# -- generated JSON validates, for any schema of the supported subset ------------------------------


def _schemas() -> Any:
    from hypothesis import strategies as st

    names = st.text("abcdefghij_", min_size=1, max_size=8)
    leaves = st.one_of(
        st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
                  st.integers(-1000, 1000), st.integers(0, 50)),
        st.builds(lambda lo, span, ex: {"type": "number", "minimum": lo, "maximum": lo + span,
                                        **({"exclusiveMaximum": lo + span} if ex else {})},
                  st.floats(-100, 100), st.floats(0.5, 50), st.booleans()),
        st.builds(lambda lo, extra: {"type": "string", "minLength": lo,
                                     "maxLength": lo + extra},
                  st.integers(0, 20), st.integers(0, 20)),
        st.sampled_from([{"type": "string", "format": f} for f in
                         ("date-time", "date", "email", "uuid", "uri", "ipv4")]),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=6,
                 unique=True).map(lambda values: {"enum": values}),
    )

    def nest(children: Any) -> Any:
        return st.one_of(
            st.dictionaries(names, children, max_size=4).flatmap(
                lambda props: st.lists(st.sampled_from(sorted(props)) if props else
                                       st.nothing(), unique=True).map(
                    lambda required: {"type": "object", "properties": props,
                                      "required": required})),
            st.builds(lambda item, lo: {"type": "array", "items": item, "minItems": lo},
                      children, st.integers(0, 3)),
            children.map(lambda s: {"anyOf": [s, {"type": "null"}]}),
            st.lists(children, min_size=1, max_size=3).map(lambda s: {"anyOf": s}),
        )

    body = st.recursive(leaves, nest, max_leaves=12)
    return st.builds(
        lambda item, seed: ({"type": "object", "$defs": {"Item": item},
                             "properties": {"item": {"$ref": "#/$defs/Item"},
                                            "many": {"type": "array",
                                                     "items": {"$ref": "#/$defs/Item"}}},
                             "required": ["item", "many"]}, seed),
        body, st.integers(0, 2**32))


def test_generated_values_validate_against_their_schema() -> None:
    import random

    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_schemas())
    def check(case: tuple[dict[str, Any], int]) -> None:
        schema, seed = case
        check_schema(schema, strict=False, label="t", root_object=True)
        value = Generator(random.Random(seed)).generate(schema)
        jsonschema.validate(value, schema)

    check()
