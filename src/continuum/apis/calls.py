"""How one attempt's upstream call is built, and how its answer is turned back into the
client's API — for every pair of client API and backend API.

| client endpoint           | openai backend  | anthropic backend | gemini backend        |
|---------------------------|-----------------|-------------------|-----------------------|
| /v1/chat/completions      | pass-through    | chat → Messages   | chat → generateContent|
| /v1/completions,          | pass-through    | —                 | —                     |
| /v1/embeddings, images,   |                 |                   |                       |
| audio, moderations, rerank|                 |                   |                       |
| /v1/responses             | pass-through or | Responses → chat  | Responses → chat →    |
|                           | Responses → chat| → Messages        | generateContent       |
| /v1/messages              | Messages → chat | pass-through      | Messages → chat →     |
|                           |                 |                   | generateContent       |
| /v1/messages/count_tokens | —               | pass-through      | —                     |

Pass-through forwards the client's body bytes untouched (the model rewritten only for
aliases and fallbacks) and never decodes an SSE chunk; translation is the sans-IO code of
``continuum.apis``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, final

import msgspec

from ..core.endpoints import ENDPOINTS
from ..core.http import Headers
from . import anthropic, gemini
from .profiles import BackendProfile
from .responses import ChatBridge, ChatToResponsesStream
from .types import StreamTranslator, Translated

#: Which backend APIs can serve each client endpoint (``/v1/responses`` through the
#: Responses bridge for the APIs that lack it: see ``continuum.apis.responses``).
ENDPOINT_APIS: Final[dict[str, frozenset[str]]] = {
    path: endpoint.apis for path, endpoint in ENDPOINTS.items()
}

#: Client headers worth passing to a backend whose API we translate to (the rest describe
#: the client's own API and would confuse the other one).
_TRANSLATED_FORWARD: Final = frozenset({b"x-request-id", b"traceparent", b"tracestate",
                                        b"user-agent"})


@final
class Call(msgspec.Struct):
    """One attempt's request, plus how to read its answer in the client's API (a Struct:
    one is made per attempt, and its constructor runs in C)."""

    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    #: Complete answer → client's API; None for pass-through.
    translate: Callable[[int, bytes], Translated] | None = None
    #: A fresh SSE translator for a streamed answer; None for pass-through.
    stream: Callable[[], StreamTranslator] | None = None


class _Pipeline:
    """Two stream translators back to back (Gemini → OpenAI chat → Anthropic events). (A
    "chain" is always a model's fallback chain.)"""

    def __init__(self, first: StreamTranslator, second: StreamTranslator) -> None:
        self._first = first
        self._second = second

    def feed(self, data: bytes) -> bytes:
        middle = self._first.feed(data)
        return self._second.feed(middle) if middle else b""

    def finish(self) -> bytes:
        return self._second.feed(self._first.finish()) + self._second.finish()

    @property
    def truncated(self) -> bool:
        return self._first.truncated or self._second.truncated

    def error(self, status: int, message: str) -> bytes:
        return self._second.error(status, message)


def _with_forwarded(call_headers: Headers, profile: BackendProfile,
                    client_headers: Headers) -> Headers:
    """A translated call's headers, plus the client's tracing ones and the backend's own
    (its credentials, then its configured headers; a name already there is not sent twice)."""
    headers = list(call_headers)
    have = {name for name, _ in headers}
    for name, value in client_headers:
        if name in _TRANSLATED_FORWARD and name not in have:
            headers.append((name, value))
    for name, value in profile.auth:
        if name not in have:
            have.add(name)
            headers.append((name, value))
    return headers


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _UsagePeek(msgspec.Struct):
    stream_options: _StreamOptions | None = None


_decode_usage_peek = msgspec.json.Decoder(_UsagePeek).decode


def _include_usage(body: bytes) -> bool:
    """Did an OpenAI client ask for the final usage chunk (``stream_options``)?"""
    if b"include_usage" not in body:
        return False
    try:
        options = _decode_usage_peek(body).stream_options
    except msgspec.MsgspecError:
        return False
    return options is not None and options.include_usage is True


def build_call(
    endpoint: str, profile: BackendProfile, query: str, client_headers: Headers, body: bytes,
    model: str, stream: bool,
) -> Call:
    """The call for ``endpoint`` (with the client's ``query`` and headers) on a backend of
    ``profile``; ``body`` is in the client's API with ``model`` already the served model."""
    api = profile.api
    target = endpoint.encode()
    if query:
        target += b"?" + query.encode()
    if endpoint == "/v1/messages":
        return _messages_call(profile, client_headers, body, model, stream, target)
    if api == "openai" or endpoint != "/v1/chat/completions":
        # Pass-through: the client's bytes, the backend's credentials.
        return Call(b"POST", profile.target(target), profile.request_headers(client_headers),
                    body)
    if api == "anthropic":
        up = anthropic.openai_to_anthropic_request(
            body, model=model, default_max_tokens=profile.default_max_tokens,
            thinking_conflict=profile.thinking_conflict,
        )
        usage = stream and _include_usage(body)
        return Call(
            up.method, up.path, _with_forwarded(up.headers, profile, client_headers), up.body,
            translate=lambda status, raw: anthropic.anthropic_to_openai_response(
                status, raw, model=model),
            stream=lambda: anthropic.AnthropicToOpenAIStream(model, usage),
        )
    up = gemini.openai_to_gemini_request(body, model=model, stream=stream)
    usage = stream and _include_usage(body)
    return Call(
        up.method, up.path, _with_forwarded(up.headers, profile, client_headers), up.body,
        translate=lambda status, raw: gemini.gemini_to_openai_response(status, raw,
                                                                       model=model),
        stream=lambda: gemini.GeminiToOpenAIStream(model, usage),
    )


def _messages_call(
    profile: BackendProfile, client_headers: Headers, body: bytes, model: str, stream: bool,
    target: bytes,
) -> Call:
    api = profile.api
    if api == "anthropic":
        return Call(b"POST", target, profile.request_headers(client_headers), body)
    chat_body, _ = anthropic.anthropic_to_openai_request(body, model=model,
                                                         dialect=profile.chat_dialect)

    def to_messages(status: int, raw: bytes) -> Translated:
        return anthropic.openai_to_anthropic_response(status, raw, model=model)

    if api == "openai":
        return Call(
            b"POST", profile.target(b"/v1/chat/completions"),
            _with_forwarded([(b"content-type", b"application/json")], profile, client_headers),
            chat_body,
            translate=to_messages,
            stream=lambda: anthropic.OpenAIToAnthropicStream(model),
        )
    up = gemini.openai_to_gemini_request(chat_body, model=model, stream=stream)

    def gemini_to_messages(status: int, raw: bytes) -> Translated:
        chat = gemini.gemini_to_openai_response(status, raw, model=model)
        return anthropic.openai_to_anthropic_response(chat.status, chat.body, model=model)

    return Call(
        up.method, up.path, _with_forwarded(up.headers, profile, client_headers), up.body,
        translate=gemini_to_messages,
        stream=lambda: _Pipeline(gemini.GeminiToOpenAIStream(model, True, early_usage=True),
                                 anthropic.OpenAIToAnthropicStream(model)),
    )


def bridged_responses_call(
    bridge: ChatBridge, profile: BackendProfile, client_headers: Headers, model: str,
    on_stream: Callable[[ChatToResponsesStream], None] | None = None,
) -> Call:
    """A Responses request bridged onto Chat Completions for a backend of ``profile``: the
    chat call (passed through, or on to Anthropic or Gemini), its answer turned back into
    a Response, a stream into the Responses events (``on_stream`` is told each stream
    translator made, so its final Response can be stored)."""
    chat = build_call("/v1/chat/completions", profile, "", client_headers, bridge.body, model,
                      bridge.stream)
    to_chat = chat.translate
    chat_stream = chat.stream

    def translate(status: int, raw: bytes) -> Translated:
        if to_chat is not None:
            answer = to_chat(status, raw)
            status, raw = answer.status, answer.body
        return bridge.translate(status, raw)

    def stream() -> StreamTranslator:
        events = bridge.stream_translator()
        if on_stream is not None:
            on_stream(events)
        return events if chat_stream is None else _Pipeline(chat_stream(), events)

    return Call(chat.method, chat.target, chat.headers, chat.body, translate, stream)
