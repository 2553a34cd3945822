"""The ``/v1/messages`` front door, for a backend that speaks OpenAI chat: an Anthropic
Messages request → a chat request body (:func:`anthropic_to_openai_request`), and the chat
answer → a Message (:func:`openai_to_anthropic_response`) or, streamed, the Anthropic event
sequence (:class:`OpenAIToAnthropicStream`).

What an agent loop needs to survive the two translations (Claude Code in front of an
OpenAI-compatible or Gemini backend): parallel tool calls each in their own ``tool_use``
block whatever the server's delta style (:mod:`._toolcalls`), ``tool_use`` as the stop
reason whenever calls were made, Gemini thought signatures carried in thinking blocks and
put back on the calls (:mod:`._thinking`), thinking sent back as ``reasoning_content`` where
the backend wants it, ``is_error`` kept, refusals told apart, usage (input, cache, reasoning
tokens) as soon as it is known, and the upstream's error type kept.
"""

from __future__ import annotations

import secrets
from typing import Final

import msgspec

from ...core.errors import anthropic_error_body, anthropic_error_type
from ...core.sse import DONE_MARK, SSEReader, SSETooLarge
from ..gemini import SKIP_SIGNATURE
from ..limits import MAX_EVENT_BYTES
from ..types import ChatDialect, Translated, TranslationError
from ._common import (
    JSON,
    anthropic_error_kind,
    as_int,
    decode,
    encode,
    error_message,
    load_object,
    new_id,
)
from ._thinking import carrier_block, read_carrier
from ._toolcalls import ToolCall, ToolCallError, ToolCalls

#: Put before the text of a ``tool_result`` with ``is_error: true`` for a backend whose
#: tool messages have no such flag.
TOOL_ERROR_PREFIX: Final = "Error: "


def _budget_to_effort(budget: int) -> str:
    if budget < 2048:
        return "low"
    if budget < 8192:
        return "medium"
    return "high"


def _image_part(block: JSON, where: str) -> JSON:
    source = block.get("source")
    if isinstance(source, dict):
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
            return {"type": "image_url", "image_url": {"url": url}}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise TranslationError(f"{where}: unsupported image source", param=where)


def _document_part(block: JSON, where: str) -> JSON:
    """A document block → a chat ``file`` part (a PDF) or a text part (plain text)."""
    source = block.get("source")
    if isinstance(source, dict):
        data = source.get("data")
        if (source.get("type") == "base64" and source.get("media_type") == "application/pdf"
                and isinstance(data, str)):
            title = block.get("title")
            name = title if isinstance(title, str) and title else "document.pdf"
            return {"type": "file", "file": {
                "filename": name, "file_data": f"data:application/pdf;base64,{data}"}}
        if source.get("type") == "text" and isinstance(data, str):
            return {"type": "text", "text": data}
    raise TranslationError(f"{where}: unsupported document source", param=where)


def _system_text(system: object) -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise TranslationError(f"system[{i}] must be a text block", param="system")
            texts.append(str(block.get("text", "")))
        return "\n\n".join(texts)
    raise TranslationError("system must be a string or a list of text blocks", param="system")


def _tool_result_message(block: JSON, where: str, dialect: ChatDialect
                         ) -> tuple[JSON, list[JSON]]:
    """A tool_result block → an OpenAI tool message (+ image parts it carried). A failed
    tool (``is_error``) says so: in the text (``Error: ...``), or for the native Gemini
    translator as ``is_error``, which it turns into Gemini's error response."""
    content = block.get("content")
    images: list[JSON] = []
    text: str | list[JSON]
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        parts: list[JSON] = []
        for j, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(item.get("text", ""))})
            elif kind == "image":
                images.append(_image_part(item, f"{where}.content[{j}]"))
            else:
                raise TranslationError(
                    f"{where}.content[{j}]: unsupported block {kind!r}", param=where
                )
        text = parts
    else:
        raise TranslationError(f"{where}.content must be a string or blocks", param=where)
    message: JSON = {"role": "tool", "tool_call_id": block.get("tool_use_id")}
    if block.get("is_error") is True:
        if dialect.native_gemini:
            message["is_error"] = True
        elif isinstance(text, str):
            text = TOOL_ERROR_PREFIX + text
        else:
            text = [{"type": "text", "text": TOOL_ERROR_PREFIX.rstrip()}, *text]
    message["content"] = text
    return message, images


def _tool_call(block: JSON, signatures: dict[str, str]) -> JSON:
    call_id = block.get("id")
    call: JSON = {
        "id": call_id,
        "type": "function",
        "function": {
            "name": block.get("name"),
            "arguments": encode(block.get("input") or {}).decode(),
        },
    }
    signature = signatures.get(call_id) if isinstance(call_id, str) else None
    if signature is not None:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


def _assistant_message(parts: list[JSON], tool_calls: list[JSON], reasoning: list[str],
                       dialect: ChatDialect) -> JSON:
    assistant: JSON = {"role": "assistant"}
    if len(parts) > 1:
        assistant["content"] = parts  # keep the block boundaries
    else:
        text = parts[0]["text"] if parts else ""
        assistant["content"] = text if text or not tool_calls else None
    if reasoning and dialect.reasoning_content:
        assistant["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        if dialect.gemini_signatures and "extra_content" not in tool_calls[0]:
            # Gemini 3 wants the first call of a step signed; a history not made by Gemini
            # gets Google's documented placeholder.
            tool_calls[0]["extra_content"] = {"google": {"thought_signature": SKIP_SIGNATURE}}
        assistant["tool_calls"] = tool_calls
    return assistant


def _convert_anthropic_messages(messages: object, dialect: ChatDialect) -> list[JSON]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty list", param="messages")
    out: list[JSON] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise TranslationError(f"{where} must be an object", param=where)
        role = msg.get("role")
        content = msg.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"{where}: role {role!r} is not supported", param=where)
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise TranslationError(f"{where}.content must be a string or blocks", param=where)
        parts: list[JSON] = []
        tool_msgs: list[JSON] = []
        tool_uses: list[JSON] = []
        reasoning: list[str] = []
        signatures: dict[str, str] = {}  # tool call id → Gemini thought signature
        for j, block in enumerate(content):
            here = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image" and role == "user":
                parts.append(_image_part(block, here))
            elif kind == "document" and role == "user":
                parts.append(_document_part(block, here))
            elif kind == "tool_result" and role == "user":
                tool_msg, images = _tool_result_message(block, here, dialect)
                tool_msgs.append(tool_msg)
                parts.extend(images)
            elif kind == "tool_use" and role == "assistant":
                tool_uses.append(block)
            elif kind == "thinking" and role == "assistant":
                carried = read_carrier(block.get("signature"))
                if carried is not None:
                    signatures[carried[0]] = carried[1]
                elif isinstance(block.get("thinking"), str):
                    reasoning.append(block["thinking"])
            elif kind == "redacted_thinking" and role == "assistant":
                continue  # Anthropic's encrypted thinking: nothing another backend can read
            else:
                raise TranslationError(
                    f"{here}: block type {kind!r} is not supported by OpenAI-compatible backends",
                    param=here,
                )
        out.extend(tool_msgs)  # tool results must directly follow the assistant's calls
        if role == "assistant":
            if not (dialect.gemini_signatures or dialect.native_gemini):
                signatures = {}  # Gemini's own: no other backend takes extra_content
            tool_calls = [_tool_call(b, signatures) for b in tool_uses]
            out.append(_assistant_message(parts, tool_calls, reasoning, dialect))
        elif parts or not tool_msgs:
            out.append({"role": "user", "content": parts})
    return out


def _thinking_fields(thinking: object, dialect: ChatDialect) -> JSON:
    """Anthropic ``thinking`` in the chat request: the exact budget for the native Gemini
    translator, a ``reasoning_effort`` for a backend that maps it, else nothing."""
    if not isinstance(thinking, dict):
        return {}
    kind = thinking.get("type")
    if dialect.native_gemini:
        if kind == "enabled":
            budget = as_int(thinking.get("budget_tokens"))
            return {"thinking_config": {"thinking_budget": budget, "include_thoughts": True}}
        if kind == "adaptive":  # the model decides: Gemini's dynamic budget
            return {"thinking_config": {"thinking_budget": -1, "include_thoughts": True}}
        if kind == "disabled":
            return {"thinking_config": {"thinking_budget": 0}}
        return {}
    if dialect.map_thinking and kind == "enabled":
        return {"reasoning_effort": _budget_to_effort(as_int(thinking.get("budget_tokens")))}
    return {}


def anthropic_to_openai_request(
    body: bytes, *, model: str | None = None, map_thinking: bool = False,
    dialect: ChatDialect | None = None,
) -> tuple[bytes, bool]:
    """An Anthropic Messages request → (OpenAI chat request body, whether it streams).

    ``dialect`` is what the backend's chat looks like (its profile's); ``map_thinking`` is
    a shortcut for a dialect that maps ``thinking`` to ``reasoning_effort``."""
    if dialect is None:
        dialect = ChatDialect(map_thinking=map_thinking)
    elif map_thinking and not dialect.map_thinking:
        dialect = msgspec.structs.replace(dialect, map_thinking=True)
    req = load_object(body, "request body")
    out: JSON = {}
    target = model if model is not None else req.get("model")
    if target is not None:
        out["model"] = target
    messages = _convert_anthropic_messages(req.get("messages"), dialect)
    system = _system_text(req.get("system"))
    out["messages"] = (
        [{"role": "system", "content": system}] if system is not None else []
    ) + messages
    if req.get("max_tokens") is not None:
        out[dialect.max_tokens_field] = req["max_tokens"]
    for key in ("temperature", "top_p"):
        if req.get(key) is not None:
            out[key] = req[key]
    stops = req.get("stop_sequences")
    if stops:
        limit = dialect.max_stop_sequences
        if limit is not None and isinstance(stops, list) and len(stops) > limit:
            raise TranslationError(
                f"this backend takes at most {limit} stop sequences, the request has "
                f"{len(stops)}", param="stop_sequences")
        out["stop"] = stops
    tools = req.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise TranslationError("tools must be a list", param="tools")
        oa_tools = []
        for i, tool in enumerate(tools):
            if (
                not isinstance(tool, dict)
                or tool.get("type", "custom") != "custom"
                or (not isinstance(tool.get("name"), str))
            ):
                raise TranslationError(
                    f"tools[{i}]: only custom tools are supported by OpenAI-compatible backends",
                    param=f"tools[{i}]",
                )
            fn: JSON = {"name": tool["name"]}
            if tool.get("description") is not None:
                fn["description"] = tool["description"]
            fn["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
            oa_tools.append({"type": "function", "function": fn})
        out["tools"] = oa_tools
        choice = req.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "auto":
                out["tool_choice"] = "auto"
            elif kind == "any":
                out["tool_choice"] = "required"
            elif kind == "none":
                out["tool_choice"] = "none"
            elif kind == "tool":
                out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
            else:
                raise TranslationError(f"unsupported tool_choice {choice!r}", param="tool_choice")
            if choice.get("disable_parallel_tool_use") is True and kind != "none":
                out["parallel_tool_calls"] = False
    out.update(_thinking_fields(req.get("thinking"), dialect))
    metadata = req.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    stream = req.get("stream") is True
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return encode(out), stream


_STOP_REASONS: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _stop_reason(finish: object, tool_calls: bool, refused: bool) -> str:
    """The Anthropic stop reason: ``tool_use`` whenever calls were made and the answer was
    not cut (Ollama, vLLM and Gemini's endpoint say ``stop`` then), ``refusal`` for a
    refusal, else the finish reason's counterpart."""
    reason = _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    if reason == "max_tokens":
        return reason
    if refused:
        return "refusal"
    return "tool_use" if tool_calls else reason


def _anthropic_usage(usage: object) -> JSON:
    u = usage if isinstance(usage, dict) else {}
    details = u.get("prompt_tokens_details")
    cached = written = 0
    if isinstance(details, dict):
        cached = as_int(details.get("cached_tokens"))
        written = as_int(details.get("cache_write_tokens"))
    out: JSON = {
        "input_tokens": max(as_int(u.get("prompt_tokens")) - cached - written, 0),
        "output_tokens": as_int(u.get("completion_tokens")),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    if written:
        out["cache_creation_input_tokens"] = written
    completion = u.get("completion_tokens_details")
    if isinstance(completion, dict) and "reasoning_tokens" in completion:
        out["output_tokens_details"] = {
            "thinking_tokens": as_int(completion.get("reasoning_tokens"))}
    return out


def _tool_input(arguments: object) -> JSON:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        parsed = None
    # Anthropic's input is always an object: keep malformed arguments visible, not lost.
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}


def _openai_error_message(body: bytes, status: int) -> str:
    try:
        obj = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return error_message(body, status)


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _signature(call: object) -> str | None:
    """A chat tool call's Gemini thought signature (``extra_content``), if it has one."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def openai_to_anthropic_response(status: int, body: bytes, *, model: str) -> Translated:
    """A ``chat.completion`` (or OpenAI error) → an Anthropic Message (or error)."""
    if status >= 400:
        return Translated(status, anthropic_error_body(status, _openai_error_message(body, status)))
    try:
        resp = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        resp = None
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if not isinstance(resp, dict) or "error" in resp or not isinstance(choices, list):
        return Translated(502, anthropic_error_body(502, _openai_error_message(body, 502)))
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[JSON] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _content_text(message.get("content"))
    refusal = message.get("refusal")
    refused = isinstance(refusal, str) and bool(refusal)
    if refused:
        text += str(refusal)
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    for call in calls:
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        call_id = call.get("id") or new_id("toolu_")
        signature = _signature(call)
        if signature is not None:
            content.append(carrier_block(str(call_id), signature))
        content.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": fn.get("name"),
                "input": _tool_input(fn.get("arguments")),
            }
        )
    oa_id = str(resp.get("id") or "")
    out = {
        "id": "msg_" + (oa_id.removeprefix("chatcmpl-") or secrets.token_hex(12)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), bool(calls), refused),
        "stop_sequence": None,
        "usage": _anthropic_usage(resp.get("usage")),
    }
    return Translated(200, encode(out))


def _sse(event: bytes, data: JSON) -> bytes:
    return b"event: " + event + b"\ndata: " + encode(data) + b"\n\n"


class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` SSE → Anthropic Messages SSE (a StreamTranslator).

    Emits exactly: ``message_start``; per content block ``content_block_start``,
    ``content_block_delta``…, ``content_block_stop``; ``message_delta``; ``message_stop``.
    Blocks never overlap: a new kind of delta (text, thinking) closes the open block first.
    Tool calls are assembled by :class:`ToolCalls` (by id, then index, then the latest
    call), each in its own block with all its fragments; a call with a Gemini thought
    signature is preceded by a thinking block carrying it. ``message_start`` has the usage
    when the first chunk brings it; ``message_delta`` always has the final counts. A broken
    upstream (an event past :data:`MAX_EVENT_BYTES`, tool call deltas that cannot be
    assembled) ends the stream with an error event.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._reader = SSEReader(MAX_EVENT_BYTES)
        self._started = False
        self._done = False
        #: True once the stream was found cut short or broken (the router counts it a
        #: failure of the backend).
        self.truncated = False
        self._index = -1  # Anthropic index of the open block (-1: none open)
        self._open: str | ToolCall | None = None  # "text" | "thinking" | a tool call
        self._calls = ToolCalls()
        self._refused = False
        self._stop_reason: str | None = None
        self._usage: JSON = {"input_tokens": 0, "output_tokens": 0}
        self._prefix_delta = b""

    # -- helpers ---------------------------------------------------------------------
    def _start(self, chunk_id: str) -> bytes:
        self._started = True
        msg: JSON = {
            "id": "msg_" + (chunk_id.removeprefix("chatcmpl-") or secrets.token_hex(12)),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self._usage, "output_tokens": 0},
        }
        return _sse(b"message_start", {"type": "message_start", "message": msg})

    def _open_block(self, key: str | ToolCall, block: JSON) -> bytes:
        out = self._close_block()
        self._index += 1
        self._open = key
        self._prefix_delta = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta",'
            b'"index":' + str(self._index).encode() + b',"delta":'
        )
        return out + _sse(
            b"content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        if isinstance(self._open, ToolCall):
            self._open.state = "closed"
        self._open = None
        return _sse(b"content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _block_delta(self, kind: bytes, field: bytes, value: str) -> bytes:
        return (
            self._prefix_delta
            + b'{"type":"'
            + kind
            + b'","'
            + field
            + b'":'
            + encode(value)
            + b"}}\n\n"
        )

    def _carrier(self, call: ToolCall) -> bytes:
        """A thinking block with no text whose signature carries the call's Gemini thought
        signature (see :mod:`._thinking`)."""
        assert call.signature is not None
        call.emitted_signature = True
        block = carrier_block(call.block_id, call.signature)
        out = self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        out += self._block_delta(b"signature_delta", b"signature", block["signature"])
        return out + self._close_block()

    def _open_call(self, call: ToolCall) -> bytes:
        call.block_id = call.upstream_id or new_id("toolu_")
        out = self._carrier(call) if call.signature is not None else b""
        out += self._open_block(call, {"type": "tool_use", "id": call.block_id,
                                       "name": call.name, "input": {}})
        call.state = "open"
        held = self._calls.release(call)
        if held:  # (already read by call.end as it came)
            out += self._block_delta(b"input_json_delta", b"partial_json", held)
        return out

    def _advance(self, final: bool = False) -> bytes:
        """Open the blocks of waiting calls, in order, as far as their turn has come: when
        no call's block is open, or the open one's arguments are complete (or, at the end,
        whatever it holds)."""
        out = b""
        waiting = self._calls.waiting
        while waiting:
            call = waiting[0]
            if not call.name:
                if not final:
                    break
                raise ToolCallError("a tool call without a name")
            if isinstance(self._open, ToolCall) and not (final or self._open.end.complete):
                break
            waiting.pop(0)
            out += self._open_call(call)
        return out

    def _end(self) -> bytes:
        out = b"" if self._started else self._start("")
        try:
            out += self._advance(final=True)
        except ToolCallError as exc:
            return out + self._broken(str(exc))
        out += self._close_block()
        for call in self._calls.calls:  # signatures that came after their call's block
            if call.signature is not None and not call.emitted_signature:
                out += self._carrier(call)
        reason = self._stop_reason or "end_turn"
        if reason != "max_tokens" and self._calls.calls:
            reason = "tool_use"
        out += _sse(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": self._usage,
            },
        )
        self._done = True
        return out + _sse(b"message_stop", {"type": "message_stop"})

    def _error_event(self, etype: str, message: str) -> bytes:
        self._done = True
        return _sse(b"error", {"type": "error", "error": {"type": etype, "message": message}})

    def _broken(self, message: str) -> bytes:
        """The upstream's stream cannot be translated: an error event, and the attempt
        counts as the backend's failure."""
        self.truncated = True
        out = b"" if self._started else self._start("")
        return out + self._error_event(
            "api_error", "upstream stream cannot be translated: " + message)

    # -- StreamTranslator ------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        try:
            payloads = self._reader.feed(data)
        except SSETooLarge as exc:
            return self._broken(str(exc))
        return b"".join([self._chunk(p) for p in payloads])

    def finish(self) -> bytes:
        if self._done:
            return b""
        out = b"".join(self._chunk(p) for p in self._reader.tail())
        if self._done:
            return out
        if self._stop_reason is not None:
            return out + self._end()  # some backends omit [DONE]
        self.truncated = True  # the router counts it a failure of the backend
        return out + self._error_event(
            "api_error", "upstream stream ended before the answer was complete"
        )

    def error(self, status: int, message: str) -> bytes:
        if self._done:
            return b""
        return self._error_event(anthropic_error_type(status), message)

    # -- chunks ----------------------------------------------------------------------
    def _chunk(self, payload: bytes) -> bytes:
        if self._done:
            return b""
        if payload.strip() == DONE_MARK:
            return self._end()
        try:
            chunk = decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return b""
        if not isinstance(chunk, dict):
            return b""
        if "error" in chunk:
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            return self._error_event(anthropic_error_kind(err), str(message or "upstream error"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = _anthropic_usage(usage)
        out = b"" if self._started else self._start(str(chunk.get("id") or ""))
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                try:
                    out += self._delta(delta)
                except ToolCallError as exc:
                    return out + self._broken(str(exc))
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self._stop_reason = _stop_reason(finish, False, self._refused)
                try:
                    out += self._advance(final=True)
                except ToolCallError as exc:
                    return out + self._broken(str(exc))
                out += self._close_block()
        return out

    def _delta(self, delta: JSON) -> bytes:
        out = b""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            if self._open != "thinking":
                out += self._open_block(
                    "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                )
            out += self._block_delta(b"thinking_delta", b"thinking", reasoning)
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                if key == "refusal":
                    self._refused = True
                if self._open != "text":
                    out += self._open_block("text", {"type": "text", "text": ""})
                out += self._block_delta(b"text_delta", b"text", text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                out += self._tool_delta(call)
        return out

    def _tool_delta(self, delta: JSON) -> bytes:
        fn = delta.get("function")
        fn = fn if isinstance(fn, dict) else {}
        name = fn.get("name")
        name = name if isinstance(name, str) else ""
        signature = _signature(delta)
        call = self._calls.find(delta, name, signature)
        if call is None:
            return b""
        if name and not call.name:
            call.name = name
        if signature is not None and call.signature is None:
            call.signature = signature
        args = fn.get("arguments")
        out = b""
        if isinstance(args, str) and args:
            if call.end.complete and args.strip():
                raise ToolCallError(f"tool call {call.ordinal} got more arguments after a "
                                    "complete JSON value")
            if call.state == "open" and call is self._open:
                call.end.feed(args)
                out += self._block_delta(b"input_json_delta", b"partial_json", args)
            elif call.state == "waiting":
                call.end.feed(args)
                self._calls.hold(call, args)
            elif args.strip():
                raise ToolCallError(
                    f"arguments for tool call {call.ordinal} arrived after its block ended")
        return out + self._advance()
