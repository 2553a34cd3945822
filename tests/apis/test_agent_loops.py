"""Agent tool loops through the translators, sans-IO: what round one's answer carries (thinking
blocks and signatures, every parallel call, the right stop reason, usage) and what round two's
request rebuilds from it, from recorded fixtures in tests/fixtures/agent_loops/, streams split
at every byte, and hypothesis round trips through the SDKs' own stream accumulators.

The same loops with the official SDKs and a real router are in tests/e2e/test_agent_loops_sdk.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from continuum.apis.anthropic import (
    REASONING_BUDGETS,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from continuum.apis.calls import build_call
from continuum.apis.gemini import REASONING_BUDGETS as GEMINI_BUDGETS
from continuum.apis.gemini import (
    SKIP_SIGNATURE,
    GeminiToOpenAIStream,
    gemini_to_openai_response,
    openai_to_gemini_request,
)
from continuum.apis.limits import MAX_BLOCKS, MAX_EVENT_BYTES, MAX_HELD_ARGUMENTS
from continuum.apis.profiles import backend_profile
from continuum.apis.types import ChatDialect, StreamTranslator, TranslationError
from continuum.config import BackendConfig

FIXTURES = Path(__file__).parent.parent / "fixtures" / "agent_loops"
CREATED = 1700000000
CARRIER = "continuum.gemini-signature:"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def run(translator: StreamTranslator, pieces: list[bytes]) -> bytes:
    return b"".join(translator.feed(p) for p in pieces) + translator.finish()


def openai_sse(data: bytes) -> list[Any]:
    out: list[Any] = []
    for event in data.decode().split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        payload = event[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def anthropic_sse(data: bytes) -> list[list[Any]]:
    out: list[list[Any]] = []
    for event in data.decode().split("\n\n")[:-1]:
        name, payload = event.split("\n")
        assert name.startswith("event: ") and payload.startswith("data: ")
        body = json.loads(payload[len("data: "):])
        assert body["type"] == name[len("event: "):]
        out.append([name[len("event: "):], body])
    return out


def every_split(make: Any, data: bytes) -> bytes:
    """The output for ``data`` whole, checked equal for every two-piece split and for one
    byte at a time."""
    whole = run(make(), [data])
    for i in range(len(data) + 1):
        assert run(make(), [data[:i], data[i:]]) == whole, i
    assert run(make(), [data[i:i + 1] for i in range(len(data))]) == whole
    return whole


def openai_message(chunks: list[Any]) -> dict[str, Any]:
    """The assistant message the openai SDK accumulates from ``chunks`` (what an agent sends
    back in round two)."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        if chunk != "[DONE]" and "error" not in chunk:
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    completion = state.current_completion_snapshot
    message: dict[str, Any] = completion.choices[0].message.model_dump(exclude_none=True)
    return message


def anthropic_message(events: list[list[Any]]) -> dict[str, Any]:
    """The Message the anthropic SDK accumulates from ``events`` (what Claude Code keeps and
    sends back)."""
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    for _, event in events:
        if event["type"] != "error":
            snapshot = accumulate_event(event=event, current_snapshot=snapshot,
                                        json_bufs=json_bufs)
    message: dict[str, Any] = snapshot.to_dict()
    return message


def backend(**fields: Any) -> BackendConfig:
    return BackendConfig(**{"name": "b", "url": "https://upstream.test", **fields})


# =========================================================================================
# chat client → Anthropic backend: thinking blocks out in round one, back in round two


def test_stream_round_one_exposes_thinking_blocks_signatures_and_every_call() -> None:
    data = raw("anthropic_stream_thinking_tools.sse")
    out = every_split(lambda: AnthropicToOpenAIStream("claude-x", True, created=CREATED), data)
    chunks = openai_sse(out)
    assert chunks == load("anthropic_stream_thinking_tools.expected.json")
    message = openai_message(chunks)
    assert message["reasoning_content"] == "Two files to read; both at once."
    blocks = [{k: v for k, v in b.items() if k != "index"} for b in message["thinking_blocks"]]
    assert blocks == [
        {"type": "thinking", "thinking": "Two files to read; both at once.",
         "signature": "EuYBCkQYAiJAgCs1le6/Pol5Z4/JdQv4pTqOEQjFBRTxYXE8Wc7w/1eOw=="},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwx"
         "tE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB9URj2pLmN4kOKEgUADQo="},
    ]
    calls = message["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"path": "src/main.py"}, {"path": "README.md"}]  # the second only in its block start
    usage = chunks[-2]["usage"]
    assert usage["prompt_tokens"] == 1210 + 300 + 4100
    assert usage["prompt_tokens_details"] == {"cached_tokens": 4100, "cache_write_tokens": 300}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 121}
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"


def test_round_two_rebuilds_the_thinking_blocks_first_and_unmodified() -> None:
    fx = load("openai_round_two.json")
    call = openai_to_anthropic_request(dumps(fx["openai"]), model="claude-sonnet-4-5-20250929")
    assert json.loads(call.body) == fx["anthropic"]


def test_round_trip_of_the_round_one_stream_into_round_two() -> None:
    """What the SDK accumulated from round one is exactly what Anthropic gets back."""
    chunks = openai_sse(run(AnthropicToOpenAIStream("claude-x", False, created=CREATED),
                            [raw("anthropic_stream_thinking_tools.sse")]))
    message = openai_message(chunks)
    request = {"model": "claude-x", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "go"}, message,
        *({"role": "tool", "tool_call_id": c["id"], "content": "ok"}
          for c in message["tool_calls"])]}
    body = json.loads(openai_to_anthropic_request(dumps(request), model="c").body)
    content = body["messages"][1]["content"]
    assert [b["type"] for b in content] == ["thinking", "redacted_thinking", "text", "tool_use",
                                           "tool_use"]
    assert content[0]["signature"] == "EuYBCkQYAiJAgCs1le6/Pol5Z4/JdQv4pTqOEQjFBRTxYXE8Wc7w/1eOw=="
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_non_stream_message_keeps_redacted_thinking_and_says_pause_turn() -> None:
    fx = load("anthropic_message_pause_turn.json")
    out = json.loads(anthropic_to_openai_response(200, dumps(fx["anthropic"]), model="m").body)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["native_finish_reason"] == "pause_turn"
    assert choice["message"]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "Searching more.", "signature": "EqQBCgIYAhIMsig=="},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rL"},
    ]
    assert choice["message"]["reasoning_content"] == "Searching more."
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 25}


def test_stream_pause_turn_is_said_distinctly() -> None:
    data = raw("anthropic_stream_pause_turn.sse")
    out = every_split(lambda: AnthropicToOpenAIStream("claude-x", False, created=CREATED), data)
    chunks = openai_sse(out)
    assert chunks == load("anthropic_stream_pause_turn.expected.json")
    assert chunks[-2]["choices"][0]["native_finish_reason"] == "pause_turn"


THINK_TOOLS_BASE: dict[str, Any] = {
    "model": "m", "reasoning_effort": "high", "temperature": 0.3,
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "messages": [{"role": "user", "content": "x"}],
}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_forced_tool_choice_with_thinking_drop_or_reject(choice: Any) -> None:
    req = {**THINK_TOOLS_BASE, "tool_choice": choice}
    body = json.loads(openai_to_anthropic_request(dumps(req), model="c").body)
    assert "thinking" not in body  # dropped for this request
    assert body["max_tokens"] == 4096  # no budget added
    assert body["temperature"] == 0.3  # sampling is allowed again
    assert body["tool_choice"]["type"] in ("any", "tool")
    with pytest.raises(TranslationError) as exc:
        openai_to_anthropic_request(dumps(req), model="c", thinking_conflict="reject")
    assert exc.value.param == "tool_choice" and "thinking" in exc.value.message
    # the client's own thinking field conflicts the same way
    own = {**req, "reasoning_effort": None, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    assert "thinking" not in json.loads(openai_to_anthropic_request(dumps(own), model="c").body)
    # auto is fine
    auto = json.loads(openai_to_anthropic_request(
        dumps({**req, "tool_choice": "auto"}), model="c", thinking_conflict="reject").body)
    assert auto["thinking"] == {"type": "enabled", "budget_tokens": 16384}


def _tool_round(assistant: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "x"}, assistant,
            {"role": "tool", "tool_call_id": "t1", "content": "1"}]


CALL = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_tool_turn_without_its_thinking_blocks_drop_or_reject() -> None:
    # reasoning_content alone cannot be signed: the turn has no thinking block
    assistant = {"role": "assistant", "content": None, "reasoning_content": "hm",
                 "tool_calls": [CALL]}
    req = {**THINK_TOOLS_BASE, "messages": _tool_round(assistant)}
    body = json.loads(openai_to_anthropic_request(dumps(req), model="c").body)
    assert "thinking" not in body
    with pytest.raises(TranslationError) as exc:
        openai_to_anthropic_request(dumps(req), model="c", thinking_conflict="reject")
    assert exc.value.param == "messages" and "thinking_blocks" in exc.value.message
    # with its blocks it goes through, thinking on
    signed = {**assistant, "thinking_blocks": [
        {"type": "thinking", "thinking": "hm", "signature": "sig"}]}
    ok = json.loads(openai_to_anthropic_request(
        dumps({**req, "messages": _tool_round(signed)}), model="c",
        thinking_conflict="reject").body)
    assert ok["thinking"]["type"] == "enabled"
    assert ok["messages"][1]["content"][0] == {"type": "thinking", "thinking": "hm",
                                               "signature": "sig"}
    # a later step of the same turn needs none of its own (Claude thinks once per turn)
    later = [*_tool_round(signed),
             {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": "t2"}]},
             {"role": "tool", "tool_call_id": "t2", "content": "2"}]
    ok = json.loads(openai_to_anthropic_request(
        dumps({**req, "messages": later}), model="c", thinking_conflict="reject").body)
    assert ok["thinking"]["type"] == "enabled"
    # a finished turn followed by a new prompt needs nothing
    done = [*_tool_round(assistant), {"role": "assistant", "content": "done"},
            {"role": "user", "content": "next"}]
    ok = json.loads(openai_to_anthropic_request(
        dumps({**req, "messages": done}), model="c", thinking_conflict="reject").body)
    assert ok["thinking"]["type"] == "enabled"


def test_thinking_off_takes_thinking_blocks_out_of_the_history() -> None:
    signed = {"role": "assistant", "content": None, "tool_calls": [CALL], "thinking_blocks": [
        {"type": "thinking", "thinking": "hm", "signature": "sig"}]}
    only_thinking = {"role": "assistant", "content": "", "thinking_blocks": [
        {"type": "redacted_thinking", "data": "zz"}]}
    req = {"model": "m", "messages": [
        *_tool_round(signed), {"role": "user", "content": "and"}, only_thinking,
        {"role": "user", "content": "then"}]}
    body = json.loads(openai_to_anthropic_request(dumps(req), model="c").body)
    assert "thinking" not in body
    assert "thinking" not in json.dumps(body["messages"])
    # the thinking-only turn left; its neighbours became one user turn
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_thinking_blocks_as_content_parts_and_bad_blocks() -> None:
    assistant = {"role": "assistant", "tool_calls": [CALL], "content": [
        {"type": "thinking", "thinking": "a", "signature": "s1"},
        {"type": "text", "text": "t"}]}
    req = {**THINK_TOOLS_BASE, "messages": _tool_round(assistant)}
    content = json.loads(openai_to_anthropic_request(dumps(req), model="c").body)[
        "messages"][1]["content"]
    assert [b["type"] for b in content] == ["thinking", "text", "tool_use"]
    for bad in ({"type": "thinking", "thinking": 5, "signature": "s"},
                {"type": "thinking", "thinking": "a", "signature": None},
                {"type": "redacted_thinking"}, {"type": "text", "text": "x"}, "nope"):
        broken = {**assistant, "content": None, "thinking_blocks": [bad]}
        with pytest.raises(TranslationError) as exc:
            openai_to_anthropic_request(dumps({**req, "messages": _tool_round(broken)}),
                                        model="c")
        assert exc.value.param == "messages[1].thinking_blocks[0]"
    # a block Anthropic could not have signed cannot go back: left out (and the turn then
    # has no thinking: thinking is dropped for the request)
    unsigned = {**assistant, "content": None, "thinking_blocks": [
        {"type": "thinking", "thinking": "a"}, {"type": "thinking", "thinking": "b",
                                                "signature": CARRIER + "{}"}]}
    body = json.loads(openai_to_anthropic_request(
        dumps({**req, "messages": _tool_round(unsigned)}), model="c").body)
    assert "thinking" not in body and "thinking" not in json.dumps(body["messages"])


@pytest.mark.parametrize(("effort", "budget"), [("xhigh", 32768), ("max", 49152)])
def test_reasoning_effort_xhigh_and_max(effort: str, budget: int) -> None:
    body = json.loads(openai_to_anthropic_request(
        dumps({"model": "m", "messages": [{"role": "user", "content": "x"}],
               "reasoning_effort": effort}), model="c").body)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert REASONING_BUDGETS[effort] == budget
    assert body["max_tokens"] == 4096 + budget < 64000
    gemini = json.loads(openai_to_gemini_request(
        dumps({"model": "m", "messages": [{"role": "user", "content": "x"}],
               "reasoning_effort": effort}), model="g", stream=False).body)
    assert gemini["generationConfig"]["thinkingConfig"] == {"thinkingBudget": -1}
    assert GEMINI_BUDGETS[effort] == -1


# -- hostile Anthropic streams: a clear error ending, nothing held ----------------------------


def _events(*events: dict[str, Any]) -> bytes:
    start = {"type": "message_start", "message": {"id": "msg_h", "usage": {"input_tokens": 1}}}
    return b"".join(b"event: x\ndata: " + dumps(e) + b"\n\n" for e in (start, *events))


@pytest.mark.parametrize(("events", "says"), [
    ([{"type": "content_block_delta", "index": 0,
       "delta": {"type": "thinking_delta", "thinking": "x"}}], "thinking_delta for block 0"),
    ([{"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
      {"type": "content_block_delta", "index": 0,
       "delta": {"type": "signature_delta", "signature": "s"}}], "signature_delta"),
    ([{"type": "content_block_delta", "index": 7,
       "delta": {"type": "signature_delta", "signature": "s"}}], "block 7"),
    ([{"type": "content_block_delta", "index": 3,
       "delta": {"type": "input_json_delta", "partial_json": "{"}}], "input_json_delta"),
    ([{"type": "content_block_start", "index": 10**12,
       "content_block": {"type": "tool_use", "id": "t", "name": "f"}}], "out of range"),
    ([{"type": "content_block_start", "index": -1, "content_block": {"type": "text"}}],
     "out of range"),
    ([{"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
      {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}],
     "started twice"),
])
def test_hostile_anthropic_stream_ends_with_a_clear_error(events: list[Any], says: str) -> None:
    t = AnthropicToOpenAIStream("m", True, created=CREATED)
    chunks = openai_sse(run(t, [_events(*events)]))
    assert chunks[-1] == "[DONE]"
    assert says in chunks[-2]["error"]["message"]
    assert t.truncated
    assert t.feed(_events()) == b"" and t.finish() == b""


def test_anthropic_stream_event_past_the_bound() -> None:
    t = AnthropicToOpenAIStream("m", False, created=CREATED)
    out = t.feed(_events())
    piece = b"x" * (1 << 20)
    for _ in range(MAX_EVENT_BYTES // len(piece) + 1):
        out += t.feed(piece)  # one endless line
    chunks = openai_sse(out)
    assert "larger than" in chunks[-2]["error"]["message"] and chunks[-1] == "[DONE]"
    assert t.truncated


# =========================================================================================
# Anthropic client (/v1/messages) → OpenAI-compatible backend


def test_interleaved_parallel_calls_each_keep_every_fragment() -> None:
    data = raw("openai_stream_interleaved.sse")
    out = every_split(lambda: OpenAIToAnthropicStream("claude-x"), data)
    events = anthropic_sse(out)
    assert events == load("openai_stream_interleaved.expected.json")
    message = anthropic_message(events)
    assert [b["type"] for b in message["content"]] == ["thinking", "tool_use", "tool_use"]
    assert [b["input"] for b in message["content"][1:]] == [
        {"path": "src/main.py"}, {"path": "README.md"}]
    assert message["stop_reason"] == "tool_use"  # the server said "stop"
    assert message["usage"]["cache_read_input_tokens"] == 512
    assert message["usage"]["input_tokens"] == 950 - 512


def test_gemini_compat_stream_indexless_split_and_signed() -> None:
    data = raw("openai_stream_gemini_compat.sse")
    out = every_split(lambda: OpenAIToAnthropicStream("claude-x"), data)
    events = anthropic_sse(out)
    assert events == load("openai_stream_gemini_compat.expected.json")
    message = anthropic_message(events)
    kinds = [b["type"] for b in message["content"]]
    assert kinds == ["thinking", "tool_use", "tool_use"]
    carrier = message["content"][0]
    assert carrier["thinking"] == "" and carrier["signature"].startswith(CARRIER)
    assert [(b["id"], b["input"]) for b in message["content"][1:]] == [
        ("function-call-4412", {"path": "src/main.py"}),
        ("function-call-4413", {"path": "README.md"})]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["output_tokens_details"] == {"thinking_tokens": 70}


def test_refusal_streamed_and_whole() -> None:
    data = raw("openai_stream_refusal.sse")
    events = anthropic_sse(every_split(lambda: OpenAIToAnthropicStream("claude-x"), data))
    assert events == load("openai_stream_refusal.expected.json")
    message = anthropic_message(events)
    assert message["stop_reason"] == "refusal"
    assert message["content"] == [{"type": "text", "text": "I'm sorry, I can't help with that."}]
    case = next(c for c in load("openai_completions.json")["cases"] if c["name"] == "refusal")
    out = json.loads(openai_to_anthropic_response(200, dumps(case["openai"]), model="m").body)
    assert out["stop_reason"] == "refusal"
    assert out["content"] == [{"type": "text", "text": "I'm sorry, I can't help with that."}]


def test_mid_stream_error_keeps_its_type() -> None:
    data = raw("openai_stream_error_typed.sse")
    events = anthropic_sse(every_split(lambda: OpenAIToAnthropicStream("claude-x"), data))
    assert events == load("openai_stream_error_typed.expected.json")
    assert events[-1][1]["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(("error", "kind"), [
    ({"type": "server_error"}, "api_error"),
    ({"type": "invalid_request_error", "code": "context_length_exceeded"},
     "invalid_request_error"),
    ({"type": "service_unavailable", "code": "overloaded"}, "overloaded_error"),
    ({"type": "overloaded_error"}, "overloaded_error"),
    ({"code": "invalid_api_key"}, "authentication_error"),
    ({"type": "timeout_error", "code": "upstream_timeout"}, "timeout_error"),
    ({"type": "whatever"}, "api_error"),
    ("a string", "api_error"),
])
def test_error_types_mapped(error: Any, kind: str) -> None:
    t = OpenAIToAnthropicStream("m")
    body = {**error, "message": "m"} if isinstance(error, dict) else error
    events = anthropic_sse(run(t, [b"data: " + dumps({"error": body}) + b"\n\n"]))
    assert events[-1][1]["error"]["type"] == kind


def test_usage_in_the_first_chunk_reaches_message_start() -> None:
    data = raw("openai_stream_usage_first.sse")
    events = anthropic_sse(every_split(lambda: OpenAIToAnthropicStream("claude-x"), data))
    assert events == load("openai_stream_usage_first.expected.json")
    assert events[0][1]["message"]["usage"] == {
        "input_tokens": 316, "output_tokens": 0, "cache_read_input_tokens": 256,
        "cache_creation_input_tokens": 128}


@pytest.mark.parametrize("case", load("openai_completions.json")["cases"],
                         ids=lambda c: str(c["name"]))
def test_non_stream_answers(case: dict[str, Any]) -> None:
    out = json.loads(openai_to_anthropic_response(200, dumps(case["openai"]), model="m").body)
    kinds = [b["type"] for b in out["content"]]
    if case["name"] == "gemini_compat_parallel_calls":
        assert kinds == ["thinking", "tool_use", "tool_use"]
        assert out["content"][0]["signature"].startswith(CARRIER)
        assert out["stop_reason"] == "tool_use"  # finish_reason was "stop"
        assert out["usage"] == {"input_tokens": 1830, "output_tokens": 96,
                                "output_tokens_details": {"thinking_tokens": 70}}
    elif case["name"] == "reasoning_model_usage":
        assert kinds == ["tool_use"]
        assert out["usage"] == {"input_tokens": 904, "output_tokens": 800,
                                "cache_read_input_tokens": 4096,
                                "output_tokens_details": {"thinking_tokens": 640}}
    else:
        assert out["stop_reason"] == "refusal"


def test_finish_stop_with_tool_calls_is_tool_use_but_length_stays() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}}]}
    for finish, reason in (("stop", "tool_use"), ("length", "max_tokens"),
                           ("tool_calls", "tool_use")):
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        events = anthropic_sse(run(OpenAIToAnthropicStream("m"), [
            b"data: " + dumps(chunk) + b"\n\ndata: " + dumps(end) + b"\n\ndata: [DONE]\n\n"]))
        assert events[-2][1]["delta"]["stop_reason"] == reason


# -- round two through the front door, per backend ------------------------------------------


def round_two_chat(dialect: ChatDialect) -> dict[str, Any]:
    body, stream = anthropic_to_openai_request(
        dumps(load("messages_round_two.json")["anthropic"]), model="up", dialect=dialect)
    assert stream
    chat: dict[str, Any] = json.loads(body)
    return chat


@pytest.mark.parametrize(("fields", "expect"), [
    ({"type": "openai"}, {"limit": "max_completion_tokens", "effort": None, "reasoning": None,
                          "signature": None, "error": "Error: ENOENT: README.md"}),
    ({"type": "vllm"}, {"limit": "max_tokens", "effort": "high",
                        "reasoning": "Both files are needed.", "signature": None,
                        "error": "Error: ENOENT: README.md"}),
    ({"type": "gemini", "gemini_api": "openai"},
     {"limit": "max_tokens", "effort": "high", "reasoning": None,
      "signature": "CsgCAdHtim9xZ8m4QbXzB1n5F0Tk2e7Vw==", "error": "Error: ENOENT: README.md"}),
    ({"type": "openai", "reasoning": "send", "max_tokens_field": "max_tokens"},
     {"limit": "max_tokens", "effort": "high", "reasoning": "Both files are needed.",
      "signature": None, "error": "Error: ENOENT: README.md"}),
    ({"type": "vllm", "reasoning": "drop"},
     {"limit": "max_tokens", "effort": None, "reasoning": None, "signature": None,
      "error": "Error: ENOENT: README.md"}),
])
def test_round_two_chat_per_backend(fields: dict[str, Any], expect: dict[str, Any]) -> None:
    chat = round_two_chat(backend_profile(backend(**fields)).chat_dialect)
    other = ({"max_tokens", "max_completion_tokens"} - {expect["limit"]}).pop()
    assert chat[expect["limit"]] == 16000 and other not in chat
    assert chat.get("reasoning_effort") == expect["effort"]
    assistant = chat["messages"][2]
    assert assistant.get("reasoning_content") == expect["reasoning"]
    first, second = assistant["tool_calls"]
    assert [first["id"], second["id"]] == ["function-call-4412", "function-call-4413"]
    signature = first.get("extra_content", {}).get("google", {}).get("thought_signature")
    assert signature == expect["signature"]
    assert "extra_content" not in second
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "function-call-4412",
                                   "content": "print('hello')"}
    failed = chat["messages"][4]
    texts = [p["text"] for p in failed["content"]]
    assert " ".join(texts) == expect["error"]
    assert "is_error" not in failed


def test_round_two_native_gemini_signatures_and_error_response() -> None:
    profile = backend_profile(backend(type="gemini"))
    chat = round_two_chat(profile.chat_dialect)
    assert chat["thinking_config"] == {"thinking_budget": 10000, "include_thoughts": True}
    assert chat["messages"][4]["is_error"] is True
    gemini = json.loads(openai_to_gemini_request(dumps(chat), model="g", stream=True).body)
    assert gemini["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 10000, "includeThoughts": True}
    model_turn = gemini["contents"][1]
    assert model_turn["role"] == "model"
    calls = [p for p in model_turn["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == "CsgCAdHtim9xZ8m4QbXzB1n5F0Tk2e7Vw=="  # the real one
    assert "thoughtSignature" not in calls[1]
    responses = [p["functionResponse"] for p in gemini["contents"][2]["parts"]]
    assert responses == [
        {"name": "read_file", "response": {"content": "print('hello')"}},
        {"name": "read_file", "response": {"error": "ENOENT: README.md"}},
    ]


def test_gemini_compat_history_without_signature_gets_the_placeholder() -> None:
    req = load("messages_round_two.json")["anthropic"]
    req = {**req, "messages": [req["messages"][0], {**req["messages"][1], "content": [
        b for b in req["messages"][1]["content"] if b["type"] != "thinking"]}, req["messages"][2]]}
    dialect = backend_profile(backend(type="gemini", gemini_api="openai")).chat_dialect
    chat = json.loads(anthropic_to_openai_request(dumps(req), dialect=dialect)[0])
    first, second = chat["messages"][2]["tool_calls"]
    assert first["extra_content"] == {"google": {"thought_signature": SKIP_SIGNATURE}}
    assert "extra_content" not in second


def test_stop_sequences_bound_per_backend() -> None:
    req = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
           "stop_sequences": ["a", "b", "c", "d", "e"]}
    with pytest.raises(TranslationError) as exc:
        anthropic_to_openai_request(
            dumps(req), dialect=backend_profile(backend(type="openai")).chat_dialect)
    assert exc.value.param == "stop_sequences" and "at most 4" in exc.value.message
    for fields in ({"type": "vllm"}, {"type": "gemini", "gemini_api": "openai"}):
        chat = json.loads(anthropic_to_openai_request(
            dumps(req), dialect=backend_profile(backend(**fields)).chat_dialect)[0])
        assert chat["stop"] == ["a", "b", "c", "d", "e"]
    with pytest.raises(TranslationError):
        anthropic_to_openai_request(dumps({**req, "stop_sequences": ["s"] * 6}),
                                    dialect=backend_profile(backend(type="gemini")).chat_dialect)


def test_build_call_uses_the_backend_dialect() -> None:
    req = dumps({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]})
    for fields, field in (({"type": "openai"}, "max_completion_tokens"),
                          ({"type": "ollama"}, "max_tokens"),
                          ({"type": "openai", "max_tokens_field": "max_tokens"}, "max_tokens")):
        call = build_call("/v1/messages", backend_profile(backend(**fields)), "", [], req, "m",
                          False)
        assert json.loads(call.body)[field] == 9


# -- hostile chat streams into the front door ---------------------------------------------------


def _chat(*deltas: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + dumps({"choices": [{"index": 0, "delta": d}]}) + b"\n\n"
                    for d in deltas)


def _call(**fields: Any) -> dict[str, Any]:
    return {"tool_calls": [fields]}


@pytest.mark.parametrize(("stream", "says"), [
    (_chat(_call(index=10**9, id="a", function={"name": "f", "arguments": "{}"})),
     "out of range"),
    (_chat(_call(index=-5, id="a", function={"name": "f"})), "out of range"),
    (_chat(*(_call(index=i, id=f"c{i}", function={"name": "f", "arguments": "{}"})
             for i in range(MAX_BLOCKS + 1))), "index 1024 is out of range"),
    (_chat(*(_call(id=f"c{i}", function={"name": "f", "arguments": "{}"})
             for i in range(MAX_BLOCKS + 1))), "tool calls in one answer"),
    (_chat(_call(index=0, id="a", function={"name": "f", "arguments": "{}"}),
           _call(index=0, function={"arguments": "{\"b\": 1}"})), "after a complete JSON"),
    (_chat(_call(index=0, id="a", function={"arguments": "{}"})) +
     b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n',
     "without a name"),
])
def test_hostile_tool_call_deltas_end_with_an_error(stream: bytes, says: str) -> None:
    t = OpenAIToAnthropicStream("m")
    events = anthropic_sse(run(t, [stream]))
    assert events[-1][0] == "error" and says in events[-1][1]["error"]["message"]
    assert t.truncated
    assert sum(1 for name, _ in events if name == "content_block_start") <= MAX_BLOCKS


def test_held_arguments_are_bounded() -> None:
    t = OpenAIToAnthropicStream("m")
    out = t.feed(_chat(_call(index=0, id="a", function={"name": "f", "arguments": "{\"x\":"}),
                       _call(index=1, id="b", function={"name": "g", "arguments": ""})))
    piece = _chat(_call(index=1, function={"arguments": "y" * (1 << 20)}))
    for _ in range(MAX_HELD_ARGUMENTS // (1 << 20) + 1):
        out += t.feed(piece)  # the second call's block cannot open: the first is unfinished
    events = anthropic_sse(out + t.finish())
    assert events[-1][0] == "error" and "held back" in events[-1][1]["error"]["message"]
    assert t.truncated


def test_front_door_event_past_the_bound() -> None:
    t = OpenAIToAnthropicStream("m")
    out = b""
    for _ in range(MAX_EVENT_BYTES // (1 << 20) + 1):
        out += t.feed(b"data: " + b"x" * (1 << 20))
    events = anthropic_sse(out + t.finish())
    assert events[-1][0] == "error" and "larger than" in events[-1][1]["error"]["message"]


# =========================================================================================
# Gemini


def test_malformed_function_call_is_an_error_not_a_stop() -> None:
    fx = load("gemini_malformed_response.json")
    out = gemini_to_openai_response(200, dumps(fx["gemini"]), model="g")
    assert out.status == 502  # retried on another backend by the router
    err = json.loads(out.body)["error"]
    assert err["code"] == "malformed_function_call"
    assert "MALFORMED_FUNCTION_CALL" in err["message"] and "read_file" in err["message"]
    # on /v1/messages, in Anthropic's shape
    call = build_call("/v1/messages", backend_profile(backend(type="gemini")), "", [],
                      dumps({"model": "g", "max_tokens": 9,
                             "messages": [{"role": "user", "content": "x"}]}), "g", False)
    assert call.translate is not None
    translated = call.translate(200, dumps(fx["gemini"]))
    assert translated.status == 502
    assert json.loads(translated.body)["error"]["type"] == "api_error"


def test_malformed_function_call_streamed() -> None:
    data = raw("gemini_stream_malformed.sse")
    t = GeminiToOpenAIStream("g", True, created=CREATED)
    chunks = openai_sse(run(t, [data]))
    assert chunks[-1] == "[DONE]" and chunks[-2]["error"]["code"] == "malformed_function_call"
    assert t.truncated

    def pipeline() -> StreamTranslator:
        profile = backend_profile(backend(type="gemini"))
        call = build_call("/v1/messages", profile, "", [], dumps(
            {"model": "g", "max_tokens": 9, "stream": True,
             "messages": [{"role": "user", "content": "x"}]}), "gemini-x", True)
        assert call.stream is not None
        return _fixed_ids(call.stream())

    events = anthropic_sse(every_split(pipeline, data))
    assert events == load("gemini_stream_malformed.expected.json")


def _fixed_ids(translator: Any) -> StreamTranslator:
    """A pipeline whose Gemini stage has a fixed ``created`` (ids come from the fixture)."""
    translator._first._created = CREATED
    result: StreamTranslator = translator
    return result


def test_gemini_pipeline_round_one_to_anthropic_events() -> None:
    """Gemini → chat → Anthropic events: usage in message_start, thoughts as thinking, the
    signature of the first parallel call carried, both calls whole, tool_use."""
    data = raw("gemini_stream_parallel_thoughts.sse")

    def pipeline() -> StreamTranslator:
        call = build_call("/v1/messages", backend_profile(backend(type="gemini")), "", [],
                          dumps({"model": "g", "max_tokens": 9, "stream": True,
                                 "messages": [{"role": "user", "content": "x"}]}),
                          "gemini-x", True)
        assert call.stream is not None
        return _fixed_ids(call.stream())

    events = anthropic_sse(every_split(pipeline, data))
    assert events == load("gemini_stream_parallel_thoughts.expected.json")
    message = anthropic_message(events)
    assert message["usage"]["input_tokens"] == 2210 - 1024
    assert [b["type"] for b in message["content"]] == ["thinking", "thinking", "tool_use",
                                                       "tool_use"]
    # round two: the SDK's message goes back, and Gemini gets its signature where it was
    request = {"model": "g", "max_tokens": 100, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": b["id"], "content": "ok"}
            for b in message["content"] if b["type"] == "tool_use"]}]}
    chat = anthropic_to_openai_request(
        dumps(request), dialect=backend_profile(backend(type="gemini")).chat_dialect)[0]
    gemini = json.loads(openai_to_gemini_request(chat, model="g", stream=False).body)
    parts = [p for p in gemini["contents"][1]["parts"] if "functionCall" in p]
    assert parts[0]["thoughtSignature"] == "CiQBcsjafE8vd2xvPbEqGr8Ymg5RSWNm7dkUJRxQpTb1M3o3Gx0="
    assert "thoughtSignature" not in parts[1]


def test_huge_thought_signature_within_and_past_the_bound() -> None:
    signature = "A" * (1 << 20)
    event = {"candidates": [{"content": {"parts": [
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": signature}]},
        "finishReason": "STOP"}]}
    t = GeminiToOpenAIStream("g", False, created=CREATED)
    chunks = openai_sse(run(t, [b"data: " + dumps(event) + b"\n\n"]))
    call = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert call["extra_content"]["google"]["thought_signature"] == signature
    assert not t.truncated
    event["candidates"][0]["content"]["parts"][0]["thoughtSignature"] = "A" * MAX_EVENT_BYTES
    t = GeminiToOpenAIStream("g", False, created=CREATED)
    chunks = openai_sse(run(t, [b"data: " + dumps(event) + b"\n\n"]))
    assert "larger than" in chunks[-2]["error"]["message"] and t.truncated


def test_tool_error_is_gemini_error_response_for_openai_clients_too() -> None:
    req = {"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "{\"code\": 2}", "is_error": True}]}
    gemini = json.loads(openai_to_gemini_request(dumps(req), model="g", stream=False).body)
    assert gemini["contents"][2]["parts"][0]["functionResponse"]["response"] == {
        "error": {"code": 2}}


# =========================================================================================
# hypothesis: round one's answer, accumulated by the client's SDK, comes back whole


_text = st.text(min_size=1, max_size=20)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_name, inner, max_size=3),
    max_leaves=8)
_args = st.dictionaries(_name, _json_value, max_size=4)


def _splits(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=4)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if a < b]


@st.composite
def anthropic_answers(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bytes]:
    """An Anthropic answer (thinking, redacted thinking, text, parallel tool calls) and its
    event stream, fragments split at random."""
    blocks: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            blocks.append({"type": "thinking", "thinking": draw(_text),
                           "signature": draw(st.from_regex(r"[A-Za-z0-9+/]{8,40}={0,2}",
                                                           fullmatch=True))})
        else:
            blocks.append({"type": "redacted_thinking", "data": draw(_text)})
    if draw(st.booleans()):
        blocks.append({"type": "text", "text": draw(_text)})
    for i in range(draw(st.integers(1, 4))):
        blocks.append({"type": "tool_use", "id": f"toolu_{i}", "name": draw(_name),
                       "input": draw(_args)})
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_p", "usage": {"input_tokens": 3}}}]
    for index, block in enumerate(blocks):
        kind = block["type"]
        if kind == "thinking":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "thinking", "thinking": ""}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece}}
                       for piece in _splits(draw, block["thinking"])]
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta",
                                     "signature": block["signature"]}})
        elif kind == "redacted_thinking":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": block})
        elif kind == "text":
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {"type": "text", "text": ""}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}}
                       for piece in _splits(draw, block["text"])]
        elif draw(st.booleans()):  # the whole input in the block start
            events.append({"type": "content_block_start", "index": index,
                           "content_block": block})
        else:
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {**block, "input": {}}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}
                       for piece in _splits(draw, json.dumps(block["input"]))]
        events.append({"type": "content_block_stop", "index": index})
    events += [{"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 9}}, {"type": "message_stop"}]
    data = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + dumps(e) + b"\n\n"
                    for e in events)
    return blocks, data


@settings(max_examples=150, deadline=None)
@given(anthropic_answers(), st.data())
def test_property_anthropic_round_one_comes_back_whole(
    answer: tuple[list[dict[str, Any]], bytes], data: st.DataObject,
) -> None:
    blocks, stream = answer
    cut = data.draw(st.integers(0, len(stream)))
    chunks = openai_sse(run(AnthropicToOpenAIStream("c", False, created=CREATED),
                            [stream[:cut], stream[cut:]]))
    message = openai_message(chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    request = {"model": "c", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "go"}, message,
        *({"role": "tool", "tool_call_id": c["id"], "content": "r"}
          for c in message["tool_calls"])]}
    sent = json.loads(openai_to_anthropic_request(dumps(request), model="c").body)
    thinking = [b for b in blocks if b["type"] in ("thinking", "redacted_thinking")]
    back = sent["messages"][1]["content"]
    if not thinking:  # no blocks: thinking dropped for this turn, history untouched
        assert "thinking" not in sent
    assert back == [*thinking, *(b for b in blocks if b["type"] not in
                                 ("thinking", "redacted_thinking"))]


@st.composite
def chat_answers(draw: st.DrawFn) -> tuple[list[tuple[str, str, dict[str, Any]]], bytes]:
    """Parallel tool calls and a chat stream of them, in one of the styles servers use."""
    calls = [(f"call_{i}", draw(_name), draw(_args)) for i in range(draw(st.integers(1, 4)))]
    style = draw(st.sampled_from(["openai", "interleaved", "indexless", "indexless_split"]))
    pieces = {cid: _splits(draw, json.dumps(args)) for cid, _, args in calls}
    deltas: list[dict[str, Any]] = []
    if draw(st.booleans()):
        deltas.append({"content": draw(_text)})
    if style in ("openai", "interleaved"):
        starts = [{"index": i, "id": cid, "type": "function",
                   "function": {"name": name, "arguments": ""}}
                  for i, (cid, name, _) in enumerate(calls)]
        frags = [[{"index": i, "function": {"arguments": p}} for p in pieces[cid]]
                 for i, (cid, _, _) in enumerate(calls)]
        if style == "openai":
            for start, fs in zip(starts, frags, strict=True):
                deltas += [{"tool_calls": [start]}, *({"tool_calls": [f]} for f in fs)]
        else:
            deltas += [{"tool_calls": [s]} for s in starts]
            while any(frags):
                for fs in frags:
                    if fs:
                        deltas.append({"tool_calls": [fs.pop(0)]})
    else:
        for cid, name, _ in calls:
            first, *rest = pieces[cid] if style == "indexless_split" else [
                "".join(pieces[cid])]
            deltas.append({"tool_calls": [{"id": cid, "type": "function",
                                           "function": {"name": name, "arguments": first}}]})
            deltas += [{"tool_calls": [{"function": {"arguments": p}}]} for p in rest]
    finish = draw(st.sampled_from(["stop", "tool_calls"]))
    data = b"".join(b"data: " + dumps({"id": "chatcmpl-p", "choices": [
        {"index": 0, "delta": d, "finish_reason": None}]}) + b"\n\n" for d in deltas)
    data += b"data: " + dumps({"id": "chatcmpl-p", "choices": [
        {"index": 0, "delta": {}, "finish_reason": finish}]}) + b"\n\ndata: [DONE]\n\n"
    return calls, data


@settings(max_examples=150, deadline=None)
@given(chat_answers(), st.data())
def test_property_parallel_calls_survive_the_front_door(
    answer: tuple[list[tuple[str, str, dict[str, Any]]], bytes], data: st.DataObject,
) -> None:
    calls, stream = answer
    cut = data.draw(st.integers(0, len(stream)))
    t = OpenAIToAnthropicStream("c")
    events = anthropic_sse(run(t, [stream[:cut], stream[cut:]]))
    assert not t.truncated
    message = anthropic_message(events)
    assert message["stop_reason"] == "tool_use"
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    assert [(b["id"], b["name"], b["input"]) for b in uses] == calls
    # round two: the SDK's message back through the front door gives the same calls
    request = {"model": "c", "max_tokens": 5, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": cid, "content": "r"}
                                     for cid, _, _ in calls]}]}
    chat = json.loads(anthropic_to_openai_request(dumps(request))[0])
    back = chat["messages"][1]["tool_calls"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in back] == calls
    assert [m["tool_call_id"] for m in chat["messages"][2:]] == [cid for cid, _, _ in calls]
