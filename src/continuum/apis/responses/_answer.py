"""Chat Completions answer → Response object (and upstream errors → OpenAI error JSON)."""

from __future__ import annotations

from typing import Final

import msgspec

from ...core.errors import openai_error_body
from ..types import Translated
from ._common import (
    JSON,
    ResponseContext,
    decode,
    encode,
    logprobs_of,
    now_seconds,
    response_object,
    response_usage,
)

#: chat ``finish_reason`` → Responses ``incomplete_details.reason`` (others complete).
INCOMPLETE_REASONS: Final[dict[str, str]] = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",
}


def text_part(text: str, logprobs: list[JSON] | None = None) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def reasoning_item(item_id: str, text: str) -> JSON:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text",
                                                             "text": text}]}


def message_item(item_id: str, parts: list[JSON], status: str) -> JSON:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": parts}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JSON:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some backends answer with text parts
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, dict) and p.get("type") == "text")
    return ""


def output_items(ctx: ResponseContext, choice: JSON, status: str) -> list[JSON]:
    """A chat choice's message → output items: reasoning, message, then function calls.

    ``status`` is the status of the items the answer ended in (``incomplete`` when it was
    cut short): the function calls if there are any, else the message; as in a stream,
    where an item closes completed when the next one starts.
    """
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        calls = []
    out: list[JSON] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out.append(reasoning_item(ctx.item_id("rs_", len(out)), reasoning))
    parts = []
    text = _text_of(message.get("content"))
    if text:
        parts.append(text_part(text, logprobs_of(choice) if ctx.logprobs else None))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if parts:
        out.append(message_item(ctx.item_id("msg_", len(out)), parts,
                                "completed" if calls else status))
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments")
        out.append(call_item(
            ctx.item_id("fc_", len(out)),
            str(call.get("id") or ctx.item_id("call_", len(out))),
            str(fn.get("name") or ""),
            args if isinstance(args, str) else encode(args or {}).decode(),
            status,
        ))
    return out


def upstream_error(status: int, body: bytes) -> Translated:
    """An upstream error answer as OpenAI error JSON, its status kept.

    Chat backends (and the Anthropic/Gemini translators before this one) already answer
    OpenAI-shaped errors: those pass with their fields; anything else is wrapped.
    """
    try:
        obj = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        detail = {"message": err["message"], "type": err.get("type") or "upstream_error",
                  "param": err.get("param"), "code": err.get("code")}
        return Translated(status, encode({"error": detail}))
    if isinstance(err, str):  # Ollama's shape
        message = err
    elif isinstance(obj, dict) and isinstance(obj.get("message"), str):  # vLLM's shape
        message = obj["message"]
    else:
        text = body[:512].decode("utf-8", "replace").strip()
        message = f"upstream answered {status}" + (f": {text}" if text else "")
    return Translated(status, openai_error_body(status, message))


def chat_to_response(
    ctx: ResponseContext, status: int, body: bytes, *, completed_at: int | None = None
) -> Translated:
    """A ``chat.completion`` (or an error) → a Response object (or an OpenAI error)."""
    if status >= 400:
        return upstream_error(status, body)
    try:
        resp = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        resp = None
    if not isinstance(resp, dict) or resp.get("error") is not None:
        return Translated(502, upstream_error(502, body).body)
    choices = resp.get("choices")
    if not isinstance(choices, list):
        return Translated(502, upstream_error(502, body).body)
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    reason = INCOMPLETE_REASONS.get(str(choice.get("finish_reason")))
    if reason is None:
        status_text, done_at = "completed", now_seconds() if completed_at is None else completed_at
    else:
        status_text, done_at = "incomplete", None
    obj = response_object(
        ctx, status_text, output_items(ctx, choice, status_text),
        response_usage(resp.get("usage")), incomplete_reason=reason, completed_at=done_at,
    )
    return Translated(200, encode(obj))
