"""An Anthropic answer → OpenAI chat: a Message (or error) → ``chat.completion``
(:func:`anthropic_to_openai_response`), and the Messages event stream →
``chat.completion.chunk`` SSE (:class:`AnthropicToOpenAIStream`)."""

from __future__ import annotations

import time
from typing import Final

import msgspec

from ...core.errors import anthropic_error_type
from ...core.sse import DONE_EVENT, SSEReader, SSETooLarge
from ..limits import MAX_BLOCKS, MAX_EVENT_BYTES
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

#: Anthropic ``stop_reason`` → OpenAI ``finish_reason``. Those a finish reason cannot tell
#: apart (an agent must know a ``pause_turn`` is no end) also go out as the choice's
#: ``native_finish_reason``, as other gateways do.
_FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_NATIVE_REASONS: Final = frozenset({"pause_turn", "refusal", "model_context_window_exceeded"})


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
    cache_write = as_int(u.get("cache_creation_input_tokens"))
    prompt = as_int(u.get("input_tokens")) + cache_write + cache_read
    completion = as_int(u.get("output_tokens"))
    out: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cache_read or cache_write:
        details: JSON = {"cached_tokens": cache_read}
        if cache_write:
            details["cache_write_tokens"] = cache_write
        out["prompt_tokens_details"] = details
    output = u.get("output_tokens_details")
    if isinstance(output, dict) and "thinking_tokens" in output:
        out["completion_tokens_details"] = {
            "reasoning_tokens": as_int(output.get("thinking_tokens"))}
    return out


def _choice_extra(reason: object) -> JSON:
    return {"native_finish_reason": reason} if reason in _NATIVE_REASONS else {}


def anthropic_to_openai_response(status: int, body: bytes, *, model: str) -> Translated:
    """An Anthropic Message (or error) → a ``chat.completion`` (or OpenAI error).

    Thinking blocks come back twice: their text joined as ``reasoning_content``, and the
    blocks themselves (with signatures, and ``redacted_thinking`` ones) as
    ``thinking_blocks``, which the client sends back on the assistant message."""
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
    blocks: list[JSON] = []
    tool_calls: list[JSON] = []
    for block in msg.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            text = str(block.get("thinking", ""))
            reasoning.append(text)
            blocks.append({"type": "thinking", "thinking": text,
                           "signature": str(block.get("signature", ""))})
        elif kind == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": str(block.get("data", ""))})
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
    if blocks:
        reply["thinking_blocks"] = blocks
    if tool_calls:
        reply["tool_calls"] = tool_calls
    stop_reason = msg.get("stop_reason")
    finish = _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else None
    choice: JSON = {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish,
                    **_choice_extra(stop_reason)}
    out = {
        "id": "chatcmpl-" + str(msg.get("id") or new_id("")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _openai_usage(msg.get("usage")),
    }
    return Translated(200, encode(out))


class AnthropicToOpenAIStream:
    """Anthropic Messages SSE → OpenAI ``chat.completion.chunk`` SSE (a StreamTranslator).

    Per content block: text → ``content`` deltas; tool_use → one ``tool_calls`` entry with
    id and name (and the whole ``input`` when the block start carries it), then its
    ``input_json_delta`` fragments; thinking → ``reasoning_content`` deltas, and the same
    text plus the block's ``signature`` as ``thinking_blocks`` entries keyed by ``index``
    (what the openai SDK's accumulator merges, strings joined); redacted_thinking → one
    ``thinking_blocks`` entry with its ``data``. A delta for a block that was never started
    (or of another kind), a block started twice, or past :data:`MAX_BLOCKS` ends the
    stream with an error event: the answer could not be rebuilt faithfully.
    """

    def __init__(self, model: str, include_usage: bool, *, created: int | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._reader = SSEReader(MAX_EVENT_BYTES)
        self._prefix = b""  # everything of a chunk before the choices array
        self._started = False
        self._done = False
        #: True once the stream was found cut short or broken (the router counts it a
        #: failure of the backend).
        self.truncated = False
        self._finished = False  # a finish_reason chunk went out
        self._usage: JSON = {}
        #: Anthropic block index → (its kind, its OpenAI index: tool call or thinking block).
        self._blocks: dict[int, tuple[str, int]] = {}
        self._tools = 0
        self._thinking = 0

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

    def _delta(self, delta: bytes, finish: bytes = b"null", extra: bytes = b"") -> bytes:
        return (
            self._prefix + b'[{"index":0,"delta":' + delta + b',"logprobs":null,'
            b'"finish_reason":' + finish + extra + b"}]}\n\n"
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

    def _broken(self, message: str) -> bytes:
        """The upstream broke the event protocol: end with an error, count a failure."""
        self.truncated = True
        return self._ensure_started() + self._error_event(
            "api_error", "Anthropic stream cannot be translated: " + message)

    # -- StreamTranslator ------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        try:
            payloads = self._reader.feed(data)
        except SSETooLarge as exc:
            return self._broken(str(exc))
        return b"".join([self._event(p) for p in payloads])

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
            usage = msg.get("usage") if isinstance(msg, dict) else None
            if isinstance(usage, dict):
                self._usage.update(usage)
            if self._started:
                return b""
            msg_id = msg.get("id") if isinstance(msg, dict) else None
            return self._start(str(msg_id or new_id("msg_")))
        if kind == "content_block_start":
            return self._block_start(ev)
        if kind == "message_delta":
            usage = ev.get("usage")
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            delta = ev.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if reason is None:
                return b""
            self._finished = True
            finish = _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
            extra = _choice_extra(reason)
            return self._ensure_started() + self._delta(
                b"{}", encode(finish),
                b',"native_finish_reason":' + encode(reason) if extra else b"")
        if kind == "message_stop":
            out = b""
            if not self._finished:
                self._finished = True
                out = self._ensure_started() + self._delta(b"{}", b'"stop"')
            return out + self._close()
        if kind == "error":
            err = ev.get("error")
            err = err if isinstance(err, dict) else {}
            return self._error_event(
                str(err.get("type") or "api_error"), str(err.get("message") or "upstream error")
            )
        return b""  # ping, content_block_stop, unknown future events

    def _index(self, ev: JSON) -> int | None:
        index = ev.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < MAX_BLOCKS:
            return index
        return None

    def _block_start(self, ev: JSON) -> bytes:
        block = ev.get("content_block")
        block = block if isinstance(block, dict) else {}
        kind = block.get("type")
        index = self._index(ev)
        if index is None:
            return self._broken(f"content block index {ev.get('index')!r} is out of range")
        if index in self._blocks:
            return self._broken(f"content block {index} started twice")
        out = self._ensure_started()
        if kind == "tool_use":
            oa_index = self._tools
            self._tools += 1
            self._blocks[index] = ("tool_use", oa_index)
            given = block.get("input")
            call = {
                "index": oa_index,
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    # A start that carries the whole input (no input_json_delta follows).
                    "arguments": encode(given).decode() if given else "",
                },
            }
            return out + self._delta(b'{"tool_calls":[' + encode(call) + b"]}")
        if kind == "thinking":
            k = self._thinking
            self._thinking += 1
            self._blocks[index] = ("thinking", k)
            text, signature = block.get("thinking"), block.get("signature")
            if isinstance(text, str) and text:
                out += self._thinking_delta(k, text)
            if isinstance(signature, str) and signature:
                out += self._signature_delta(k, signature)
            return out
        if kind == "redacted_thinking":
            k = self._thinking
            self._thinking += 1
            self._blocks[index] = ("redacted_thinking", k)
            entry = {"index": k, "type": "redacted_thinking", "data": block.get("data") or ""}
            return out + self._delta(b'{"thinking_blocks":[' + encode(entry) + b"]}")
        self._blocks[index] = (str(kind), 0)
        if kind == "text" and block.get("text"):
            return out + self._delta(b'{"content":' + encode(block["text"]) + b"}")
        return out

    def _thinking_delta(self, k: int, text: str) -> bytes:
        quoted = encode(text)
        return self._delta(
            b'{"reasoning_content":' + quoted + b',"thinking_blocks":[{"index":'
            + str(k).encode() + b',"type":"thinking","thinking":' + quoted + b"}]}")

    def _signature_delta(self, k: int, signature: str) -> bytes:
        return self._delta(
            b'{"thinking_blocks":[{"index":' + str(k).encode()
            + b',"type":"thinking","signature":' + encode(signature) + b"}]}")

    def _block_delta(self, ev: JSON) -> bytes:
        delta = ev.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        kind = delta.get("type")
        index = self._index(ev)
        block = self._blocks.get(index) if index is not None else None
        if kind == "text_delta":
            if block is None or block[0] != "text":
                return self._broken(f"a text delta for block {ev.get('index')!r}, "
                                    "which is no text block")
            text = delta.get("text")
            if not text:
                return b""
            return self._delta(b'{"content":' + encode(text) + b"}")
        if kind == "input_json_delta":
            if block is None or block[0] != "tool_use":
                return self._broken(f"an input_json_delta for block {ev.get('index')!r}, "
                                    "which is no tool_use block")
            fragment = delta.get("partial_json")
            if not fragment:
                return b""
            return self._delta(
                b'{"tool_calls":[{"index":'
                + str(block[1]).encode()
                + b',"function":{"arguments":'
                + encode(fragment)
                + b"}}]}"
            )
        if kind in ("thinking_delta", "signature_delta"):
            if block is None or block[0] != "thinking":
                return self._broken(f"a {kind} for block {ev.get('index')!r}, "
                                    "which is no thinking block")
            if kind == "signature_delta":
                signature = delta.get("signature")
                if not isinstance(signature, str) or not signature:
                    return b""
                return self._signature_delta(block[1], signature)
            text = delta.get("thinking")
            if not isinstance(text, str) or not text:
                return b""
            return self._thinking_delta(block[1], text)
        return b""  # citations_delta, future delta types
