"""What the router must know about the OpenAI Realtime API, without I/O.

The Realtime API is a WebSocket session (``GET /v1/realtime?model=M`` with ``Upgrade:
websocket``) carrying JSON events both ways. The router relays the frames unparsed; this module
holds the few protocol facts it needs around that relay:

- the handshake: which problems to refuse before wsproto sees the request, the browser's
  ``openai-insecure-api-key.<key>`` subprotocol (a credential, never sent upstream), the
  subprotocol to accept toward the client, which client headers go upstream, and the
  upstream ``ws://``/``wss://`` target derived from a backend's ``http(s)://`` URL;
- the events read on the way through: ``session.created`` (session id and model) and
  ``response.done`` (token usage). Both are found with a substring test before any decode, as
  the HTTP path does for ``usage``: audio deltas (megabytes of base64) are never parsed;
- the ``error`` event sent to the client before a 1011 close, and close-code mapping.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import urlsplit

import msgspec

from .http import Headers

#: The path of the Realtime API on the router and on OpenAI-compatible backends.
REALTIME_PATH: Final = "/v1/realtime"
#: Browsers cannot set headers on a WebSocket, so they send the key as a subprotocol.
KEY_SUBPROTOCOL_PREFIX: Final = "openai-insecure-api-key."
#: The subprotocol OpenAI's server selects.
REALTIME_SUBPROTOCOL: Final = "realtime"

#: Client headers that go upstream. An allowlist: a WebSocket handshake carries cookies,
#: ``Origin`` and the ``Sec-WebSocket-*`` set, none of which belong to the upstream hop (the
#: client library makes its own ``Sec-WebSocket-*``; credentials come from the backend).
FORWARDED_HEADERS: Final = frozenset({b"openai-beta", b"openai-organization", b"openai-project"})

#: Close codes that never appear in a close frame (RFC 6455 section 7.4.1).
_LOCAL_ONLY_CODES: Final = frozenset({1005, 1006, 1015})
#: Close reason budget: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON: Final = 123

_encode = msgspec.json.Encoder().encode


# --- the handshake -------------------------------------------------------------------------


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _tokens(value: bytes | None) -> list[bytes]:
    if not value:
        return []
    return [part.strip().lower() for part in value.split(b",")]


def is_websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks for a WebSocket (``Upgrade: websocket``). Header names are
    lower-case, as the ingress parser stores them."""
    return b"websocket" in _tokens(_header(headers, b"upgrade"))


#: The refusal of a request to a WebSocket endpoint that asks for no upgrade.
NOT_AN_UPGRADE: Final = (426, "This endpoint needs a WebSocket upgrade (Upgrade: websocket)")


def handshake_problem(
    method: str, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[int, str] | None:
    """(status, message) when a WebSocket opening handshake is not one wsproto accepts, else
    None. The ingress answers these itself (with an OpenAI-shaped error) because trio-websocket
    waits for a valid handshake forever once wsproto has refused one."""
    if method != "GET":
        return 405, "A WebSocket handshake must use GET"
    if not is_websocket_upgrade(headers):
        return NOT_AN_UPGRADE
    if b"upgrade" not in _tokens(_header(headers, b"connection")):
        return 400, "A WebSocket handshake needs 'Connection: Upgrade'"
    if _header(headers, b"sec-websocket-version") != b"13":
        return 426, "Only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)"
    key = _header(headers, b"sec-websocket-key")
    if key is None or len(key.strip()) != 24:
        return 400, "A WebSocket handshake needs a 16-byte base64 Sec-WebSocket-Key"
    if _header(headers, b"host") is None:
        return 400, "A WebSocket handshake needs a Host header"
    length = _header(headers, b"content-length")
    if _header(headers, b"transfer-encoding") is not None or length not in (None, b"0"):
        return 400, "A WebSocket handshake has no request body"
    return None


def parse_subprotocols(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every subprotocol the client offers (all ``Sec-WebSocket-Protocol`` headers, in order)."""
    offered: list[str] = []
    for key, value in headers:
        if key == b"sec-websocket-protocol":
            offered.extend(
                part for part in (p.strip() for p in value.decode("latin-1").split(",")) if part
            )
    return offered


def split_subprotocols(offered: Iterable[str]) -> tuple[str | None, list[str]]:
    """(the API key carried as ``openai-insecure-api-key.<key>``, or None; the subprotocols to
    offer upstream). The key subprotocol is removed: it is the client's credential for the
    router, and the backend gets its own key in a header. ``realtime``,
    ``openai-beta.realtime-v1`` and any other subprotocol are kept in order."""
    key: str | None = None
    upstream: list[str] = []
    for protocol in offered:
        if protocol.startswith(KEY_SUBPROTOCOL_PREFIX):
            if key is None:
                key = protocol[len(KEY_SUBPROTOCOL_PREFIX):]
        else:
            upstream.append(protocol)
    return key, upstream


def client_subprotocol(upstream_choice: str | None, offered: Sequence[str]) -> str | None:
    """The subprotocol to accept toward the client: the upstream's choice when the client
    offered it (browsers fail a handshake that answers with a protocol they did not offer),
    else none. The key subprotocol is never echoed: it would put the key in a response."""
    if upstream_choice is None or upstream_choice.startswith(KEY_SUBPROTOCOL_PREFIX):
        return None
    return upstream_choice if upstream_choice in offered else None


def forwarded_headers(client_headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The client's headers that go upstream (``FORWARDED_HEADERS``, names lower-case)."""
    return [(key, value) for key, value in client_headers if key in FORWARDED_HEADERS]


class UpstreamTarget(msgspec.Struct, frozen=True):
    """Where a backend's Realtime endpoint is: enough to open the TCP (and TLS) connection
    and to write the handshake's request line and ``Host`` header."""

    secure: bool
    host: str  # for connecting: an IPv6 address without brackets
    port: int
    host_header: str  # for the handshake: brackets for IPv6, the port unless it is the default
    resource: str  # path and query

    @property
    def url(self) -> str:
        """The ``ws://``/``wss://`` URL, for logs and errors."""
        return f"{'wss' if self.secure else 'ws'}://{self.host_header}{self.resource}"


def upstream_target(backend_url: str, query: str, path: str = REALTIME_PATH) -> UpstreamTarget:
    """The Realtime target of a backend: ``https://h/p`` becomes ``wss://h/p/v1/realtime?<query>``
    (``http`` gives ``ws``; a ``ws(s)://`` URL is taken as is). ``query`` is the client's query
    string, kept whole (``model``, ``intent``, ``call_id``...), without the ``?``."""
    parts = urlsplit(backend_url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(f"not an http(s) or ws(s) URL: {backend_url!r}")
    secure = scheme in ("https", "wss")
    default = 443 if secure else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    resource = parts.path.rstrip("/") + path + (f"?{query}" if query else "")
    return UpstreamTarget(secure, host, port, host_header, resource)


# --- events read on the way through ---------------------------------------------------------

_SESSION_CREATED: Final = '"session.created"'
_RESPONSE_DONE: Final = '"response.done"'


class _CachedDetails(msgspec.Struct):
    text_tokens: int = 0
    audio_tokens: int = 0
    image_tokens: int = 0


class _InputDetails(msgspec.Struct):
    text_tokens: int = 0
    audio_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    cached_tokens_details: _CachedDetails | None = None


class _OutputDetails(msgspec.Struct):
    text_tokens: int = 0
    audio_tokens: int = 0


class _Usage(msgspec.Struct):
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: _InputDetails | None = None
    output_token_details: _OutputDetails | None = None


class _Response(msgspec.Struct):
    id: str | None = None
    status: str | None = None
    usage: _Usage | None = None


class _ResponseDone(msgspec.Struct):
    type: str = ""
    response: _Response | None = None


class _Session(msgspec.Struct):
    id: str | None = None
    model: str | None = None


class _SessionCreated(msgspec.Struct):
    type: str = ""
    session: _Session | None = None


_decode_done = msgspec.json.Decoder(_ResponseDone).decode
_decode_created = msgspec.json.Decoder(_SessionCreated).decode


class RealtimeUsage(msgspec.Struct, frozen=True):
    """The token usage of one response (``response.done``'s ``response.usage``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    cached_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0


class RealtimeSession(msgspec.Struct, frozen=True):
    """What ``session.created`` says about the session."""

    id: str | None
    model: str | None


def _usage(usage: _Usage) -> RealtimeUsage:
    into = usage.input_token_details or _InputDetails()
    cached = into.cached_tokens_details or _CachedDetails()
    out = usage.output_token_details or _OutputDetails()
    return RealtimeUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens or usage.input_tokens + usage.output_tokens,
        input_text_tokens=into.text_tokens,
        input_audio_tokens=into.audio_tokens,
        input_image_tokens=into.image_tokens,
        cached_tokens=into.cached_tokens,
        cached_text_tokens=cached.text_tokens,
        cached_audio_tokens=cached.audio_tokens,
        output_text_tokens=out.text_tokens,
        output_audio_tokens=out.audio_tokens,
    )


def usage_from_event(message: str | bytes) -> RealtimeUsage | None:
    """The usage of a ``response.done`` event; None for any other message (or one that is not
    valid JSON). The quoted type name cannot occur inside a JSON string value (its quotes
    would be escaped there), so the substring test only lets real candidates be decoded."""
    if isinstance(message, bytes):
        if _RESPONSE_DONE.encode() not in message:
            return None
    elif _RESPONSE_DONE not in message:
        return None
    try:
        event = _decode_done(message)
    except msgspec.DecodeError:
        return None
    if event.type != "response.done" or event.response is None or event.response.usage is None:
        return None
    return _usage(event.response.usage)


def session_from_event(message: str | bytes) -> RealtimeSession | None:
    """The session id and model of a ``session.created`` event; None for any other message."""
    if isinstance(message, bytes):
        if _SESSION_CREATED.encode() not in message:
            return None
    elif _SESSION_CREATED not in message:
        return None
    try:
        event = _decode_created(message)
    except msgspec.DecodeError:
        return None
    if event.type != "session.created" or event.session is None:
        return None
    return RealtimeSession(event.session.id, event.session.model)


class UsageTally:
    """Sums what a session's server events say (an observer for the relay).

    ``observe`` is called with every server-to-client text message; it costs two substring
    tests per message and never raises.
    """

    __slots__ = ("input_tokens", "model", "output_tokens", "responses", "session_id", "usages")

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.model: str | None = None
        self.responses = 0
        self.input_tokens = 0
        self.output_tokens = 0
        #: Every response's usage, in order (a session has few responses).
        self.usages: list[RealtimeUsage] = []

    def observe(self, message: str) -> None:
        usage = usage_from_event(message)
        if usage is not None:
            self.responses += 1
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            self.usages.append(usage)
            return
        if self.session_id is None:
            session = session_from_event(message)
            if session is not None:
                self.session_id = session.id
                self.model = session.model


# --- what the router says itself --------------------------------------------------------------


class _ErrorDetail(msgspec.Struct, omit_defaults=False):
    type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None


class _ErrorEvent(msgspec.Struct, omit_defaults=False):
    type: str
    event_id: str
    error: _ErrorDetail


def new_event_id() -> str:
    """An ``event_id`` in OpenAI's style (``event_`` and 20 hex digits)."""
    return "event_" + os.urandom(10).hex()


def error_event(
    message: str,
    *,
    code: str | None = "upstream_error",
    error_type: str = "server_error",
    event_id: str | None = None,
) -> str:
    """An OpenAI-shaped Realtime ``error`` event (text), e.g. what the client gets before the
    router closes the session with 1011 because the upstream failed."""
    event = _ErrorEvent(
        "error", event_id or new_event_id(), _ErrorDetail(error_type, code, message, None, None)
    )
    return _encode(event).decode()


def close_reason(text: str) -> str:
    """``text`` cut to what fits a close frame (123 bytes of UTF-8, whole characters)."""
    data = text.encode()
    if len(data) <= MAX_CLOSE_REASON:
        return text
    return data[:MAX_CLOSE_REASON].decode(errors="ignore")


def is_abnormal_close(code: int) -> bool:
    """Whether a close code means the peer vanished without a close frame (or TLS failed):
    these codes are local-only, so they are never relayed as they are."""
    return code in (1006, 1015)


def relayed_close_code(code: int) -> int:
    """The code to send on the other hop for a close received with ``code``: the same, except
    the local-only ones (1005, "no code given", becomes 1000; 1006 and 1015 become 1011)."""
    if code == 1005:
        return 1000
    if code in _LOCAL_ONLY_CODES or not 1000 <= code <= 4999:
        return 1011
    return code
