"""What follows from the API a backend speaks: one home for each backend-API fact.

How a backend authenticates (``Authorization: Bearer``; ``x-api-key`` and
``anthropic-version``; ``x-goog-api-key``), where its paths live (Gemini's
OpenAI-compatible endpoint sits under ``/v1beta/openai``), where it lists its models and
how that list reads, and which client headers never go upstream. A BackendActor holds the
:class:`BackendProfile` of its config; :func:`~continuum.apis.calls.build_call`, the health
prober and the model catalog read it, so the facts they use are the ones tested here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, cast, final
from urllib.parse import quote

import msgspec

from ..config import BackendConfig
from ..core.endpoints import backend_api_of
from ..core.http import Headers
from .gemini import gemini_model_page
from .types import ChatDialect, TranslationError

#: The APIs a backend can speak: every OpenAI-compatible server (and Gemini's
#: OpenAI-compatible endpoint), Anthropic Messages, Gemini ``generateContent``.
BackendApi = Literal["openai", "anthropic", "gemini"]

#: Client headers never forwarded upstream: hop-by-hop, framing, and the client's own
#: credentials (the backend's api_key replaces them).
DROPPED_REQUEST_HEADERS: Final = frozenset(
    {
        b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
        b"te", b"trailer", b"upgrade", b"content-length", b"expect", b"authorization",
        b"x-api-key", b"proxy-authorization", b"accept-encoding", b"cookie",
    }
)

#: Backend types that are servers run by the user (their chat templates know
#: ``reasoning_content``; ``reasoning_effort`` is ignored by models without it).
_LOCAL_TYPES: Final = frozenset({"vllm", "ollama", "llamacpp", "lmstudio", "localai", "mock"})
#: Most stop sequences a cloud API takes (OpenAI: 4; Gemini: 5).
_MAX_STOP_SEQUENCES: Final = {"openai": 4, "gemini": 5}

#: Gemini's OpenAI-compatible endpoint: ``/v1/X`` of the OpenAI API is ``/v1beta/openai/X``.
_GEMINI_OPENAI_PREFIX: Final = b"/v1beta/openai"
_GEMINI_MODELS: Final = b"/v1beta/models"


class _ModelEntry(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_ModelEntry]
    #: Anthropic's paging (OpenAI's lists have one page).
    has_more: bool = False
    last_id: str | None = None


_decode_model_list = msgspec.json.Decoder(_ModelList).decode


def backend_api(config: BackendConfig) -> BackendApi:
    """The API ``config``'s backend speaks."""
    return cast(BackendApi, backend_api_of(config.type, config.gemini_api, config.mock.api))


@final
class BackendProfile:
    """The facts of one backend's API and credentials (built by :func:`backend_profile`)."""

    __slots__ = ("_not_forwarded", "api", "auth", "chat_dialect", "default_max_tokens",
                 "models_path", "path_prefix", "thinking_conflict")

    def __init__(self, api: BackendApi, auth: Headers, *, path_prefix: bytes = b"",
                 models_path: bytes | None = None, default_max_tokens: int = 4096,
                 chat_dialect: ChatDialect | None = None,
                 thinking_conflict: Literal["drop", "reject"] = "drop") -> None:
        self.api: BackendApi = api
        #: Added to every upstream request: credentials, then the configured headers.
        self.auth = auth
        #: Put in front of the OpenAI API's paths (``/v1/...`` → ``prefix/...``).
        self.path_prefix = path_prefix
        #: Where the backend lists its models (paged by :meth:`models_page_path`, read by
        #: :meth:`model_page`); by default the OpenAI API's ``/v1/models``, under the path
        #: prefix.
        self.models_path = self.target(b"/v1/models") if models_path is None else models_path
        #: ``max_tokens`` of a translated request that sets none (Anthropic requires one).
        self.default_max_tokens = default_max_tokens
        #: How a chat request translated from ``/v1/messages`` must look here.
        self.chat_dialect = ChatDialect() if chat_dialect is None else chat_dialect
        #: What to do with thinking Anthropic would refuse: send without it, or a 400.
        self.thinking_conflict: Literal["drop", "reject"] = thinking_conflict
        #: Client header names never forwarded: the hop-by-hop ones and those in ``auth``.
        self._not_forwarded = DROPPED_REQUEST_HEADERS | {name for name, _ in auth}

    def target(self, path: bytes) -> bytes:
        """The upstream path for a client path of the OpenAI API (``/v1/...``)."""
        if self.path_prefix and path.startswith(b"/v1/"):
            return self.path_prefix + path[3:]
        return path

    def request_headers(self, client_headers: Headers) -> Headers:
        """A pass-through request's headers: the client's, less those never forwarded and
        those the backend sets itself, then the backend's own."""
        skipped = self._not_forwarded
        headers = [field for field in client_headers if field[0] not in skipped]
        headers.extend(self.auth)
        return headers

    def probe_path(self, endpoint: str) -> bytes:
        """The health endpoint: the configured one, or the models list when left at the
        default (``/v1/models`` means "the model list" whatever the API calls it)."""
        if endpoint == "/v1/models":
            return self.models_path
        return endpoint.encode()

    def models_page_path(self, cursor: str | None = None) -> bytes:
        """Where one page of the model list is: Gemini's and Anthropic's lists come in pages
        (50 and 20 entries by default), asked for at their largest (1,000), ``cursor`` being
        what the previous page said comes next. OpenAI's list is one page."""
        if self.api == "gemini":
            query = b"?pageSize=1000"
            if cursor is not None:
                query += b"&pageToken=" + quote(cursor, safe="").encode()
        elif self.api == "anthropic":
            query = b"?limit=1000"
            if cursor is not None:
                query += b"&after_id=" + quote(cursor, safe="").encode()
        else:
            return self.models_path
        return self.models_path + query

    def model_page(self, body: bytes) -> tuple[tuple[str, ...], str | None]:
        """The model ids of one page of the model list, each once, in the listed order, and
        the cursor of the next page (``None``: the last); raises ``msgspec.DecodeError`` or
        ``ValueError`` on an unreadable list.

        An id the router could not echo safely (control characters — it goes back in the
        ``x-continuum-model`` header — or longer than :data:`MAX_MODEL_ID`) is left out: a
        backend's list is upstream input like any other."""
        cursor: str | None = None
        if self.api == "gemini":
            try:
                ids: Iterable[str]
                ids, cursor = gemini_model_page(body)
            except TranslationError as exc:
                raise ValueError(exc.message) from None
        else:
            listing = _decode_model_list(body)
            ids = (entry.id for entry in listing.data)
            if listing.has_more and listing.last_id:
                cursor = listing.last_id
        return tuple(dict.fromkeys(i for i in ids if _servable_id(i))), cursor


#: The longest model id a discovered list may carry (OpenAI's and Hugging Face's ids are far
#: shorter; a longer one is a broken or hostile list).
MAX_MODEL_ID: Final = 256


def _servable_id(model: str) -> bool:
    return 0 < len(model) <= MAX_MODEL_ID and model.isprintable()


def backend_profile(config: BackendConfig) -> BackendProfile:
    """The profile of ``config``'s backend: its API, and its ``api_key`` and ``headers`` as
    that API wants them."""
    api = backend_api(config)
    auth: Headers = []
    key = config.api_key.encode("latin-1") if config.api_key else None
    if key is None and config.type == "mock":
        key = b"mock"  # the in-process mock wants a key, as the API it plays does
    if api == "anthropic":
        if key:
            auth.append((b"x-api-key", key))
        auth.append((b"anthropic-version", config.anthropic_version.encode("latin-1")))
    elif api == "gemini":
        if key:
            auth.append((b"x-goog-api-key", key))
    elif key:
        auth.append((b"authorization", b"Bearer " + key))
    for name, value in config.headers.items():
        auth.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return BackendProfile(
        api, auth,
        path_prefix=_GEMINI_OPENAI_PREFIX if config.type == "gemini" else b"",
        models_path=_GEMINI_MODELS if api == "gemini" else None,
        default_max_tokens=config.default_max_tokens,
        chat_dialect=chat_dialect(config),
        thinking_conflict=config.thinking_conflict,
    )


def chat_dialect(config: BackendConfig) -> ChatDialect:
    """The chat a ``/v1/messages`` request becomes for ``config``'s backend: its
    ``max_tokens_field`` and ``reasoning`` keys, ``auto`` resolved by the backend's type."""
    kind = config.type
    gemini = kind == "gemini"
    field = config.max_tokens_field
    if field == "auto":
        field = "max_completion_tokens" if kind == "openai" else "max_tokens"
    reasoning = config.reasoning
    if reasoning == "auto":
        # Local servers take both; Gemini's endpoint takes reasoning_effort only; OpenAI
        # refuses reasoning_content, and reasoning_effort on its other models.
        map_thinking, history = kind in _LOCAL_TYPES or gemini, kind in _LOCAL_TYPES
    else:
        map_thinking = history = reasoning == "send"
    return ChatDialect(
        max_tokens_field=field,
        map_thinking=map_thinking,
        reasoning_content=history,
        max_stop_sequences=_MAX_STOP_SEQUENCES.get(kind),
        gemini_signatures=gemini and config.gemini_api == "openai",
        native_gemini=backend_api(config) == "gemini",
    )
