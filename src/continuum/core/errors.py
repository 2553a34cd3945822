"""Every error the router answers with, and its JSON body in both shapes clients know: OpenAI's
(``{"error": {message, type, param, code}}``) everywhere, Anthropic's
(``{"type": "error", "error": {type, message}}``) on the ``/v1/messages`` front door
(:func:`is_messages_api`)."""

from __future__ import annotations

from typing import Final

import msgspec

from .http import Headers

#: status → (OpenAI ``type``, default ``code``)
_KINDS: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    431: ("invalid_request_error", "headers_too_large"),
    500: ("server_error", "internal_error"),
    502: ("upstream_error", "bad_gateway"),
    503: ("service_unavailable", "no_healthy_backend"),
    504: ("timeout_error", "upstream_timeout"),
}


def _kind(status: int) -> tuple[str, str | None]:
    default = "server_error" if status >= 500 else "invalid_request_error"
    return _KINDS.get(status, (default, None))


class _ErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_encode = msgspec.json.Encoder().encode


class RouterError(Exception):
    """An error that becomes an HTTP response; raise it anywhere on the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type, default_code = _kind(status)
        self.code = code if code is not None else default_code
        self.param = param
        self.headers: Headers = list(headers or [])
        if retry_after is not None:
            self.headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))

    def body(self) -> bytes:
        return openai_error_body(self.status, self.message, code=self.code, param=self.param)


def openai_error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> bytes:
    kind, default_code = _kind(status)
    detail = _ErrorDetail(message, kind, param, code if code is not None else default_code)
    return _encode(_ErrorBody(detail))


JSON_HEADERS: Final[Headers] = [(b"content-type", b"application/json")]

#: Client-given values (model names) shown in error messages are cut to this many characters.
SHOWN_VALUE_LIMIT: Final = 100


def quoted(value: str, limit: int = SHOWN_VALUE_LIMIT) -> str:
    """``value`` in quotes for an error message; a long client-given value is cut, so a
    100,000-character model name does not come back whole in every 404."""
    if len(value) <= limit:
        return f"'{value}'"
    return f"'{value[:limit]}...' ({len(value):,} characters)"


def render_error(status: int, message: str) -> tuple[Headers, bytes]:
    """For the HTTP layer's own refusals (400 malformed, 408, 413, 431)."""
    return JSON_HEADERS, openai_error_body(status, message)


# -- the Anthropic shape (the /v1/messages front door) ------------------------------------

#: status → Anthropic's error ``type``.
_ANTHROPIC_KINDS: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def is_messages_api(path: str) -> bool:
    """Does ``path`` belong to the Anthropic front door (``/v1/messages`` and below), whose
    errors and streams take Anthropic's shape?"""
    return path.startswith("/v1/messages")


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    return _ANTHROPIC_KINDS.get(status, default)


class _AnthropicDetail(msgspec.Struct):
    type: str
    message: str


class _AnthropicBody(msgspec.Struct):
    type: str
    error: _AnthropicDetail


def anthropic_error_body(status: int, message: str) -> bytes:
    """Anthropic's error JSON for an error with this HTTP status."""
    return _encode(_AnthropicBody("error", _AnthropicDetail(anthropic_error_type(status), message)))
