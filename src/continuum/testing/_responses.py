"""Sans-IO half of the mock's OpenAI Responses API (``/v1/responses``).

``create`` answers ``POST /v1/responses`` like the chat mock answers a chat completion (the
text echoes the last user input, one piece is one token, tools and formats follow
:mod:`continuum.testing._tools`), in the Responses shapes: output items (``message`` with
``output_text``, ``function_call``), ``usage`` with ``input_tokens``/``output_tokens``, and
for ``stream: true`` the event sequence the openai SDK accumulates (``response.created`` …
``response.completed``, each with its ``sequence_number``).

:class:`ResponseStore` keeps the stored responses (``store`` defaults to true, as on OpenAI)
so that ``previous_response_id``, ``GET /v1/responses/{id}``, ``.../input_items`` and
``DELETE`` work. It is bounded (the oldest go first) and belongs to whoever serves the
mock: the mocks of one router share one, like replicas of one provider.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from . import _tools as tools
from ._openai import error_reply, model_not_found
from ._replies import (
    Reply,
    Settings,
    StreamReply,
    count_tokens,
    json_reply,
    split_pieces,
    summarize,
)
from ._schema import Generator

#: Responses one store keeps (least recently created first out).
MAX_STORED: Final = 1_000
#: Items one conversation (a ``previous_response_id`` chain) may hold.
MAX_CONVERSATION_ITEMS: Final = 10_000
_KEY_FIELDS: Final = ("input", "instructions", "tools", "tool_choice", "text",
                      "parallel_tool_calls")
_encode: Final = msgspec.json.Encoder().encode
_decode_fields: Final = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_LOGPROBS_INCLUDE: Final = "message.output_text.logprobs"


class _Request(msgspec.Struct):
    model: str | None = None
    input: object = None
    instructions: str | None = None
    tools: object = None
    tool_choice: object = None
    parallel_tool_calls: bool | None = None
    text: object = None
    stream: bool | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: object = None
    include: list[str] | None = None
    user: str | None = None


@dataclass(slots=True)
class _Stored:
    response: dict[str, object]
    #: Input items of this response (with ids), for ``input_items``.
    input_items: list[dict[str, object]]
    #: The whole conversation up to and including this response's output.
    conversation: list[dict[str, object]] = field(default_factory=list)


class ResponseStore:
    """Stored responses by id, bounded to ``limit`` (the oldest are forgotten first)."""

    def __init__(self, limit: int = MAX_STORED) -> None:
        self._limit = limit
        self._items: OrderedDict[str, _Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, ident: str, stored: _Stored) -> None:
        self._items[ident] = stored
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def get(self, ident: str) -> _Stored | None:
        return self._items.get(ident)

    def delete(self, ident: str) -> bool:
        return self._items.pop(ident, None) is not None


# -- reading input -----------------------------------------------------------------------------


def _text_of(content: object) -> str:
    """The text of a message's ``content`` (a string, or parts with ``text``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part["text"]) for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _input_items(value: object) -> list[dict[str, object]]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise tools.RequestError("Invalid 'input': expected a string or an array of input "
                                 "items.", "input")
    items: list[dict[str, object]] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise tools.RequestError(f"Invalid 'input[{i}]': expected an object.", f"input[{i}]")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") not in ("user", "assistant", "system",
                                                           "developer"):
            raise tools.RequestError(f"Invalid 'input[{i}].role': expected 'user', "
                                     "'assistant', 'system' or 'developer'.",
                                     f"input[{i}].role")
        items.append({"type": kind, **{k: v for k, v in item.items() if k != "type"}})
    return items


def _item_text(item: Mapping[str, object]) -> str:
    kind = item.get("type")
    if kind == "message":
        return _text_of(item.get("content"))
    if kind == "function_call_output":
        output = item.get("output")
        return output if isinstance(output, str) else _text_of(output)
    if kind == "function_call":
        arguments = item.get("arguments")
        return arguments if isinstance(arguments, str) else ""
    return ""


def _check_tool_outputs(conversation: Sequence[Mapping[str, object]]) -> None:
    """Every ``function_call_output`` answers a ``function_call`` made earlier (as OpenAI
    checks: it is what a lost ``previous_response_id`` looks like)."""
    calls: set[object] = set()
    for item in conversation:
        if item.get("type") == "function_call":
            calls.add(item.get("call_id"))
        elif item.get("type") == "function_call_output" and item.get("call_id") not in calls:
            call_id = str(item.get("call_id"))[:100]
            raise tools.RequestError(f"No tool call found for function call output with "
                                     f"call_id {call_id}.", "input")


def _answer_text(conversation: Sequence[Mapping[str, object]]) -> str:
    last = conversation[-1] if conversation else None
    if last is not None and last.get("type") == "function_call_output":
        source = _item_text(last)
    else:
        source = next((_item_text(i) for i in reversed(conversation)
                       if i.get("type") == "message" and i.get("role") == "user"), "")
    summary = summarize(source)
    return f"Mock reply to: {summary}" if summary else "Mock reply."


def _user_text(conversation: Sequence[Mapping[str, object]]) -> str:
    return next((_item_text(i) for i in reversed(conversation)
                 if i.get("type") == "message" and i.get("role") == "user"), "")


# -- building the answer -------------------------------------------------------------------------


@dataclass(slots=True)
class _Built:
    """A response before it is delivered: its final object and how to stream it."""

    response: dict[str, object]
    #: Per output item: its text pieces (a message) or argument pieces (a function call).
    pieces: list[list[str]]
    logprobs: list[dict[str, object]] | None


def _usage(input_tokens: int, output_tokens: int) -> dict[str, object]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def create(body: bytes, settings: Settings, store: ResponseStore) -> Reply | StreamReply:
    """``POST /v1/responses``."""
    try:
        req = msgspec.json.decode(body, type=_Request)
    except msgspec.ValidationError as exc:
        return error_reply(400, f"Invalid request body: {exc}")
    except (msgspec.DecodeError, RecursionError):
        return error_reply(400, "We could not parse the JSON body of your request. The OpenAI "
                           "API expects a JSON payload.")
    if not req.model:
        return error_reply(400, "Missing required parameter: 'model'.", param="model")
    if req.model not in settings.models:
        return model_not_found(req.model)
    try:
        built, stored = _build(req, body, settings, store)
    except tools.RequestError as exc:
        code = "previous_response_not_found" if exc.param == "previous_response_id" else None
        return error_reply(400, exc.message, param=exc.param, code=code)
    if stored is not None:
        store.put(str(built.response["id"]), stored)
    if not req.stream:
        return json_reply(built.response)
    return StreamReply(tuple(_events(built, settings)))


def _build(
    req: _Request, body: bytes, settings: Settings, store: ResponseStore
) -> tuple[_Built, _Stored | None]:
    history: list[dict[str, object]] = []
    if req.previous_response_id is not None:
        previous = store.get(req.previous_response_id)
        if previous is None:
            raise tools.RequestError(f"Previous response with id "
                                     f"'{req.previous_response_id[:100]}' not found.",
                                     "previous_response_id")
        history = previous.conversation
    if req.input is None and not history:
        raise tools.RequestError("Missing required parameter: 'input'.", "input")
    new_items = _input_items(req.input) if req.input is not None else []
    conversation = [*history, *new_items]
    if len(conversation) > MAX_CONVERSATION_ITEMS:
        raise tools.RequestError(f"The conversation has more than {MAX_CONVERSATION_ITEMS} "
                                 "items.", "input")
    _check_tool_outputs(conversation)
    declared = tools.functions(req.tools, nested=False)
    choice = tools.tool_choice(req.tool_choice, nested=False, declared=declared)
    text_config = req.text if isinstance(req.text, Mapping) else {}
    fmt = tools.output_format(text_config.get("format"), nested=False, param="text.format")
    if fmt.kind == "json_object" and not any(
        "json" in _item_text(i).lower() for i in conversation
    ) and "json" not in (req.instructions or "").lower():
        raise tools.RequestError("Response input messages must contain the word 'json' in some "
                                 "form to use 'text.format' of type 'json_object'.", "input")
    top = 0
    if req.top_logprobs is not None:
        top = tools.check_count(req.top_logprobs, "top_logprobs", 0, tools.MAX_TOP_LOGPROBS)
    want_logprobs = _LOGPROBS_INCLUDE in (req.include or ())
    last = conversation[-1] if conversation else {}
    planned = tools.plan_calls(
        declared, choice, parallel=req.parallel_tool_calls is not False,
        after_tool_result=last.get("type") == "function_call_output",
        user_text=_user_text(conversation),
    )
    history_key = _encode(history) if history else b""
    key = tools.request_key(_decode_fields(body), _KEY_FIELDS) + history_key
    generator = Generator(random.Random(key))
    ident = settings.ident
    output: list[dict[str, object]] = []
    pieces: list[list[str]] = []
    logprobs: list[dict[str, object]] | None = None
    incomplete = False
    if planned:
        for n, call in enumerate(tools.make_calls(planned, key, 0, generator, "call_")):
            output.append({"id": f"fc_{ident}{n:02d}", "type": "function_call",
                           "status": "completed", "arguments": call.arguments,
                           "call_id": call.call_id, "name": call.name})
            args = call.arguments
            pieces.append(split_pieces(args, max(1, min(settings.stream_chunks, len(args)))))
    else:
        text = _answer_text(conversation)
        generator.rng = tools.rng_for(key, 0, "content")
        content = tools.format_text(fmt, text, generator)
        count = settings.stream_chunks if fmt.kind == "text" else min(
            settings.stream_chunks, len(content))
        parts = split_pieces(content, max(1, count))
        limit = req.max_output_tokens
        if limit is not None and 0 <= limit < len(parts):
            parts, incomplete = parts[:limit], True
        if want_logprobs:
            logprobs = tools.logprob_entries(parts, tools.rng_for(key, 0, "logprobs"), top)
        output.append({
            "id": f"msg_{ident}", "type": "message",
            "status": "incomplete" if incomplete else "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "".join(parts), "annotations": [],
                         "logprobs": logprobs or []}],
        })
        pieces.append(parts)
    input_tokens = sum(count_tokens(_item_text(i)) for i in conversation) + count_tokens(
        req.instructions or "")
    output_tokens = sum(len(p) for p in pieces)
    text_echo = {"format": dict(text_config.get("format") or {"type": "text"})}
    response: dict[str, object] = {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": settings.created,
        "status": "incomplete" if incomplete else "completed",
        "completed_at": None if incomplete else settings.created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": req.store is not False,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": text_echo,
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools if isinstance(req.tools, list) else [],
        "top_logprobs": top,
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": _usage(input_tokens, output_tokens),
        "user": req.user,
    }
    stored = None
    if req.store is not False:
        input_items = [{"id": f"in_{ident}{i:03d}", **item} for i, item in enumerate(new_items)]
        stored = _Stored(response, input_items, [*conversation, *output])
    return _Built(response, pieces, logprobs), stored


# -- streaming ---------------------------------------------------------------------------------


def _event(kind: str, sequence: int, fields: dict[str, object]) -> bytes:
    data = _encode({"type": kind, "sequence_number": sequence, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _events(built: _Built, settings: Settings) -> list[tuple[float, bytes]]:
    """The SSE events of one streamed response, in OpenAI's order."""
    final = built.response
    pace = 1.0 / settings.tokens_per_second if settings.tokens_per_second > 0 else 0.0
    in_progress = {**final, "status": "in_progress", "output": [], "usage": None,
                   "completed_at": None, "incomplete_details": None}
    events: list[tuple[float, bytes]] = []
    sequence = 0

    def emit(kind: str, fields: dict[str, object], pause: float = 0.0) -> None:
        nonlocal sequence
        events.append((pause, _event(kind, sequence, fields)))
        sequence += 1

    emit("response.created", {"response": in_progress})
    emit("response.in_progress", {"response": in_progress})
    output = final["output"]
    assert isinstance(output, list)
    for index, (item, parts) in enumerate(zip(output, built.pieces, strict=True)):
        item_id = item["id"]
        if item["type"] == "function_call":
            emit("response.output_item.added", {
                "output_index": index,
                "item": {**item, "arguments": "", "status": "in_progress"},
            })
            for part in parts:
                emit("response.function_call_arguments.delta",
                     {"item_id": item_id, "output_index": index, "delta": part}, pace)
            emit("response.function_call_arguments.done", {
                "item_id": item_id, "output_index": index, "name": item["name"],
                "arguments": item["arguments"],
            })
            emit("response.output_item.done", {"output_index": index, "item": item})
            continue
        emit("response.output_item.added", {
            "output_index": index, "item": {**item, "status": "in_progress", "content": []},
        })
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        emit("response.content_part.added", {
            **where, "part": {"type": "output_text", "text": "", "annotations": [],
                              "logprobs": []},
        })
        entries = built.logprobs or []
        for n, part in enumerate(parts):
            delta_logprobs = [_delta_logprob(e) for e in entries[n : n + 1]]
            emit("response.output_text.delta",
                 {**where, "delta": part, "logprobs": delta_logprobs}, pace)
        [content] = item["content"]
        emit("response.output_text.done", {
            **where, "text": content["text"], "logprobs": [_delta_logprob(e) for e in entries],
        })
        emit("response.content_part.done", {**where, "part": content})
        emit("response.output_item.done", {"output_index": index, "item": item})
    last = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    emit(last, {"response": final})
    return events


def _delta_logprob(entry: Mapping[str, Any]) -> dict[str, object]:
    """A stream event's logprob: token, logprob and the alternatives, without bytes."""
    return {"token": entry["token"], "logprob": entry["logprob"],
            "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]}
                             for t in entry["top_logprobs"]]}


# -- stored responses ------------------------------------------------------------------------------


def _not_found(ident: str) -> Reply:
    return error_reply(404, f"Response with id '{ident[:100]}' not found.")


def retrieve(ident: str, store: ResponseStore) -> Reply:
    """``GET /v1/responses/{id}``."""
    stored = store.get(ident)
    return _not_found(ident) if stored is None else json_reply(stored.response)


def delete(ident: str, store: ResponseStore) -> Reply:
    """``DELETE /v1/responses/{id}``."""
    if not store.delete(ident):
        return _not_found(ident)
    return json_reply({"id": ident, "object": "response", "deleted": True})


def input_items(ident: str, store: ResponseStore) -> Reply:
    """``GET /v1/responses/{id}/input_items`` (newest first, as OpenAI's default order)."""
    stored = store.get(ident)
    if stored is None:
        return _not_found(ident)
    data = list(reversed(stored.input_items))
    return json_reply({
        "object": "list", "data": data, "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    })
