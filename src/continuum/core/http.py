"""HTTP shapes every layer shares.

Headers travel as a list of ``(name, value)`` byte pairs, names lower-cased, in wire order:
what httptools and h2 hand over and what a response is written from, with no dict built per
request and repeated fields kept as they came.
"""

from __future__ import annotations

from typing import TypeAlias

Headers: TypeAlias = list[tuple[bytes, bytes]]


def head_lines(head: bytes) -> Headers:
    """Pre-encoded ``name: value\\r\\n`` lines (a response's extra head: CORS, x-ratelimit-*)
    as pairs, for a writer that takes pairs (an ASGI server, a WebSocket handshake)."""
    out: Headers = []
    for line in head.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().lower(), value.strip()))
    return out
