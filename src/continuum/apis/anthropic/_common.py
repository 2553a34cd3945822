"""What the Anthropic translators share: JSON helpers and the mapping between the two APIs'
error shapes (the router's own errors in Anthropic's shape are :mod:`continuum.core.errors`'s;
the SSE reader both stream translators use is :mod:`continuum.core.sse`'s)."""

from __future__ import annotations

import secrets
from typing import Any, Final

import msgspec

from ..types import TranslationError

encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder().decode

JSON = dict[str, Any]


def load_object(body: bytes, what: str) -> JSON:
    try:
        obj = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise TranslationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TranslationError(f"{what} must be a JSON object")
    return obj


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


#: Anthropic error type → (OpenAI error type, OpenAI code).
_ANTHROPIC_TO_OPENAI_ERROR: Final[dict[str, tuple[str, str | None]]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "billing_error": ("insufficient_quota", "billing_error"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("server_error", "api_error"),
    "overloaded_error": ("service_unavailable", "overloaded"),
    "timeout_error": ("timeout_error", "upstream_timeout"),
}

#: OpenAI error ``type`` (or ``code``) → Anthropic error type, for errors that arrive inside
#: a chat stream (the status is long gone by then).
_OPENAI_TO_ANTHROPIC_ERROR: Final[dict[str, str]] = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "invalid_api_key": "authentication_error",
    "permission_error": "permission_error",
    "not_found": "not_found_error",
    "not_found_error": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit_error": "rate_limit_error",
    "rate_limit_exceeded": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "billing_error": "billing_error",
    "service_unavailable": "overloaded_error",
    "overloaded": "overloaded_error",
    "overloaded_error": "overloaded_error",
    "timeout_error": "timeout_error",
    "upstream_timeout": "timeout_error",
    "server_error": "api_error",
    "api_error": "api_error",
}


def anthropic_error_kind(err: object) -> str:
    """The Anthropic error type for an OpenAI-shaped error object: by its ``code``, else
    its ``type`` (an Anthropic type is kept as it is), else ``api_error``."""
    if not isinstance(err, dict):
        return "api_error"
    for key in ("code", "type"):
        value = err.get(key)
        if isinstance(value, str) and value in _OPENAI_TO_ANTHROPIC_ERROR:
            return _OPENAI_TO_ANTHROPIC_ERROR[value]
    return "api_error"


def openai_error_dict(etype: str, message: str) -> JSON:
    oa_type, code = _ANTHROPIC_TO_OPENAI_ERROR.get(etype, ("server_error", etype or None))
    return {"error": {"message": message, "type": oa_type, "param": None, "code": code}}


def error_message(body: bytes, status: int) -> str:
    text = body[:500].decode("utf-8", "replace").strip()
    return f"upstream returned HTTP {status}" + (f": {text}" if text else "")
