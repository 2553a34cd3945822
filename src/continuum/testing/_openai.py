"""Sans-IO half of the mock upstream: OpenAI request decoding and response building.

Everything here is a plain function of its inputs (no sockets, no clock, no randomness):
given a request body and the mock's settings it returns either a complete JSON
:class:`Reply` or a :class:`StreamReply` (the SSE events of a streamed answer, each with the
pause to take before it). :mod:`continuum.testing._upstream` decides *how* to deliver them
(normally, one byte at a time, cut off by a reset, ...).

Answers are deterministic so tests can assert them: the text echoes the last user message
(``"Mock reply to: <message>"``), a streamed answer is that same text cut into
``stream_chunks`` pieces, and one piece counts as one completion token. Tool calls, ``n``
choices, ``response_format`` JSON and logprobs follow :mod:`continuum.testing._tools` and
:mod:`continuum.testing._schema`; the Responses API is :mod:`continuum.testing._responses`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec

from ..core.errors import openai_error_body
from ..core.sse import DONE_EVENT
from . import _tools as tools
from ._replies import (
    MODEL_CREATED,
    Reply,
    Settings,
    StreamReply,
    count_tokens,
    json_reply,
    malformed_reply,
    split_pieces,
    summarize,
)
from ._schema import Generator

_encode: Final = msgspec.json.Encoder().encode
_T = TypeVar("_T")

DEFAULT_EMBEDDING_DIMENSIONS: Final = 8
MAX_EMBEDDING_DIMENSIONS: Final = 65536


# -- results ---------------------------------------------------------------------------


def error_reply(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Reply:
    """An OpenAI-shaped error (``{"error": {message, type, param, code}}``)."""
    return Reply(status, openai_error_body(status, message, code=code, param=param), headers)


def sse_event(obj: object) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


# -- request shapes (only the fields the mock reads; the rest is ignored) ----------------


class _ContentPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class _Message(msgspec.Struct):
    role: str = "user"
    content: str | list[_ContentPart] | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _ChatRequest(msgspec.Struct):
    model: str | None = None
    messages: list[_Message] | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: object = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: object = None
    tools: object = None
    tool_choice: object = None
    parallel_tool_calls: bool | None = None
    response_format: object = None


#: The fields a generated answer (tool arguments, JSON, logprobs, choices) depends on.
_KEY_FIELDS: Final = ("messages", "tools", "tool_choice", "response_format", "seed",
                      "parallel_tool_calls")
_decode_fields: Final = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


class _CompletionRequest(msgspec.Struct):
    model: str | None = None
    prompt: object = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = None


class _EmbeddingRequest(msgspec.Struct):
    model: str | None = None
    input: object = None
    dimensions: int | None = None
    encoding_format: str | None = None


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.reply = error_reply(400, message, param=param)


def _decode(body: bytes, kind: type[_T]) -> _T:
    if not body.strip():
        raise _BadRequest("We could not parse the JSON body of your request: the body is empty.")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise _BadRequest(f"Invalid request body: {exc}") from None
    except RecursionError:
        raise _BadRequest("The JSON body of your request is nested too deeply.") from None
    except msgspec.DecodeError as exc:
        raise _BadRequest(
            f"We could not parse the JSON body of your request ({exc}). "
            "The OpenAI API expects a JSON payload."
        ) from None


def _check_model(model: str | None, models: Sequence[str]) -> str:
    if not model:
        raise _BadRequest("You must provide a model parameter.", "model")
    if model not in models:
        raise _ModelNotFound(model)
    return model


class _ModelNotFound(Exception):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.reply = model_not_found(model)


def model_not_found(model: str) -> Reply:
    return error_reply(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


# -- text, tokens, pieces --------------------------------------------------------------


def _message_text(message: _Message) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(part.text for part in content if part.text)


def chat_answer_text(messages: Sequence[_Message]) -> str:
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    summary = summarize(_message_text(last_user)) if last_user is not None else ""
    return f"Mock reply to: {summary}" if summary else "Mock reply."


def _prompt_text(prompt: object) -> str:
    """The text of a completions ``prompt`` (string, strings, tokens, token lists)."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return " ".join(p for p in prompt if isinstance(p, str))
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return f"<{len(prompt)} tokens>"
        if all(isinstance(p, list) for p in prompt):
            return " ".join(_prompt_text(p) for p in prompt)
    raise _BadRequest(
        "'prompt' must be a string, an array of strings, an array of tokens, or an array "
        "of token arrays.",
        "prompt",
    )


def _prompt_tokens(prompt: object) -> int:
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return len(prompt)
    if isinstance(prompt, list) and all(isinstance(p, list) for p in prompt):
        return sum(_prompt_tokens(p) for p in prompt)
    return count_tokens(_prompt_text(prompt))


# -- answers ---------------------------------------------------------------------------


def _limit(n: int, max_tokens: int | None) -> tuple[int, str]:
    """How many of ``n`` pieces (tokens) fit in ``max_tokens``, and the finish reason."""
    if max_tokens is not None and 0 <= max_tokens < n:
        return max_tokens, "length"
    return n, "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }



def _chunk_head(ident: str, kind: str, settings: Settings, model: str) -> dict[str, object]:
    """The fields every event of one streamed answer repeats."""
    return {"id": ident, "object": kind, "created": settings.created, "model": model,
            "system_fingerprint": "fp_mock"}


def _chunk_event(head: dict[str, object], choice: dict[str, object], usage_field: bool) -> bytes:
    event: dict[str, object] = {**head, "choices": [choice]}
    if usage_field:  # with include_usage every chunk says "usage": null until the last
        event["usage"] = None
    return sse_event(event)


def _end_stream(
    events: list[tuple[float, bytes]], head: dict[str, object], usage: object | None
) -> StreamReply:
    """The final usage chunk (when asked for), ``[DONE]``, and the reply."""
    if usage is not None:
        events.append((0.0, sse_event({**head, "choices": [], "usage": usage})))
    events.append((0.0, DONE_EVENT))
    return StreamReply(tuple(events))


@dataclass(frozen=True, slots=True)
class _Choice:
    """One choice of a chat answer: text pieces or tool calls, and what it cost."""

    pieces: tuple[str, ...] = ()
    calls: tuple[tools.Call, ...] = ()
    finish: str = "stop"
    tokens: int = 0
    logprobs: tuple[dict[str, object], ...] | None = None


def _call_pieces(call: tools.Call, n: int) -> list[str]:
    """A tool call's arguments cut into at most ``n`` pieces (never padded: it is JSON)."""
    return split_pieces(call.arguments, max(1, min(n, len(call.arguments))))


def _chat_text(messages: Sequence[_Message], index: int) -> str:
    """Choice 0 echoes the last user message; later choices say which one they are."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "tool":  # the end of a tool loop
        summary = summarize(_message_text(last))
        text = f"Mock reply to: {summary}" if summary else "Mock reply."
    else:
        text = chat_answer_text(messages)
    if index and text.startswith("Mock reply"):
        text = f"Mock reply #{index + 1}" + text[len("Mock reply"):]
    return text


def _last_user_text(messages: Sequence[_Message]) -> str:
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    return _message_text(last_user) if last_user is not None else ""


class _ChatPlan:
    """What a chat request asks for beyond plain text, checked (``tools.RequestError``)."""

    def __init__(self, req: _ChatRequest, body: bytes) -> None:
        messages = req.messages or []
        self.n = tools.check_count(req.n, "n", 1, tools.MAX_CHOICES) if req.n is not None else 1
        self.top = 0
        if req.top_logprobs is not None:
            self.top = tools.check_count(req.top_logprobs, "top_logprobs", 0,
                                         tools.MAX_TOP_LOGPROBS)
            if not req.logprobs:
                raise tools.RequestError("'top_logprobs' requires 'logprobs' to be true.",
                                         "top_logprobs")
        self.logprobs = bool(req.logprobs)
        self.functions = tools.functions(req.tools, nested=True)
        self.choice = tools.tool_choice(req.tool_choice, nested=True, declared=self.functions)
        self.format = tools.output_format(req.response_format, nested=True,
                                          param="response_format")
        if self.format.kind == "json_object" and not any(
            "json" in _message_text(m).lower() for m in messages
        ):
            raise tools.RequestError("'messages' must contain the word 'json' in some form, to "
                                     "use 'response_format' of type 'json_object'.", "messages")
        self.planned = tools.plan_calls(
            self.functions, self.choice, parallel=req.parallel_tool_calls is not False,
            after_tool_result=bool(messages) and messages[-1].role == "tool",
            user_text=_last_user_text(messages),
        )
        plain = (self.n == 1 and not self.logprobs and not self.planned
                 and self.format.kind == "text")
        self.key = b"" if plain else tools.request_key(_decode_fields(body), _KEY_FIELDS)

    def choices(
        self, messages: Sequence[_Message], settings: Settings, max_tokens: int | None
    ) -> list[_Choice]:
        # Plain text needs no randomness: no generator (nor its seeding) on that path.
        generator = Generator(random.Random(self.key)) if self.key else None
        out = []
        for index in range(self.n):
            if self.planned:
                assert generator is not None
                calls = tools.make_calls(self.planned, self.key, index, generator, "call_")
                tokens = sum(len(_call_pieces(c, settings.stream_chunks)) for c in calls)
                out.append(_Choice(calls=tuple(calls), finish="tool_calls", tokens=tokens))
                continue
            text = _chat_text(messages, index)
            if self.format.kind == "text":
                pieces = split_pieces(text, settings.stream_chunks)
            else:
                assert generator is not None
                generator.rng = tools.rng_for(self.key, index, "content")
                content = tools.format_text(self.format, text, generator)
                pieces = split_pieces(content, max(1, min(settings.stream_chunks, len(content))))
            kept, finish = _limit(len(pieces), max_tokens)
            pieces = pieces[:kept]
            logprobs = None
            if self.logprobs:
                rng = tools.rng_for(self.key, index, "logprobs")
                logprobs = tuple(tools.logprob_entries(pieces, rng, self.top))
            out.append(_Choice(tuple(pieces), finish=finish, tokens=kept, logprobs=logprobs))
        return out


def _message(choice: _Choice) -> dict[str, object]:
    if choice.calls:
        return {"role": "assistant", "content": None, "refusal": None,
                "tool_calls": [_tool_call(c) for c in choice.calls]}
    return {"role": "assistant", "content": "".join(choice.pieces)}


def _tool_call(call: tools.Call) -> dict[str, object]:
    return {"id": call.call_id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def _choice_logprobs(choice: _Choice, entries: Sequence[dict[str, object]] | None
                     ) -> dict[str, object] | None:
    if choice.logprobs is None:
        return None
    return {"content": list(entries if entries is not None else choice.logprobs),
            "refusal": None}


def chat_completion(body: bytes, settings: Settings) -> Reply | StreamReply:
    """``POST /v1/chat/completions``: text, tool calls, JSON (``response_format``), ``n``
    choices, logprobs; streamed or not."""
    try:
        req = _decode(body, _ChatRequest)
        model = _check_model(req.model, settings.models)
        if not req.messages:
            raise _BadRequest("'messages' must be a non-empty array.", "messages")
        plan = _ChatPlan(req, body)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else (
            req.max_tokens
        )
        choices = plan.choices(req.messages, settings, max_tokens)
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    except tools.RequestError as exc:
        return error_reply(400, exc.message, param=exc.param)
    prompt_tokens = sum(count_tokens(_message_text(m)) for m in req.messages)
    usage = _usage(prompt_tokens, sum(c.tokens for c in choices))
    ident = "chatcmpl-" + settings.ident
    if not req.stream:
        return json_reply(
            {
                "id": ident,
                "object": "chat.completion",
                "created": settings.created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {
                        "index": index,
                        "message": _message(choice),
                        "logprobs": _choice_logprobs(choice, None),
                        "finish_reason": choice.finish,
                    }
                    for index, choice in enumerate(choices)
                ],
                "usage": usage,
            }
        )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    head = _chunk_head(ident, "chat.completion.chunk", settings, model)
    pace = settings.pace
    per_choice = [
        _chat_chunks(head, index, choice, include_usage, pace, settings.stream_chunks)
        for index, choice in enumerate(choices)
    ]
    # Choices take turns, as OpenAI interleaves them; each chunk names its choice's index.
    events = [e for group in itertools.zip_longest(*per_choice) for e in group if e is not None]
    return _end_stream(events, head, usage if include_usage else None)


def _chat_chunks(
    head: dict[str, object], index: int, choice: _Choice, include_usage: bool, pace: float,
    stream_chunks: int,
) -> list[tuple[float, bytes]]:
    """One choice's chunks: role, content pieces or tool-call fragments, finish."""

    def chunk(delta: dict[str, object], finish: str | None,
              logprobs: dict[str, object] | None = None) -> bytes:
        body = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _chunk_event(head, body, include_usage)

    events: list[tuple[float, bytes]] = []
    if choice.calls:
        # As OpenAI streams them: the first fragment of each call carries its index, id,
        # type, name and empty arguments; the following ones only index and arguments.
        for n, call in enumerate(choice.calls):
            first = {"index": n, "id": call.call_id, "type": "function",
                     "function": {"name": call.name, "arguments": ""}}
            delta: dict[str, object] = {"tool_calls": [first]}
            if n == 0:
                delta = {"role": "assistant", "content": None, "refusal": None, **delta}
            events.append((0.0, chunk(delta, None)))
            for piece in _call_pieces(call, stream_chunks):
                fragment = {"index": n, "function": {"arguments": piece}}
                events.append((pace, chunk({"tool_calls": [fragment]}, None)))
    else:
        events.append((0.0, chunk({"role": "assistant", "content": ""}, None)))
        for i, piece in enumerate(choice.pieces):
            logprobs = None
            if choice.logprobs is not None:
                logprobs = _choice_logprobs(choice, choice.logprobs[i : i + 1])
            events.append((pace, chunk({"content": piece}, None, logprobs)))
    events.append((0.0, chunk({}, choice.finish)))
    return events


def text_completion(body: bytes, settings: Settings) -> Reply | StreamReply:
    """``POST /v1/completions`` (legacy text completions)."""
    try:
        req = _decode(body, _CompletionRequest)
        model = _check_model(req.model, settings.models)
        summary = summarize(_prompt_text(req.prompt))
        prompt_tokens = _prompt_tokens(req.prompt)
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    n, finish = _limit(settings.stream_chunks, req.max_tokens)
    text = f"Mock completion of: {summary}" if summary else "Mock completion."
    pieces = split_pieces(text, settings.stream_chunks)[:n]
    ident = "cmpl-" + settings.ident
    if not req.stream:
        return json_reply(
            {
                "id": ident,
                "object": "text_completion",
                "created": settings.created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(pieces),
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": _usage(prompt_tokens, n),
            }
        )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    head = _chunk_head(ident, "text_completion", settings, model)

    def chunk(text: str, finish_reason: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return _chunk_event(head, choice, include_usage)

    pace = settings.pace
    events = [(pace, chunk(piece, None)) for piece in pieces]
    events.append((0.0, chunk("", finish)))
    return _end_stream(events, head, _usage(prompt_tokens, n) if include_usage else None)


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector derived from a hash of ``item``: same input, same vector."""
    key = item.encode() if isinstance(item, str) else b"\x00" + struct.pack(
        f"<{len(item)}q", *item
    )
    raw = bytearray()
    block = 0
    while len(raw) < 4 * dimensions:
        raw += hashlib.blake2b(key, digest_size=64, person=block.to_bytes(16, "little")).digest()
        block += 1
    values = [(v / 0xFFFFFFFF) * 2.0 - 1.0 for v in struct.unpack_from(f"<{dimensions}I", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _tokens(value: object) -> list[int] | None:
    """``value`` as a token array, or None if it is not one."""
    if not isinstance(value, list):
        return None
    tokens: list[int] = []
    for token in value:
        if not isinstance(token, int) or isinstance(token, bool):
            return None
        tokens.append(token)
    return tokens


def _embedding_inputs(value: object) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        whole = _tokens(value)
        if whole is not None:
            return [whole]
        items: list[str | list[int]] = []
        for item in value:
            tokens = _tokens(item)
            if isinstance(item, str):
                items.append(item)
            elif tokens is not None:
                items.append(tokens)
            else:
                break
        else:
            return items
    raise _BadRequest(
        "'input' must be a string, an array of strings, an array of tokens, or an array of "
        "token arrays (non-empty).",
        "input",
    )


def embeddings(body: bytes, settings: Settings) -> Reply:
    """``POST /v1/embeddings``: deterministic unit vectors, floats or base64 float32."""
    try:
        req = _decode(body, _EmbeddingRequest)
        model = _check_model(req.model, settings.models)
        inputs = _embedding_inputs(req.input)
        dimensions = req.dimensions if req.dimensions is not None else (
            DEFAULT_EMBEDDING_DIMENSIONS
        )
        if not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
            raise _BadRequest(
                f"'dimensions' must be between 1 and {MAX_EMBEDDING_DIMENSIONS}.", "dimensions"
            )
        if req.encoding_format not in (None, "float", "base64"):
            raise _BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    data: list[dict[str, object]] = []
    tokens = 0
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dimensions)
        tokens += count_tokens(item) if isinstance(item, str) else len(item)
        encoded: object = vector
        if req.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return json_reply(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def model_object(model: str, owned_by: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": owned_by}


def model_list(models: Sequence[str], owned_by: str) -> Reply:
    return json_reply({"object": "list", "data": [model_object(m, owned_by) for m in models]})


# -- failure shapes --------------------------------------------------------------------


def malformed(reply: Reply | StreamReply) -> Reply | StreamReply:
    """The same answer with its JSON cut in half: a 200 that no JSON parser accepts."""
    if isinstance(reply, Reply):
        return malformed_reply(reply)
    events = [event for _, event in reply.events if event != DONE_EVENT]
    first = events[0] if events else b"data: {}\n\n"
    cut = first[: max(len(b"data: {"), len(first) // 2)].rstrip(b"\n") + b"\n\n"
    return StreamReply(((0.0, cut), (0.0, DONE_EVENT)))
