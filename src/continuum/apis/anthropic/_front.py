"""The ``/v1/messages`` front door, for a backend that speaks OpenAI chat: an Anthropic
Messages request → a chat request body (:func:`anthropic_to_openai_request`), and the chat
answer → a Message (:func:`openai_to_anthropic_response`) or, streamed, the Anthropic event
sequence (:class:`OpenAIToAnthropicStream`)."""

from __future__ import annotations

import secrets
from typing import Final

import msgspec

from ...core.errors import anthropic_error_body, anthropic_error_type
from ...core.sse import DONE_MARK, SSEReader
from ..types import Translated, TranslationError
from ._common import JSON, as_int, decode, encode, error_message, load_object, new_id


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


def _tool_result_message(block: JSON, where: str) -> tuple[JSON, list[JSON]]:
    """A tool_result block → an OpenAI tool message (+ image parts it carried)."""
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
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}, images


def _convert_anthropic_messages(messages: object) -> list[JSON]:
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
        tool_calls: list[JSON] = []
        for j, block in enumerate(content):
            here = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image" and role == "user":
                parts.append(_image_part(block, here))
            elif kind == "tool_result" and role == "user":
                tool_msg, images = _tool_result_message(block, here)
                tool_msgs.append(tool_msg)
                parts.extend(images)
            elif kind == "tool_use" and role == "assistant":
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
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue  # the backend cannot verify Anthropic thinking signatures
            else:
                raise TranslationError(
                    f"{here}: block type {kind!r} is not supported by OpenAI-compatible backends",
                    param=here,
                )
        out.extend(tool_msgs)  # tool results must directly follow the assistant's calls
        if role == "assistant":
            assistant: JSON = {"role": "assistant"}
            if len(parts) > 1:
                assistant["content"] = parts  # keep the block boundaries
            else:
                text = parts[0]["text"] if parts else ""
                assistant["content"] = text if text or not tool_calls else None
            if tool_calls:
                assistant["tool_calls"] = tool_calls
            out.append(assistant)
        elif parts or not tool_msgs:
            out.append({"role": "user", "content": parts})
    return out


def anthropic_to_openai_request(
    body: bytes, *, model: str | None = None, map_thinking: bool = False
) -> tuple[bytes, bool]:
    """An Anthropic Messages request → (OpenAI chat request body, whether it streams)."""
    req = load_object(body, "request body")
    out: JSON = {}
    target = model if model is not None else req.get("model")
    if target is not None:
        out["model"] = target
    messages = _convert_anthropic_messages(req.get("messages"))
    system = _system_text(req.get("system"))
    out["messages"] = (
        [{"role": "system", "content": system}] if system is not None else []
    ) + messages
    if req.get("max_tokens") is not None:
        out["max_tokens"] = req["max_tokens"]
    for key in ("temperature", "top_p"):
        if req.get(key) is not None:
            out[key] = req[key]
    stops = req.get("stop_sequences")
    if stops:
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
    thinking = req.get("thinking")
    if map_thinking and isinstance(thinking, dict) and thinking.get("type") == "enabled":
        out["reasoning_effort"] = _budget_to_effort(as_int(thinking.get("budget_tokens")))
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


def _anthropic_usage(usage: object) -> JSON:
    u = usage if isinstance(usage, dict) else {}
    details = u.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out: JSON = {
        "input_tokens": max(as_int(u.get("prompt_tokens")) - cached, 0),
        "output_tokens": as_int(u.get("completion_tokens")),
    }
    if cached:
        out["cache_read_input_tokens"] = cached
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
    message = choice.get("message") or {}
    content: list[JSON] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _content_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu_"),
                "name": fn.get("name"),
                "input": _tool_input(fn.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    stop_reason = (
        _STOP_REASONS.get(finish, "end_turn")
        if isinstance(finish, str)
        else ("tool_use" if message.get("tool_calls") else "end_turn")
    )
    oa_id = str(resp.get("id") or "")
    out = {
        "id": "msg_" + (oa_id.removeprefix("chatcmpl-") or secrets.token_hex(12)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
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
    Blocks never overlap: a new kind of delta (text, thinking, another tool call) closes the
    open block first. Argument fragments of a tool call whose block was already closed (only
    a backend interleaving parallel calls would send them) are dropped.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._reader = SSEReader()
        self._started = False
        self._done = False
        #: True once ``finish`` found the stream cut short (the router counts it a failure).
        self.truncated = False
        self._index = -1  # Anthropic index of the open block (-1: none open)
        self._open: str | int | None = None  # "text" | "thinking" | OpenAI tool index
        self._seen_tools: set[int] = set()
        self._stop_reason: str | None = None
        self._input_tokens = 0
        self._output_tokens = 0
        self._cached = 0
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
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return _sse(b"message_start", {"type": "message_start", "message": msg})

    def _open_block(self, key: str | int, block: JSON) -> bytes:
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

    def _end(self) -> bytes:
        out = b"" if self._started else self._start("")
        out += self._close_block()
        usage: JSON = {"input_tokens": self._input_tokens, "output_tokens": self._output_tokens}
        if self._cached:
            usage["cache_read_input_tokens"] = self._cached
        out += _sse(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None},
                "usage": usage,
            },
        )
        self._done = True
        return out + _sse(b"message_stop", {"type": "message_stop"})

    def _error_event(self, etype: str, message: str) -> bytes:
        self._done = True
        return _sse(b"error", {"type": "error", "error": {"type": etype, "message": message}})

    # -- StreamTranslator ------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        return b"".join([self._chunk(p) for p in self._reader.feed(data)])

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
            return self._error_event("api_error", str(message or "upstream error"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            converted = _anthropic_usage(usage)
            self._input_tokens = converted["input_tokens"]
            self._output_tokens = converted["output_tokens"]
            self._cached = converted.get("cache_read_input_tokens", 0)
        out = b"" if self._started else self._start(str(chunk.get("id") or ""))
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                if self._open != "thinking":
                    out += self._open_block(
                        "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                    )
                out += self._block_delta(b"thinking_delta", b"thinking", reasoning)
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._open != "text":
                    out += self._open_block("text", {"type": "text", "text": ""})
                out += self._block_delta(b"text_delta", b"text", text)
            for call in delta.get("tool_calls") or ():
                out += self._tool_delta(call)
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self._stop_reason = _STOP_REASONS.get(finish, "end_turn")
                out += self._close_block()
        return out

    def _tool_delta(self, call: JSON) -> bytes:
        index = as_int(call.get("index"))
        fn = call.get("function") or {}
        out = b""
        if self._open != index:
            if index in self._seen_tools:
                return b""  # its block is closed already
            self._seen_tools.add(index)
            out = self._open_block(
                index,
                {
                    "type": "tool_use",
                    "id": call.get("id") or new_id("toolu_"),
                    "name": fn.get("name") or "",
                    "input": {},
                },
            )
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            out += self._block_delta(b"input_json_delta", b"partial_json", args)
        return out
