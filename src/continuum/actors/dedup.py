"""Request deduplication: identical concurrent requests share one upstream call.

Two parts, both free of I/O:

* :func:`dedup_key` decides whether a request may be deduplicated at all and, if so, turns it
  into a short key (endpoint path, API key and the body in a canonical form).
* :class:`Deduplicator` runs at most one ``produce()`` per key at a time. Callers that arrive
  while it runs wait for it and get its answer (``"shared"``); a successful (2xx), not too
  large answer is kept for ``ttl`` seconds and served to later callers (``"hit"``).

Failure rules:

* An error *answer* (a non-2xx :class:`StoredResponse`) is shared with the callers already
  waiting on that call, but never stored.
* An *exception* from ``produce()`` (an ``Exception``) is re-raised in every waiting caller —
  the same exception object, with the producer's traceback — and nothing is stored.
* A producer that is *cancelled* (its client went away, its deadline passed) or stopped by
  any other ``BaseException`` does not take its followers down: they wake up, and the first
  one becomes the new producer while the others wait on it.

Each :class:`Deduplicator` owns its state; there is no module-level state, so several routers
can live in one process.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, Literal, final

import msgspec
import trio

__all__ = ["Deduplicator", "Outcome", "StoredResponse", "dedup_key"]

Outcome = Literal["miss", "shared", "hit"]

_decode = msgspec.json.decode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_SEP: Final = b"\x00"


class StoredResponse(msgspec.Struct, frozen=True):
    """A complete, non-streamed answer, as it will be written back to every client."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _deterministic(path: str, request: dict[str, Any]) -> bool:
    """Embeddings always; sampling endpoints only with ``temperature == 0`` or a ``seed``, and
    a single choice (``n`` absent, null or 1)."""
    if path.rstrip("/").endswith("/embeddings"):
        return True
    n = request.get("n")
    if n is not None and not (_is_number(n) and n == 1):
        return False
    temperature = request.get("temperature")
    if _is_number(temperature) and temperature == 0:
        return True
    return request.get("seed") is not None


def dedup_key(
    path: str, body: bytes, api_key: bytes | None, *, include_nondeterministic: bool
) -> bytes | None:
    """The deduplication key of a request, or ``None`` when it must not be deduplicated.

    ``None`` for: a body that is not a JSON object (or is malformed, not UTF-8, nested too
    deeply, or holds numbers out of range), ``"stream"`` set to anything but ``false``/``null``,
    and non-deterministic sampling unless ``include_nondeterministic``.

    The body is decoded and re-encoded with sorted keys, so whitespace and key order do not
    change the key. The key is a 16-byte BLAKE2b digest of
    ``path NUL api_key NUL canonical_body``; ``path`` should include the query string if the
    caller forwards one.
    """
    try:
        request = _decode(body)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return None
    if not isinstance(request, dict):
        return None
    stream = request.get("stream")
    if stream is not None and stream is not False:
        return None
    if not include_nondeterministic and not _deterministic(path, request):
        return None
    try:
        canonical = _encode_sorted(request)
    except (msgspec.MsgspecError, RecursionError, ValueError):  # pragma: no cover - defensive
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(path.encode("utf-8", "surrogatepass"))
    digest.update(_SEP)
    digest.update(api_key or b"")
    digest.update(_SEP)
    digest.update(canonical)
    return digest.digest()


@final
class _Flight:
    """One running ``produce()`` and what it ended with."""

    __slots__ = ("done", "error", "response", "traceback")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: StoredResponse | None = None
        self.error: Exception | None = None
        self.traceback: TracebackType | None = None
        # Neither set when done: the producer was cancelled; followers start over.


@final
class Deduplicator:
    """Single-flight plus a short TTL store of successful answers, keyed by :func:`dedup_key`.

    ``ttl`` <= 0 disables the store (in-flight sharing only). At most ``max_entries`` answers
    are kept (the oldest go first); answers with a body over ``max_body`` bytes are shared in
    flight but never kept. Counters for metrics: ``hits``, ``misses`` (calls to ``produce``),
    ``shared`` (callers that joined a running call and got its answer) and ``evictions``
    (stored answers dropped because they expired or to make room).
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 10_000,
        max_body: int = 1 << 20,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_body = max_body
        self._clock = clock
        # key -> (expires_at, response); insertion order is expiry order (ttl is fixed and
        # the clock monotonic), so expired entries are always at the front.
        self._store: OrderedDict[bytes, tuple[float, StoredResponse]] = OrderedDict()
        self._flights: dict[bytes, _Flight] = {}
        self.hits = 0
        self.misses = 0
        self.shared = 0
        self.evictions = 0

    def __len__(self) -> int:
        """Stored answers (expired ones not yet evicted included)."""
        return len(self._store)

    @property
    def in_flight(self) -> int:
        """Keys with a ``produce()`` running right now."""
        return len(self._flights)

    def clear(self) -> None:
        """Drop every stored answer (running calls are not affected); not counted as evictions."""
        self._store.clear()

    async def run(
        self, key: bytes, produce: Callable[[], Awaitable[StoredResponse]]
    ) -> tuple[StoredResponse, Outcome]:
        """The answer for ``key``: stored, joined from a running call, or produced here."""
        while True:
            now = self._clock()
            store = self._store
            if store:
                self._evict_expired(now)
                entry = store.get(key)
                if entry is not None:
                    self.hits += 1
                    return entry[1], "hit"
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, produce), "miss"
            await flight.done.wait()
            if flight.response is not None:
                self.shared += 1
                return flight.response, "shared"
            if flight.error is not None:
                raise flight.error.with_traceback(flight.traceback)
            # The producer was cancelled: start over (the first of us to wake produces).

    async def _lead(
        self, key: bytes, produce: Callable[[], Awaitable[StoredResponse]]
    ) -> StoredResponse:
        flight = _Flight()
        self._flights[key] = flight
        self.misses += 1
        try:
            response = await produce()
        except Exception as exc:
            flight.error = exc
            flight.traceback = exc.__traceback__
            raise
        else:
            flight.response = response
            self._maybe_store(key, response)
            return response
        finally:
            # Every outcome, cancellation included: no follower wakes before this has run,
            # and a follower that finds neither a response nor an error starts over.
            del self._flights[key]
            flight.done.set()

    def _maybe_store(self, key: bytes, response: StoredResponse) -> None:
        if (
            self.ttl <= 0
            or self.max_entries == 0
            or not 200 <= response.status < 300
            or len(response.body) > self.max_body
        ):
            return
        store = self._store
        store.pop(key, None)
        store[key] = (self._clock() + self.ttl, response)
        while len(store) > self.max_entries:
            store.popitem(last=False)
            self.evictions += 1

    def _evict_expired(self, now: float) -> None:
        store = self._store
        while store:
            key, (expires, _) = next(iter(store.items()))
            if expires > now:
                return
            del store[key]
            self.evictions += 1
