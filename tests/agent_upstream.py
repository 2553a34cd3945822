"""A scripted upstream for agent tool loops: OpenAI chat (vLLM-style, OpenAI-style and
Gemini's OpenAI-compatible endpoint), Anthropic Messages and native Gemini, each answering
round one of a loop with two parallel tool calls (and thinking where the API has it) and
round two, once the tool results are in, with a short text. Streams go out in many small
HTTP chunks, so every translator sees events split anywhere.

Built on the adversarial harness's raw :class:`ScriptedUpstream` (it records the requests it
read); :meth:`AgentUpstream.handle` is its default handler. Which answer a request gets:

* the path says the API (``/v1/messages``, ``/v1beta/models/...``, ``.../chat/completions``,
  ``/v1beta/openai/...`` for Gemini's endpoint);
* round two when the conversation ends with tool results;
* chat models: ``qwen-*`` interleaves the fragments of its parallel calls and thinks in
  ``reasoning_content``; ``refuse-*`` refuses; others answer the OpenAI way;
* Gemini: ``malformed`` > 0 answers (and counts down) ``MALFORMED_FUNCTION_CALL``.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from adversarial.harness import (
    SSE_HEAD,
    ScriptedUpstream,
    UpstreamConn,
    UpstreamRequest,
    chunk,
    json_answer,
)

#: Bytes per HTTP chunk of a streamed answer.
PIECE = 7

THINKING = "Two files to read; both at once."
SIGNATURE = "EuYBCkQYAiJAgCs1le6/Pol5Z4/JdQv4pTqOEQjFBRTxYXE8Wc7w/1eOw=="
REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4="
GEMINI_SIGNATURE = "CiQBcsjafE8vd2xvPbEqGr8Ymg5RSWNm7dkUJRxQpTb1M3o3Gx0="
FIRST_ARGS = {"path": "src/main.py"}
SECOND_ARGS = {"path": "README.md"}
FINAL_TEXT = "Both files read."


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n").encode()


async def send_stream(conn: UpstreamConn, body: bytes, piece: int = PIECE) -> None:
    """``body`` as an event stream, in HTTP chunks of ``piece`` bytes."""
    await conn.send(SSE_HEAD)
    for i in range(0, len(body), piece):
        await conn.send(chunk(body[i:i + piece]))
        if i % (piece * 16) == 0:
            await trio.sleep(0)
    await conn.send(b"0\r\n\r\n")


class AgentUpstream(ScriptedUpstream):
    def __init__(self) -> None:
        super().__init__(default=self.handle)
        #: Gemini answers still to fail with MALFORMED_FUNCTION_CALL.
        self.malformed = 0

    def bodies(self, fragment: str) -> list[Any]:
        """The JSON bodies of the requests read whose target contains ``fragment``."""
        return [r.json() for r in self.requests if fragment in r.target]

    async def handle(self, request: UpstreamRequest, conn: UpstreamConn) -> None:
        body = request.json() or {}
        target = request.target
        if target.startswith("/v1/messages"):
            await self._anthropic(body, conn)
        elif target.startswith("/v1beta/models/"):
            await self._gemini(body, ":streamGenerateContent" in target, conn)
        elif target.endswith("/chat/completions"):
            style = "gemini" if target.startswith("/v1beta/openai") else (
                "qwen" if request.model.startswith("qwen") else
                "refuse" if request.model.startswith("refuse") else "openai")
            await self._chat(body, style, conn)
        else:
            await conn.send(json_answer({"error": {"message": "no route"}}, 404))

    # -- Anthropic Messages ------------------------------------------------------------------

    async def _anthropic(self, body: dict[str, Any], conn: UpstreamConn) -> None:
        last = body["messages"][-1]
        round_two = isinstance(last["content"], list) and any(
            b.get("type") == "tool_result" for b in last["content"])
        thinking = isinstance(body.get("thinking"), dict)
        if round_two:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": FINAL_TEXT}]
            stop = "end_turn"
        else:
            blocks = []
            if thinking:
                blocks += [{"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
                           {"type": "redacted_thinking", "data": REDACTED}]
            blocks += [{"type": "text", "text": "Reading both."},
                       {"type": "tool_use", "id": "toolu_01A", "name": "read_file",
                        "input": FIRST_ARGS},
                       {"type": "tool_use", "id": "toolu_01B", "name": "read_file",
                        "input": SECOND_ARGS}]
            stop = "tool_use"
        usage = {"input_tokens": 1210, "cache_creation_input_tokens": 300,
                 "cache_read_input_tokens": 4100, "output_tokens": 187,
                 "output_tokens_details": {"thinking_tokens": 121 if thinking else 0}}
        message = {"id": "msg_01XF", "type": "message", "role": "assistant",
                   "model": body["model"], "content": blocks, "stop_reason": stop,
                   "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            await conn.send(json_answer(message))
            return
        start_usage = {k: v for k, v in usage.items() if k != "output_tokens_details"}
        out = _sse({"type": "message_start", "message": {
            **message, "content": [], "stop_reason": None,
            "usage": {**start_usage, "output_tokens": 1}}}, "message_start")
        for index, block in enumerate(blocks):
            kind = block["type"]
            start: dict[str, Any] = {"type": "content_block_start", "index": index}
            deltas: list[dict[str, Any]] = []
            if kind == "thinking":
                start["content_block"] = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": THINKING[:10]},
                          {"type": "thinking_delta", "thinking": THINKING[10:]},
                          {"type": "signature_delta", "signature": SIGNATURE}]
            elif kind == "text":
                start["content_block"] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": block["text"]}]
            elif kind == "tool_use" and block["id"] == "toolu_01A":
                start["content_block"] = {**block, "input": {}}
                text = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": text[:9]},
                          {"type": "input_json_delta", "partial_json": text[9:]}]
            else:  # redacted thinking, and a tool input given whole in its start
                start["content_block"] = block
            out += _sse(start, "content_block_start")
            for delta in deltas:
                out += _sse({"type": "content_block_delta", "index": index, "delta": delta},
                            "content_block_delta")
            out += _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        out += _sse({"type": "message_delta", "delta": {"stop_reason": stop,
                                                        "stop_sequence": None},
                     "usage": {"output_tokens": 187,
                               "output_tokens_details": usage["output_tokens_details"]}},
                    "message_delta")
        out += _sse({"type": "message_stop"}, "message_stop")
        await send_stream(conn, out)

    # -- OpenAI chat --------------------------------------------------------------------------

    async def _chat(self, body: dict[str, Any], style: str, conn: UpstreamConn) -> None:
        round_two = body["messages"][-1]["role"] == "tool"
        model = body["model"]
        usage = {"prompt_tokens": 950, "completion_tokens": 64, "total_tokens": 1014,
                 "prompt_tokens_details": {"cached_tokens": 512},
                 "completion_tokens_details": {"reasoning_tokens": 20}}
        calls = [("call_a", FIRST_ARGS), ("call_b", SECOND_ARGS)]
        if style == "gemini":
            calls = [("function-call-1", FIRST_ARGS), ("function-call-2", SECOND_ARGS)]
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": FINAL_TEXT}
            if style == "refuse":
                message = {"role": "assistant", "content": None,
                           "refusal": "I can't help with that."}
            elif not round_two:
                message = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": cid, "type": "function",
                     "function": {"name": "read_file", "arguments": json.dumps(args)}}
                    for cid, args in calls]}
                if style == "gemini":
                    message["tool_calls"][0]["extra_content"] = {
                        "google": {"thought_signature": GEMINI_SIGNATURE}}
                if style == "qwen":
                    message["reasoning_content"] = "Need both files."
            await conn.send(json_answer({
                "id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage}))
            return

        def delta(d: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return _sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                         "model": model, "choices": [{"index": 0, "delta": d,
                                                      "finish_reason": finish}], **extra})

        out = delta({"role": "assistant", "content": ""})
        if style == "refuse":
            out += delta({"refusal": "I can't "}) + delta({"refusal": "help with that."})
        elif round_two:
            out += delta({"content": FINAL_TEXT})
        elif style == "qwen":  # reasoning, then two calls whose fragments interleave
            out += delta({"reasoning_content": "Need both files."})
            texts = [json.dumps(args) for _, args in calls]
            for i, (cid, _) in enumerate(calls):
                out += delta({"tool_calls": [{"index": i, "id": cid, "type": "function",
                                              "function": {"name": "read_file",
                                                           "arguments": ""}}]})
            for half in (0, 1):
                for i, text in enumerate(texts):
                    part = text[:8] if half == 0 else text[8:]
                    out += delta({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
        elif style == "gemini":  # no index, the first call signed, one split over deltas
            first = json.dumps(FIRST_ARGS)
            out += delta({"tool_calls": [{
                "id": calls[0][0], "type": "function",
                "function": {"name": "read_file", "arguments": first[:6]},
                "extra_content": {"google": {"thought_signature": GEMINI_SIGNATURE}}}]})
            out += delta({"tool_calls": [{"function": {"arguments": first[6:]}}]})
            out += delta({"tool_calls": [{"id": calls[1][0], "type": "function", "function": {
                "name": "read_file", "arguments": json.dumps(SECOND_ARGS)}}]})
        else:  # OpenAI: one call after the other
            for i, (cid, args) in enumerate(calls):
                text = json.dumps(args)
                out += delta({"tool_calls": [{"index": i, "id": cid, "type": "function",
                                              "function": {"name": "read_file",
                                                           "arguments": ""}}]})
                out += delta({"tool_calls": [{"index": i, "function": {"arguments": text}}]})
        # Ollama, vLLM and Gemini's endpoint say "stop" even after tool calls.
        out += delta({}, "stop")
        out += _sse({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                     "model": model, "choices": [], "usage": usage})
        out += b"data: [DONE]\n\n"
        await send_stream(conn, out)

    # -- Gemini native --------------------------------------------------------------------------

    async def _gemini(self, body: dict[str, Any], stream: bool, conn: UpstreamConn) -> None:
        last = body["contents"][-1]
        round_two = any("functionResponse" in p for p in last["parts"])
        usage = {"promptTokenCount": 2210, "cachedContentTokenCount": 1024,
                 "candidatesTokenCount": 31, "thoughtsTokenCount": 140, "totalTokenCount": 2381}
        if self.malformed and not round_two:
            self.malformed -= 1
            events = [{"candidates": [{"content": {}, "finishReason": "MALFORMED_FUNCTION_CALL",
                                       "finishMessage": "Malformed function call: read_file(",
                                       "index": 0}],
                       "usageMetadata": usage, "responseId": "rsp-bad"}]
        elif round_two:
            events = [{"candidates": [{"content": {"role": "model", "parts": [
                {"text": FINAL_TEXT}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage, "responseId": "rsp-2"}]
        else:
            thoughts = body.get("generationConfig", {}).get("thinkingConfig", {}).get(
                "includeThoughts")
            events = []
            if thoughts:
                events.append({"candidates": [{"content": {"role": "model", "parts": [
                    {"text": "Both files are needed.", "thought": True}]}, "index": 0}],
                    "usageMetadata": {"promptTokenCount": 2210, "cachedContentTokenCount": 1024,
                                      "totalTokenCount": 2210}, "responseId": "rsp-1"})
            events.append({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "read_file", "args": FIRST_ARGS},
                 "thoughtSignature": GEMINI_SIGNATURE},
                {"functionCall": {"name": "read_file", "args": SECOND_ARGS}}]},
                "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage, "responseId": "rsp-1"})
        if stream:
            await send_stream(conn, b"".join(_sse(e) for e in events))
            return
        merged = events[-1]
        if len(events) > 1:
            parts = events[0]["candidates"][0]["content"]["parts"] + \
                merged["candidates"][0]["content"]["parts"]
            merged = {**merged, "candidates": [{**merged["candidates"][0], "content": {
                "role": "model", "parts": parts}}]}
        await conn.send(json_answer(merged))
