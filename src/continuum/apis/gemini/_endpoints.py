"""Model discovery (``models.list``) and Gemini's own OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Final

import msgspec

from ..types import Headers, TranslationError, UpstreamCall
from ._request import gemini_auth_headers

_decode = msgspec.json.decode


def gemini_models_call(api_key: str | None) -> UpstreamCall:
    """The ``models.list`` request (also a cheap health probe)."""
    headers = [h for h in gemini_auth_headers(api_key) if h[0] != b"content-type"]
    return UpstreamCall(b"GET", b"/v1beta/models?pageSize=1000", headers, b"")


def gemini_models(body: bytes) -> tuple[str, ...]:
    """Model ids from a ``models.list`` answer, keeping those that can ``generateContent``."""
    try:
        data = _decode(body)
    except msgspec.DecodeError:
        raise TranslationError("models list is not valid JSON") from None
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
    return tuple(out)


_COMPAT_PREFIX: Final = b"/v1beta/openai/"


def openai_compat_path(path: bytes) -> bytes:
    """``/v1/chat/completions`` → ``/v1beta/openai/chat/completions`` (any ``/v1/`` path;
    the query string is kept). For Gemini's OpenAI-compatible endpoint, a pass-through mode."""
    if path.startswith(b"/v1/"):
        return _COMPAT_PREFIX + path[4:]
    if path.startswith(_COMPAT_PREFIX):
        return path
    raise TranslationError(f"no Gemini OpenAI-compatible path for {path.decode(errors='replace')}")


def openai_compat_headers(api_key: str | None) -> Headers:
    """Auth for Gemini's OpenAI-compatible endpoint: ``authorization: Bearer <key>``."""
    return [(b"authorization", b"Bearer " + api_key.encode())] if api_key else []
