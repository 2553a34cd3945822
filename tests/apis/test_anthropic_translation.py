"""OpenAI chat ↔ Anthropic Messages translation, from fixtures in tests/fixtures/anthropic/."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from continuum.apis.anthropic import (
    REASONING_BUDGETS,
    AnthropicCall,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from continuum.apis.types import StreamTranslator, TranslationError
from continuum.core.errors import anthropic_error_body

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
BACKEND_MODEL = "claude-sonnet-4-5-20250929"
CREATED = 1700000000


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def to_anthropic(req: dict[str, Any], **kw: Any) -> dict[str, Any]:
    call = openai_to_anthropic_request(dumps(req), model=BACKEND_MODEL, **kw)
    result: dict[str, Any] = json.loads(call.body)
    return result


def openai_sse(data: bytes) -> list[Any]:
    """OpenAI SSE bytes → list of decoded chunks ("[DONE]" kept as the string)."""
    text = data.decode()
    assert text.endswith("\n\n")
    out: list[Any] = []
    for event in text.split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        payload = event[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def anthropic_sse(data: bytes) -> list[tuple[str, Any]]:
    text = data.decode()
    assert text.endswith("\n\n")
    out = []
    for event in text.split("\n\n")[:-1]:
        name_line, data_line = event.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        name, payload = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert payload["type"] == name
        out.append((name, payload))
    return out


def run_stream(translator: StreamTranslator, pieces: list[bytes]) -> bytes:
    return b"".join(translator.feed(p) for p in pieces) + translator.finish()


# ---------------------------------------------------------------------------------------
# OpenAI request → Anthropic request

REQUEST_FIXTURES = ["multiturn_system.json", "images.json", "tools_round.json"]


@pytest.mark.parametrize("name", REQUEST_FIXTURES)
def test_openai_request_to_anthropic(name: str) -> None:
    fx = load(name)
    call = openai_to_anthropic_request(dumps(fx["openai"]), model=BACKEND_MODEL)
    assert call.method == b"POST"
    assert call.path == b"/v1/messages"
    headers = dict(call.headers)
    # Credentials and anthropic-version are the backend profile's (tests/apis/test_profiles.py).
    assert b"x-api-key" not in headers and b"anthropic-version" not in headers
    assert headers[b"content-type"] == b"application/json"
    body = json.loads(call.body)
    expected = fx["anthropic"]
    assert set(body) == set(expected)
    for key in expected:
        assert body[key] == expected[key], key


def test_stream_flags_are_remembered() -> None:
    call = openai_to_anthropic_request(
        dumps(load("tools_round.json")["openai"]), model=BACKEND_MODEL
    )
    assert isinstance(call, AnthropicCall)
    assert call.stream and call.include_usage
    headers = dict(call.headers)
    assert b"x-api-key" not in headers
    assert headers[b"accept"] == b"text/event-stream"
    plain = openai_to_anthropic_request(
        dumps(load("multiturn_system.json")["openai"]), model=BACKEND_MODEL
    )
    assert isinstance(plain, AnthropicCall)
    assert not plain.stream and not plain.include_usage
    no_usage = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    call2 = openai_to_anthropic_request(dumps(no_usage), model=BACKEND_MODEL)
    assert isinstance(call2, AnthropicCall)
    assert call2.stream and not call2.include_usage


def test_default_max_tokens() -> None:
    req = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert to_anthropic(req)["max_tokens"] == 4096
    assert to_anthropic(req, default_max_tokens=1000)["max_tokens"] == 1000
    assert to_anthropic({**req, "max_tokens": 77})["max_tokens"] == 77
    # max_completion_tokens wins over the deprecated max_tokens
    assert to_anthropic({**req, "max_tokens": 77, "max_completion_tokens": 99})["max_tokens"] == 99


def test_stop_string_and_temperature_clamp() -> None:
    req = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stop": "###",
        "temperature": 1.7,
    }
    body = to_anthropic(req)
    assert body["stop_sequences"] == ["###"]
    assert body["temperature"] == 1.0


@pytest.mark.parametrize(("effort", "budget"), [("low", 1024), ("medium", 4096), ("high", 16384)])
def test_reasoning_effort_maps_to_thinking(effort: str, budget: int) -> None:
    req = {
        "model": "m",
        "messages": [{"role": "user", "content": "think"}],
        "reasoning_effort": effort,
        "temperature": 0.2,
        "top_p": 0.5,
    }
    body = to_anthropic(req)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert REASONING_BUDGETS[effort] == budget
    assert body["max_tokens"] > budget
    # the default max_tokens (4096) is kept when it is above the budget, else the budget is
    # added to it
    assert body["max_tokens"] == (4096 if budget < 4096 else 4096 + budget)
    # extended thinking rejects non-default sampling
    assert "temperature" not in body and "top_p" not in body
    assert "reasoning_effort" not in body
    body = to_anthropic({**req, "max_tokens": 500})
    assert body["max_tokens"] == 500 + budget


def test_reasoning_effort_minimal_and_unknown() -> None:
    req = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert "thinking" not in to_anthropic({**req, "reasoning_effort": "minimal"})
    with pytest.raises(TranslationError) as exc:
        to_anthropic({**req, "reasoning_effort": "extreme"})
    assert exc.value.param == "reasoning_effort"


def test_client_thinking_wins_and_unknown_fields_pass_through() -> None:
    own = {"type": "enabled", "budget_tokens": 2222}
    req = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "reasoning_effort": "high",
        "thinking": own,
        "top_k": 5,
        "max_tokens": 3000,
        "temperature": 1,
    }
    body = to_anthropic(req)
    assert body["thinking"] == own
    assert body["top_k"] == 5
    assert body["max_tokens"] == 3000
    assert body["temperature"] == 1.0
    assert "reasoning_effort" not in body


def test_tool_choice_variants() -> None:
    base = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    assert to_anthropic(base)["tools"] == [
        {"name": "f", "input_schema": {"type": "object", "properties": {}}}
    ]
    assert "tool_choice" not in to_anthropic(base)
    assert to_anthropic({**base, "tool_choice": "auto"})["tool_choice"] == {"type": "auto"}
    assert to_anthropic({**base, "tool_choice": "none"})["tool_choice"] == {"type": "none"}
    assert to_anthropic({**base, "tool_choice": "required"})["tool_choice"] == {"type": "any"}
    specific = {"type": "function", "function": {"name": "f"}}
    assert to_anthropic({**base, "tool_choice": specific})["tool_choice"] == {
        "type": "tool",
        "name": "f",
    }
    assert to_anthropic({**base, "parallel_tool_calls": False})["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    # legacy functions/function_call
    legacy = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "functions": [{"name": "g", "parameters": {"type": "object"}}],
        "function_call": {"name": "g"},
    }
    body = to_anthropic(legacy)
    assert body["tools"] == [{"name": "g", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "tool", "name": "g"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (dumps({"model": "m"}), "messages"),
        (dumps({"model": "m", "messages": []}), "messages"),
        (dumps({"model": "m", "messages": [{"role": "system", "content": "only"}]}), "messages"),
        (dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}), "n"),
        (
            dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True}),
            "logprobs",
        ),
        (
            dumps(
                {
                    "model": "m",
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "json_object"},
                }
            ),
            "response_format",
        ),
        (
            dumps(
                {
                    "model": "m",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "input_audio",
                                    "input_audio": {"data": "AA", "format": "wav"},
                                }
                            ],
                        }
                    ],
                }
            ),
            "messages[0].content[0]",
        ),
        (
            dumps({"model": "m", "messages": [{"role": "function", "name": "f", "content": "1"}]}),
            "messages[0]",
        ),
        (
            dumps(
                {
                    "model": "m",
                    "messages": [
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "c",
                                    "type": "function",
                                    "function": {"name": "f", "arguments": "{oops"},
                                }
                            ],
                        }
                    ],
                }
            ),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            "max_tokens",
        ),
        (
            dumps(
                {
                    "model": "m",
                    "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "web_search"}],
                }
            ),
            "tools[0]",
        ),
    ],
)
def test_untranslatable_requests(body: bytes, param: str | None) -> None:
    with pytest.raises(TranslationError) as exc:
        openai_to_anthropic_request(body, model=BACKEND_MODEL)
    assert exc.value.param == param
    assert exc.value.message


def _file_part(data_url: str) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "read"},
        {"type": "file", "file": {"filename": "f", "file_data": data_url}}]}]}


def test_file_parts_become_document_blocks() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 x").decode()
    blocks = to_anthropic(_file_part(f"data:application/pdf;base64,{pdf}"))
    assert blocks["messages"][0]["content"][1] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}
    text = base64.b64encode("héllo".encode()).decode()
    blocks = to_anthropic(_file_part(f"data:text/markdown;base64,{text}"))
    assert blocks["messages"][0]["content"][1] == {
        "type": "document", "source": {"type": "text", "media_type": "text/plain",
                                       "data": "héllo"}}


@pytest.mark.parametrize("url", [
    "data:application/zip;base64,UEsD",  # a kind Anthropic does not read
    "https://example.com/a.pdf",  # not inline
    "data:application/pdf;base64",  # no data at all
])
def test_file_parts_anthropic_cannot_take(url: str) -> None:
    with pytest.raises(TranslationError) as exc:
        to_anthropic(_file_part(url))
    assert exc.value.param == "messages[0].content[1]"


# ---------------------------------------------------------------------------------------
# round trip OpenAI → Anthropic → OpenAI


def _texts(content: Any) -> list[Any]:
    if content is None:
        return []
    if isinstance(content, str):
        return [("text", content)]
    out: list[Any] = []
    for part in content:
        if part["type"] == "text":
            out.append(("text", part["text"]))
        elif part["type"] == "image_url":
            out.append(("image", part["image_url"]["url"]))
    return out


def normalize_openai(req: dict[str, Any]) -> dict[str, Any]:
    """The fields both APIs share, in a canonical form (same-role runs merged)."""
    system: list[str] = []
    turns: list[tuple[str, list[Any]]] = []
    for msg in req["messages"]:
        role = msg["role"]
        if role in ("system", "developer"):
            system.extend(t for _, t in _texts(msg["content"]))
            continue
        items = _texts(msg.get("content"))
        if role == "assistant":
            items += [
                (
                    "call",
                    c["id"],
                    c["function"]["name"],
                    json.loads(c["function"]["arguments"] or "{}"),
                )
                for c in msg.get("tool_calls") or ()
            ]
        if role == "tool":
            items = [("result", msg["tool_call_id"], "".join(t for _, t in items))]
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(items)
        else:
            turns.append((role, items))
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description"),
            "parameters": t["function"].get("parameters"),
        }
        for t in req.get("tools") or ()
    ]
    stop = req.get("stop")
    return {
        "system": "\n\n".join(system),
        "turns": turns,
        "tools": tools,
        "stop": [stop] if isinstance(stop, str) else (stop or None),
        "max_tokens": req.get("max_completion_tokens") or req.get("max_tokens"),
        "temperature": req.get("temperature"),
        "top_p": req.get("top_p"),
        "stream": bool(req.get("stream")),
    }


def round_trip(req: dict[str, Any]) -> dict[str, Any]:
    call = openai_to_anthropic_request(dumps(req), model=BACKEND_MODEL)
    body, stream = anthropic_to_openai_request(call.body, model=req["model"])
    back: dict[str, Any] = json.loads(body)
    assert stream == bool(req.get("stream"))
    assert back["model"] == req["model"]
    return back


@pytest.mark.parametrize("name", REQUEST_FIXTURES)
def test_round_trip_keeps_shared_fields(name: str) -> None:
    req = load(name)["openai"]
    back = round_trip(req)
    assert normalize_openai(back) == normalize_openai(req)
    if req.get("user"):
        assert back["user"] == req["user"]


def test_round_trip_tool_choice() -> None:
    for choice in ("auto", "none", "required", {"type": "function", "function": {"name": "f"}}):
        req = {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
                }
            ],
            "tool_choice": choice,
        }
        assert round_trip(req)["tool_choice"] == choice


# ---------------------------------------------------------------------------------------
# Anthropic response → OpenAI response


@pytest.mark.parametrize("name", ["message_text.json", "message_tool_use.json"])
def test_anthropic_message_to_openai(name: str) -> None:
    fx = load(name)
    out = anthropic_to_openai_response(200, dumps(fx["anthropic"]), model="claude-sonnet")
    assert out.status == 200
    assert out.content_type == b"application/json"
    body = json.loads(out.body)
    assert isinstance(body.pop("created"), int)
    expected = fx["openai"]
    assert set(body) == set(expected)
    for key in expected:
        assert body[key] == expected[key], key


def test_anthropic_tool_only_message_has_null_content() -> None:
    msg = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "x",
        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    body = json.loads(anthropic_to_openai_response(200, dumps(msg), model="m").body)
    choice = body["choices"][0]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert choice["finish_reason"] == "tool_calls"
    msg["stop_reason"] = "max_tokens"
    body = json.loads(anthropic_to_openai_response(200, dumps(msg), model="m").body)
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("case", load("errors.json")["cases"], ids=lambda c: str(c["status"]))
def test_anthropic_errors_to_openai(case: dict[str, Any]) -> None:
    out = anthropic_to_openai_response(case["status"], dumps(case["anthropic"]), model="m")
    assert out.status == case["openai_status"]
    assert json.loads(out.body) == case["openai"]


def test_non_json_upstream_error() -> None:
    out = anthropic_to_openai_response(502, b"<html>Bad Gateway</html>", model="m")
    assert out.status == 502
    err = json.loads(out.body)["error"]
    assert "502" in err["message"] and "Bad Gateway" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    out = anthropic_to_openai_response(200, b"not json", model="m")
    assert out.status == 502


# ---------------------------------------------------------------------------------------
# Anthropic SSE → OpenAI SSE


def test_stream_text_with_usage() -> None:
    data = raw("stream_text.sse")
    out = run_stream(AnthropicToOpenAIStream("claude-sonnet", True, created=CREATED), [data])
    assert openai_sse(out) == load("stream_text.expected.json")


def test_stream_tool_call_fragments() -> None:
    data = raw("stream_tool.sse")
    assert b"\r\n" in data  # CRLF framing
    out = run_stream(AnthropicToOpenAIStream("claude-sonnet", False, created=CREATED), [data])
    chunks = openai_sse(out)
    assert chunks == load("stream_tool.expected.json")
    # the fragments join to the tool's input
    args = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        for c in chunks[:-1]
        if c["choices"][0]["delta"].get("tool_calls", [{}])[0].get("index") == 0
    )
    assert json.loads(args) == {"city": "Oslo", "unit": "celsius"}


@pytest.mark.parametrize(
    ("name", "usage"),
    [("stream_text.sse", True), ("stream_tool.sse", False), ("stream_error.sse", True)],
)
def test_stream_split_at_every_byte(name: str, usage: bool) -> None:
    data = raw(name)
    whole = run_stream(AnthropicToOpenAIStream("claude-sonnet", usage, created=CREATED), [data])
    for i in range(len(data) + 1):
        t = AnthropicToOpenAIStream("claude-sonnet", usage, created=CREATED)
        assert run_stream(t, [data[:i], data[i:]]) == whole, i
    one_by_one = AnthropicToOpenAIStream("claude-sonnet", usage, created=CREATED)
    assert run_stream(one_by_one, [data[i : i + 1] for i in range(len(data))]) == whole


def test_stream_each_chunk_is_sent_as_soon_as_complete() -> None:
    data = raw("stream_text.sse")
    t = AnthropicToOpenAIStream("claude-sonnet", False, created=CREATED)
    first_event_end = data.index(b"\n\n") + 2
    assert t.feed(data[: first_event_end - 1]) == b""
    assert b'"role":"assistant"' in t.feed(data[first_event_end - 1 : first_event_end])


def test_stream_upstream_error_event() -> None:
    out = run_stream(AnthropicToOpenAIStream("m", True, created=CREATED), [raw("stream_error.sse")])
    chunks = openai_sse(out)
    assert chunks[-1] == "[DONE]"
    assert chunks[-2] == {
        "error": {
            "message": "Overloaded",
            "type": "service_unavailable",
            "param": None,
            "code": "overloaded",
        }
    }
    assert chunks[1]["choices"][0]["delta"] == {"content": "Partial"}
    assert out.count(b"[DONE]") == 1


def test_stream_truncated_and_router_error() -> None:
    data = raw("stream_text.sse")
    cut = data[: data.index(b"event: message_delta")]
    t = AnthropicToOpenAIStream("m", True, created=CREATED)
    chunks = openai_sse(run_stream(t, [cut]))
    assert "error" in chunks[-2] and chunks[-1] == "[DONE]"
    t = AnthropicToOpenAIStream("m", False, created=CREATED)
    out = t.feed(cut) + t.error(504, "upstream timed out")
    chunks = openai_sse(out)
    assert chunks[-2]["error"]["message"] == "upstream timed out"
    assert chunks[-1] == "[DONE]"
    assert t.feed(b"more") == b"" and t.finish() == b""


def test_stream_without_message_stop_but_finished_closes_cleanly() -> None:
    data = raw("stream_text.sse")
    cut = data[: data.index(b"event: message_stop")]
    chunks = openai_sse(run_stream(AnthropicToOpenAIStream("m", True, created=CREATED), [cut]))
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["usage"] == {"prompt_tokens": 25, "completion_tokens": 19, "total_tokens": 44}


# ---------------------------------------------------------------------------------------
# front door: Anthropic request → OpenAI request


def test_frontdoor_request_to_openai() -> None:
    fx = load("frontdoor_request.json")
    body, stream = anthropic_to_openai_request(dumps(fx["anthropic"]), model="gpt-4.1")
    assert stream is True
    out = json.loads(body)
    expected = fx["openai"]
    assert set(out) == set(expected)
    for key in expected:
        assert out[key] == expected[key], key


def test_frontdoor_thinking_mapping_and_model() -> None:
    req = {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"}],
        "thinking": {"type": "enabled", "budget_tokens": 16000},
    }
    out = json.loads(anthropic_to_openai_request(dumps(req))[0])
    assert out["model"] == "claude-x"
    assert "reasoning_effort" not in out and "thinking" not in out
    assert out["messages"] == [{"role": "user", "content": "x"}]
    out = json.loads(anthropic_to_openai_request(dumps(req), map_thinking=True)[0])
    assert out["reasoning_effort"] == "high"
    assert "stream" not in out


def test_frontdoor_bad_requests() -> None:
    for body in (
        b"nope",
        dumps({"max_tokens": 5}),
        dumps({"messages": [{"role": "user", "content": [{"type": "document"}]}]}),
        dumps(
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            }
        ),
    ):
        with pytest.raises(TranslationError):
            anthropic_to_openai_request(body)


def test_frontdoor_document_blocks() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 x").decode()
    body = dumps({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "title": "paper.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": pdf}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "the notes"}},
    ]}]})
    parts = json.loads(anthropic_to_openai_request(body)[0])["messages"][0]["content"]
    assert parts == [
        {"type": "file", "file": {"filename": "paper.pdf",
                                  "file_data": f"data:application/pdf;base64,{pdf}"}},
        {"type": "file", "file": {"filename": "document.pdf",
                                  "file_data": f"data:application/pdf;base64,{pdf}"}},
        {"type": "text", "text": "the notes"},
    ]
    for source in ({"type": "file", "file_id": "file_abc"}, {"type": "url", "url": "x"},
                   {"type": "base64", "media_type": "image/png", "data": pdf}, "nope"):
        bad = dumps({"max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": source}]}]})
        with pytest.raises(TranslationError) as caught:
            anthropic_to_openai_request(bad)
        assert caught.value.param == "messages[0].content[0]"


# ---------------------------------------------------------------------------------------
# front door: OpenAI response → Anthropic response


@pytest.mark.parametrize("index", [0, 1, 2])
def test_openai_completion_to_anthropic(index: int) -> None:
    case = load("openai_completion.json")["cases"][index]
    out = openai_to_anthropic_response(200, dumps(case["openai"]), model="claude-sonnet-4-5")
    assert out.status == 200
    body = json.loads(out.body)
    assert set(body) == set(case["anthropic"])
    for key in case["anthropic"]:
        assert body[key] == case["anthropic"][key], key


@pytest.mark.parametrize(
    "case", load("openai_completion.json")["errors"], ids=lambda c: str(c["status"])
)
def test_openai_errors_to_anthropic(case: dict[str, Any]) -> None:
    out = openai_to_anthropic_response(case["status"], dumps(case["openai"]), model="m")
    assert out.status == case["status"]
    assert json.loads(out.body) == case["anthropic"]


def test_anthropic_error_body() -> None:
    assert json.loads(anthropic_error_body(404, "no such model")) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such model"},
    }
    assert json.loads(anthropic_error_body(502, "upstream failed"))["error"]["type"] == "api_error"
    assert json.loads(anthropic_error_body(413, "too big"))["error"]["type"] == "request_too_large"


# ---------------------------------------------------------------------------------------
# front door: OpenAI SSE → Anthropic SSE


@pytest.mark.parametrize("name", ["openai_stream_text", "openai_stream_tool"])
def test_openai_stream_to_anthropic(name: str) -> None:
    data = raw(name + ".sse")
    out = run_stream(OpenAIToAnthropicStream("claude-sonnet-4-5"), [data])
    events = anthropic_sse(out)
    expected = [(n, d) for n, d in load(name + ".expected.json")]
    assert events == expected
    for i in range(len(data) + 1):
        split = run_stream(OpenAIToAnthropicStream("claude-sonnet-4-5"), [data[:i], data[i:]])
        assert split == out, i


def test_openai_stream_reasoning_and_missing_done() -> None:
    chunks = [
        {
            "id": "chatcmpl-r",
            "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Hmm"}}],
        },
        {"id": "chatcmpl-r", "choices": [{"index": 0, "delta": {"content": "Yes."}}]},
        {
            "id": "chatcmpl-r",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        },
    ]
    data = b"".join(b"data: " + dumps(c) + b"\n\n" for c in chunks)  # no [DONE]
    events = anthropic_sse(run_stream(OpenAIToAnthropicStream("m"), [data]))
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"]["type"] == "thinking"
    assert events[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Hmm"}
    assert events[4][1]["index"] == 1
    assert events[7][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[7][1]["usage"] == {"input_tokens": 3, "output_tokens": 5}


def test_openai_stream_errors() -> None:
    data = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"error":{"message":"backend exploded","type":"server_error"}}\n\n'
    )
    events = anthropic_sse(run_stream(OpenAIToAnthropicStream("m"), [data]))
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "backend exploded"}},
    )
    t = OpenAIToAnthropicStream("m")
    cut = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    events = anthropic_sse(t.feed(cut) + t.finish())
    assert events[-1][0] == "error"
    t = OpenAIToAnthropicStream("m")
    events = anthropic_sse(t.feed(cut) + t.error(429, "slow down"))
    assert events[-1][1]["error"] == {"type": "rate_limit_error", "message": "slow down"}
    assert t.finish() == b""


def test_openai_stream_only_done() -> None:
    events = anthropic_sse(run_stream(OpenAIToAnthropicStream("m"), [b"data: [DONE]\n\n"]))
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]


# ---------------------------------------------------------------------------------------
# property: random valid OpenAI chat requests survive OpenAI → Anthropic → OpenAI

_text = st.text(min_size=1, max_size=30)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_text)}
        )
    tools = draw(st.lists(_name, max_size=3, unique=True))
    call_n = 0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "user_parts", "assistant", "tool_round"]))
        if kind == "user" or (kind == "tool_round" and not tools):
            messages.append({"role": "user", "content": draw(_text)})
        elif kind == "user_parts":
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": t}
                        for t in draw(st.lists(_text, min_size=1, max_size=3))
                    ],
                }
            )
        elif kind == "assistant":
            messages.append({"role": "assistant", "content": draw(_text)})
        elif tools:
            ids = []
            calls = []
            for _ in range(draw(st.integers(1, 2))):
                call_n += 1
                ids.append(f"call_{call_n}")
                args = draw(st.dictionaries(_name, st.integers() | _text, max_size=3))
                calls.append(
                    {
                        "id": ids[-1],
                        "type": "function",
                        "function": {
                            "name": draw(st.sampled_from(tools)),
                            "arguments": json.dumps(args),
                        },
                    }
                )
            text = draw(st.none() | _text)
            messages.append({"role": "assistant", "content": text, "tool_calls": calls})
            messages.extend(
                {"role": "tool", "tool_call_id": i, "content": draw(_text)} for i in ids
            )
    req: dict[str, Any] = {"model": draw(_name), "messages": messages}
    if draw(st.booleans()):
        req["temperature"] = draw(st.floats(0, 1, allow_nan=False))
    if draw(st.booleans()):
        req["top_p"] = draw(st.floats(0, 1, allow_nan=False))
    if draw(st.booleans()):
        req["max_tokens"] = draw(st.integers(1, 100_000))
    if draw(st.booleans()):
        req["stop"] = draw(_text | st.lists(_text, min_size=1, max_size=4))
    if draw(st.booleans()):
        req["stream"] = True
    if tools:
        req["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": n,
                    "description": draw(_text),
                    "parameters": {"type": "object", "properties": {"a": {"type": "string"}}},
                },
            }
            for n in tools
        ]
    return req


@settings(max_examples=300, deadline=None)
@given(openai_requests())
def test_property_round_trip(req: dict[str, Any]) -> None:
    back = round_trip(req)
    expected = normalize_openai(req)
    if expected["max_tokens"] is None:
        expected["max_tokens"] = 4096
    assert normalize_openai(back) == expected
