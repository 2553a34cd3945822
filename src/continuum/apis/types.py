"""The boundary of translation: what a translator returns (:class:`UpstreamCall`,
:class:`Translated`, a :class:`StreamTranslator`) and raises (:class:`TranslationError`),
and what it is told about the backend beyond its API (:class:`ChatDialect`)."""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from ..core.http import Headers


class UpstreamCall(msgspec.Struct, frozen=True):
    """An HTTP request to make to a provider (path relative to the backend's base URL)."""

    method: bytes
    path: bytes
    headers: Headers
    body: bytes


class Translated(msgspec.Struct, frozen=True):
    """A complete (non-streamed) answer in the client's API: status, content type, body."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: Headers = msgspec.field(default_factory=list)


class TranslationError(Exception):
    """The request cannot be expressed in the target API (answered ``status``, 400 unless
    said otherwise, with ``message`` and the OpenAI error ``code`` if any)."""

    def __init__(self, message: str, param: str | None = None, *, code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


class StreamTranslator(Protocol):
    """Turns a provider's SSE byte stream into the client's SSE byte stream, incrementally.

    ``feed`` takes whatever bytes arrived (events may be split anywhere) and returns the
    bytes to send to the client now (possibly b""); ``finish`` is called once the upstream
    stream ended cleanly and returns the closing bytes (e.g. the final usage chunk and
    ``data: [DONE]``); ``error`` returns the bytes that end the client's stream after an
    upstream failure (an error event, then the stream's proper terminator). ``truncated``
    turns True when ``finish`` found the stream cut short (no finish reason, no end marker),
    or a translator found it broken (an answer it cannot express faithfully, past a bound
    of :mod:`continuum.apis.limits`): the client still gets a proper end, and the router
    counts the attempt a failure.
    """

    @property
    def truncated(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, status: int, message: str) -> bytes: ...


class ChatDialect(msgspec.Struct, frozen=True):
    """What the chat request made from an Anthropic Messages request (the ``/v1/messages``
    front door) must look like for one backend: the facts that differ between
    OpenAI-compatible servers. The backend's profile builds it from its config."""

    #: The field that carries the token limit: ``max_completion_tokens`` (OpenAI's reasoning
    #: models refuse ``max_tokens``) or ``max_tokens`` (what most other servers know).
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    #: Anthropic ``thinking`` becomes ``reasoning_effort``.
    map_thinking: bool = False
    #: Thinking blocks of assistant turns go back as ``reasoning_content`` (DeepSeek-style
    #: reasoning APIs want it on tool-call turns; OpenAI's own API refuses it).
    reasoning_content: bool = False
    #: Most stop sequences the backend takes (OpenAI: 4); more is a 400 of ours.
    max_stop_sequences: int | None = None
    #: Gemini's OpenAI-compatible endpoint: a tool call turn whose first call has no thought
    #: signature gets Google's placeholder in ``extra_content`` (Gemini 3 requires one).
    gemini_signatures: bool = False
    #: The chat body goes on to the native Gemini translator (not to a server): tool errors
    #: travel as ``is_error`` and thinking as an exact ``thinking_config`` budget.
    native_gemini: bool = False
