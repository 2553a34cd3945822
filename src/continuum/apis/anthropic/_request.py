"""An OpenAI chat request → the Anthropic ``POST /v1/messages`` call (a backend of
``type: anthropic`` behind the OpenAI front door)."""

from __future__ import annotations

import base64
from typing import Final, Literal

import msgspec

from ...core.http import Headers
from ..content import parse_data_url
from ..types import TranslationError, UpstreamCall
from ._common import JSON, decode, encode, load_object, new_id
from ._thinking import thinking_blocks, thinking_part

#: ``reasoning_effort`` → Anthropic ``thinking.budget_tokens`` (None: thinking stays off).
#: ``xhigh`` and ``max`` (the openai SDK knows both) stay under the 64k output tokens of
#: current models once the client's ``max_tokens`` is added.
REASONING_BUDGETS: Final[dict[str, int | None]] = {
    "none": None,
    "minimal": None,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
    "max": 49152,
}

#: ``tool_choice`` types Anthropic refuses together with thinking (it forces tool use).
_FORCING_CHOICES: Final = frozenset({"any", "tool"})
_THINKING_TYPES: Final = frozenset({"thinking", "redacted_thinking"})

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


class AnthropicCall(UpstreamCall, frozen=True):
    """An :class:`UpstreamCall` that also remembers what the client asked of the stream."""

    stream: bool = False
    include_usage: bool = False


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
    parsed = parse_data_url(url)
    if parsed is not None:
        media_type, data = parsed
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where}: unsupported image URL", param=where)


def _document_block(part: JSON, where: str) -> JSON:
    """A chat ``file`` part with inline ``file_data`` (a PDF, a text file) → a document."""
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    parsed = parse_data_url(data) if isinstance(data, str) else None
    if parsed is None:
        raise TranslationError(f"{where}: only inline file_data (a data: URL) is supported "
                               "by Anthropic backends", param=where)
    media_type, encoded = parsed
    if media_type == "application/pdf":
        return {"type": "document",
                "source": {"type": "base64", "media_type": media_type, "data": encoded}}
    if media_type.startswith("text/"):
        text = base64.b64decode(encoded).decode("utf-8", "replace")
        return {"type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": text}}
    raise TranslationError(f"{where}: Anthropic backends take PDF and text files, not "
                           f"{media_type}", param=where)


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
        elif kind == "file":
            blocks.append(_document_block(part, here))
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
            parsed = decode(args) if isinstance(args, str) else args
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
                "id": str(call.get("id") or new_id("toolu_")),
                "name": fn["name"],
                "input": parsed,
            }
        )
    return blocks


def _assistant_content(msg: JSON, where: str) -> str | list[JSON]:
    """An assistant message's blocks: its thinking blocks first, unmodified (Anthropic
    checks their signatures), then its text, then its tool calls."""
    content = msg.get("content")
    thinking = thinking_blocks(msg, where)
    tool_blocks = _tool_use_blocks(msg.get("tool_calls"), f"{where}.tool_calls")
    if isinstance(content, str) and not tool_blocks and not thinking:
        return content
    blocks: list[JSON] = []
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in _THINKING_TYPES:
                block = thinking_part(part, f"{where}.content[{i}]")
                if block is not None:
                    thinking.append(block)
            else:
                parts.append(part)
        blocks = _user_blocks(parts, f"{where}.content")
    elif content != "":
        blocks = _user_blocks(content, f"{where}.content")
    return thinking + blocks + tool_blocks


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
            new_content = _assistant_content(msg, where)
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


def _thinking_on(thinking: object) -> bool:
    return isinstance(thinking, dict) and thinking.get("type", "enabled") != "disabled"


def _starts_with_thinking(message: JSON) -> bool:
    content = message["content"]
    return (isinstance(content, list) and bool(content)
            and content[0].get("type") in _THINKING_TYPES)


def _has_block(message: JSON, kind: str) -> bool:
    content = message["content"]
    return isinstance(content, list) and any(b.get("type") == kind for b in content)


def _turn_without_thinking(messages: list[JSON]) -> int | None:
    """When the conversation ends inside a tool loop (its last message carries tool
    results), the index of the loop's first assistant message if that one does not start
    with thinking blocks: Anthropic refuses such a request while thinking is on."""
    if messages[-1]["role"] != "user" or not _has_block(messages[-1], "tool_result"):
        return None
    first: int | None = None
    for i in range(len(messages) - 2, -1, -1):
        message = messages[i]
        if message["role"] == "assistant":
            first = i
        elif not _has_block(message, "tool_result"):
            break  # the user's own turn: the tool loop began after it
    if first is None or _starts_with_thinking(messages[first]):
        return None
    return first


def _thinking_refused(out: JSON, conflict: Literal["drop", "reject"]) -> bool:
    """Whether Anthropic would refuse thinking for this request: a ``tool_choice`` that
    forces tool use, or a tool loop whose assistant turn came back without its thinking
    blocks. ``drop``: True (send it without thinking); ``reject``: a clear 400."""
    choice = out.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in _FORCING_CHOICES:
        if conflict == "reject":
            raise TranslationError(
                "Anthropic backends cannot think when tool_choice forces a tool ('required' "
                "or a named function): drop reasoning_effort/thinking or use tool_choice "
                "'auto'", param="tool_choice")
        return True
    turn = _turn_without_thinking(out["messages"])
    if turn is None:
        return False
    if conflict == "reject":
        raise TranslationError(
            "with thinking on, Anthropic needs the assistant turn that made these tool calls "
            "back with its thinking blocks first: send the message's 'thinking_blocks' as "
            "the router returned them, or turn thinking off", param="messages")
    return True


def _strip_thinking(messages: list[JSON]) -> None:
    """Thinking off: thinking blocks leave the assistant turns (and an assistant turn of
    nothing else leaves, its neighbours merged)."""
    changed = False
    for message in messages:
        content = message["content"]
        if message["role"] == "assistant" and isinstance(content, list) and any(
                b.get("type") in _THINKING_TYPES for b in content):
            message["content"] = [b for b in content if b.get("type") not in _THINKING_TYPES]
            changed = True
    if not changed:
        return
    kept: list[JSON] = []
    for message in messages:
        if message["content"] in ([], ""):
            continue
        if kept and kept[-1]["role"] == message["role"]:
            kept[-1]["content"] = _as_blocks(kept[-1]["content"]) + _as_blocks(
                message["content"])
        else:
            kept.append(message)
    messages[:] = kept


def _as_blocks(content: str | list[JSON]) -> list[JSON]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def openai_to_anthropic_request(
    body: bytes,
    *,
    model: str,
    default_max_tokens: int = 4096,
    thinking_conflict: Literal["drop", "reject"] = "drop",
) -> UpstreamCall:
    """An OpenAI chat request body → the Anthropic ``POST /v1/messages`` call (its
    credentials and ``anthropic-version`` are the backend's :class:`BackendProfile`'s).

    The result is an :class:`AnthropicCall`, whose ``stream``/``include_usage`` say how to
    build the :class:`AnthropicToOpenAIStream`. ``thinking_conflict`` says what happens to
    thinking Anthropic would refuse (see :func:`_thinking_refused`).
    """
    req = load_object(body, "request body")
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

    ours: JSON | None = None  # the thinking reasoning_effort asks for
    if "thinking" not in req:
        effort = req.get("reasoning_effort")
        if effort is not None:
            if effort not in REASONING_BUDGETS:
                raise TranslationError(
                    f"unsupported reasoning_effort {effort!r}", param="reasoning_effort"
                )
            budget = REASONING_BUDGETS[effort]
            if budget is not None:
                ours = {"type": "enabled", "budget_tokens": budget}

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

    thinking = ours if ours is not None else req.get("thinking")
    if _thinking_on(thinking) and _thinking_refused(out, thinking_conflict):
        thinking = ours = None
        out.pop("thinking", None)
        req = {k: v for k, v in req.items() if k != "thinking"}
    if not _thinking_on(thinking):
        _strip_thinking(messages)  # Anthropic refuses thinking blocks with thinking off
    if ours is not None:
        out["thinking"] = ours
        if max_tokens <= ours["budget_tokens"]:
            max_tokens += ours["budget_tokens"]
    out["max_tokens"] = max_tokens

    if ours is None:  # extended thinking rejects non-default sampling
        temperature = req.get("temperature")
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            out["temperature"] = min(max(float(temperature), 0.0), 1.0)
        elif temperature is not None:
            raise TranslationError("temperature must be a number", param="temperature")
        if req.get("top_p") is not None:
            out["top_p"] = req["top_p"]

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

    headers: Headers = [(b"content-type", b"application/json")]
    if stream:
        headers.append((b"accept", b"text/event-stream"))
    return AnthropicCall(
        b"POST", b"/v1/messages", headers, encode(out), stream=stream, include_usage=include_usage
    )
