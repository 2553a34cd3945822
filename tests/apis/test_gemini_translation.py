"""OpenAI chat ↔ Gemini native API translation, from fixtures under tests/fixtures/gemini/."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuum.apis.gemini import (
    REASONING_BUDGETS,
    SKIP_SIGNATURE,
    GeminiToOpenAIStream,
    gemini_model_page,
    gemini_to_openai_response,
    openai_to_gemini_request,
)
from continuum.apis.types import TranslationError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gemini"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def translate(body: dict[str, Any] | bytes, **kw: Any) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    call = openai_to_gemini_request(
        raw, model=kw.pop("model", "gemini-2.5-flash"), stream=False
    )
    out: dict[str, Any] = json.loads(call.body)
    return out


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def sse_events(data: bytes) -> list[Any]:
    """The decoded ``data:`` payloads of an OpenAI SSE byte stream ([DONE] kept as a str)."""
    events: list[Any] = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# --- request ---------------------------------------------------------------------------------


def test_request_call_shape() -> None:
    body = fixture("multiturn_request.json")
    call = openai_to_gemini_request(body, model="gemini-2.5-flash", stream=False)
    assert call.method == b"POST"
    assert call.path == b"/v1beta/models/gemini-2.5-flash:generateContent"
    # x-goog-api-key is the backend profile's (tests/apis/test_profiles.py).
    assert call.headers == [(b"content-type", b"application/json")]

    stream = openai_to_gemini_request(body, model="gemini-2.5-flash", stream=True)
    assert stream.path == b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert all(name != b"x-goog-api-key" for name, _ in stream.headers)

    tuned = openai_to_gemini_request(body, model="tunedModels/my-bike", stream=False)
    assert tuned.path == b"/v1beta/tunedModels/my-bike:generateContent"


def test_request_multiturn_with_system() -> None:
    out = translate(fixture("multiturn_request.json"))
    assert out["systemInstruction"] == {
        "parts": [
            {"text": "You are a terse assistant for a bicycle shop."},
            {"text": "Prices are in euros."},
        ]
    }
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Do you sell tubeless tyres?"}]},
        {"role": "model", "parts": [{"text": "Yes, in 28 and 32 mm widths."}]},
        # two consecutive user messages merge into one turn
        {
            "role": "user",
            "parts": [{"text": "How much is the 32 mm one?"}, {"text": "And do you fit it?"}],
        },
    ]
    assert out["generationConfig"] == {
        "temperature": 0.4,
        "topP": 0.9,
        "maxOutputTokens": 256,
        "candidateCount": 1,
        "seed": 7,
        "stopSequences": ["END"],
    }
    assert set(out) == {"contents", "systemInstruction", "generationConfig"}


def test_request_images() -> None:
    out = translate(fixture("images_request.json"))
    assert out["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "Which of these pictures shows a road bike?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg=="}},
                {
                    "fileData": {
                        "mimeType": "image/webp",
                        "fileUri": "https://example.com/photos/gravel.webp?size=large",
                    }
                },
                {
                    "fileData": {
                        "mimeType": "image/jpeg",
                        "fileUri": "https://example.com/photos/render",
                    }
                },
            ],
        }
    ]


def test_request_tools_and_tool_round() -> None:
    out = translate(fixture("tools_request.json"), model="gemini-2.5-pro")
    assert out["systemInstruction"] == {
        "parts": [{"text": "Use the tools to answer questions about stock."}]
    }
    contents = out["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert contents[1]["parts"] == [
        {
            "functionCall": {
                "name": "check_stock",
                "args": {"sku": "TREK-DOMANE", "store": "lyon"},
            },
            "thoughtSignature": "c2lnLWx5b24=",
        },
        {
            "functionCall": {
                "name": "check_stock",
                "args": {"sku": "TREK-DOMANE", "store": "nantes"},
            }
        },
    ]
    # both tool results in one user turn, names looked up from the tool call ids
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "check_stock", "response": {"available": 3}}},
        {
            "functionResponse": {
                "name": "check_stock",
                "response": {"content": "out of stock until May"},
            }
        },
    ]
    assert contents[3]["parts"] == [{"text": "Lyon has 3; Nantes has none until May."}]
    assert contents[4]["parts"] == [{"text": "Reserve one in Lyon."}]

    decls = out["tools"][0]["functionDeclarations"]
    assert len(out["tools"]) == 1
    assert decls[0] == {
        "name": "check_stock",
        "description": "Look up how many units of a product a store holds.",
        "parameters": {
            "type": "object",
            "properties": {
                "sku": {"type": "string", "description": "Product code"},
                "store": {"type": "string", "enum": ["lyon", "nantes", "paris"], "title": "Store"},
            },
            "required": ["sku", "store"],
        },
    }
    assert decls[1] == {
        "name": "reserve",
        "description": "Reserve a unit for a customer.",
        "parameters": {
            "type": "object",
            "properties": {
                "sku": {"type": "string"},
                "store": {"type": "string"},
                "note": {"nullable": True, "type": "string", "default": None},
                "quantity": {"nullable": True, "type": "integer", "minimum": 1},
            },
            "required": ["sku", "store"],
        },
    }
    assert decls[2] == {"name": "ping"}  # an empty object schema is left out
    assert out["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["reserve"]}
    }
    assert "generationConfig" not in out


def test_request_missing_signature_gets_placeholder_on_first_call_only() -> None:
    body = chat(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": ""}},
                    {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "[1, 2]"},
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "42"}]},
        ]
    )
    contents = translate(body)["contents"]
    assert contents[1]["parts"] == [
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": SKIP_SIGNATURE},
        {"functionCall": {"name": "g", "args": {}}},
    ]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "f", "response": {"content": [1, 2]}}},
        {"functionResponse": {"name": "g", "response": {"content": 42}}},
    ]


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "f"}},
            {"mode": "ANY", "allowedFunctionNames": ["f"]},
        ),
    ],
)
def test_request_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    out = translate(chat(tool_choice=choice))
    assert out["toolConfig"] == {"functionCallingConfig": config}


def test_request_generation_fields() -> None:
    out = translate(
        chat(
            max_tokens=10,
            max_completion_tokens=20,
            stop="###",
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logprobs=True,
            top_logprobs=3,
            response_format={"type": "json_object"},
        )
    )
    assert out["generationConfig"] == {
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "maxOutputTokens": 20,
        "logprobs": 3,
        "responseLogprobs": True,
        "stopSequences": ["###"],
        "responseMimeType": "application/json",
    }


def test_request_json_schema_response_format() -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "tags": {"type": "array", "items": {}}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    out = translate(
        chat(
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
        )
    )
    assert out["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}, "tags": {"type": "array", "items": {}}},
            "required": ["answer"],
        },
    }


@pytest.mark.parametrize("effort", ["none", "minimal", "low", "medium", "high"])
def test_request_reasoning_effort(effort: str) -> None:
    out = translate(chat(reasoning_effort=effort))
    assert out["generationConfig"] == {
        "thinkingConfig": {"thinkingBudget": REASONING_BUDGETS[effort]}
    }


def test_reasoning_budget_table() -> None:
    assert REASONING_BUDGETS["low"] == 1024
    assert REASONING_BUDGETS["medium"] == 8192
    assert REASONING_BUDGETS["high"] == 24576


@pytest.mark.parametrize(
    "own",
    [
        {"google": {"thinking_config": {"thinking_budget": 77, "include_thoughts": True}}},
        {
            "extra_body": {
                "google": {"thinking_config": {"thinking_budget": 77, "include_thoughts": True}}
            }
        },
        {"thinking_config": {"thinking_budget": 77, "include_thoughts": True}},
        {"thinkingConfig": {"thinkingBudget": 77, "includeThoughts": True}},
        {"generationConfig": {"thinkingConfig": {"thinkingBudget": 77, "includeThoughts": True}}},
    ],
)
def test_client_thinking_config_wins_over_reasoning_effort(own: dict[str, Any]) -> None:
    out = translate(chat(reasoning_effort="high", temperature=1.0, **own))
    assert out["generationConfig"] == {
        "temperature": 1.0,
        "thinkingConfig": {"thinkingBudget": 77, "includeThoughts": True},
    }


def test_client_google_extras_forwarded() -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    out = translate(
        chat(google={"cached_content": "cachedContents/abc", "safety_settings": safety})
    )
    assert out["cachedContent"] == "cachedContents/abc"
    assert out["safetySettings"] == safety


def test_request_audio_and_file_parts() -> None:
    out = translate(
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "UklGRg==", "format": "wav"},
                        },
                        {
                            "type": "file",
                            "file": {
                                "filename": "a.pdf",
                                "file_data": "data:application/pdf;base64,JVBE",
                            },
                        },
                        {"type": "image_url", "image_url": {"url": "data:text/plain,hi%20there"}},
                    ],
                }
            ]
        )
    )
    assert out["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
        {"inlineData": {"mimeType": "text/plain", "data": "aGkgdGhlcmU="}},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages"),
        (json.dumps({"messages": [{"role": "system", "content": "only"}]}).encode(), "messages"),
        (
            json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(),
            "messages[0].role",
        ),
        (json.dumps(chat(reasoning_effort="extreme")).encode(), "reasoning_effort"),
        (json.dumps(chat(tool_choice="sometimes")).encode(), "tool_choice"),
        (json.dumps(chat(temperature="hot")).encode(), "temperature"),
        (json.dumps(chat(stop=[1])).encode(), "stop"),
        (json.dumps(chat(tools=[{"type": "web_search"}])).encode(), "tools[0]"),
        (
            json.dumps(
                chat(
                    messages=[
                        {"role": "user", "content": "x"},
                        {"role": "tool", "tool_call_id": "nope", "content": "r"},
                    ]
                )
            ).encode(),
            "messages[1].tool_call_id",
        ),
        (
            json.dumps(
                chat(
                    messages=[
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {"id": "a", "function": {"name": "f", "arguments": "{oops"}}
                            ],
                        }
                    ]
                )
            ).encode(),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json.dumps(
                chat(
                    tools=[
                        {
                            "type": "function",
                            "function": {
                                "name": "t",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"n": {"$ref": "#/$defs/N"}},
                                    "$defs": {
                                        "N": {
                                            "type": "object",
                                            "properties": {"c": {"$ref": "#/$defs/N"}},
                                        }
                                    },
                                },
                            },
                        }
                    ]
                )
            ).encode(),
            "tools[0].function.parameters",
        ),
    ],
)
def test_request_errors(body: bytes, param: str | None) -> None:
    with pytest.raises(TranslationError) as info:
        openai_to_gemini_request(body, model="m", stream=False)
    assert info.value.param == param
    assert info.value.message


# --- non-streamed response -------------------------------------------------------------------


def test_response_multiturn() -> None:
    res = gemini_to_openai_response(
        200, fixture("multiturn_response.json"), model="gemini-2.5-flash", created=1700000000
    )
    assert res.status == 200
    assert res.content_type == b"application/json"
    out = json.loads(res.body)
    assert out == {
        "id": "chatcmpl-rsp8Kq2XbCycle",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gemini-2.5-flash",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The 32 mm tubeless tyre costs 54 euros. Fitting is included.",
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 41,
            "completion_tokens": 133,
            "total_tokens": 174,
            "completion_tokens_details": {"reasoning_tokens": 120},
        },
    }


def test_response_tool_calls() -> None:
    res = gemini_to_openai_response(200, fixture("tools_response.json"), model="gemini-2.5-pro")
    out = json.loads(res.body)
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Reserving now."
    calls = message["tool_calls"]
    assert [c["id"] for c in calls] == ["call_rspTools01_1", "call_rspTools01_2"]
    assert all(c["type"] == "function" for c in calls)
    assert calls[0]["function"]["name"] == "reserve"
    assert json.loads(calls[0]["function"]["arguments"]) == {
        "sku": "TREK-DOMANE",
        "store": "lyon",
        "quantity": 1,
    }
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "c2lnLXJlc2VydmU="}}
    assert calls[1]["function"]["name"] == "check_stock"
    assert json.loads(calls[1]["function"]["arguments"]) == {"sku": "TREK-DOMANE", "store": "paris"}
    assert "extra_content" not in calls[1]
    assert out["usage"] == {"prompt_tokens": 210, "completion_tokens": 38, "total_tokens": 248}


def test_tool_round_trip_through_openai_history() -> None:
    """A Gemini function call answered in OpenAI form, sent back, becomes the same parts."""
    gem = json.loads(fixture("tools_response.json"))
    res = json.loads(gemini_to_openai_response(200, fixture("tools_response.json"), model="m").body)
    message = res["choices"][0]["message"]
    history = chat(
        messages=[
            {"role": "user", "content": "reserve"},
            message,
            *[
                {"role": "tool", "tool_call_id": c["id"], "content": '{"ok": true}'}
                for c in message["tool_calls"]
            ],
        ]
    )
    contents = translate(history)["contents"]
    parts = contents[1]["parts"]
    assert parts[0] == {"text": "Reserving now."}
    assert parts[1] == gem["candidates"][0]["content"]["parts"][1]
    # the second call had no signature from Gemini and is not the first call of the turn
    assert parts[2] == gem["candidates"][0]["content"]["parts"][2]
    assert [p["functionResponse"]["name"] for p in contents[2]["parts"]] == [
        "reserve",
        "check_stock",
    ]


def test_response_function_call_id_from_gemini() -> None:
    body = {
        "candidates": [
            {
                "content": {"parts": [{"functionCall": {"id": "fc-9", "name": "f"}}]},
                "finishReason": "STOP",
            }
        ]
    }
    out = json.loads(gemini_to_openai_response(200, json.dumps(body).encode(), model="m").body)
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "fc-9"
    assert call["function"] == {"name": "f", "arguments": "{}"}
    assert out["choices"][0]["message"]["content"] is None
    assert "usage" not in out
    assert out["id"].startswith("chatcmpl-")


def test_response_safety_blocked() -> None:
    out = json.loads(
        gemini_to_openai_response(200, fixture("safety_response.json"), model="m").body
    )
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None},
            "finish_reason": "content_filter",
            "logprobs": None,
        }
    ]
    assert out["usage"] == {"prompt_tokens": 19, "completion_tokens": 0, "total_tokens": 19}


def test_response_prompt_blocked() -> None:
    body = fixture("prompt_blocked_response.json")
    out = json.loads(gemini_to_openai_response(200, body, model="m").body)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": None}


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("OTHER", False, "stop"),
    ],
)
def test_finish_reasons(reason: str, calls: bool, expected: str) -> None:
    parts: list[dict[str, Any]] = [{"text": "x"}]
    if calls:
        parts.append({"functionCall": {"name": "f", "args": {}}})
    body = {"candidates": [{"content": {"parts": parts}, "finishReason": reason}]}
    out = json.loads(gemini_to_openai_response(200, json.dumps(body).encode(), model="m").body)
    assert out["choices"][0]["finish_reason"] == expected


def test_response_candidates_and_thoughts() -> None:
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": "pondering", "thought": True}, {"text": "A"}]},
                "finishReason": "STOP",
                "index": 0,
            },
            {"content": {"parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS", "index": 1},
        ],
        "usageMetadata": {
            "promptTokenCount": 5,
            "candidatesTokenCount": 2,
            "cachedContentTokenCount": 4,
            "totalTokenCount": 7,
        },
    }
    out = json.loads(gemini_to_openai_response(200, json.dumps(body).encode(), model="m").body)
    assert [c["message"]["content"] for c in out["choices"]] == ["A", "B"]
    assert out["choices"][0]["message"]["reasoning_content"] == "pondering"
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


@pytest.mark.parametrize(
    ("status", "name", "etype", "code", "headers"),
    [
        (400, "error_invalid_argument.json", "invalid_request_error", "invalid_argument", []),
        (400, "error_api_key.json", "authentication_error", "invalid_api_key", []),
        (
            429,
            "error_rate_limited.json",
            "rate_limit_error",
            "rate_limit_exceeded",
            [(b"retry-after", b"27")],
        ),
    ],
)
def test_error_fixtures(
    status: int, name: str, etype: str, code: str, headers: list[tuple[bytes, bytes]]
) -> None:
    gem = json.loads(fixture(name))
    res = gemini_to_openai_response(status, fixture(name), model="m")
    assert res.status == status
    assert res.headers == headers
    assert json.loads(res.body) == {
        "error": {"message": gem["error"]["message"], "type": etype, "param": None, "code": code}
    }


@pytest.mark.parametrize(
    ("status", "grpc", "etype"),
    [
        (401, "UNAUTHENTICATED", "authentication_error"),
        (403, "PERMISSION_DENIED", "permission_error"),
        (404, "NOT_FOUND", "invalid_request_error"),
        (429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
        (500, "INTERNAL", "server_error"),
        (503, "UNAVAILABLE", "service_unavailable"),
        (504, "DEADLINE_EXCEEDED", "timeout_error"),
    ],
)
def test_error_statuses(status: int, grpc: str, etype: str) -> None:
    body = json.dumps({"error": {"code": status, "message": "nope", "status": grpc}}).encode()
    res = gemini_to_openai_response(status, body, model="m")
    assert res.status == status
    err = json.loads(res.body)["error"]
    assert err["type"] == etype
    assert err["message"] == "nope"


def test_error_non_json_and_error_in_200() -> None:
    res = gemini_to_openai_response(502, b"<html>bad gateway</html>", model="m")
    assert res.status == 502
    err = json.loads(res.body)["error"]
    assert err["type"] == "server_error"
    assert "bad gateway" in err["message"]

    body = json.dumps({"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}})
    res = gemini_to_openai_response(200, body.encode(), model="m")
    assert res.status == 429

    res = gemini_to_openai_response(200, b"not json", model="m")
    assert res.status == 502


# --- streaming -------------------------------------------------------------------------------


def run_stream(data: bytes, *, include_usage: bool, chunks: list[bytes] | None = None) -> bytes:
    tr = GeminiToOpenAIStream("gemini-2.5-flash", include_usage, created=1700000000)
    out = b"".join(tr.feed(c) for c in (chunks if chunks is not None else [data]))
    return out + tr.finish()


def test_stream_text() -> None:
    events = sse_events(run_stream(fixture("stream_text.sse"), include_usage=True))
    head = {
        "id": "chatcmpl-rspStreamTxt",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gemini-2.5-flash",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice]}

    assert events == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Tubeless tyres "}),
        chunk({"content": "seal themselves "}),
        chunk({"content": "after small punctures — très pratique."}),
        chunk({}, "stop"),
        {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 44,
                "total_tokens": 56,
                "completion_tokens_details": {"reasoning_tokens": 30},
            },
        },
        "[DONE]",
    ]


def test_stream_without_usage() -> None:
    events = sse_events(run_stream(fixture("stream_text.sse"), include_usage=False))
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_stream_function_call() -> None:
    events = sse_events(run_stream(fixture("stream_function_call.sse"), include_usage=True))
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Let me check both stores."}
    first, second = deltas[2]["tool_calls"], deltas[3]["tool_calls"]
    assert first == [
        {
            "index": 0,
            "id": "call_rspStreamFn_1",
            "type": "function",
            "function": {
                "name": "check_stock",
                "arguments": '{"sku":"TREK-DOMANE","store":"lyon"}',
            },
            "extra_content": {"google": {"thought_signature": "c2lnLXN0cmVhbQ=="}},
        }
    ]
    assert second == [
        {
            "index": 1,
            "id": "call_rspStreamFn_2",
            "type": "function",
            "function": {
                "name": "check_stock",
                "arguments": '{"sku":"TREK-DOMANE","store":"nantes"}',
            },
        }
    ]
    assert events[4]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert events[5]["usage"] == {"prompt_tokens": 80, "completion_tokens": 40, "total_tokens": 120}
    assert events[6] == "[DONE]"


@pytest.mark.parametrize("name", ["stream_text.sse", "stream_function_call.sse"])
def test_stream_split_at_every_byte(name: str) -> None:
    data = fixture(name)
    whole = run_stream(data, include_usage=True)
    for cut in range(1, len(data)):
        assert run_stream(data, include_usage=True, chunks=[data[:cut], data[cut:]]) == whole
    single = [data[i : i + 1] for i in range(len(data))]
    assert run_stream(data, include_usage=True, chunks=single) == whole


def test_stream_lf_line_endings_equal_crlf() -> None:
    data = fixture("stream_text.sse")
    assert run_stream(data.replace(b"\r\n", b"\n"), include_usage=True) == run_stream(
        data, include_usage=True
    )


def test_stream_last_event_without_blank_line() -> None:
    data = fixture("stream_text.sse")
    assert run_stream(data.rstrip(b"\r\n"), include_usage=True) == run_stream(
        data, include_usage=True
    )


def test_stream_truncated_ends_with_error() -> None:
    data = fixture("stream_text.sse")
    first = data[: data.index(b"\r\n\r\n") + 4]
    events = sse_events(run_stream(first, include_usage=True))
    assert events[-2]["error"]["type"] == "upstream_error"
    assert "finish reason" in events[-2]["error"]["message"]
    assert events[-1] == "[DONE]"


def test_stream_error_event_from_gemini() -> None:
    data = (
        b'data: {"error": {"code": 503, "message": "The model is overloaded.",'
        b' "status": "UNAVAILABLE"}}\r\n\r\n'
    )
    tr = GeminiToOpenAIStream("m", True)
    events = sse_events(tr.feed(data))
    assert events == [
        {
            "error": {
                "message": "The model is overloaded.",
                "type": "service_unavailable",
                "param": None,
                "code": "unavailable",
            }
        },
        "[DONE]",
    ]
    assert tr.feed(b"data: {}\r\n\r\n") == b""
    assert tr.finish() == b""
    assert tr.error(500, "x") == b""


def test_stream_error_after_upstream_failure() -> None:
    tr = GeminiToOpenAIStream("m", True)
    tr.feed(fixture("stream_text.sse")[:50])
    events = sse_events(tr.error(504, "upstream timed out"))
    assert events[0]["error"]["message"] == "upstream timed out"
    assert events[0]["error"]["type"] == "timeout_error"
    assert events[1] == "[DONE]"
    assert tr.finish() == b""


def test_stream_prompt_blocked() -> None:
    data = b"data: " + json.dumps(json.loads(fixture("prompt_blocked_response.json"))).encode()
    events = sse_events(run_stream(data + b"\n\n", include_usage=False))
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, "content_filter"]
    assert events[-1] == "[DONE]"


def test_stream_invalid_json_event() -> None:
    events = sse_events(run_stream(b"data: {oops\n\n", include_usage=False))
    assert "error" in events[0]
    assert events[-1] == "[DONE]"


# --- models --------------------------------------------------------------------------------


def test_models_list() -> None:
    assert gemini_model_page(fixture("models_list.json"))[0] == (
        "gemini-2.5-flash", "gemini-2.5-pro")
    no_methods = json.dumps({"models": [{"name": "models/a"}, {"name": "b"}]}).encode()
    assert gemini_model_page(no_methods)[0] == ("a", "b")
    assert gemini_model_page(b"{}")[0] == ()
    with pytest.raises(TranslationError):
        gemini_model_page(b"<html>")
    # Where the list is fetched, with which key, and the OpenAI-compatible endpoint's paths
    # are the backend profile's: tests/apis/test_profiles.py.


# --- property: shared fields survive ---------------------------------------------------------

_text = st.text(min_size=1, max_size=30)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
_tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": _name, "description": _text},
            optional={
                "parameters": st.fixed_dictionaries(
                    {
                        "type": st.just("object"),
                        "properties": st.dictionaries(
                            _name,
                            st.fixed_dictionaries(
                                {"type": st.sampled_from(["string", "integer", "boolean"])}
                            ),
                            min_size=1,
                            max_size=3,
                        ),
                        "additionalProperties": st.booleans(),
                    }
                )
            },
        ),
    }
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": _text}
)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    messages = draw(st.lists(_message, min_size=1, max_size=8))
    if all(m["role"] in ("system", "developer") for m in messages):
        messages.append({"role": "user", "content": draw(_text)})
    body: dict[str, Any] = {"model": "gemini-2.5-flash", "messages": messages}
    optional = {
        "temperature": st.floats(0, 2, allow_nan=False),
        "top_p": st.floats(0, 1, allow_nan=False),
        "max_tokens": st.integers(1, 65536),
        "stop": st.one_of(_text, st.lists(_text, min_size=1, max_size=4)),
        "tools": st.lists(_tool, min_size=1, max_size=3),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests())
def test_property_shared_fields_survive(body: dict[str, Any]) -> None:
    out = translate(body)

    system = [m["content"] for m in body["messages"] if m["role"] in ("system", "developer")]
    if system:
        assert [p["text"] for p in out["systemInstruction"]["parts"]] == system
    else:
        assert "systemInstruction" not in out

    # every user/assistant text, in order, with the right role, and roles alternate
    convo = [
        ("model" if m["role"] == "assistant" else "user", m["content"])
        for m in body["messages"]
        if m["role"] in ("user", "assistant")
    ]
    flat = [(c["role"], p["text"]) for c in out["contents"] for p in c["parts"]]
    assert flat == convo
    roles = [c["role"] for c in out["contents"]]
    assert all(a != b for a, b in itertools.pairwise(roles))

    config = out.get("generationConfig", {})
    assert config.get("temperature") == body.get("temperature")
    assert config.get("topP") == body.get("top_p")
    assert config.get("maxOutputTokens") == body.get("max_tokens")
    stop = body.get("stop")
    assert config.get("stopSequences") == ([stop] if isinstance(stop, str) else stop)

    if "tools" in body:
        decls = out["tools"][0]["functionDeclarations"]
        assert [d["name"] for d in decls] == [t["function"]["name"] for t in body["tools"]]
        assert [d["description"] for d in decls] == [
            t["function"]["description"] for t in body["tools"]
        ]
        for decl, tool in zip(decls, body["tools"], strict=True):
            params = tool["function"].get("parameters")
            if params is None:
                assert "parameters" not in decl
            else:
                assert decl["parameters"] == {
                    "type": "object",
                    "properties": params["properties"],
                }
    else:
        assert "tools" not in out
