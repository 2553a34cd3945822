"""Stored responses, so ``previous_response_id`` chains turns through any backend.

A chat backend keeps no state: to continue a conversation the bridge sends it every
earlier item again. Each stored response therefore carries the whole conversation up to
its own output (not just a link to its predecessor), so a chain survives the eviction of
its older turns. Entries are encoded JSON: their size is exact for the byte bound, and a
shared store (Redis) can keep the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, final

import msgspec

from ._common import JSON, decode

__all__ = ["ConversationStore", "MemoryConversationStore", "StoredResponse"]


class StoredResponse(msgspec.Struct, frozen=True):
    """One stored response."""

    id: str
    #: The Response object JSON, as ``GET /v1/responses/{id}`` answers it.
    response: bytes
    #: JSON list: the input items of this turn (``GET /v1/responses/{id}/input_items``).
    input_items: bytes
    #: JSON list: every item of the conversation through this response's output (the
    #: instructions excepted: a turn's instructions are not carried to the next).
    conversation: bytes

    @property
    def size(self) -> int:
        return len(self.response) + len(self.input_items) + len(self.conversation)

    def items(self) -> list[JSON]:
        """The conversation's items, for the next turn's request."""
        items: list[JSON] = decode(self.conversation)
        return items


class ConversationStore(Protocol):
    """Where stored responses live. Async, so a shared (networked) store fits the same
    seam; the in-memory one never suspends."""

    async def get(self, response_id: str) -> StoredResponse | None: ...

    async def put(self, stored: StoredResponse) -> bool:
        """Keep ``stored`` (replacing one with its id); False when it is too large."""
        ...

    async def delete(self, response_id: str) -> bool:
        """Forget a response; False when there was none (or it had expired)."""
        ...


@final
class MemoryConversationStore:
    """A bounded in-process store: at most ``max_entries`` responses and ``max_bytes`` of
    them, each for ``ttl`` seconds after it was stored, oldest evicted first.

    ``clock`` gives seconds (any origin); tests pass their own.
    """

    __slots__ = ("_bytes", "_clock", "_entries", "max_bytes", "max_entries", "ttl")

    def __init__(
        self, *, clock: Callable[[], float], max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024, ttl: float = 3600.0,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or ttl <= 0:
            raise ValueError("max_entries, max_bytes and ttl must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        #: id → (expiry, entry), oldest first: with one ttl for all, the order of insertion
        #: is the order of expiry.
        self._entries: dict[str, tuple[float, StoredResponse]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The size of the entries held (expired ones not yet swept included)."""
        return self._bytes

    async def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._remove(response_id)
            return None
        return entry[1]

    async def put(self, stored: StoredResponse) -> bool:
        self._remove(stored.id)
        size = stored.size
        if size > self.max_bytes:
            return False
        now = self._clock()
        self._entries[stored.id] = (now + self.ttl, stored)
        self._bytes += size
        self._evict(now)
        return True

    async def delete(self, response_id: str) -> bool:
        entry = self._entries.get(response_id)
        if entry is None:
            return False
        self._remove(response_id)
        return entry[0] > self._clock()

    def _remove(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= entry[1].size

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            expiry = entries[oldest][0]
            if (expiry > now and len(entries) <= self.max_entries
                    and self._bytes <= self.max_bytes):
                return
            self._remove(oldest)
