"""Two-round agent tool loops through a real router, driven by the official SDKs the way
agent loops run them: round one; the assistant message the SDK returned goes back with the
tool results; round two. The upstream is scripted (tests/agent_upstream.py) and streams in
many small pieces.

Each loop checks what the client got (two tool calls with their inputs, the stop reason,
usage) and what the upstream received in round two (thinking blocks with signatures first,
Gemini thought signatures, reasoning_content, the failed tool marked), for:

* openai SDK → /v1/chat/completions → Anthropic (thinking on) and native Gemini;
* anthropic SDK → /v1/messages → vLLM-style and OpenAI chat backends, Gemini's
  OpenAI-compatible endpoint and native Gemini;
* refusals, a Gemini malformed function call (retried elsewhere, or an error the client
  sees), and thinking that Anthropic would refuse.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
import trio

from agent_upstream import (
    FINAL_TEXT,
    FIRST_ARGS,
    GEMINI_SIGNATURE,
    REDACTED,
    SECOND_ARGS,
    SIGNATURE,
    THINKING,
    AgentUpstream,
)
from continuum import RouterHandle
from helpers import router_config, start_router

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

READ_FILE: Any = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the project",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}
READ_FILE_ANTHROPIC: Any = {
    "name": "read_file", "description": "Read a file of the project",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                     "required": ["path"]}}
PROMPT = "Read src/main.py and README.md."
LOOP_TIMEOUT = 30


async def loop_router(nursery: trio.Nursery, *backends: dict[str, Any],
                      **sections: Any) -> tuple[AgentUpstream, RouterHandle]:
    upstream = AgentUpstream()
    await nursery.start(upstream.serve)
    config = router_config([{**b, "url": upstream.url} for b in backends], **sections)
    return upstream, await start_router(nursery, config)


def oai(router: RouterHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                              timeout=20.0)


def claude(router: RouterHandle) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=router.url, api_key="x", max_retries=0,
                                    timeout=20.0)


def result_for(args: str) -> str:
    return "contents of " + json.loads(args)["path"]


# =========================================================================================
# openai SDK → chat completions → Anthropic, thinking on


async def openai_round(client: openai.AsyncOpenAI, stream: bool, messages: list[Any],
                       **kw: Any) -> Any:
    if not stream:
        return await client.chat.completions.create(messages=messages, **kw)
    async with client.chat.completions.stream(
            messages=messages, stream_options={"include_usage": True}, **kw) as events:
        async for _ in events:
            pass
        return await events.get_final_completion()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_openai_sdk_loop_on_anthropic_with_thinking(nursery: trio.Nursery,
                                                          stream: bool) -> None:
    upstream, router = await loop_router(
        nursery, {"name": "claude", "type": "anthropic", "api_key": "k", "models": ["claude-x"]})
    kw: Any = {"model": "claude-x", "tools": [READ_FILE], "reasoning_effort": "medium"}
    messages: list[Any] = [{"role": "user", "content": PROMPT}]
    with trio.fail_after(LOOP_TIMEOUT):
        async with oai(router) as client:
            first = await openai_round(client, stream, messages, **kw)
            choice = first.choices[0]
            assert choice.finish_reason == "tool_calls"
            message = choice.message
            calls = message.tool_calls
            assert calls is not None and len(calls) == 2
            assert [json.loads(c.function.arguments) for c in calls] == [FIRST_ARGS, SECOND_ARGS]
            extra = message.model_extra or {}
            assert extra["reasoning_content"] == THINKING
            blocks = [{k: v for k, v in b.items() if k != "index"}
                      for b in extra["thinking_blocks"]]
            assert blocks == [
                {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
                {"type": "redacted_thinking", "data": REDACTED}]
            usage = first.usage
            assert usage is not None and usage.prompt_tokens == 1210 + 300 + 4100
            assert usage.completion_tokens_details is not None
            assert usage.completion_tokens_details.reasoning_tokens == 121
            assert usage.prompt_tokens_details is not None
            assert usage.prompt_tokens_details.cached_tokens == 4100
            # round two, as agent loops do it: the SDK's message, then the results
            messages.append(message)
            messages += [{"role": "tool", "tool_call_id": c.id,
                          "content": result_for(c.function.arguments)} for c in calls]
            second = await openai_round(client, stream, messages, **kw)
    assert second.choices[0].message.content == FINAL_TEXT
    sent = upstream.bodies("/v1/messages")[-1]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assistant = sent["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"][:2] == [
        {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
        {"type": "redacted_thinking", "data": REDACTED}]
    assert [b["type"] for b in assistant["content"][2:]] == ["text", "tool_use", "tool_use"]
    assert [b["input"] for b in assistant["content"][3:]] == [FIRST_ARGS, SECOND_ARGS]
    results = sent["messages"][2]["content"]
    assert [(r["tool_use_id"], r["content"]) for r in results] == [
        ("toolu_01A", "contents of src/main.py"), ("toolu_01B", "contents of README.md")]


async def test_forced_tool_choice_with_thinking_is_dropped_or_refused(
        nursery: trio.Nursery) -> None:
    upstream, router = await loop_router(
        nursery,
        {"name": "drop", "type": "anthropic", "api_key": "k", "models": ["claude-drop"]},
        {"name": "reject", "type": "anthropic", "api_key": "k", "models": ["claude-reject"],
         "thinking_conflict": "reject"})
    kw: Any = {"tools": [READ_FILE], "reasoning_effort": "high", "tool_choice": "required",
               "messages": [{"role": "user", "content": PROMPT}]}
    with trio.fail_after(LOOP_TIMEOUT):
        async with oai(router) as client:
            answer = await client.chat.completions.create(model="claude-drop", **kw)
            assert answer.choices[0].finish_reason == "tool_calls"
            with pytest.raises(openai.BadRequestError) as exc:
                await client.chat.completions.create(model="claude-reject", **kw)
    sent = upstream.bodies("/v1/messages")
    assert len(sent) == 1 and "thinking" not in sent[0]
    assert sent[0]["tool_choice"] == {"type": "any"}
    error = exc.value.body
    assert isinstance(error, dict) and error["param"] == "tool_choice"
    assert "thinking" in error["message"]


# =========================================================================================
# anthropic SDK → /v1/messages → OpenAI-compatible and Gemini backends


async def anthropic_round(client: anthropic.AsyncAnthropic, stream: bool,
                          messages: list[Any], **kw: Any) -> tuple[Any, list[Any]]:
    """The Message (as the SDK built it) and, streamed, the events."""
    if not stream:
        return await client.messages.create(messages=messages, **kw), []
    events = []
    async with client.messages.stream(messages=messages, **kw) as answer:
        async for event in answer:
            events.append(event)
        return await answer.get_final_message(), events


async def claude_loop(router: RouterHandle, model: str, stream: bool,
                      **kw: Any) -> tuple[Any, list[Any], Any]:
    """Round one, then round two with both results (the second one a failed tool), as
    Claude Code does; returns round one's message and events, and round two's message."""
    messages: list[Any] = [{"role": "user", "content": PROMPT}]
    args: Any = {"model": model, "max_tokens": 16000, "tools": [READ_FILE_ANTHROPIC], **kw}
    async with claude(router) as client:
        first, events = await anthropic_round(client, stream, messages, **args)
        uses = [b for b in first.content if b.type == "tool_use"]
        messages.append({"role": "assistant", "content": first.content})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": uses[0].id, "content": "print('hello')"},
            {"type": "tool_result", "tool_use_id": uses[1].id, "is_error": True,
             "content": [{"type": "text", "text": "ENOENT: README.md"}]}]})
        second, _ = await anthropic_round(client, stream, messages, **args)
    return first, events, second


def check_round_one(first: Any) -> None:
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 2
    assert [u.input for u in uses] == [FIRST_ARGS, SECOND_ARGS]
    assert all(u.name == "read_file" for u in uses)


def round_two_chat(upstream: AgentUpstream, path: str) -> tuple[dict[str, Any], Any]:
    """Round two's chat request: the body, and its assistant message."""
    body = upstream.bodies(path)[-1]
    assistant = next(m for m in body["messages"] if m["role"] == "assistant")
    return body, assistant


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_claude_loop_on_vllm_interleaved_calls_and_reasoning(
        nursery: trio.Nursery, stream: bool) -> None:
    upstream, router = await loop_router(
        nursery, {"name": "vllm", "type": "vllm", "models": ["qwen-x"]})
    with trio.fail_after(LOOP_TIMEOUT):
        first, _, second = await claude_loop(
            router, "qwen-x", stream, thinking={"type": "enabled", "budget_tokens": 2048})
    check_round_one(first)
    assert first.content[0].type == "thinking" and first.content[0].thinking == (
        "Need both files.")
    assert first.usage.input_tokens == 950 - 512
    assert first.usage.cache_read_input_tokens == 512
    assert second.content[0].text == FINAL_TEXT and second.stop_reason == "end_turn"
    body, assistant = round_two_chat(upstream, "/v1/chat/completions")
    assert body["max_tokens"] == 16000 and "max_completion_tokens" not in body
    assert body["reasoning_effort"] == "medium"
    assert assistant["reasoning_content"] == "Need both files."
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [
        FIRST_ARGS, SECOND_ARGS]
    tools = [m for m in body["messages"] if m["role"] == "tool"]
    assert tools[0]["content"] == "print('hello')"
    assert " ".join(p["text"] for p in tools[1]["content"]) == "Error: ENOENT: README.md"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_claude_loop_on_openai(nursery: trio.Nursery, stream: bool) -> None:
    upstream, router = await loop_router(
        nursery, {"name": "oai", "type": "openai", "api_key": "k", "models": ["gpt-x"]})
    with trio.fail_after(LOOP_TIMEOUT):
        first, _, second = await claude_loop(
            router, "gpt-x", stream, thinking={"type": "enabled", "budget_tokens": 2048})
    check_round_one(first)
    assert second.content[0].text == FINAL_TEXT
    body, assistant = round_two_chat(upstream, "/v1/chat/completions")
    assert body["max_completion_tokens"] == 16000 and "max_tokens" not in body
    assert "reasoning_effort" not in body and "reasoning_content" not in assistant
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_a", "call_b"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_claude_loop_on_gemini_openai_endpoint_carries_signatures(
        nursery: trio.Nursery, stream: bool) -> None:
    upstream, router = await loop_router(
        nursery, {"name": "gem", "type": "gemini", "gemini_api": "openai", "api_key": "g",
                  "models": ["gemini-x"]})
    with trio.fail_after(LOOP_TIMEOUT):
        first, _, second = await claude_loop(router, "gemini-x", stream)
    check_round_one(first)
    carriers = [b for b in first.content if b.type == "thinking"]
    assert len(carriers) == 1 and carriers[0].thinking == ""
    assert second.content[0].text == FINAL_TEXT
    body, assistant = round_two_chat(upstream, "/v1beta/openai/chat/completions")
    one, two = assistant["tool_calls"]
    assert one["extra_content"] == {"google": {"thought_signature": GEMINI_SIGNATURE}}
    assert "extra_content" not in two
    assert [json.loads(c["function"]["arguments"]) for c in (one, two)] == [
        FIRST_ARGS, SECOND_ARGS]
    assert "reasoning_content" not in assistant
    tools = [m for m in body["messages"] if m["role"] == "tool"]
    assert " ".join(p["text"] for p in tools[1]["content"]).startswith("Error: ")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_claude_loop_on_native_gemini(nursery: trio.Nursery, stream: bool) -> None:
    upstream, router = await loop_router(
        nursery, {"name": "gem", "type": "gemini", "api_key": "g", "models": ["gemini-x"]})
    with trio.fail_after(LOOP_TIMEOUT):
        first, events, second = await claude_loop(
            router, "gemini-x", stream, thinking={"type": "enabled", "budget_tokens": 2048})
    check_round_one(first)
    thinking = [b for b in first.content if b.type == "thinking"]
    assert [b.thinking for b in thinking] == ["Both files are needed.", ""]
    assert first.usage.output_tokens == 171
    if stream:
        start = events[0]
        assert start.type == "message_start"
        assert start.message.usage.input_tokens == 2210 - 1024  # known before the first token
        assert start.message.usage.cache_read_input_tokens == 1024
    assert second.content[0].text == FINAL_TEXT
    kind = "streamGenerateContent" if stream else "generateContent"
    sent = upstream.bodies(f":{kind}")[-1]
    assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048,
                                                          "includeThoughts": True}
    model_turn = sent["contents"][1]
    calls = [p for p in model_turn["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == GEMINI_SIGNATURE
    assert "thoughtSignature" not in calls[1]
    assert [c["functionCall"]["args"] for c in calls] == [FIRST_ARGS, SECOND_ARGS]
    responses = [p["functionResponse"]["response"] for p in sent["contents"][2]["parts"]]
    assert responses == [{"content": "print('hello')"}, {"error": "ENOENT: README.md"}]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_claude_sees_a_refusal(nursery: trio.Nursery, stream: bool) -> None:
    _, router = await loop_router(
        nursery, {"name": "vllm", "type": "vllm", "models": ["refuse-x"]})
    with trio.fail_after(LOOP_TIMEOUT):
        async with claude(router) as client:
            message, _ = await anthropic_round(
                client, stream, [{"role": "user", "content": "do it"}], model="refuse-x",
                max_tokens=100)
    assert message.stop_reason == "refusal"
    assert "".join(b.text for b in message.content if b.type == "text") == (
        "I can't help with that.")


# =========================================================================================
# openai SDK → native Gemini: the thought signature round trip, and a failed function call


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_openai_sdk_loop_on_native_gemini(nursery: trio.Nursery, stream: bool) -> None:
    upstream, router = await loop_router(
        nursery, {"name": "gem", "type": "gemini", "api_key": "g", "models": ["gemini-x"]})
    messages: list[Any] = [{"role": "user", "content": PROMPT}]
    with trio.fail_after(LOOP_TIMEOUT):
        async with oai(router) as client:
            first = await openai_round(client, stream, messages, model="gemini-x",
                                       tools=[READ_FILE])
            message = first.choices[0].message
            assert first.choices[0].finish_reason == "tool_calls"
            assert message.tool_calls is not None and len(message.tool_calls) == 2
            messages.append(message)
            messages += [{"role": "tool", "tool_call_id": c.id,
                          "content": result_for(c.function.arguments)}
                         for c in message.tool_calls]
            second = await openai_round(client, stream, messages, model="gemini-x",
                                        tools=[READ_FILE])
    assert second.choices[0].message.content == FINAL_TEXT
    kind = "streamGenerateContent" if stream else "generateContent"
    calls = [p for p in upstream.bodies(f":{kind}")[-1]["contents"][1]["parts"]
             if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == GEMINI_SIGNATURE  # not the placeholder
    assert "thoughtSignature" not in calls[1]


async def test_malformed_function_call_is_retried_elsewhere(nursery: trio.Nursery) -> None:
    upstream, router = await loop_router(
        nursery,
        {"name": "gem-a", "type": "gemini", "api_key": "g", "models": ["gemini-x"]},
        {"name": "gem-b", "type": "gemini", "api_key": "g", "models": ["gemini-x"]})
    upstream.malformed = 1
    with trio.fail_after(LOOP_TIMEOUT):
        async with oai(router) as client:
            answer = await client.chat.completions.create(
                model="gemini-x", tools=[READ_FILE],
                messages=[{"role": "user", "content": PROMPT}])
    assert answer.choices[0].finish_reason == "tool_calls"
    assert len(upstream.bodies(":generateContent")) == 2
    assert upstream.malformed == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
async def test_malformed_function_call_is_an_error_the_client_sees(
        nursery: trio.Nursery, stream: bool) -> None:
    upstream, router = await loop_router(
        nursery, {"name": "gem", "type": "gemini", "api_key": "g", "models": ["gemini-x"]})
    upstream.malformed = 1
    with trio.fail_after(LOOP_TIMEOUT):
        async with oai(router) as client:
            with pytest.raises(openai.APIError) as exc:
                await openai_round(client, stream, [{"role": "user", "content": PROMPT}],
                                   model="gemini-x", tools=[READ_FILE])
        assert "MALFORMED_FUNCTION_CALL" in str(exc.value)
        if not stream:
            assert isinstance(exc.value, openai.APIStatusError)
            assert exc.value.status_code == 502
        async with claude(router) as anthropic_client:
            upstream.malformed = 1
            with pytest.raises(anthropic.APIError) as aexc:
                await anthropic_round(anthropic_client, stream,
                                      [{"role": "user", "content": PROMPT}], model="gemini-x",
                                      max_tokens=100, tools=[READ_FILE_ANTHROPIC])
        assert "MALFORMED_FUNCTION_CALL" in str(aexc.value)
