"""Gemini ``streamGenerateContent?alt=sse`` → OpenAI ``chat.completion.chunk`` SSE."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ...core.errors import openai_error_body
from ...core.sse import DONE_EVENT, SSEReader, SSETooLarge
from ..limits import MAX_EVENT_BYTES
from ._response import (
    Parts,
    call_ids,
    error_fields,
    failed_finish,
    finish_reason,
    new_id,
    openai_usage,
)

_decode = msgspec.json.decode
_encode = msgspec.json.encode


class GeminiToOpenAIStream:
    """Gemini ``streamGenerateContent?alt=sse`` bytes → OpenAI chunk SSE bytes (StreamTranslator).

    Per candidate: a role chunk the first time it appears, one chunk per event with its text
    (and ``reasoning_content`` for thought summaries), one chunk per function call carrying the
    whole arguments, and a finish chunk when ``finishReason`` arrives. ``finish`` adds the usage
    chunk (when ``include_usage`` and Gemini reported usage) and ``data: [DONE]``; a stream that
    ended without any ``finishReason`` is a truncation and ends with an error event instead,
    and so does a failed function call (``MALFORMED_FUNCTION_CALL`` …) or an event past
    :data:`MAX_EVENT_BYTES` (both count as the backend's failure). With ``early_usage`` (the
    chunk stream goes on into another translator, which reports usage at the start) the
    first chunk also carries the usage Gemini sent with the first event.
    """

    __slots__ = (
        "_call_id",
        "_created",
        "_done",
        "_early_usage",
        "_finished",
        "_id",
        "_include_usage",
        "_model",
        "_prefix",
        "_reader",
        "_started",
        "_tool_index",
        "_usage",
        "truncated",
    )

    def __init__(
        self,
        model: str,
        include_usage: bool,
        *,
        created: int | None = None,
        early_usage: bool = False,
    ) -> None:
        self._model = model
        self._include_usage = include_usage
        self._early_usage = early_usage
        self._created = int(time.time()) if created is None else created
        #: True once ``finish`` found the stream cut short (the router counts it a failure).
        self.truncated = False
        self._reader = SSEReader(MAX_EVENT_BYTES)
        self._id: str | None = None
        self._call_id: Any = None
        self._prefix = b""
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._tool_index: dict[int, int] = {}
        self._usage: dict[str, Any] | None = None
        self._done = False

    # --- StreamTranslator -------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        try:
            payloads = self._reader.feed(data)
        except SSETooLarge as exc:
            self.truncated = True
            return self.error(502, f"Gemini stream cannot be translated: {exc}")
        for payload in payloads:  # event:, id:, retry: carry nothing here
            out.append(self._event(payload))
            if self._done:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        for payload in self._reader.tail():  # a last event without its blank line
            out.append(self._event(payload))
        if self._done:
            return b"".join(out)
        if not self._finished:
            self.truncated = True
            out.append(self.error(502, "Gemini stream ended before a finish reason"))
            return b"".join(out)
        if self._include_usage and self._usage is not None:
            out.append(self._sse({**self._head(), "choices": [], "usage": self._usage}))
        out.append(DONE_EVENT)
        self._done = True
        return b"".join(out)

    def error(self, status: int, message: str) -> bytes:
        if self._done:
            return b""
        self._done = True
        return b"data: " + openai_error_body(status, message) + b"\n\n" + DONE_EVENT

    # --- internals --------------------------------------------------------------------------

    def _head(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    @staticmethod
    def _sse(obj: dict[str, Any]) -> bytes:
        return b"data: " + _encode(obj) + b"\n\n"

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None,
               usage: dict[str, Any] | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if usage is None:
            return self._sse({**self._head(), "choices": [choice]})
        return self._sse({**self._head(), "choices": [choice], "usage": usage})

    def _event(self, payload: bytes) -> bytes:
        try:
            data = _decode(payload)
        except msgspec.DecodeError:
            return self.error(502, "Gemini stream sent an event that is not valid JSON")
        if not isinstance(data, dict):
            return self.error(502, "Gemini stream sent an event that is not a JSON object")
        if "error" in data:
            self._done = True
            _, fields, _ = error_fields(0, data["error"])
            return self._sse({"error": fields}) + DONE_EVENT
        if self._id is None:
            rid = data.get("responseId")
            rid = rid if isinstance(rid, str) and rid else new_id()
            self._id = f"chatcmpl-{rid}"
            self._call_id = call_ids(rid)
        usage = openai_usage(data.get("usageMetadata"))
        if usage is not None:
            self._usage = usage

        out: list[bytes] = []
        candidates = data.get("candidates")
        cands = candidates if isinstance(candidates, list) else []
        for pos, cand in enumerate(cands):
            if not isinstance(cand, dict):
                continue
            index = cand.get("index")
            index = index if isinstance(index, int) else pos
            if index in self._finished:
                continue
            if index not in self._started:
                first = not self._started
                self._started.add(index)
                role = self._chunk(index, {"role": "assistant", "content": ""},
                                   usage=self._usage if first and self._early_usage else None)
                out.append(role)
            parts = Parts(cand, self._call_id)
            delta: dict[str, Any] = {}
            if parts.thoughts:
                delta["reasoning_content"] = parts.thoughts
            if parts.text:
                delta["content"] = parts.text
            if delta:
                out.append(self._chunk(index, delta))
            for call in parts.calls:
                k = self._tool_index.get(index, 0)
                self._tool_index[index] = k + 1
                out.append(self._chunk(index, {"tool_calls": [{"index": k, **call}]}))
            failure = failed_finish(cand)
            if failure is not None:
                self.truncated = True
                self._done = True
                out.append(self._sse({"error": failure}) + DONE_EVENT)
                break
            reason = cand.get("finishReason")
            if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
                self._finished.add(index)
                has_calls = self._tool_index.get(index, 0) > 0
                out.append(self._chunk(index, {}, finish_reason(reason, has_calls)))
        if not cands:
            feedback = data.get("promptFeedback")
            if (
                isinstance(feedback, dict)
                and feedback.get("blockReason")
                and 0 not in self._finished
            ):
                if 0 not in self._started:
                    self._started.add(0)
                    out.append(self._chunk(0, {"role": "assistant", "content": ""}))
                self._finished.add(0)
                out.append(self._chunk(0, {}, "content_filter"))
        return b"".join(out)
