"""What the mock's API halves share: the reply shapes, the settings an answer depends on,
the mock's tokenizer and text pieces (the pacing of streams), the fixed model facts, the
tool-call trigger, and the first half of every ``malformed`` failure.

Plain data and functions, no I/O (:mod:`._upstream` does it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import msgspec

from ..core.errors import JSON_HEADERS
from ..core.http import Headers

_encode: Final = msgspec.json.Encoder().encode

#: ``created`` of every model in ``/v1/models`` (fixed, so listings compare equal).
MODEL_CREATED: Final = 1_700_000_000
#: The same instant in RFC 3339, as Anthropic's model objects give it (``created_at``).
MODEL_CREATED_AT: Final = (
    datetime.fromtimestamp(MODEL_CREATED, UTC).isoformat().replace("+00:00", "Z")
)
#: The input a triggered tool call carries.
TOOL_INPUT: Final[dict[str, str]] = {"location": "Paris"}
#: Word (case-insensitive, whole word) in the last user turn that triggers a tool call.
TOOL_TRIGGER: Final = re.compile(r"\bweather\b", re.IGNORECASE)
_SUMMARY_LENGTH: Final = 80

SSE_HEADERS: Final[Headers] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response: status, JSON body and any extra headers (content-type is added)."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def header_list(self) -> Headers:
        return [*JSON_HEADERS, *self.headers]


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A streamed (SSE) answer: ``(pause_before, event_bytes)`` pairs, ``[DONE]`` included."""

    events: tuple[tuple[float, bytes], ...]


def json_reply(obj: object, status: int = 200) -> Reply:
    return Reply(status, _encode(obj))


def count_tokens(text: str) -> int:
    """The mock's tokenizer: whitespace-separated words."""
    return len(text.split())


def summarize(text: str) -> str:
    """Whitespace collapsed, cut to ~80 characters."""
    flat = " ".join(text.split())
    if len(flat) > _SUMMARY_LENGTH:
        flat = flat[: _SUMMARY_LENGTH - 3] + "..."
    return flat


def split_pieces(text: str, n: int) -> list[str]:
    """``text`` cut into ``n`` non-empty pieces of near-equal length (padded with '.')."""
    if n <= 0:
        return []
    if len(text) < n:
        text += "." * (n - len(text))
    size, extra = divmod(len(text), n)
    pieces: list[str] = []
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


@dataclass(frozen=True, slots=True)
class Settings:
    """What a single answer depends on besides the request body."""

    models: tuple[str, ...]
    stream_chunks: int
    tokens_per_second: float
    ident: str  # the response id suffix, unique per response
    created: int  # unix seconds

    @property
    def pace(self) -> float:
        """Seconds before each streamed token (``tokens_per_second``; 0: unpaced)."""
        tps = self.tokens_per_second
        return 1.0 / tps if tps > 0 else 0.0


def malformed_reply(reply: Reply) -> Reply:
    """A 200 whose JSON is cut in half, so no parser accepts it (each API's ``malformed``
    cuts a stream's first event in its own framing)."""
    body = reply.body[: max(1, len(reply.body) // 2)]
    return Reply(200, body if body != reply.body else b"{", reply.headers)


def display_name(model: str) -> str:
    words = [w for w in re.split(r"[-_/\s]+", model) if w]
    return " ".join(w[:1].upper() + w[1:] for w in words) or model
