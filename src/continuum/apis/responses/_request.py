"""Responses ``create`` request → Chat Completions request (and the Response echo).

A Response object repeats much of its request (``tools``, ``text``, ``reasoning`` …); that
echo is computed here once, so the plain answer, every stream event and the stored copy
agree. What cannot be expressed in Chat Completions is refused with a 400 naming the field;
Responses-only knobs whose absence changes nothing the client relies on are dropped (the
table in docs/architecture.md lists both).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from ._common import JSON, BridgeError, encode, load_object

MaxTokensField = Literal["max_tokens", "max_completion_tokens"]
DeveloperRole = Literal["system", "developer"]

#: Request fields with no Chat Completions meaning that the bridge drops: each only tunes
#: OpenAI's own service (caching, compaction, built-in tool limits) or the stream's framing.
_DROPPED: Final = frozenset(
    {"stream_options", "truncation", "max_tool_calls", "prompt_cache_retention",
     "prompt_cache_options", "context_management", "access_programs", "background_options",
     "image", "include"}
)

#: Fields the bridge translates itself; every other field passes to the backend untouched
#: (vendor extras such as ``top_k`` or ``chat_template_kwargs``).
_HANDLED: Final = _DROPPED | frozenset(
    {"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
     "reasoning", "max_output_tokens", "temperature", "top_p", "top_logprobs", "metadata",
     "user", "stream", "previous_response_id", "store", "service_tier", "safety_identifier",
     "prompt_cache_key", "background", "conversation", "prompt", "moderation"}
)

#: Request fields whose effect the bridge cannot give, where silently ignoring them would
#: hand the client something other than what it asked for.
_REFUSED: Final[dict[str, str]] = {
    "conversation": "the Conversations API is not available through the Responses bridge; "
                    "chain turns with previous_response_id",
    "prompt": "stored prompt templates are not available through the Responses bridge",
    "moderation": "moderated responses are not available through the Responses bridge",
}

_LOGPROBS_INCLUDE: Final = "message.output_text.logprobs"

_IMAGE_DETAILS: Final = frozenset({"auto", "low", "high"})


class ResponsesRequest(msgspec.Struct, frozen=True):
    """A decoded Responses ``create`` body: what the request path needs before translating
    (which stored conversation to fetch, whether it streams, whether to store)."""

    fields: JSON
    previous_response_id: str | None
    stream: bool
    store: bool


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Decode a Responses ``create`` body (a :class:`BridgeError` when it is no object)."""
    req = load_object(body)
    prev = req.get("previous_response_id")
    if prev is not None and (not isinstance(prev, str) or not prev):
        raise BridgeError("previous_response_id must be a non-empty string",
                          "previous_response_id")
    for key in ("stream", "store", "background"):
        if req.get(key) is not None and not isinstance(req[key], bool):
            raise BridgeError(f"{key} must be a boolean", key)
    return ResponsesRequest(req, prev, req.get("stream") is True, req.get("store") is not False)


class ChatRequest(msgspec.Struct, frozen=True):
    """The translation of one request: the chat body, the Response echo, and this turn's
    input items normalised for storage."""

    body: JSON
    echo: JSON
    logprobs: bool
    input_items: list[JSON]


def chat_request(
    req: ResponsesRequest,
    *,
    model: str,
    history: list[JSON],
    max_tokens_field: MaxTokensField,
    developer_role: DeveloperRole,
    keep_reasoning: bool,
) -> ChatRequest:
    """Translate ``req`` (continuing the ``history`` items of a stored conversation)."""
    f = req.fields
    for key, why in _REFUSED.items():
        if f.get(key) is not None:
            raise BridgeError(why, key)
    if f.get("background") is True:
        raise BridgeError(
            "background responses are not available through the Responses bridge",
            "background")

    items = _input_items(f.get("input"), bool(history))
    messages = _Messages(developer_role, keep_reasoning)
    instructions = f.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BridgeError("instructions must be a string", "instructions")
    if instructions:
        messages.out.append({"role": developer_role, "content": instructions})
    for item in history:
        messages.add(item, "previous_response_id")
    for i, item in enumerate(items):
        messages.add(item, f"input[{i}]")

    chat: JSON = {"model": model, "messages": messages.done()}
    echo: JSON = {"instructions": instructions}

    tools, echo["tools"] = _tools(f.get("tools"))
    choice = f.get("tool_choice")
    echo["tool_choice"] = "auto" if choice is None else choice
    if choice is not None:
        tools, chat_choice = _tool_choice(choice, tools)
    else:
        chat_choice = None
    parallel = f.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BridgeError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    echo["parallel_tool_calls"] = parallel is not False
    if tools:  # chat backends reject tool_choice/parallel_tool_calls without tools
        chat["tools"] = tools
        if chat_choice is not None:
            chat["tool_choice"] = chat_choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel

    text = f.get("text")
    echo["text"] = _text(text, chat)
    reasoning = f.get("reasoning")
    echo["reasoning"] = _reasoning(reasoning, chat)

    max_out = f.get("max_output_tokens")
    if max_out is not None:
        if not isinstance(max_out, int) or isinstance(max_out, bool) or max_out < 1:
            raise BridgeError("max_output_tokens must be a positive integer", "max_output_tokens")
        chat[max_tokens_field] = max_out
    echo["max_output_tokens"] = max_out
    for key in ("temperature", "top_p"):
        value = f.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BridgeError(f"{key} must be a number", key)
            chat[key] = value
        echo[key] = value

    include = f.get("include")
    if include is not None and not (
        isinstance(include, list) and all(isinstance(x, str) for x in include)
    ):
        raise BridgeError("include must be a list of strings", "include")
    logprobs = include is not None and _LOGPROBS_INCLUDE in include
    top = f.get("top_logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 0):
        raise BridgeError("top_logprobs must be a non-negative integer", "top_logprobs")
    if logprobs:
        chat["logprobs"] = True
        if top:
            chat["top_logprobs"] = top
    echo["top_logprobs"] = top

    metadata = f.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BridgeError("metadata must be an object", "metadata")
    echo["metadata"] = metadata if metadata is not None else {}
    echo["store"] = req.store
    if f.get("store") is True:
        # Chat Completions takes metadata only together with its own ``store``.
        chat["store"] = True
        if metadata:
            chat["metadata"] = metadata
    for key in ("user", "safety_identifier", "prompt_cache_key", "service_tier"):
        value = f.get(key)
        if value is not None:
            chat[key] = value
            echo[key] = value
    truncation = f.get("truncation")
    echo["truncation"] = truncation if truncation in ("auto", "disabled") else "disabled"
    echo["previous_response_id"] = req.previous_response_id
    echo["max_tool_calls"] = f.get("max_tool_calls")

    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    for key, value in f.items():
        if key not in _HANDLED:
            chat[key] = value
    return ChatRequest(chat, echo, logprobs, items)


# ---------------------------------------------------------------------------------------
# input items → chat messages


def _input_items(value: object, continuing: bool) -> list[JSON]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if value is None:
        if continuing:
            return []
        raise BridgeError("input is required", "input")
    if not isinstance(value, list):
        raise BridgeError("input must be a string or a list of items", "input")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BridgeError(f"input[{i}] must be an object", f"input[{i}]")
        if "type" not in item and "role" in item:
            item = {"type": "message", **item}
        items.append(item)
    return items


class _Messages:
    """Builds the chat ``messages`` from input items, one item at a time.

    Consecutive ``function_call`` items (and an assistant message right before them) become
    one assistant message with ``tool_calls``; ``function_call_output`` items become tool
    messages. Images or files in a function's output cannot sit in a tool message: they
    follow the run of tool messages as one user message.
    """

    __slots__ = ("_calls_open", "_developer_role", "_keep_reasoning", "_reasoning",
                 "_tool_media", "out")

    def __init__(self, developer_role: DeveloperRole, keep_reasoning: bool) -> None:
        self.out: list[JSON] = []
        self._developer_role = developer_role
        self._keep_reasoning = keep_reasoning
        self._reasoning: list[str] = []
        self._tool_media: list[JSON] = []
        self._calls_open = False

    def add(self, item: JSON, where: str) -> None:
        kind = item.get("type")
        if kind != "function_call_output":
            self._flush_media()
        if kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._call(item, where)
        elif kind == "function_call_output":
            self._output(item, where)
        elif kind == "reasoning":
            self._reasoning_item(item)
        elif kind == "item_reference":
            raise BridgeError(
                f"{where}: item references are not available through the Responses bridge; "
                "send the item itself or chain with previous_response_id", where)
        else:
            raise BridgeError(
                f"{where}: input items of type {kind!r} are not supported by the Responses "
                "bridge (message, function_call, function_call_output and reasoning are)",
                where)

    def done(self) -> list[JSON]:
        self._flush_media()
        if not self.out:
            raise BridgeError("input must hold at least one message", "input")
        return self.out

    def _message(self, item: JSON, where: str) -> None:
        role = item.get("role")
        content = item.get("content")
        here = f"{where}.content"
        self._calls_open = False
        if role == "user":
            self.out.append({"role": "user", "content": _user_content(content, here)})
        elif role in ("system", "developer"):
            chat_role = "system" if role == "system" else self._developer_role
            self.out.append({"role": chat_role, "content": _text_content(content, here)})
        elif role == "assistant":
            msg: JSON = {"role": "assistant", "content": _assistant_content(content, here)}
            self._attach_reasoning(msg)
            self.out.append(msg)
            self._calls_open = True
        else:
            raise BridgeError(f"{where}: role {role!r} is not supported", f"{where}.role")

    def _call(self, item: JSON, where: str) -> None:
        name = _name(item, "name", where)
        call_id = _name(item, "call_id", where)
        args = item.get("arguments")
        if isinstance(args, dict):
            args = encode(args).decode()
        elif not isinstance(args, str):
            raise BridgeError(f"{where}.arguments must be a string", f"{where}.arguments")
        call = {"id": call_id, "type": "function",
                "function": {"name": name, "arguments": args}}
        if self._calls_open:
            self.out[-1].setdefault("tool_calls", []).append(call)
            return
        msg: JSON = {"role": "assistant", "content": None, "tool_calls": [call]}
        self._attach_reasoning(msg)
        self.out.append(msg)
        self._calls_open = True

    def _output(self, item: JSON, where: str) -> None:
        call_id = _name(item, "call_id", where)
        output = item.get("output")
        here = f"{where}.output"
        content: str | list[JSON]
        if isinstance(output, str):
            content = output
        elif isinstance(output, list):
            texts: list[JSON] = []
            for i, part in enumerate(output):
                converted = _part(part, f"{here}[{i}]", _USER_PARTS)
                if converted["type"] == "text":
                    texts.append(converted)
                else:
                    self._tool_media.append(converted)
            content = texts[0]["text"] if len(texts) == 1 else texts
        else:
            raise BridgeError(f"{here} must be a string or a list of parts", here)
        self._calls_open = False
        self.out.append({"role": "tool", "tool_call_id": call_id, "content": content})

    def _reasoning_item(self, item: JSON) -> None:
        # A backend cannot continue another model's hidden reasoning (encrypted_content is
        # OpenAI's alone); its readable text can ride along as ``reasoning_content``.
        if not self._keep_reasoning:
            return
        parts = item.get("content") or item.get("summary") or ()
        text = "\n\n".join(
            str(p.get("text", "")) for p in parts if isinstance(p, dict) and p.get("text"))
        if text:
            self._reasoning.append(text)

    def _attach_reasoning(self, msg: JSON) -> None:
        if self._reasoning:
            msg["reasoning_content"] = "\n\n".join(self._reasoning)
            self._reasoning = []

    def _flush_media(self) -> None:
        if self._tool_media:
            self.out.append({"role": "user", "content": self._tool_media})
            self._tool_media = []
            self._calls_open = False


def _name(obj: JSON, key: str, where: str) -> str:
    """``obj[key]``, which must be a non-empty string (a name, an id)."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BridgeError(f"{where}.{key} must be a non-empty string", f"{where}.{key}")
    return value


_USER_PARTS: Final = frozenset({"input_text", "output_text", "input_image", "input_file",
                                "input_audio"})
_TEXT_PARTS: Final = frozenset({"input_text", "output_text"})
_ASSISTANT_PARTS: Final = frozenset({"input_text", "output_text", "refusal"})


def _part(part: object, where: str, allowed: frozenset[str]) -> JSON:
    """One Responses content part → one chat content part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict) or kind not in allowed:
        raise BridgeError(f"{where}: content part type {kind!r} is not supported here", where)
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise BridgeError(f"{where}.text must be a string", f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": str(part.get("refusal", ""))}
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise BridgeError(
                f"{where}: file {part.get('file_id')!r} is not one the router holds (upload "
                "it to the router's /v1/files with files.enabled), so it cannot be sent to "
                "this backend; or send image_url (an https: or data: URL)",
                f"{where}.file_id")
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise BridgeError(f"{where}.image_url must be a URL", f"{where}.image_url")
        image: JSON = {"url": url}
        if part.get("detail") in _IMAGE_DETAILS:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_id") is not None or part.get("file_url") is not None:
            raise BridgeError(
                f"{where}: input_file by file_url, or by a file_id the router does not hold "
                "(upload it to the router's /v1/files with files.enabled), cannot be sent "
                "to this backend; send file_data", where)
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise BridgeError(f"{where}.file_data must be a string", f"{where}.file_data")
        file: JSON = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    audio = part.get("input_audio")  # input_audio
    if not isinstance(audio, dict):
        raise BridgeError(f"{where}.input_audio must be an object", f"{where}.input_audio")
    return {"type": "input_audio",
            "input_audio": {"data": audio.get("data"), "format": audio.get("format")}}


def _parts(content: object, where: str, allowed: frozenset[str]) -> str | list[JSON]:
    """A message's content: a string stays one; a lone text part becomes one."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BridgeError(f"{where} must be a string or a list of parts", where)
    parts = [_part(p, f"{where}[{i}]", allowed) for i, p in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _user_content(content: object, where: str) -> str | list[JSON]:
    return _parts(content, where, _USER_PARTS)


def _text_content(content: object, where: str) -> str | list[JSON]:
    return _parts(content, where, _TEXT_PARTS)


def _assistant_content(content: object, where: str) -> str | list[JSON]:
    return _parts(content, where, _ASSISTANT_PARTS)


# ---------------------------------------------------------------------------------------
# tools, tool_choice, text, reasoning


def _tools(value: object) -> tuple[list[JSON], list[JSON]]:
    """(chat tools, the echo): function tools only; a built-in tool is a 400 naming it."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise BridgeError("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or kind != "function":
            raise BridgeError(
                f"{where}: the {kind!r} tool cannot run on this backend; the Responses bridge "
                "supports function tools only", where)
        fn: JSON = {"name": _name(tool, "name", where)}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out, value


def _tool_choice(choice: object, tools: list[JSON]) -> tuple[list[JSON], object]:
    """(the chat tools, now maybe narrowed, and the chat ``tool_choice``)."""
    if choice in ("auto", "none", "required"):
        return tools, choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and kind == "function" and isinstance(choice.get("name"), str):
        return tools, {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and kind == "allowed_tools":
        # Chat backends rarely know allowed_tools: the same effect is the narrowed list.
        mode = choice.get("mode", "auto")
        allowed = choice.get("tools")
        if mode not in ("auto", "required") or not isinstance(allowed, list):
            raise BridgeError("tool_choice.allowed_tools needs a mode and a tools list",
                              "tool_choice")
        names = set()
        for entry in allowed:
            if not isinstance(entry, dict) or entry.get("type") != "function":
                raise BridgeError("tool_choice.allowed_tools may list function tools only",
                                  "tool_choice")
            names.add(entry.get("name"))
        return [t for t in tools if t["function"]["name"] in names], mode
    raise BridgeError(
        f"tool_choice {kind or choice!r} cannot be expressed through the Responses bridge "
        "(auto, none, required, a function or allowed_tools can)", "tool_choice")


def _text(text: object, chat: JSON) -> JSON:
    """``text.format`` → ``response_format`` (and ``verbosity``); returns the echo."""
    if text is None:
        return {"format": {"type": "text"}}
    if not isinstance(text, dict):
        raise BridgeError("text must be an object", "text")
    fmt = text.get("format")
    echo: JSON = dict(text)
    if fmt is None:
        echo["format"] = {"type": "text"}
    elif not isinstance(fmt, dict):
        raise BridgeError("text.format must be an object", "text.format")
    elif fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BridgeError("text.format.schema must be an object", "text.format.schema")
        spec: JSON = {"name": _name(fmt, "name", "text.format"), "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        chat["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif fmt.get("type") != "text":
        raise BridgeError(f"text.format type {fmt.get('type')!r} is not supported",
                          "text.format.type")
    verbosity = text.get("verbosity")
    if verbosity is not None:
        chat["verbosity"] = verbosity
    return echo


def _reasoning(reasoning: object, chat: JSON) -> JSON:
    """``reasoning.effort`` → ``reasoning_effort``; returns the echo. Summaries cannot be
    asked of a chat backend: its ``reasoning_content``, when it sends one, becomes the
    summary."""
    if reasoning is None:
        return {"effort": None, "summary": None}
    if not isinstance(reasoning, dict):
        raise BridgeError("reasoning must be an object", "reasoning")
    effort = reasoning.get("effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise BridgeError("reasoning.effort must be a string", "reasoning.effort")
        chat["reasoning_effort"] = effort
    return {"effort": effort, "summary": reasoning.get("summary"), **reasoning}
