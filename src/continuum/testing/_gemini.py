"""Sans-IO half of the mock upstream for the Gemini API (``generateContent``).

Like :mod:`continuum.testing._openai` (with which it shares :mod:`continuum.testing._replies`),
everything here is a plain function of its inputs. :mod:`continuum.testing._upstream` does
the I/O and the routing (``/v1beta/models/{model}:{method}``).

Answers are deterministic: the text is ``"Mock reply to: <last user text>"`` cut into
``stream_chunks`` pieces (one piece = one candidate token). A request with function
declarations whose last user turn says "weather" is answered with a ``functionCall`` part
(see :func:`wants_tool`). Requests may use camelCase or snake_case field names, as the real
API accepts both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from ._replies import (
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

MODEL_PREFIX: Final = "models/"
GENERATION_METHODS: Final = ("generateContent", "streamGenerateContent", "countTokens")
INPUT_TOKEN_LIMIT: Final = 1_048_576
OUTPUT_TOKEN_LIMIT: Final = 8192
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
SSE_END: Final = b"\r\n\r\n"

#: status → google.rpc ``status``.
_STATUSES: Final[dict[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def rpc_status(status: int) -> str:
    default = "UNKNOWN" if status >= 500 else "FAILED_PRECONDITION"
    return _STATUSES.get(status, default)


def error_reply(
    status: int, message: str, *, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Reply:
    """A Gemini-shaped error: ``{"error": {"code", "message", "status"}}``."""
    body = {"error": {"code": status, "message": message, "status": rpc_status(status)}}
    return Reply(status, _encode(body), headers)


def check_auth(api_key: bytes | None, query_key: str | None) -> Reply | None:
    """The error for a request with neither ``x-goog-api-key`` nor ``?key=``, else None."""
    if api_key or query_key:
        return None
    if query_key is not None:  # "?key=" with nothing after it
        return error_reply(400, "API key not valid. Please pass a valid API key.")
    return error_reply(
        403,
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    )


def model_id(name: str) -> str:
    """``"models/gemini-x"`` or ``"gemini-x"`` → ``"gemini-x"``."""
    return name[len(MODEL_PREFIX) :] if name.startswith(MODEL_PREFIX) else name


def model_not_found(model: str, method: str) -> Reply:
    return error_reply(
        404,
        f"models/{model} is not found for API version v1beta, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods.",
    )


# -- request shapes (camelCase after normalization; only what the mock reads) ------------


class _FunctionResponse(msgspec.Struct, rename="camel"):
    name: str | None = None
    response: Any = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    function_call: Any = None
    function_response: _FunctionResponse | None = None


class _Content(msgspec.Struct, rename="camel"):
    role: str | None = None
    parts: list[_Part] = []


class _FunctionDeclaration(msgspec.Struct, rename="camel"):
    name: str | None = None


class _Tool(msgspec.Struct, rename="camel"):
    function_declarations: list[_FunctionDeclaration] | None = None


class _FunctionCallingConfig(msgspec.Struct, rename="camel"):
    mode: str | None = None
    allowed_function_names: list[str] | None = None


class _ToolConfig(msgspec.Struct, rename="camel"):
    function_calling_config: _FunctionCallingConfig | None = None


class _GenerationConfig(msgspec.Struct, rename="camel"):
    max_output_tokens: int | None = None


class _Request(msgspec.Struct, rename="camel"):
    contents: list[_Content] | None = None
    system_instruction: _Content | None = None
    tools: list[_Tool] | None = None
    tool_config: _ToolConfig | None = None
    generation_config: _GenerationConfig | None = None
    generate_content_request: _Request | None = None  # countTokens only


class _Invalid(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


_SNAKE: Final = re.compile(r"_([a-z0-9])")


def _camel(obj: Any) -> Any:
    """Every dict key in ``obj`` snake_case → camelCase (the API accepts both)."""
    if isinstance(obj, dict):
        return {
            _SNAKE.sub(lambda m: m.group(1).upper(), k) if isinstance(k, str) else k: _camel(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _decode(body: bytes) -> _Request:
    try:
        raw = msgspec.json.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        raise _Invalid(error_reply(400, f"Invalid JSON payload received. {exc}")) from None
    if not isinstance(raw, dict):
        raise _Invalid(
            error_reply(400, "Invalid JSON payload received. Expected an object.")
        )
    try:
        return msgspec.convert(_camel(raw), _Request)
    except msgspec.ValidationError as exc:
        raise _Invalid(error_reply(400, f"Invalid JSON payload received. {exc}")) from None


def _check_model(model: str, models: Sequence[str], method: str) -> str:
    if model not in {model_id(m) for m in models}:
        raise _Invalid(model_not_found(model, method))
    return model


def _check_contents(req: _Request) -> list[_Content]:
    if not req.contents:
        raise _Invalid(
            error_reply(400, "* GenerateContentRequest.contents: contents is not specified\n")
        )
    return req.contents


# -- text, tokens, tools -----------------------------------------------------------------


def _part_text(part: _Part) -> str:
    if part.text:
        return part.text
    if part.function_response is not None and part.function_response.response is not None:
        return _encode(part.function_response.response).decode()
    return ""


def _content_text(content: _Content) -> str:
    return " ".join(text for text in map(_part_text, content.parts) if text)


def prompt_tokens(req: _Request) -> int:
    """Words in ``systemInstruction`` and every content's text (function responses as JSON)."""
    total = count_tokens(_content_text(req.system_instruction)) if req.system_instruction else 0
    return total + sum(count_tokens(_content_text(c)) for c in req.contents or ())


def _last_user(contents: Sequence[_Content]) -> _Content | None:
    return next((c for c in reversed(contents) if c.role != "model"), None)


def answer_text(contents: Sequence[_Content]) -> str:
    last = _last_user(contents)
    summary = summarize(_content_text(last)) if last is not None else ""
    return f"Mock reply to: {summary}" if summary else "Mock reply."


def wants_tool(req: _Request) -> str | None:
    """The function to call, or None for a text answer.

    With function declarations: ``toolConfig.functionCallingConfig.mode`` ``NONE`` → never;
    ``ANY`` → the first of ``allowedFunctionNames`` (else the first declaration); ``AUTO``
    (default) → the first declaration when the last user turn contains the word "weather"
    (any case) and carries no ``functionResponse`` part.
    """
    names = [
        fd.name for tool in req.tools or () for fd in tool.function_declarations or () if fd.name
    ]
    if not names:
        return None
    config = req.tool_config.function_calling_config if req.tool_config else None
    mode = (config.mode or "AUTO").upper() if config is not None else "AUTO"
    if mode == "NONE":
        return None
    if mode == "ANY":
        allowed = config.allowed_function_names if config is not None else None
        return allowed[0] if allowed else names[0]
    last = _last_user(req.contents or ())
    if last is None or any(p.function_response is not None for p in last.parts):
        return None
    return names[0] if TOOL_TRIGGER.search(_content_text(last)) else None


# -- answers ---------------------------------------------------------------------------



def _usage(prompt: int, candidates: int) -> dict[str, int]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
    }


def _response(
    parts: list[dict[str, object]],
    finish: str | None,
    usage: dict[str, int] | None,
    model: str,
    ident: str,
) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"parts": parts, "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    obj: dict[str, object] = {"candidates": [candidate]}
    if usage is not None:
        obj["usageMetadata"] = usage
    obj["modelVersion"] = model
    obj["responseId"] = ident
    return obj


def sse_event(obj: object) -> bytes:
    return b"data: " + _encode(obj) + SSE_END


def generate_content(
    model: str, body: bytes, settings: Settings, *, stream: bool, sse: bool = True
) -> Reply | StreamReply:
    """``:generateContent`` (``stream=False``) or ``:streamGenerateContent``.

    A stream with ``sse`` (``?alt=sse``) is one SSE event per chunk; without it, the real
    API's JSON-array framing, sent as one JSON body.
    """
    method = "streamGenerateContent" if stream else "generateContent"
    try:
        _check_model(model, settings.models, method)
        req = _decode(body)
        contents = _check_contents(req)
        config = req.generation_config
        max_tokens = config.max_output_tokens if config is not None else None
        if max_tokens is not None and max_tokens < 1:
            raise _Invalid(
                error_reply(400, "generation_config.max_output_tokens must be at least 1")
            )
    except _Invalid as exc:
        return exc.reply
    ident = "mock" + settings.ident
    prompt = prompt_tokens(req)
    tool = wants_tool(req)
    if tool is not None:
        call: dict[str, object] = {"functionCall": {"name": tool, "args": TOOL_INPUT}}
        tokens = len(split_pieces(_encode(TOOL_INPUT).decode(), settings.stream_chunks))
        whole = _response([call], "STOP", _usage(prompt, tokens), model, ident)
        if not stream:
            return json_reply(whole)
        if not sse:
            return json_reply([whole])
        return StreamReply(((settings.pace, sse_event(whole)),))
    pieces = split_pieces(answer_text(contents), settings.stream_chunks)
    finish = "STOP"
    if max_tokens is not None and max_tokens < len(pieces):
        pieces, finish = pieces[:max_tokens], "MAX_TOKENS"
    usage = _usage(prompt, len(pieces))
    if not stream:
        return json_reply(_response([{"text": "".join(pieces)}], finish, usage, model, ident))
    last = len(pieces) - 1
    chunks = [
        _response(
            [{"text": piece}],
            finish if i == last else None,
            usage if i == last else None,
            model,
            ident,
        )
        for i, piece in enumerate(pieces)
    ]
    if not sse:
        return json_reply(chunks)
    pace = settings.pace
    return StreamReply(tuple((pace, sse_event(chunk)) for chunk in chunks))


def count_tokens_reply(model: str, body: bytes, settings: Settings) -> Reply:
    """``:countTokens`` → ``{"totalTokens": N}`` (N = the answer's ``promptTokenCount``)."""
    try:
        _check_model(model, settings.models, "countTokens")
        req = _decode(body)
        if req.generate_content_request is not None:
            req = req.generate_content_request
        _check_contents(req)
    except _Invalid as exc:
        return exc.reply
    return json_reply({"totalTokens": prompt_tokens(req)})


# -- models ----------------------------------------------------------------------------


def model_object(model: str) -> dict[str, object]:
    name = model_id(model)
    return {
        "name": MODEL_PREFIX + name,
        "version": "001",
        "displayName": display_name(name),
        "description": f"Mock model {name}",
        "inputTokenLimit": INPUT_TOKEN_LIMIT,
        "outputTokenLimit": OUTPUT_TOKEN_LIMIT,
        "supportedGenerationMethods": list(GENERATION_METHODS),
    }


def model_list(models: Sequence[str], page_size: str | None, page_token: str | None) -> Reply:
    """``GET /v1beta/models`` with ``pageSize`` (default 50, max 1000) and ``pageToken``."""
    try:
        size = int(page_size) if page_size else DEFAULT_PAGE_SIZE
        start = int(page_token) if page_token else 0
    except ValueError:
        return error_reply(400, "Invalid pageSize or pageToken.")
    size = max(1, min(size, MAX_PAGE_SIZE))
    page = models[start : start + size]
    obj: dict[str, object] = {"models": [model_object(m) for m in page]}
    if start + size < len(models):
        obj["nextPageToken"] = str(start + size)
    return json_reply(obj)


def model_reply(model: str, models: Sequence[str]) -> Reply:
    """``GET /v1beta/models/{model}``."""
    if model not in {model_id(m) for m in models}:
        return error_reply(404, f"models/{model} is not found for API version v1beta.")
    return json_reply(model_object(model))


# -- failure shapes --------------------------------------------------------------------


def malformed(reply: Reply | StreamReply) -> Reply | StreamReply:
    """A 200 whose JSON (or first event's JSON) is cut in half; a stream then just ends."""
    if isinstance(reply, Reply):
        return malformed_reply(reply)
    first = reply.events[0][1] if reply.events else sse_event({})
    cut = first[: max(len(b"data: {"), len(first) // 2)].rstrip(b"\r\n")
    return StreamReply(((0.0, cut + SSE_END),))
