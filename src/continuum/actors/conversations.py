"""Where the Responses bridge keeps stored responses (``responses.store``): in process,
or in Redis so that every router sharing that server continues every conversation.

Both are a :class:`~continuum.apis.responses.ConversationStore`. The Redis one is a small
class over :class:`~continuum.net.redis.RedisClient`: one key per response, holding the
three parts of a :class:`~continuum.apis.responses.StoredResponse` (MessagePack), expiring
with Redis's own TTL. A Redis that fails raises :class:`StoreUnavailable`: a request that
needs a stored turn is answered 503, one that only stores its own is answered anyway (its
turn cannot be continued) and the failure is logged.
"""

from __future__ import annotations

import logging
from typing import Final, final

import msgspec

from ..apis.responses import ConversationStore, MemoryConversationStore, StoredResponse
from ..config import ResponsesConfig
from ..core.clock import now as clock
from ..net.redis import RedisClient, RedisError

log = logging.getLogger("continuum.responses")

#: What a Redis reply may add to the entry it carries (framing).
_REPLY_MARGIN: Final = 4096

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[bytes, bytes, bytes]).decode


class StoreUnavailable(Exception):
    """The shared store could not be reached (or answered nonsense)."""


@final
class RedisConversationStore:
    """Stored responses in Redis: ``<prefix><response id>`` → (response, input items,
    conversation), set with ``PX`` = the TTL; entries larger than ``max_bytes`` are not
    stored."""

    __slots__ = ("_client", "_prefix", "_ttl_ms", "max_bytes")

    def __init__(self, client: RedisClient, *, prefix: str, ttl: float,
                 max_bytes: int) -> None:
        self._client = client
        self._prefix = prefix.encode()
        self._ttl_ms = max(1, int(ttl * 1000))
        self.max_bytes = max_bytes

    def _key(self, response_id: str) -> bytes:
        return self._prefix + response_id.encode()

    async def get(self, response_id: str) -> StoredResponse | None:
        try:
            raw = await self._client.execute("GET", self._key(response_id))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        if raw is None:
            return None
        if not isinstance(raw, bytes):
            raise StoreUnavailable("Redis answered GET with something other than bytes")
        try:
            response, items, conversation = _decode(raw)
        except msgspec.DecodeError:
            log.warning("stored response %s is unreadable; ignored", response_id[:100])
            return None
        return StoredResponse(response_id, response, items, conversation)

    async def put(self, stored: StoredResponse) -> bool:
        if stored.size > self.max_bytes:
            return False
        value = _encode((stored.response, stored.input_items, stored.conversation))
        try:
            await self._client.execute("SET", self._key(stored.id), value, "PX", self._ttl_ms)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return True

    async def delete(self, response_id: str) -> bool:
        try:
            removed = await self._client.execute("DEL", self._key(response_id))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return bool(removed == 1)

    async def aclose(self) -> None:
        await self._client.aclose()


def open_store(config: ResponsesConfig) -> ConversationStore:
    """The store ``config`` asks for (a Redis client connects on first use)."""
    if config.store == "redis":
        redis = config.redis
        client = RedisClient.from_url(redis.url, timeout=redis.timeout,
                                      max_reply_bytes=config.max_bytes + _REPLY_MARGIN)
        return RedisConversationStore(client, prefix=redis.key_prefix, ttl=config.ttl,
                                      max_bytes=config.max_bytes)
    return MemoryConversationStore(clock=clock, max_entries=config.max_entries,
                                   max_bytes=config.max_bytes, ttl=config.ttl)
