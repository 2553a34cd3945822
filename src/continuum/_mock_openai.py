"""Sans-IO half of the mock upstream: OpenAI request decoding and response building.

Everything here is a plain function of its inputs (no sockets, no clock, no randomness):
given a request body and the mock's settings it returns either a complete JSON
:class:`Reply` or a :class:`StreamReply` (the SSE events of a streamed answer, each with the
pause to take before it). :mod:`continuum.mock` decides *how* to deliver them (normally,
one byte at a time, cut off by a reset, ...).

Answers are deterministic so tests can assert them: the text echoes the last user message
(``"Mock reply to: <message>"``), a streamed answer is that same text cut into
``stream_chunks`` pieces, and one piece counts as one completion token.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec

from ._errors import JSON_HEADERS, Headers, openai_error_body

_encode: Final = msgspec.json.Encoder().encode
_T = TypeVar("_T")

#: ``created`` of every model in ``/v1/models`` (fixed, so listings compare equal).
MODEL_CREATED: Final = 1_700_000_000
DEFAULT_EMBEDDING_DIMENSIONS: Final = 8
MAX_EMBEDDING_DIMENSIONS: Final = 65536
_SUMMARY_LENGTH: Final = 80

SSE_HEADERS: Final[Headers] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
DONE_EVENT: Final = b"data: [DONE]\n\n"


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response: status, JSON body and any extra headers (content-type is added)."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def header_list(self) -> Headers:
        return [*JSON_HEADERS, *self.headers]


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A streamed (SSE) answer: ``(pause_before, event_bytes)`` pairs, ``[DONE]`` included."""

    events: tuple[tuple[float, bytes], ...]


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


def json_reply(obj: object, status: int = 200) -> Reply:
    return Reply(status, _encode(obj))


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


def count_tokens(text: str) -> int:
    """The mock's tokenizer: whitespace-separated words."""
    return len(text.split())


def summarize(text: str) -> str:
    """Whitespace collapsed, cut to ~80 characters."""
    flat = " ".join(text.split())
    if len(flat) > _SUMMARY_LENGTH:
        flat = flat[: _SUMMARY_LENGTH - 3] + "..."
    return flat


def split_pieces(text: str, n: int) -> list[str]:
    """``text`` cut into ``n`` non-empty pieces of near-equal length (padded with '.')."""
    if n <= 0:
        return []
    if len(text) < n:
        text += "." * (n - len(text))
    size, extra = divmod(len(text), n)
    pieces: list[str] = []
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


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


@dataclass(frozen=True, slots=True)
class Settings:
    """What a single answer depends on besides the request body."""

    models: tuple[str, ...]
    stream_chunks: int
    tokens_per_second: float
    ident: str  # the response id suffix, unique per response
    created: int  # unix seconds


def _limit(settings: Settings, max_tokens: int | None) -> tuple[int, str]:
    n = settings.stream_chunks
    if max_tokens is not None and 0 <= max_tokens < n:
        return max_tokens, "length"
    return n, "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _pace(settings: Settings) -> float:
    tps = settings.tokens_per_second
    return 1.0 / tps if tps > 0 else 0.0


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


def chat_completion(body: bytes, settings: Settings) -> Reply | StreamReply:
    """``POST /v1/chat/completions``."""
    try:
        req = _decode(body, _ChatRequest)
        model = _check_model(req.model, settings.models)
        if not req.messages:
            raise _BadRequest("'messages' must be a non-empty array.", "messages")
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else (
        req.max_tokens
    )
    n, finish = _limit(settings, max_tokens)
    pieces = split_pieces(chat_answer_text(req.messages), settings.stream_chunks)[:n]
    prompt_tokens = sum(count_tokens(_message_text(m)) for m in req.messages)
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
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces)},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": _usage(prompt_tokens, n),
            }
        )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    head = _chunk_head(ident, "chat.completion.chunk", settings, model)

    def chunk(delta: dict[str, str], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _chunk_event(head, choice, include_usage)

    pace = _pace(settings)
    events: list[tuple[float, bytes]] = [(0.0, chunk({"role": "assistant", "content": ""}, None))]
    events += [(pace, chunk({"content": piece}, None)) for piece in pieces]
    events.append((0.0, chunk({}, finish)))
    return _end_stream(events, head, _usage(prompt_tokens, n) if include_usage else None)


def text_completion(body: bytes, settings: Settings) -> Reply | StreamReply:
    """``POST /v1/completions`` (legacy text completions)."""
    try:
        req = _decode(body, _CompletionRequest)
        model = _check_model(req.model, settings.models)
        summary = summarize(_prompt_text(req.prompt))
        prompt_tokens = _prompt_tokens(req.prompt)
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    n, finish = _limit(settings, req.max_tokens)
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

    pace = _pace(settings)
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
        body = reply.body[: max(1, len(reply.body) // 2)]
        return Reply(200, body if body != reply.body else b"{", reply.headers)
    events = [event for _, event in reply.events if event != DONE_EVENT]
    first = events[0] if events else b"data: {}\n\n"
    cut = first[: max(len(b"data: {"), len(first) // 2)].rstrip(b"\n") + b"\n\n"
    return StreamReply(((0.0, cut), (0.0, DONE_EVENT)))
