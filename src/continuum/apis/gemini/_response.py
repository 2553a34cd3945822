"""A Gemini answer (``GenerateContentResponse`` or error) → an OpenAI ``chat.completion``
(or OpenAI error), and the pieces the stream translator shares: finish reasons, error
fields, usage, the parts of a candidate."""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

import msgspec

from ...core.http import Headers
from ..types import Translated, TranslationError

_decode = msgspec.json.decode
_encode = msgspec.json.encode


_FINISH: Final[dict[str, str]] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


#: Finish reasons of an answer Gemini could not complete: it started a function call it
#: could not express. Read as ``stop`` an agent would take "no calls, no text" for "done",
#: so they are errors the client sees (502, which the router retries elsewhere).
_FAILED: Final[dict[str, str]] = {
    "MALFORMED_FUNCTION_CALL": "malformed_function_call",
    "UNEXPECTED_TOOL_CALL": "unexpected_tool_call",
    "TOO_MANY_TOOL_CALLS": "too_many_tool_calls",
}


def failed_finish(candidate: dict[str, Any]) -> dict[str, Any] | None:
    """The OpenAI error object for a candidate that ended in a failure, else None."""
    reason = candidate.get("finishReason")
    code = _FAILED.get(reason) if isinstance(reason, str) else None
    if code is None:
        return None
    detail = candidate.get("finishMessage")
    message = f"Gemini could not complete a function call (finishReason {reason})"
    if isinstance(detail, str) and detail:
        message += ": " + detail[:1000]
    return {"message": message, "type": "server_error", "param": None, "code": code}


def finish_reason(reason: Any, has_calls: bool) -> str:
    mapped = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if mapped == "stop" and has_calls else mapped


#: Gemini ``error.status`` → (OpenAI ``type``, ``code``, HTTP status when the answer had none).
_ERROR_KINDS: Final[dict[str, tuple[str, str | None, int]]] = {
    "INVALID_ARGUMENT": ("invalid_request_error", "invalid_argument", 400),
    "FAILED_PRECONDITION": ("invalid_request_error", "failed_precondition", 400),
    "OUT_OF_RANGE": ("invalid_request_error", "out_of_range", 400),
    "UNAUTHENTICATED": ("authentication_error", "invalid_api_key", 401),
    "PERMISSION_DENIED": ("permission_error", "permission_denied", 403),
    "NOT_FOUND": ("invalid_request_error", "not_found", 404),
    "RESOURCE_EXHAUSTED": ("rate_limit_error", "rate_limit_exceeded", 429),
    "CANCELLED": ("server_error", "cancelled", 499),
    "INTERNAL": ("server_error", "internal_error", 500),
    "UNAVAILABLE": ("service_unavailable", "unavailable", 503),
    "DEADLINE_EXCEEDED": ("timeout_error", "upstream_timeout", 504),
}


def error_fields(status: int, err: Any) -> tuple[int, dict[str, Any], Headers]:
    """A Gemini ``error`` object → (HTTP status, OpenAI ``error`` object, extra headers)."""
    err = err if isinstance(err, dict) else {}
    grpc = err.get("status") if isinstance(err.get("status"), str) else None
    kind = _ERROR_KINDS.get(grpc) if grpc else None
    if status < 400:
        code_num = err.get("code")
        status = (
            code_num
            if isinstance(code_num, int) and code_num >= 400
            else (kind[2] if kind else 502)
        )
    if kind is None:
        kind = (
            ("server_error", None, status)
            if status >= 500
            else ("rate_limit_error", "rate_limit_exceeded", status)
            if status == 429
            else ("invalid_request_error", None, status)
        )
    etype, code, _ = kind
    headers: Headers = []
    details = err.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("reason") == "API_KEY_INVALID":
            etype, code = "authentication_error", "invalid_api_key"
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = max(1, round(float(delay[:-1])))
            except ValueError:
                continue
            headers.append((b"retry-after", str(seconds).encode()))
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = f"Gemini upstream answered {status}"
    return status, {"message": message, "type": etype, "param": None, "code": code}, headers


def _error_translated(status: int, err: Any) -> Translated:
    status, fields, headers = error_fields(status, err)
    return Translated(status, _encode({"error": fields}), headers=headers)


def new_id() -> str:
    return secrets.token_hex(12)


def openai_usage(meta: Any) -> dict[str, Any] | None:
    if not isinstance(meta, dict):
        return None

    def count(key: str) -> int:
        value = meta.get(key)
        return value if isinstance(value, int) else 0

    prompt = count("promptTokenCount")
    thoughts = count("thoughtsTokenCount")
    completion = count("candidatesTokenCount") + thoughts
    total = count("totalTokenCount") or prompt + completion
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    }
    if "cachedContentTokenCount" in meta:
        usage["prompt_tokens_details"] = {"cached_tokens": count("cachedContentTokenCount")}
    if "thoughtsTokenCount" in meta:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


class Parts:
    """The OpenAI view of one candidate's ``content.parts``."""

    __slots__ = ("calls", "text", "thoughts")

    def __init__(self, candidate: dict[str, Any], call_id: Any) -> None:
        texts: list[str] = []
        thoughts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                (thoughts if part.get("thought") is True else texts).append(text)
                continue
            fc = part.get("functionCall")
            if isinstance(fc, dict):
                cid = fc.get("id")
                call: dict[str, Any] = {
                    "id": cid if isinstance(cid, str) and cid else call_id(),
                    "type": "function",
                    "function": {
                        "name": fc.get("name") or "",
                        "arguments": _encode(fc.get("args") or {}).decode(),
                    },
                }
                sig = part.get("thoughtSignature")
                if isinstance(sig, str) and sig:
                    call["extra_content"] = {"google": {"thought_signature": sig}}
                self.calls.append(call)
        self.text = "".join(texts)
        self.thoughts = "".join(thoughts)


def call_ids(response_id: str) -> Any:
    n = 0

    def next_id() -> str:
        nonlocal n
        n += 1
        return f"call_{response_id}_{n}"

    return next_id


def gemini_to_openai_response(
    status: int, body: bytes, *, model: str, created: int | None = None
) -> Translated:
    """Translate a non-streamed Gemini answer (or error) into an OpenAI answer."""
    try:
        data = _decode(body)
    except msgspec.DecodeError:
        data = None
    if status >= 400 or (isinstance(data, dict) and "error" in data):
        err = data.get("error") if isinstance(data, dict) else None
        if err is None:
            snippet = body[:200].decode("utf-8", "replace")
            err = {"message": f"Gemini upstream answered {status}: {snippet}"}
        return _error_translated(status, err)
    if not isinstance(data, dict):
        return _error_translated(502, {"message": "Gemini upstream answered invalid JSON"})

    response_id = data.get("responseId")
    rid = response_id if isinstance(response_id, str) and response_id else new_id()
    call_id = call_ids(rid)
    choices: list[dict[str, Any]] = []
    candidates = data.get("candidates")
    for pos, cand in enumerate(candidates if isinstance(candidates, list) else []):
        if not isinstance(cand, dict):
            continue
        failure = failed_finish(cand)
        if failure is not None:
            return Translated(502, _encode({"error": failure}))
        parts = Parts(cand, call_id)
        message: dict[str, Any] = {"role": "assistant", "content": parts.text or None}
        if parts.thoughts:
            message["reasoning_content"] = parts.thoughts
        if parts.calls:
            message["tool_calls"] = parts.calls
        index = cand.get("index")
        choices.append(
            {
                "index": index if isinstance(index, int) else pos,
                "message": message,
                "finish_reason": finish_reason(cand.get("finishReason"), bool(parts.calls)),
                "logprobs": None,
            }
        )
    if not choices:
        feedback = data.get("promptFeedback")
        blocked = isinstance(feedback, dict) and feedback.get("blockReason")
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None},
                "finish_reason": "content_filter" if blocked else "stop",
                "logprobs": None,
            }
        )
    out: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": choices,
    }
    usage = openai_usage(data.get("usageMetadata"))
    if usage is not None:
        out["usage"] = usage
    return Translated(200, _encode(out))


def gemini_model_page(body: bytes) -> tuple[tuple[str, ...], str | None]:
    """Model ids from one page of a ``models.list`` answer, keeping those that can
    ``generateContent``, and its ``nextPageToken`` (``None`` on the last page)."""
    try:
        data = _decode(body)
    except msgspec.DecodeError:
        raise TranslationError("models list is not valid JSON") from None
    token = data.get("nextPageToken") if isinstance(data, dict) else None
    models = data.get("models") if isinstance(data, dict) else None
    out: list[str] = []
    for entry in models if isinstance(models, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        methods = entry.get("supportedGenerationMethods")
        if isinstance(methods, list) and "generateContent" not in methods:
            continue
        name: str = entry["name"]
        out.append(name.removeprefix("models/"))
    return tuple(out), token if isinstance(token, str) and token else None
