"""The model-routed endpoints: what each needs from a backend, and which backends serve it
by default (wire facts, sans-IO).

A request names its model; the router sends it only to a backend of that model that
serves the endpoint. Which endpoints a backend serves is its config's ``endpoints`` list, or
the defaults of its type below (an OpenAI-compatible server type lists what that server
implements). The backend APIs an endpoint can reach at all (natively or translated) bound
what a list may name.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

#: Every model-routed endpoint a backend may declare (``backends[].endpoints``).
EndpointPath = Literal[
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/messages", "/v1/messages/count_tokens", "/v1/moderations",
    "/v1/images/generations", "/v1/images/edits", "/v1/images/variations",
    "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/rerank",
]

CHAT: Final = "/v1/chat/completions"
RESPONSES: Final = "/v1/responses"
MESSAGES: Final = "/v1/messages"

#: Routing keys of the two ways a backend serves ``/v1/responses``: a conversation chained
#: with ``previous_response_id`` stays with the kind of backend that stored its turns.
RESPONSES_NATIVE: Final = "/v1/responses#native"
RESPONSES_BRIDGE: Final = "/v1/responses#bridge"

_ALL_APIS: Final = frozenset({"openai", "anthropic", "gemini"})
_OPENAI: Final = frozenset({"openai"})


class Endpoint(msgspec.Struct, frozen=True):
    """One model-routed endpoint."""

    path: str
    #: Backend APIs that can serve it, natively or through a translator.
    apis: frozenset[str]
    #: Its body is ``multipart/form-data`` (relayed as it arrives; ``model`` is a form
    #: field). Its JSON form, where the API has one, is routed like any JSON body.
    upload: bool = False
    #: Its answer is binary (audio): relayed as it arrives, never read whole.
    binary: bool = False
    #: What a backend needs to serve it (docs/operations.md lists the same).
    needs: str = ""


ENDPOINTS: Final[dict[str, Endpoint]] = {
    e.path: e for e in (
        Endpoint(CHAT, _ALL_APIS, needs="chat completions (translated for Anthropic, Gemini)"),
        Endpoint("/v1/completions", _OPENAI, needs="legacy text completions"),
        Endpoint("/v1/embeddings", _OPENAI, needs="embeddings"),
        Endpoint(RESPONSES, _ALL_APIS,
                 needs="the Responses API, or chat completions (bridged)"),
        Endpoint(MESSAGES, _ALL_APIS,
                 needs="Anthropic Messages, or chat completions (translated)"),
        Endpoint("/v1/messages/count_tokens", frozenset({"anthropic"}),
                 needs="Anthropic token counting"),
        Endpoint("/v1/moderations", _OPENAI, needs="moderations"),
        Endpoint("/v1/images/generations", _OPENAI, needs="image generation"),
        Endpoint("/v1/images/edits", _OPENAI, upload=True, needs="image edits (multipart)"),
        Endpoint("/v1/images/variations", _OPENAI, upload=True,
                 needs="image variations (multipart)"),
        Endpoint("/v1/audio/speech", _OPENAI, binary=True,
                 needs="text to speech (binary answer)"),
        Endpoint("/v1/audio/transcriptions", _OPENAI, upload=True,
                 needs="speech to text (multipart)"),
        Endpoint("/v1/audio/translations", _OPENAI, upload=True,
                 needs="speech to English text (multipart)"),
        Endpoint("/v1/rerank", _OPENAI, needs="reranking (Jina/Cohere shape, as vLLM serves it)"),
    )
}

#: Paths whose multipart bodies the HTTP server streams to the handler.
UPLOAD_PATHS: Final = frozenset(p for p, e in ENDPOINTS.items() if e.upload)

_BASE: Final = (CHAT, "/v1/completions", "/v1/embeddings", RESPONSES, MESSAGES)
_AUDIO_IN: Final = ("/v1/audio/transcriptions", "/v1/audio/translations")
_IMAGES: Final = ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations")

#: What each OpenAI-compatible server type implements (``type: openai`` is the generic
#: type: any OpenAI-compatible server, so it lists every OpenAI endpoint).
_OPENAI_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "openai": (*_BASE, "/v1/moderations", *_IMAGES, "/v1/audio/speech", *_AUDIO_IN,
               "/v1/rerank"),
    "vllm": (*_BASE, "/v1/rerank", *_AUDIO_IN),
    "ollama": _BASE,
    "llamacpp": (*_BASE, "/v1/rerank"),
    "lmstudio": _BASE,
    "localai": (*_BASE, "/v1/images/generations", "/v1/audio/speech", *_AUDIO_IN,
                "/v1/rerank"),
    "gemini": _BASE,  # Gemini's OpenAI-compatible endpoint (gemini_api: openai)
}
_BY_API: Final[dict[str, tuple[str, ...]]] = {
    "anthropic": (CHAT, RESPONSES, MESSAGES, "/v1/messages/count_tokens"),
    "gemini": (CHAT, RESPONSES, MESSAGES),
}


def backend_api_of(backend_type: str, gemini_api: str, mock_api: str) -> str:
    """The API a backend of ``backend_type`` speaks: ``openai`` (every OpenAI-compatible
    server, and Gemini's OpenAI-compatible endpoint), ``anthropic`` or ``gemini``."""
    if backend_type == "anthropic":
        return "anthropic"
    if backend_type == "gemini":
        return "gemini" if gemini_api == "native" else "openai"
    if backend_type == "mock":
        return mock_api
    return "openai"


def default_endpoints(backend_type: str, api: str) -> frozenset[str]:
    """The endpoints a backend of ``backend_type`` speaking ``api`` serves unless its
    config lists them (a ``mock`` plays the generic server of its API)."""
    if api != "openai":
        return frozenset(_BY_API[api])
    return frozenset(_OPENAI_TYPES.get(backend_type, _OPENAI_TYPES["openai"]))


def responses_native(backend_type: str, api: str, mode: str) -> bool:
    """Does this backend get ``/v1/responses`` as is (``native``), rather than bridged
    onto chat completions? ``auto``: native for ``type: openai`` (and the mock playing
    it), bridged for every other type."""
    if mode == "auto":
        return api == "openai" and backend_type in ("openai", "mock")
    return mode == "native"
