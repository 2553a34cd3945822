"""An Anthropic answer → OpenAI chat: a Message (or error) → ``chat.completion``
(:func:`anthropic_to_openai_response`), and the Messages event stream →
``chat.completion.chunk`` SSE (:class:`AnthropicToOpenAIStream`)."""

from __future__ import annotations

import time
from typing import Final

import msgspec

from ...core.errors import anthropic_error_type
from ...core.sse import DONE_EVENT, SSEReader
from ..types import Translated
from ._common import (
    JSON,
    as_int,
    decode,
    encode,
    error_message,
    new_id,
    openai_error_dict,
)

_FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _anthropic_error_parts(status: int, body: bytes) -> tuple[str, str]:
    try:
        obj = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        etype = err.get("type")
        message = err.get("message")
        return (
            etype if isinstance(etype, str) else anthropic_error_type(status),
            message if isinstance(message, str) else error_message(body, status),
        )
    return anthropic_error_type(status), error_message(body, status)


def _openai_usage(usage: object) -> JSON:
    u = usage if isinstance(usage, dict) else {}
    cache_read = as_int(u.get("cache_read_input_tokens"))
    prompt = (
        as_int(u.get("input_tokens")) + as_int(u.get("cache_creation_input_tokens")) + cache_read
    )
    completion = as_int(u.get("output_tokens"))
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cache_read:
        out["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return out


def anthropic_to_openai_response(status: int, body: bytes, *, model: str) -> Translated:
    """An Anthropic Message (or error) → a ``chat.completion`` (or OpenAI error)."""
    if status >= 400:
        etype, message = _anthropic_error_parts(status, body)
        return Translated(
            503 if status == 529 else status, encode(openai_error_dict(etype, message))
        )
    try:
        msg = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        msg = None
    if not isinstance(msg, dict) or msg.get("type") == "error":
        etype, message = _anthropic_error_parts(502, body)
        return Translated(502, encode(openai_error_dict(etype, message)))

    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[JSON] = []
    for block in msg.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": encode(block.get("input") or {}).decode(),
                    },
                }
            )
    reply: JSON = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        reply["tool_calls"] = tool_calls
    stop_reason = msg.get("stop_reason")
    finish = _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else None
    out = {
        "id": "chatcmpl-" + str(msg.get("id") or new_id("")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "usage": _openai_usage(msg.get("usage")),
    }
    return Translated(200, encode(out))




class AnthropicToOpenAIStream:
    """Anthropic Messages SSE → OpenAI ``chat.completion.chunk`` SSE (a StreamTranslator)."""

    def __init__(self, model: str, include_usage: bool, *, created: int | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._reader = SSEReader()
        self._prefix = b""  # everything of a chunk before the choices array
        self._started = False
        self._done = False
        #: True once ``finish`` found the stream cut short (the router counts it a failure).
        self.truncated = False
        self._finished = False  # a finish_reason chunk went out
        self._usage: JSON = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool index

    # -- chunk building --------------------------------------------------------------
    def _start(self, msg_id: str) -> bytes:
        self._started = True
        self._prefix = (
            b'data: {"id":'
            + encode("chatcmpl-" + msg_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode()
            + b',"model":'
            + encode(self.model)
            + b',"choices":'
        )
        return self._delta(b'{"role":"assistant","content":""}')

    def _delta(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return (
            self._prefix + b'[{"index":0,"delta":' + delta + b',"logprobs":null,'
            b'"finish_reason":' + finish + b"}]}\n\n"
        )

    def _ensure_started(self) -> bytes:
        return b"" if self._started else self._start(new_id("msg_"))

    def _close(self) -> bytes:
        out = self._ensure_started()
        if self.include_usage:
            out += self._prefix + b'[],"usage":' + encode(_openai_usage(self._usage)) + b"}\n\n"
        self._done = True
        return out + DONE_EVENT

    def _error_event(self, etype: str, message: str) -> bytes:
        self._done = True
        return b"data: " + encode(openai_error_dict(etype, message)) + b"\n\n" + DONE_EVENT

    # -- StreamTranslator ------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        out = [self._event(p) for p in self._reader.feed(data)]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        out = b"".join(self._event(p) for p in self._reader.tail())
        if self._done:
            return out
        if self._finished:
            return out + self._close()
        self.truncated = True  # the router counts it a failure of the backend
        return out + self._error_event(
            "api_error", "upstream stream ended before the message was complete"
        )

    def error(self, status: int, message: str) -> bytes:
        if self._done:
            return b""
        return self._error_event(anthropic_error_type(status), message)

    # -- events ----------------------------------------------------------------------
    def _event(self, payload: bytes) -> bytes:
        if self._done:
            return b""
        try:
            ev = decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return b""  # not JSON: nothing a client could use
        if not isinstance(ev, dict):
            return b""
        kind = ev.get("type")
        if kind == "content_block_delta":
            return self._block_delta(ev)
        if kind == "message_start":
            msg = ev.get("message") or {}
            usage = msg.get("usage")
            if isinstance(usage, dict):
                self._usage.update(usage)
            if self._started:
                return b""
            return self._start(str(msg.get("id") or new_id("msg_")))
        if kind == "content_block_start":
            return self._block_start(ev)
        if kind == "message_delta":
            usage = ev.get("usage")
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            reason = (ev.get("delta") or {}).get("stop_reason")
            if reason is None:
                return b""
            self._finished = True
            finish = _FINISH_REASONS.get(reason, "stop")
            return self._ensure_started() + self._delta(b"{}", encode(finish))
        if kind == "message_stop":
            out = b""
            if not self._finished:
                self._finished = True
                out = self._ensure_started() + self._delta(b"{}", b'"stop"')
            return out + self._close()
        if kind == "error":
            err = ev.get("error") or {}
            return self._error_event(
                str(err.get("type") or "api_error"), str(err.get("message") or "upstream error")
            )
        return b""  # ping, content_block_stop, unknown future events

    def _block_start(self, ev: JSON) -> bytes:
        block = ev.get("content_block") or {}
        kind = block.get("type")
        out = self._ensure_started()
        if kind == "tool_use":
            oa_index = len(self._tool_index)
            self._tool_index[as_int(ev.get("index"))] = oa_index
            call = {
                "index": oa_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return out + self._delta(b'{"tool_calls":[' + encode(call) + b"]}")
        if kind == "text" and block.get("text"):
            return out + self._delta(b'{"content":' + encode(block["text"]) + b"}")
        if kind == "thinking" and block.get("thinking"):
            return out + self._delta(b'{"reasoning_content":' + encode(block["thinking"]) + b"}")
        return out

    def _block_delta(self, ev: JSON) -> bytes:
        delta = ev.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not text:
                return b""
            return self._ensure_started() + self._delta(b'{"content":' + encode(text) + b"}")
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            oa_index = self._tool_index.get(as_int(ev.get("index")))
            if not fragment or oa_index is None:
                return b""
            return self._delta(
                b'{"tool_calls":[{"index":'
                + str(oa_index).encode()
                + b',"function":{"arguments":'
                + encode(fragment)
                + b"}}]}"
            )
        if kind == "thinking_delta":
            text = delta.get("thinking")
            if not text:
                return b""
            return self._ensure_started() + self._delta(
                b'{"reasoning_content":' + encode(text) + b"}"
            )
        return b""  # signature_delta, citations_delta, …
