"""Shapes and helpers shared by the bridge's request, answer and stream halves."""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

import msgspec

from ...core.errors import openai_error_body
from ..types import TranslationError

JSON = dict[str, Any]

encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder().decode

#: ``ResponseError.code`` values a failed Response may carry (the SDK rejects others).
_FAILURE_CODES: Final = frozenset(
    {"server_error", "rate_limit_exceeded", "invalid_prompt", "invalid_image",
     "invalid_image_format", "invalid_base64_image", "invalid_image_url", "image_too_large",
     "image_too_small", "image_parse_error", "image_content_policy_violation",
     "invalid_image_mode", "image_file_too_large", "unsupported_image_media_type",
     "empty_image_file", "failed_to_download_image", "image_file_not_found"}
)


class BridgeError(TranslationError):
    """A request the bridge refuses: a 400 (or ``status``) with an OpenAI error ``code``."""

    def __init__(
        self, message: str, param: str | None = None, *, code: str | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(message, param, code=code, status=status)

    def body(self) -> bytes:
        """The OpenAI error JSON for this refusal."""
        return openai_error_body(self.status, self.message, code=self.code, param=self.param)


class ResponseContext(msgspec.Struct, frozen=True):
    """What every Response object of one request repeats, fixed when the request is
    translated: its id, creation time, model, and the request fields it echoes."""

    id: str
    created_at: int
    model: str
    #: Request fields the Response object repeats (instructions, tools, text, …).
    echo: JSON
    #: Whether ``output_text`` parts carry logprobs (``include`` asked for them).
    logprobs: bool = False

    def item_id(self, prefix: str, index: int | str) -> str:
        """A stable id for this response's item at ``index`` (``msg_``, ``fc_``, ``rs_``)."""
        return f"{prefix}{self.id[5:]}_{index}"


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(16)


def now_seconds() -> int:
    return int(time.time())


def load_object(body: bytes) -> JSON:
    try:
        obj = decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BridgeError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BridgeError("request body must be a JSON object")
    return obj


def as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def failure_code(status: int, code: object = None) -> str:
    """A ``ResponseError.code`` for an upstream failure."""
    if isinstance(code, str) and code in _FAILURE_CODES:
        return code
    return "rate_limit_exceeded" if status == 429 else "server_error"


def response_usage(usage: object) -> JSON | None:
    """Chat ``usage`` → Responses ``usage`` (None when the backend reported none)."""
    if not isinstance(usage, dict):
        return None
    prompt = as_int(usage.get("prompt_tokens"))
    completion = as_int(usage.get("completion_tokens"))
    total = as_int(usage.get("total_tokens")) or prompt + completion
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = as_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (
        as_int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict) else 0
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": total,
    }


def response_object(
    ctx: ResponseContext,
    status: str,
    output: list[JSON],
    usage: JSON | None = None,
    *,
    incomplete_reason: str | None = None,
    error: JSON | None = None,
    completed_at: int | None = None,
) -> JSON:
    """The Response object in ``status``; the stream's events and the plain answer share it."""
    obj: JSON = {
        "id": ctx.id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": (
            {"reason": incomplete_reason} if incomplete_reason is not None else None
        ),
        "model": ctx.model,
        "output": output,
        "usage": usage,
    }
    obj.update(ctx.echo)
    if completed_at is not None:
        obj["completed_at"] = completed_at
    return obj


def logprobs_of(choice: JSON) -> list[JSON]:
    """Chat ``choice.logprobs.content`` → Responses ``output_text`` logprobs."""
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    if not isinstance(content, list):
        return []
    out = []
    for entry in content:
        if not isinstance(entry, dict):
            continue
        top = entry.get("top_logprobs")
        out.append({
            "token": str(entry.get("token", "")),
            "bytes": entry.get("bytes") or [],
            "logprob": float(entry.get("logprob") or 0.0),
            "top_logprobs": [
                {"token": str(t.get("token", "")), "bytes": t.get("bytes") or [],
                 "logprob": float(t.get("logprob") or 0.0)}
                for t in (top if isinstance(top, list) else ()) if isinstance(t, dict)
            ],
        })
    return out
