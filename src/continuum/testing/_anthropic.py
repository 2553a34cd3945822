"""Sans-IO half of the mock upstream for the Anthropic Messages API.

Like :mod:`continuum.testing._openai` (with which it shares :mod:`continuum.testing._replies`),
everything here is a plain function of its inputs. :mod:`continuum.testing._upstream` does
the I/O.

Answers are deterministic: the text is ``"Mock reply to: <last user text>"`` cut into
``stream_chunks`` pieces (one piece = one output token). A request with ``tools`` whose last
user turn says "weather" (see :func:`wants_tool`) is answered with a ``tool_use`` block
instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar
from urllib.parse import parse_qs

import msgspec

from ..core.errors import anthropic_error_type
from ._replies import (
    MODEL_CREATED_AT,
    TOOL_INPUT,
    TOOL_TRIGGER,
    Reply,
    Settings,
    StreamReply,
    count_tokens,
    display_name,
    json_reply,
    malformed_reply,
    split_pieces,
    summarize,
)

_encode: Final = msgspec.json.Encoder().encode
_T = TypeVar("_T")

#: ``anthropic-version`` the mock reports in docs and tests use; any value is accepted.
API_VERSION: Final = "2023-06-01"
DEFAULT_PAGE_LIMIT: Final = 20
MAX_PAGE_LIMIT: Final = 1000

error_type = anthropic_error_type  # a wire fact the router shares: one table for it


def error_reply(
    status: int, message: str, *, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Reply:
    """An Anthropic-shaped error: ``{"type": "error", "error": {"type", "message"}}``."""
    body = {"type": "error", "error": {"type": error_type(status), "message": message}}
    return Reply(status, _encode(body), headers)


def sse_event(name: str, obj: object) -> bytes:
    """``event: <name>`` plus ``data: <json>``, as every Anthropic stream event is framed."""
    return b"event: " + name.encode() + b"\ndata: " + _encode(obj) + b"\n\n"


def check_headers(
    api_key: bytes | None, version: bytes | None, authorization: bytes | None = None
) -> Reply | None:
    """The error for a request without a key or ``anthropic-version``, else None.

    The key is ``x-api-key``, or ``Authorization: Bearer <key>`` (what recent SDKs send).
    """
    bearer = authorization or b""
    if not api_key and not (bearer[:7].lower() == b"bearer " and bearer[7:].strip()):
        return error_reply(401, "x-api-key header is required")
    if not version:
        return error_reply(400, "anthropic-version: header is required")
    return None


# -- request shapes (only what the mock reads) -----------------------------------------


class _Inner(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _Block(msgspec.Struct):
    type: str = "text"
    text: str | None = None
    content: str | list[_Inner] | None = None  # tool_result


class _Message(msgspec.Struct):
    role: str = "user"
    content: str | list[_Block] = ""


class _Tool(msgspec.Struct):
    name: str | None = None


class _ToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None


class _Request(msgspec.Struct):
    model: str | None = None
    messages: list[_Message] | None = None
    max_tokens: int | None = None
    stream: bool | None = None
    system: str | list[_Block] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None


class _Invalid(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _decode(body: bytes, kind: type[_T]) -> _T:
    if not body.strip():
        raise _Invalid(error_reply(400, "There was an error parsing the body: empty body"))
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise _Invalid(error_reply(400, f"Invalid request: {exc}")) from None
    except msgspec.DecodeError as exc:
        raise _Invalid(error_reply(400, f"There was an error parsing the body: {exc}")) from None


def _check(req: _Request, models: Sequence[str], *, need_max_tokens: bool) -> str:
    if not req.model:
        raise _Invalid(error_reply(400, "model: Field required"))
    if req.messages is None:
        raise _Invalid(error_reply(400, "messages: Field required"))
    if need_max_tokens:
        if req.max_tokens is None:
            raise _Invalid(error_reply(400, "max_tokens: Field required"))
        if req.max_tokens < 1:
            raise _Invalid(error_reply(400, "max_tokens: must be greater than or equal to 1"))
    if not req.messages:
        raise _Invalid(error_reply(400, "messages: at least one message is required"))
    if req.model not in models:
        raise _Invalid(error_reply(404, f"model: {req.model}"))
    return req.model


# -- text and tokens ---------------------------------------------------------------------


def _block_text(block: _Block) -> str:
    if block.type == "text":
        return block.text or ""
    if block.type == "tool_result":
        content = block.content
        if isinstance(content, str):
            return content
        if content:
            return " ".join(part.text for part in content if part.text)
    return ""


def _content_text(content: str | list[_Block]) -> str:
    if isinstance(content, str):
        return content
    return " ".join(text for text in map(_block_text, content) if text)


def _has_tool_result(message: _Message) -> bool:
    return not isinstance(message.content, str) and any(
        block.type == "tool_result" for block in message.content
    )


def input_tokens(req: _Request) -> int:
    """Words in ``system`` and every message's text (tool results included)."""
    total = 0
    if req.system is not None:
        total += count_tokens(_content_text(req.system))
    for message in req.messages or ():
        total += count_tokens(_content_text(message.content))
    return total


def _last_user(messages: Sequence[_Message]) -> _Message | None:
    return next((m for m in reversed(messages) if m.role == "user"), None)


def answer_text(messages: Sequence[_Message]) -> str:
    last = _last_user(messages)
    summary = summarize(_content_text(last.content)) if last is not None else ""
    return f"Mock reply to: {summary}" if summary else "Mock reply."


def wants_tool(req: _Request) -> str | None:
    """The tool to call, or None for a text answer.

    With non-empty ``tools``: ``tool_choice`` ``none`` → never; ``tool`` → that tool;
    ``any`` → the first tool; ``auto`` (default) → the first tool when the last user turn
    contains the word "weather" (any case) and carries no ``tool_result`` (so a tool loop
    ends with a text answer).
    """
    names = [tool.name for tool in req.tools or () if tool.name]
    if not names:
        return None
    choice = req.tool_choice.type if req.tool_choice is not None else "auto"
    if choice == "none":
        return None
    if choice == "tool" and req.tool_choice is not None and req.tool_choice.name:
        return req.tool_choice.name
    if choice == "any":
        return names[0]
    last = _last_user(req.messages or ())
    if last is None or _has_tool_result(last):
        return None
    return names[0] if TOOL_TRIGGER.search(_content_text(last.content)) else None


def json_pieces(obj: object, n: int) -> list[str]:
    """``obj`` as JSON text in at most ``n`` non-empty pieces (never padded)."""
    text = _encode(obj).decode()
    return split_pieces(text, max(1, min(n, len(text))))


# -- answers -------------------------------------------------------------------------


def _usage(input_count: int, output_count: int) -> dict[str, object]:
    return {
        "input_tokens": input_count,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_count,
        "service_tier": "standard",
    }



def messages(body: bytes, settings: Settings) -> Reply | StreamReply:
    """``POST /v1/messages``."""
    try:
        req = _decode(body, _Request)
        model = _check(req, settings.models, need_max_tokens=True)
    except _Invalid as exc:
        return exc.reply
    assert req.messages is not None and req.max_tokens is not None
    ident = "msg_mock" + settings.ident
    prompt = input_tokens(req)
    tool = wants_tool(req)
    block: dict[str, object]
    if tool is not None:
        pieces = json_pieces(TOOL_INPUT, settings.stream_chunks)
        stop_reason = "tool_use"
        block = {
            "type": "tool_use",
            "id": "toolu_mock" + settings.ident,
            "name": tool,
            "input": TOOL_INPUT,
        }
    else:
        pieces = split_pieces(answer_text(req.messages), settings.stream_chunks)
        stop_reason = "end_turn"
        if req.max_tokens < len(pieces):
            pieces, stop_reason = pieces[: req.max_tokens], "max_tokens"
        block = {"type": "text", "text": "".join(pieces)}
    message: dict[str, object] = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(prompt, len(pieces)),
    }
    if not req.stream:
        return json_reply(message)
    start_block: dict[str, object] = (
        {**block, "input": {}} if tool is not None else {"type": "text", "text": ""}
    )
    delta_kind, delta_key = (
        ("input_json_delta", "partial_json") if tool is not None else ("text_delta", "text")
    )
    pace = settings.pace
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(prompt, 1),
    }
    events: list[tuple[float, bytes]] = [
        (0.0, sse_event("message_start", {"type": "message_start", "message": start})),
        (0.0, sse_event("ping", {"type": "ping"})),
        (
            0.0,
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": start_block},
            ),
        ),
    ]
    events += [
        (
            pace,
            sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": delta_kind, delta_key: piece},
                },
            ),
        )
        for piece in pieces
    ]
    events += [
        (0.0, sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})),
        (
            0.0,
            sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": len(pieces)},
                },
            ),
        ),
        (0.0, sse_event("message_stop", {"type": "message_stop"})),
    ]
    return StreamReply(tuple(events))


def count_tokens_reply(body: bytes, settings: Settings) -> Reply:
    """``POST /v1/messages/count_tokens``: the ``input_tokens`` a message would report."""
    try:
        req = _decode(body, _Request)
        _check(req, settings.models, need_max_tokens=False)
    except _Invalid as exc:
        return exc.reply
    return json_reply({"input_tokens": input_tokens(req)})


# -- models ----------------------------------------------------------------------------


def model_object(model: str) -> dict[str, object]:
    return {
        "type": "model",
        "id": model,
        "display_name": display_name(model),
        "created_at": MODEL_CREATED_AT,
    }


def model_list(models: Sequence[str], query: str = "") -> Reply:
    """``GET /v1/models`` with ``limit`` (1..1000, default 20), ``after_id``, ``before_id``."""
    params = parse_qs(query)
    ids = list(models)
    try:
        limit = int(params.get("limit", [str(DEFAULT_PAGE_LIMIT)])[0])
    except ValueError:
        return error_reply(400, "limit: Input should be a valid integer")
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        return error_reply(400, f"limit: Input should be between 1 and {MAX_PAGE_LIMIT}")
    if "after_id" in params:
        after = params["after_id"][0]
        ids = ids[ids.index(after) + 1 :] if after in ids else []
        page, has_more = ids[:limit], len(ids) > limit
    elif "before_id" in params:
        before = params["before_id"][0]
        ids = ids[: ids.index(before)] if before in ids else []
        page, has_more = ids[-limit:], len(ids) > limit
    else:
        page, has_more = ids[:limit], len(ids) > limit
    return json_reply(
        {
            "data": [model_object(m) for m in page],
            "has_more": has_more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
    )


def model_reply(model: str, models: Sequence[str]) -> Reply:
    """``GET /v1/models/{id}``."""
    if model not in models:
        return error_reply(404, f"model: {model}")
    return json_reply(model_object(model))


# -- failure shapes --------------------------------------------------------------------


def malformed(reply: Reply | StreamReply) -> Reply | StreamReply:
    """A 200 whose JSON (or first event's JSON) is cut in half; a stream then just ends."""
    if isinstance(reply, Reply):
        return malformed_reply(reply)
    first = reply.events[0][1] if reply.events else sse_event("message_start", {})
    head, _, data = first.partition(b"data: ")
    cut = data[: max(1, len(data) // 2)].rstrip(b"\n")
    return StreamReply(((0.0, head + b"data: " + cut + b"\n\n"),))

