"""Load-balancing strategies: pure, synchronous choice among eligible backends.

A strategy sees the eligible candidates for one model (available, serving it, not yet tried
for this request) and returns one. It never awaits and does no I/O, so the Router calls it on
the request path with no actor round trip; randomness and time come in through an injected
``random.Random`` and clock, so every strategy is deterministic under test.

The Router tells the strategy how each attempt went through :meth:`Strategy.record`;
LeastLatency learns from it, the others ignore it (or pass it on to their fallback).

All state lives in the strategy instance: several routers in one process do not share it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol, TypeVar, final, get_args

import msgspec

__all__ = [
    "DEFAULT_OPTIONS",
    "STRATEGY_NAMES",
    "Candidate",
    "ConsistentHash",
    "LeastConnections",
    "LeastLatency",
    "RandomChoice",
    "RoundRobin",
    "RouteKey",
    "Strategy",
    "StrategyName",
    "StrategyOptions",
    "WeightedRoundRobin",
    "make_strategy",
]

#: What ``routing.strategy`` and ``routing.fallback_strategy`` may name (a config value; a
#: :class:`Strategy` is the object that does the choosing).
StrategyName = Literal[
    "RoundRobin",
    "WeightedRoundRobin",
    "LeastLatency",
    "Random",
    "ConsistentHash",
    "LeastConnections",
]


class Candidate(Protocol):
    """What a strategy may read of a backend (``BackendActor`` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> int:
        """>= 1; WeightedRoundRobin's share and ConsistentHash's ring points scale with it."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests in flight on this backend right now."""
        ...


C = TypeVar("C", bound=Candidate)


@final
class RouteKey:
    """The per-request inputs a strategy may use (a plain slotted class: one is made per
    request, and a frozen dataclass's __init__ costs several times more)."""

    __slots__ = ("hash_key", "model")

    def __init__(self, model: str, hash_key: str | None = None) -> None:
        self.model = model
        #: ConsistentHash's key (session header, ``user`` field or API key); None if absent.
        self.hash_key = hash_key

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RouteKey) and self.model == other.model
                and self.hash_key == other.hash_key)

    def __hash__(self) -> int:
        return hash((self.model, self.hash_key))

    def __repr__(self) -> str:
        return f"RouteKey({self.model!r}, {self.hash_key!r})"


class Strategy(Protocol):
    name: str
    #: Does ``record`` learn anything? False lets the Router skip the call per attempt
    #: (the rotations and random choice keep no outcome).
    learns: bool

    def choose(self, key: RouteKey, candidates: Sequence[C]) -> C:
        """One of ``candidates``, which is never empty and keeps a stable order between
        calls (the Router's configuration order, minus the backends not eligible now)."""
        ...

    def record(self, backend: str, model: str, latency: float | None, ok: bool) -> None:
        """The outcome of one attempt on ``backend`` for ``model``: ``latency`` in seconds
        (None when it failed before an answer); ``ok`` False when the backend failed."""
        ...


class StrategyOptions(msgspec.Struct, frozen=True):
    #: LeastLatency: weight of the newest sample in the EWMA, in (0, 1].
    ewma_alpha: float = 0.3
    #: LeastLatency: probability of sending a request to a backend other than the best.
    exploration: float = 0.05
    #: LeastLatency: seconds after which a backend's last sample no longer counts, so a
    #: backend that recovered (or was starved) is treated as new and gets traffic again.
    stale_after: float = 30.0
    #: ConsistentHash bounded load: no backend takes more than
    #: ``ceil(factor * (sum of in-flight + 1) / n)`` requests; >= 1.
    hash_load_factor: float = 1.25
    #: ConsistentHash: ring points per backend, multiplied by the backend's weight.
    virtual_nodes: int = 160

    def __post_init__(self) -> None:
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], not {self.ewma_alpha}")
        if not 0.0 <= self.exploration <= 1.0:
            raise ValueError(f"exploration must be in [0, 1], not {self.exploration}")
        if not self.stale_after > 0.0:
            raise ValueError(f"stale_after must be positive, not {self.stale_after}")
        if not self.hash_load_factor >= 1.0:
            raise ValueError(f"hash_load_factor must be >= 1, not {self.hash_load_factor}")
        if self.virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, not {self.virtual_nodes}")


DEFAULT_OPTIONS: Final = StrategyOptions()


# --------------------------------------------------------------------------------------
# Strategies that need no outcomes
# --------------------------------------------------------------------------------------


@final
class RoundRobin:
    """Strict rotation. Each model has its own cursor, so one busy model does not skew
    another's spread."""

    __slots__ = ("_cursors",)
    name = "RoundRobin"
    learns = False

    def __init__(self) -> None:
        self._cursors: dict[str, int] = {}

    def choose(self, key: RouteKey, candidates: Sequence[C]) -> C:
        cursors = self._cursors
        model = key.model
        n = cursors.get(model, 0)
        cursors[model] = n + 1
        return candidates[n % len(candidates)]

    def record(self, backend: str, model: str, latency: float | None, ok: bool) -> None:
        pass


@final
class WeightedRoundRobin:
    """Smooth weighted round robin (nginx's algorithm), per model.

    On each pick every candidate's *current* value grows by its weight, the candidate with
    the largest current value is picked (the first one on a tie) and its value drops by the
    total weight. Weights 5:1 give ``a a b a a a`` rather than five a's then one b; over
    ``sum(weights)`` picks each backend is picked exactly ``weight`` times.

    Current values are kept by backend name, so a backend that leaves the candidate set
    (unhealthy, already tried for this request) keeps its place for when it returns.
    """

    __slots__ = ("_current",)
    name = "WeightedRoundRobin"
    learns = False

    def __init__(self) -> None:
        self._current: dict[str, dict[str, int]] = {}

    def choose(self, key: RouteKey, candidates: Sequence[C]) -> C:
        current = self._current.get(key.model)
        if current is None:
            current = self._current[key.model] = {}
        total = 0
        best = candidates[0]
        best_value = -math.inf
        for c in candidates:
            weight = c.weight
            total += weight
            value = current.get(c.name, 0) + weight
            current[c.name] = value
            if value > best_value:
                best, best_value = c, value
        current[best.name] -= total
        return best

    def record(self, backend: str, model: str, latency: float | None, ok: bool) -> None:
        pass


@final
class RandomChoice:
    """Uniform choice with the injected ``random.Random``. Its ``name`` is ``"Random"``
    (the class is not called ``Random`` so it cannot be mistaken for ``random.Random``)."""

    __slots__ = ("_rng",)
    name = "Random"
    learns = False

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, key: RouteKey, candidates: Sequence[C]) -> C:
        return candidates[int(self._rng.random() * len(candidates))]

    def record(self, backend: str, model: str, latency: float | None, ok: bool) -> None:
        pass


@final
class LeastConnections:
    """The candidate with the fewest requests in flight; candidates tied for fewest take
    turns (a per-model cursor), so idle backends share the load instead of the first one
    taking every request."""

    __slots__ = ("_cursors",)
    name = "LeastConnections"
    learns = False

    def __init__(self) -> None:
        self._cursors: dict[str, int] = {}

    def choose(self, key: RouteKey, candidates: Sequence[C]) -> C:
        best = candidates[0]
        low = best.in_flight
        ties = 0
        for c in candidates:
            n = c.in_flight
            if n < low:
                best, low, ties = c, n, 1
            elif n == low:
                ties += 1
        if ties == 1:
            return best
        cursors = self._cursors
        turn = cursors.get(key.model, 0)
        cursors[key.model] = turn + 1
        turn %= ties
        for c in candidates:
            if c.in_flight == low:
                if turn == 0:
                    return c
                turn -= 1
        return best  # not reached: ``ties`` candidates have ``low`` in flight

    def record(self, backend: str, model: str, latency: float | None, ok: bool) -> None:
        pass


# --------------------------------------------------------------------------------------
# LeastLatency
# --------------------------------------------------------------------------------------


@final
class _Latency:
    __slots__ = ("at", "ewma")

    def __init__(self, ewma: float, at: float) -> None:
        self.ewma = ewma  #: seconds; ``inf`` when only failures were seen since it went stale
        self.at = at  #: clock time of the last sample (success or failure)


@final
class LeastLatency:
    """The backend with the lowest latency EWMA for the model, with some exploration.

    **Learning** (``record``, per backend and model, times from the injected clock):

    - an ok outcome with a latency updates the EWMA:
      ``ewma = alpha * latency + (1 - alpha) * ewma`` (the first sample sets it);
    - a failure (``ok`` False) doubles the EWMA (or raises it to the failure's latency if
      that is larger); a backend with no fresh data that fails is marked *failed*
      (EWMA infinite) until an ok sample replaces it;
    - an ok outcome without a latency teaches nothing;
    - a sample older than ``stale_after`` no longer counts: the next sample starts afresh.

    **Choosing** splits the candidates into *measured* (fresh, finite EWMA), *failed*
    (fresh, only failures) and *unmeasured* (no sample, or the last one is stale):

    1. no measured candidate: the fallback strategy chooses among the unmeasured ones, or
       among all candidates if every one has failed. With no data at all, every request
       goes through the fallback (RoundRobin by default).
    2. some measured and some unmeasured: with probability ``exploration`` the fallback
       chooses among the unmeasured (so a new or recovered backend is tried soon and then
       competes on its EWMA); otherwise the measured one with the lowest EWMA.
    3. every candidate has fresh data: with probability ``exploration`` a uniformly random
       candidate other than the best (failed ones included, so they are re-tried);
       otherwise the best. The best gets ``1 - exploration`` of the traffic.

    Ties on the EWMA go to the earlier candidate.
    """

    __slots__ = ("_alpha", "_clock", "_exploration", "_fallback", "_rng", "_stale_after",
                 "_stats")
    name = "LeastLatency"
    learns = True

    def __init__(
        self,
        fallback: Strategy,
        options: StrategyOptions,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self._fallback = fallback
        self._alpha = options.ewma_alpha
        self._exploration = options.exploration
        self._stale_after = options.stale_after
        self._rng = rng
        self._clock = clock
        #: model → backend name → latency state.
        self._stats: dict[str, dict[str, _Latency]] = {}

    def ewma(self, backend: str, model: str) -> float | None:
        """The latency EWMA the strategy uses for ``backend`` and ``model`` (seconds;
        ``inf`` if only failures were seen), or None with no fresh data."""
        stat = self._stats.get(model, {}).get(backend)
        if stat is None or stat.at < self._clock() - self._stale_after:
            return None
        return stat.ewma

    def choose(self, key: RouteKey, candidates: Sequence[C]) -> C:
        stats = self._stats.get(key.model)
        if not stats:
            return self._fallback.choose(key, candidates)
        horizon = self._clock() - self._stale_after
        best: C | None = None
        best_ewma = math.inf
        unmeasured: list[C] = []
        for c in candidates:
            stat = stats.get(c.name)
            if stat is None or stat.at < horizon:
                unmeasured.append(c)
            elif stat.ewma < best_ewma:
                best, best_ewma = c, stat.ewma
        if best is None:
            return self._fallback.choose(key, unmeasured or candidates)
        explore = self._exploration > 0.0 and self._rng.random() < self._exploration
        if unmeasured:
            return self._fallback.choose(key, unmeasured) if explore else best
        if explore and len(candidates) > 1:
            i = int(self._rng.random() * (len(candidates) - 1))
            return candidates[i] if candidates[i] is not best else candidates[-1]
        return best

    def record(self, backend: str, model: str, latency: float | None, ok: bool) -> None:
        self._fallback.record(backend, model, latency, ok)
        if ok and latency is None:
            return
        now = self._clock()
        stats = self._stats.get(model)
        if stats is None:
            stats = self._stats[model] = {}
        stat = stats.get(backend)
        if stat is None or stat.at < now - self._stale_after:
            stats[backend] = _Latency(latency if ok and latency is not None else math.inf, now)
            return
        stat.at = now
        if ok:
            assert latency is not None
            if stat.ewma == math.inf:
                stat.ewma = latency
            else:
                stat.ewma += self._alpha * (latency - stat.ewma)
        else:
            stat.ewma = max(2.0 * stat.ewma, latency or 0.0)


# --------------------------------------------------------------------------------------
# ConsistentHash
# --------------------------------------------------------------------------------------


def _point(data: str) -> int:
    """A stable 64-bit hash (Python's ``hash()`` is salted per process)."""
    raw = data.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


@final
class _Ring:
    __slots__ = ("owners", "points")

    def __init__(self, candidates: Sequence[Candidate], virtual_nodes: int) -> None:
        ring = sorted(
            (_point(f"{c.name}\x00{i}"), index)
            for index, c in enumerate(candidates)
            for i in range(virtual_nodes * max(1, c.weight))
        )
        self.points = [point for point, _ in ring]
        #: index into the candidate sequence the ring was built for
        self.owners = [index for _, index in ring]


_MAX_RINGS: Final = 64
_MAX_POINTS: Final = 8192


@final
class ConsistentHash:
    """Consistent hashing with bounded load (CHWBL), for session affinity.

    Each backend owns ``virtual_nodes * weight`` points on a 64-bit ring (blake2b of its
    name and the point's number). A request's ``hash_key`` hashes to a point; walking the
    ring clockwise from it, the first backend with fewer than
    ``ceil(hash_load_factor * (sum of in-flight + 1) / n)`` requests in flight takes it.
    So the same key keeps the same backend while that backend is not overloaded, and when
    a backend leaves only the keys it owned move. Requests without a key go to the
    fallback strategy.

    Rings are cached by the tuple of candidate names (a retry that excludes a backend uses
    the ring without it, in which exactly the excluded backend's keys move); weights are
    read when a ring is built.
    """

    __slots__ = ("_factor", "_fallback", "_points", "_rings", "_virtual_nodes", "learns")
    name = "ConsistentHash"

    def __init__(self, fallback: Strategy, options: StrategyOptions) -> None:
        self._fallback = fallback
        self.learns = fallback.learns  # it records only for its fallback
        self._factor = options.hash_load_factor
        self._virtual_nodes = options.virtual_nodes
        self._rings: dict[tuple[str, ...], _Ring] = {}
        #: hash key → its ring point: sessions repeat, and hashing costs more than the rest
        self._points: dict[str, int] = {}

    def choose(self, key: RouteKey, candidates: Sequence[C]) -> C:
        hash_key = key.hash_key
        if hash_key is None:
            return self._fallback.choose(key, candidates)
        names = tuple([c.name for c in candidates])
        ring = self._rings.get(names)
        if ring is None:
            if len(self._rings) >= _MAX_RINGS:
                self._rings.clear()
            ring = self._rings[names] = _Ring(candidates, self._virtual_nodes)
        owners = ring.owners
        size = len(owners)
        point = self._points.get(hash_key)
        if point is None:
            if len(self._points) >= _MAX_POINTS:
                self._points.clear()
            point = self._points[hash_key] = _point(hash_key)
        start = bisect_right(ring.points, point) % size
        n = len(candidates)
        load = 1
        for c in candidates:
            load += c.in_flight
        bound = math.ceil(self._factor * load / n)
        first = owners[start]
        if candidates[first].in_flight < bound:
            return candidates[first]
        seen = 1 << first
        everyone = (1 << n) - 1
        for step in range(1, size):
            owner = owners[(start + step) % size]
            bit = 1 << owner
            if seen & bit:
                continue
            if candidates[owner].in_flight < bound:
                return candidates[owner]
            seen |= bit
            if seen == everyone:
                break
        return candidates[first]  # not reached with a load factor >= 1

    def record(self, backend: str, model: str, latency: float | None, ok: bool) -> None:
        self._fallback.record(backend, model, latency, ok)


# --------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------

#: The strategy names configuration accepts (``routing.strategy``, ``fallback_strategy``).
STRATEGY_NAMES: Final[tuple[str, ...]] = get_args(StrategyName)

#: Strategies that defer to a fallback strategy when they cannot decide.
_NEEDS_FALLBACK: Final = frozenset({"LeastLatency", "ConsistentHash"})


def make_strategy(
    name: str,
    fallback: str = "RoundRobin",
    *,
    options: StrategyOptions = DEFAULT_OPTIONS,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Strategy:
    """The strategy called ``name``; ``fallback`` names the one LeastLatency (no data yet)
    and ConsistentHash (no hash key) defer to; the others ignore it.

    A fallback equal to ``name`` becomes RoundRobin; a LeastLatency or ConsistentHash
    fallback gets RoundRobin as its own fallback. ``rng`` (default: a fresh, unseeded
    ``random.Random``) and ``clock`` (seconds) are shared with the fallback.

    Raises ValueError for an unknown strategy or fallback name.
    """
    for what, value in (("strategy", name), ("fallback strategy", fallback)):
        if value not in STRATEGY_NAMES:
            raise ValueError(
                f"unknown {what} {value!r}; expected one of {', '.join(STRATEGY_NAMES)}"
            )
    if rng is None:
        rng = random.Random()
    if name in _NEEDS_FALLBACK:
        if fallback == name:
            fallback = "RoundRobin"
        inner = _make(fallback, RoundRobin(), options, rng, clock)
        return _make(name, inner, options, rng, clock)
    return _make(name, RoundRobin(), options, rng, clock)


def _make(
    name: str,
    fallback: Strategy,
    options: StrategyOptions,
    rng: random.Random,
    clock: Callable[[], float],
) -> Strategy:
    if name == "RoundRobin":
        return RoundRobin()
    if name == "WeightedRoundRobin":
        return WeightedRoundRobin()
    if name == "LeastLatency":
        return LeastLatency(fallback, options, rng, clock)
    if name == "Random":
        return RandomChoice(rng)
    if name == "ConsistentHash":
        return ConsistentHash(fallback, options)
    if name == "LeastConnections":
        return LeastConnections()
    raise ValueError(f"unknown strategy {name!r}")
