"""OpenAI Chat Completions ↔ Anthropic Messages, both directions, sans-IO.

Backend direction (the client speaks OpenAI chat, the backend is ``type: anthropic``):

* :func:`openai_to_anthropic_request` — chat request body → ``POST /v1/messages`` call;
* :func:`anthropic_to_openai_response` — Message (or Anthropic error) → ``chat.completion``
  (or OpenAI error);
* :class:`AnthropicToOpenAIStream` — Anthropic SSE → ``chat.completion.chunk`` SSE.

Front-door direction (the client speaks Anthropic ``/v1/messages``, the backend is
OpenAI-compatible):

* :func:`anthropic_to_openai_request` — Messages request → chat request body;
* :func:`openai_to_anthropic_response` — ``chat.completion`` (or OpenAI error) → Message
  (or Anthropic error);
* :class:`OpenAIToAnthropicStream` — chunk SSE → the Anthropic event sequence;
* :func:`anthropic_error_body` — the router's own errors in Anthropic's shape.

Mapping decisions (the ones the two APIs leave open):

* System/developer messages, wherever they appear, become the top-level ``system`` (a plain
  string when there is one string system message, else a list of text blocks, one per text).
  Anthropic ``system`` blocks become *one* OpenAI system message, texts joined by a blank
  line (several system messages confuse many chat templates).
* Consecutive messages of the same role are merged (Anthropic requires alternation); ``tool``
  messages become ``tool_result`` blocks of a user message, so a run of tool messages and a
  following user message share one user turn, tool results first. Message ``name`` is dropped.
* ``temperature`` is clamped to Anthropic's 0..1 (OpenAI allows 0..2).
* ``reasoning_effort`` → ``thinking`` budget: ``low`` 1024, ``medium`` 4096, ``high`` 16384
  (``minimal``/``none`` → no thinking). When the budget is not below ``max_tokens`` the budget
  is added to ``max_tokens`` (the client's answer keeps its room). Extended thinking rejects
  non-default sampling, so ``temperature``/``top_p`` are dropped then. A client's own
  ``thinking`` field wins over ``reasoning_effort``.
* OpenAI-only knobs with no Anthropic meaning (penalties, seed, logit_bias, store, OpenAI
  ``metadata`` …) are dropped; fields this module does not know pass through untouched
  (``top_k``, ``thinking``, ``service_tier`` …). ``n > 1``, ``logprobs``, a JSON
  ``response_format`` and audio/file content cannot be expressed: TranslationError.
* Usage: OpenAI ``prompt_tokens`` = Anthropic ``input_tokens`` + cache creation + cache read
  tokens (Anthropic's ``input_tokens`` excludes cached ones); cache reads are also reported as
  ``prompt_tokens_details.cached_tokens``. The reverse splits them again.
* ``thinking`` blocks/deltas become the de-facto ``reasoning_content`` field, and back.
* Stop reasons: end_turn/stop_sequence/pause_turn → stop, max_tokens and
  model_context_window_exceeded → length, tool_use → tool_calls, refusal → content_filter;
  back: stop → end_turn, length → max_tokens, tool_calls/function_call → tool_use,
  content_filter → refusal.
* Front door: ``top_k`` and ``thinking`` are dropped (OpenAI itself rejects both) unless
  ``map_thinking=True``, which maps the budget back to ``reasoning_effort``.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .types import Headers, Translated, TranslationError, UpstreamCall

__all__ = [
    "REASONING_BUDGETS",
    "AnthropicCall",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "anthropic_error_body",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

JSON = dict[str, Any]

#: ``reasoning_effort`` → Anthropic ``thinking.budget_tokens`` (None: thinking stays off).
REASONING_BUDGETS: Final[dict[str, int | None]] = {
    "none": None,
    "minimal": None,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
}

#: OpenAI request fields that are translated (or deliberately dropped) here; any other field
#: passes through to Anthropic untouched.
_OPENAI_HANDLED: Final[frozenset[str]] = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "user",
        "reasoning_effort",
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        # OpenAI-only, no Anthropic meaning: dropped.
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "seed",
        "store",
        "metadata",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
    }
)


@dataclass(frozen=True, slots=True)
class AnthropicCall(UpstreamCall):
    """An :class:`UpstreamCall` that also remembers what the client asked of the stream."""

    stream: bool = False
    include_usage: bool = False


# ---------------------------------------------------------------------------------------
# small helpers


def _load_object(body: bytes, what: str) -> JSON:
    try:
        obj = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise TranslationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TranslationError(f"{what} must be a JSON object")
    return obj


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` → (media type, base64 data)."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep:
        return None
    media_type, _, params = head.partition(";")
    if params != "base64":
        return None
    return (media_type or "application/octet-stream"), data


# ---------------------------------------------------------------------------------------
# OpenAI request → Anthropic request


def _text_of_parts(content: object, where: str) -> list[str]:
    """Texts of a system/developer/tool message (a string or text parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise TranslationError(f"{where}[{i}] must be a text part", param=where)
            out.append(str(part.get("text", "")))
        return out
    raise TranslationError(f"{where} must be a string or a list of parts", param=where)


def _image_block(part: JSON, where: str) -> JSON:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError(f"{where}.image_url.url must be a string", param=where)
    parsed = _parse_data_url(url)
    if parsed is not None:
        media_type, data = parsed
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where}: unsupported image URL", param=where)


def _user_blocks(content: object, where: str) -> list[JSON]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise TranslationError(f"{where} must be a string or a list of parts", param=where)
    blocks: list[JSON] = []
    for i, part in enumerate(content):
        here = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            blocks.append(_image_block(part, here))
        elif kind == "refusal":
            blocks.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            raise TranslationError(
                f"{here}: content part type {kind!r} is not supported by Anthropic backends",
                param=here,
            )
    return blocks


def _tool_use_blocks(tool_calls: object, where: str) -> list[JSON]:
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise TranslationError(f"{where} must be a list", param=where)
    blocks = []
    for i, call in enumerate(tool_calls):
        here = f"{where}[{i}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise TranslationError(f"{here} must be a function call with a name", param=here)
        args = fn.get("arguments") or "{}"
        try:
            parsed = _decode(args) if isinstance(args, str) else args
        except msgspec.DecodeError:
            raise TranslationError(
                f"{here}.function.arguments is not valid JSON", param=f"{here}.function.arguments"
            ) from None
        if not isinstance(parsed, dict):
            raise TranslationError(
                f"{here}.function.arguments must be a JSON object",
                param=f"{here}.function.arguments",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or _new_id("toolu_")),
                "name": fn["name"],
                "input": parsed,
            }
        )
    return blocks


def _tool_result_block(msg: JSON, where: str) -> JSON:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str):
        raise TranslationError(f"{where}.tool_call_id is required", param=f"{where}.tool_call_id")
    content = msg.get("content")
    block: JSON = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        block["content"] = content
    else:
        block["content"] = [
            {"type": "text", "text": t} for t in _text_of_parts(content, f"{where}.content")
        ]
    return block


def _convert_messages(messages: object) -> tuple[str | list[JSON] | None, list[JSON]]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty list", param="messages")
    system: list[str] = []
    system_is_plain = True
    out: list[JSON] = []  # {"role", "content": str | list}
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise TranslationError(f"{where} must be an object", param=where)
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            system_is_plain = system_is_plain and isinstance(content, str)
            system.extend(_text_of_parts(content, f"{where}.content"))
            continue
        new_content: str | list[JSON]
        if role == "user":
            anth_role = "user"
            new_content = (
                content if isinstance(content, str) else _user_blocks(content, f"{where}.content")
            )
        elif role == "assistant":
            anth_role = "assistant"
            tool_blocks = _tool_use_blocks(msg.get("tool_calls"), f"{where}.tool_calls")
            if isinstance(content, str) and not tool_blocks:
                new_content = content
            else:
                text_blocks = [] if content == "" else _user_blocks(content, f"{where}.content")
                new_content = text_blocks + tool_blocks
            if new_content in ("", []):
                continue  # an empty assistant turn: Anthropic rejects empty content
        elif role == "tool":
            anth_role = "user"
            new_content = [_tool_result_block(msg, where)]
        else:
            raise TranslationError(f"{where}: role {role!r} is not supported", param=where)
        if out and out[-1]["role"] == anth_role:
            prev = out[-1]["content"]
            prev_blocks = [{"type": "text", "text": prev}] if isinstance(prev, str) else prev
            add = (
                [{"type": "text", "text": new_content}]
                if isinstance(new_content, str)
                else new_content
            )
            out[-1]["content"] = prev_blocks + add
        else:
            out.append({"role": anth_role, "content": new_content})
    if not out:
        raise TranslationError(
            "'messages' needs at least one user or assistant message", param="messages"
        )
    sys_value: str | list[JSON] | None
    if not system:
        sys_value = None
    elif len(system) == 1 and system_is_plain:
        sys_value = system[0]
    else:
        sys_value = [{"type": "text", "text": t} for t in system]
    return sys_value, out


def _convert_tools(tools: object, param: str) -> list[JSON]:
    if not isinstance(tools, list):
        raise TranslationError(f"'{param}' must be a list", param=param)
    out = []
    for i, tool in enumerate(tools):
        here = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise TranslationError(f"{here} must be an object", param=here)
        fn = tool.get("function") if param == "tools" else tool
        if (param == "tools" and tool.get("type", "function") != "function") or not (
            isinstance(fn, dict) and isinstance(fn.get("name"), str)
        ):
            raise TranslationError(
                f"{here}: only function tools with a name are supported", param=here
            )
        item: JSON = {"name": fn["name"]}
        if fn.get("description") is not None:
            item["description"] = fn["description"]
        schema = fn.get("parameters")
        item["input_schema"] = (
            schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        )
        out.append(item)
    return out


def _convert_tool_choice(choice: object) -> JSON:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else choice
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return {"type": "tool", "name": fn["name"]}
    raise TranslationError(f"unsupported tool_choice {choice!r}", param="tool_choice")


def openai_to_anthropic_request(
    body: bytes,
    *,
    model: str,
    api_key: str | None,
    version: str = "2023-06-01",
    default_max_tokens: int = 4096,
) -> UpstreamCall:
    """An OpenAI chat request body → the Anthropic ``POST /v1/messages`` call.

    The result is an :class:`AnthropicCall`, whose ``stream``/``include_usage`` say how to
    build the :class:`AnthropicToOpenAIStream`.
    """
    req = _load_object(body, "request body")
    n = req.get("n")
    if n is not None and n != 1:
        raise TranslationError("n > 1 is not supported by Anthropic backends", param="n")
    if req.get("logprobs"):
        raise TranslationError("logprobs are not supported by Anthropic backends", param="logprobs")
    fmt = req.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise TranslationError(
            "response_format is not supported by Anthropic backends", param="response_format"
        )

    system, messages = _convert_messages(req.get("messages"))
    out: JSON = {"model": model, "messages": messages}
    if system is not None:
        out["system"] = system

    max_tokens = req.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = req.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise TranslationError("max_tokens must be a positive integer", param="max_tokens")

    stop = req.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list):
        if stop:
            out["stop_sequences"] = stop
    elif stop is not None:
        raise TranslationError("stop must be a string or a list of strings", param="stop")

    thinking_on = False
    if "thinking" not in req:
        effort = req.get("reasoning_effort")
        if effort is not None:
            if effort not in REASONING_BUDGETS:
                raise TranslationError(
                    f"unsupported reasoning_effort {effort!r}", param="reasoning_effort"
                )
            budget = REASONING_BUDGETS[effort]
            if budget is not None:
                thinking_on = True
                out["thinking"] = {"type": "enabled", "budget_tokens": budget}
                if max_tokens <= budget:
                    max_tokens += budget
    out["max_tokens"] = max_tokens

    if not thinking_on:
        temperature = req.get("temperature")
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            out["temperature"] = min(max(float(temperature), 0.0), 1.0)
        elif temperature is not None:
            raise TranslationError("temperature must be a number", param="temperature")
        if req.get("top_p") is not None:
            out["top_p"] = req["top_p"]

    tools_param = (
        "tools"
        if req.get("tools") is not None
        else ("functions" if req.get("functions") is not None else None)
    )
    if tools_param is not None:
        tools = _convert_tools(req[tools_param], tools_param)
        if tools:
            out["tools"] = tools
            choice = req.get("tool_choice" if tools_param == "tools" else "function_call")
            tool_choice = _convert_tool_choice(choice) if choice is not None else None
            if req.get("parallel_tool_calls") is False:
                tool_choice = tool_choice or {"type": "auto"}
                if tool_choice["type"] != "none":
                    tool_choice["disable_parallel_tool_use"] = True
            if tool_choice is not None:
                out["tool_choice"] = tool_choice

    stream = req.get("stream") is True
    include_usage = False
    if stream:
        out["stream"] = True
        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True

    user = req.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}

    for key, value in req.items():
        if key not in _OPENAI_HANDLED:
            out[key] = value  # provider-specific fields (thinking, top_k, …) pass through

    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"anthropic-version", version.encode()),
    ]
    if api_key is not None:
        headers.append((b"x-api-key", api_key.encode()))
    if stream:
        headers.append((b"accept", b"text/event-stream"))
    return AnthropicCall(
        b"POST", b"/v1/messages", headers, _encode(out), stream=stream, include_usage=include_usage
    )


# ---------------------------------------------------------------------------------------
# Anthropic response → OpenAI response

_FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: Anthropic error type → (OpenAI error type, OpenAI code).
_ANTHROPIC_TO_OPENAI_ERROR: Final[dict[str, tuple[str, str | None]]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "billing_error": ("insufficient_quota", "billing_error"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("server_error", "api_error"),
    "overloaded_error": ("service_unavailable", "overloaded"),
    "timeout_error": ("timeout_error", "upstream_timeout"),
}

_STATUS_TO_ANTHROPIC_ERROR: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    return _STATUS_TO_ANTHROPIC_ERROR.get(status, default)


def _openai_error_dict(etype: str, message: str) -> JSON:
    oa_type, code = _ANTHROPIC_TO_OPENAI_ERROR.get(etype, ("server_error", etype or None))
    return {"error": {"message": message, "type": oa_type, "param": None, "code": code}}


def _error_message(body: bytes, status: int) -> str:
    text = body[:500].decode("utf-8", "replace").strip()
    return f"upstream returned HTTP {status}" + (f": {text}" if text else "")


def _anthropic_error_parts(status: int, body: bytes) -> tuple[str, str]:
    try:
        obj = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        etype = err.get("type")
        message = err.get("message")
        return (
            etype if isinstance(etype, str) else anthropic_error_type(status),
            message if isinstance(message, str) else _error_message(body, status),
        )
    return anthropic_error_type(status), _error_message(body, status)


def _openai_usage(usage: object) -> JSON:
    u = usage if isinstance(usage, dict) else {}
    cache_read = _as_int(u.get("cache_read_input_tokens"))
    prompt = (
        _as_int(u.get("input_tokens")) + _as_int(u.get("cache_creation_input_tokens")) + cache_read
    )
    completion = _as_int(u.get("output_tokens"))
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
            503 if status == 529 else status, _encode(_openai_error_dict(etype, message))
        )
    try:
        msg = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        msg = None
    if not isinstance(msg, dict) or msg.get("type") == "error":
        etype, message = _anthropic_error_parts(502, body)
        return Translated(502, _encode(_openai_error_dict(etype, message)))

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
                        "arguments": _encode(block.get("input") or {}).decode(),
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
        "id": "chatcmpl-" + str(msg.get("id") or _new_id("")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "usage": _openai_usage(msg.get("usage")),
    }
    return Translated(200, _encode(out))


# ---------------------------------------------------------------------------------------
# SSE framing shared by both stream translators

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class _SSEReader:
    """Splits an SSE byte stream into the ``data`` payloads of complete events."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        while (m := _EVENT_END.search(buf, pos)) is not None:
            payload = self._payload(buf[pos : m.start()])
            pos = m.end()
            if payload is not None:
                out.append(payload)
        self._buf = buf[pos:]
        return out

    def tail(self) -> list[bytes]:
        """The last event when the stream ended without its blank line."""
        rest, self._buf = self._buf, b""
        payload = self._payload(rest) if rest.strip() else None
        return [payload] if payload is not None else []

    @staticmethod
    def _payload(block: bytes) -> bytes | None:
        data: list[bytes] = []
        for line in block.splitlines():
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        return b"\n".join(data) if data else None


# ---------------------------------------------------------------------------------------
# Anthropic SSE → OpenAI chunks

_DONE: Final = b"data: [DONE]\n\n"


class AnthropicToOpenAIStream:
    """Anthropic Messages SSE → OpenAI ``chat.completion.chunk`` SSE (a StreamTranslator)."""

    def __init__(self, model: str, include_usage: bool, *, created: int | None = None) -> None:
        self.model = model
        self.include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._reader = _SSEReader()
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
            + _encode("chatcmpl-" + msg_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode()
            + b',"model":'
            + _encode(self.model)
            + b',"choices":'
        )
        return self._delta(b'{"role":"assistant","content":""}')

    def _delta(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return (
            self._prefix + b'[{"index":0,"delta":' + delta + b',"logprobs":null,'
            b'"finish_reason":' + finish + b"}]}\n\n"
        )

    def _ensure_started(self) -> bytes:
        return b"" if self._started else self._start(_new_id("msg_"))

    def _close(self) -> bytes:
        out = self._ensure_started()
        if self.include_usage:
            out += self._prefix + b'[],"usage":' + _encode(_openai_usage(self._usage)) + b"}\n\n"
        self._done = True
        return out + _DONE

    def _error_event(self, etype: str, message: str) -> bytes:
        self._done = True
        return b"data: " + _encode(_openai_error_dict(etype, message)) + b"\n\n" + _DONE

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
            ev = _decode(payload)
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
            return self._start(str(msg.get("id") or _new_id("msg_")))
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
            return self._ensure_started() + self._delta(b"{}", _encode(finish))
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
            self._tool_index[_as_int(ev.get("index"))] = oa_index
            call = {
                "index": oa_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return out + self._delta(b'{"tool_calls":[' + _encode(call) + b"]}")
        if kind == "text" and block.get("text"):
            return out + self._delta(b'{"content":' + _encode(block["text"]) + b"}")
        if kind == "thinking" and block.get("thinking"):
            return out + self._delta(b'{"reasoning_content":' + _encode(block["thinking"]) + b"}")
        return out

    def _block_delta(self, ev: JSON) -> bytes:
        delta = ev.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not text:
                return b""
            return self._ensure_started() + self._delta(b'{"content":' + _encode(text) + b"}")
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            oa_index = self._tool_index.get(_as_int(ev.get("index")))
            if not fragment or oa_index is None:
                return b""
            return self._delta(
                b'{"tool_calls":[{"index":'
                + str(oa_index).encode()
                + b',"function":{"arguments":'
                + _encode(fragment)
                + b"}}]}"
            )
        if kind == "thinking_delta":
            text = delta.get("thinking")
            if not text:
                return b""
            return self._ensure_started() + self._delta(
                b'{"reasoning_content":' + _encode(text) + b"}"
            )
        return b""  # signature_delta, citations_delta, …


# ---------------------------------------------------------------------------------------
# Anthropic request → OpenAI request (the /v1/messages front door)


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
                            "arguments": _encode(block.get("input") or {}).decode(),
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
    req = _load_object(body, "request body")
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
        out["reasoning_effort"] = _budget_to_effort(_as_int(thinking.get("budget_tokens")))
    metadata = req.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    stream = req.get("stream") is True
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return _encode(out), stream


# ---------------------------------------------------------------------------------------
# OpenAI response → Anthropic response

_STOP_REASONS: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def anthropic_error_body(status: int, message: str) -> bytes:
    """Anthropic's error JSON for an error with this HTTP status."""
    return _encode(
        {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    )


def _anthropic_usage(usage: object) -> JSON:
    u = usage if isinstance(usage, dict) else {}
    details = u.get("prompt_tokens_details")
    cached = _as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out: JSON = {
        "input_tokens": max(_as_int(u.get("prompt_tokens")) - cached, 0),
        "output_tokens": _as_int(u.get("completion_tokens")),
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
        parsed = _decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        parsed = None
    # Anthropic's input is always an object: keep malformed arguments visible, not lost.
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}


def _openai_error_message(body: bytes, status: int) -> str:
    try:
        obj = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return _error_message(body, status)


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
        resp = _decode(body)
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
                "id": call.get("id") or _new_id("toolu_"),
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
    return Translated(200, _encode(out))


# ---------------------------------------------------------------------------------------
# OpenAI chunks → Anthropic SSE


def _sse(event: bytes, data: JSON) -> bytes:
    return b"event: " + event + b"\ndata: " + _encode(data) + b"\n\n"


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
        self._reader = _SSEReader()
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
            + _encode(value)
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
        if payload.strip() == b"[DONE]":
            return self._end()
        try:
            chunk = _decode(payload)
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
        index = _as_int(call.get("index"))
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
                    "id": call.get("id") or _new_id("toolu_"),
                    "name": fn.get("name") or "",
                    "input": {},
                },
            )
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            out += self._block_delta(b"input_json_delta", b"partial_json", args)
        return out
