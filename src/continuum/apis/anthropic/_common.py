"""What the Anthropic translators share: JSON helpers, the two APIs' error shapes, and the
SSE reader both stream translators use."""

from __future__ import annotations

import re
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

_STATUS_TO_ANTHROPIC_ERROR: Final[dict[int, str]] = {
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


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    return _STATUS_TO_ANTHROPIC_ERROR.get(status, default)


def openai_error_dict(etype: str, message: str) -> JSON:
    oa_type, code = _ANTHROPIC_TO_OPENAI_ERROR.get(etype, ("server_error", etype or None))
    return {"error": {"message": message, "type": oa_type, "param": None, "code": code}}


def error_message(body: bytes, status: int) -> str:
    text = body[:500].decode("utf-8", "replace").strip()
    return f"upstream returned HTTP {status}" + (f": {text}" if text else "")


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SSEReader:
    """Splits an SSE byte stream into the ``data`` payloads of complete events."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        while (m := _EVENT_END.search(buf, pos)) is not None:
            payload = self._payload(buf[pos : m.start()])
            pos = m.end()
            if payload is not None:
                out.append(payload)
        self._buf = buf[pos:]
        return out

    def tail(self) -> list[bytes]:
        """The last event when the stream ended without its blank line."""
        rest, self._buf = self._buf, b""
        payload = self._payload(rest) if rest.strip() else None
        return [payload] if payload is not None else []

    @staticmethod
    def _payload(block: bytes) -> bytes | None:
        data: list[bytes] = []
        for line in block.splitlines():
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        return b"\n".join(data) if data else None


def anthropic_error_body(status: int, message: str) -> bytes:
    """Anthropic's error JSON for an error with this HTTP status."""
    return encode(
        {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    )
