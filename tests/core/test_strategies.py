"""Load-balancing strategies, sans-IO: seeded randomness and a fake clock, no sockets."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from continuum.core.strategies import (
    STRATEGY_NAMES,
    ConsistentHash,
    LeastLatency,
    RouteKey,
    Strategy,
    StrategyOptions,
    make_strategy,
)


@dataclass(eq=False)
class Fake:
    name: str
    weight: int = 1
    in_flight: int = 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


KEY = RouteKey("m")


def backends(*names: str, **weights: int) -> list[Fake]:
    return [Fake(n, weights.get(n, 1)) for n in names]


def picks(strategy: Strategy, candidates: list[Fake], n: int, key: RouteKey = KEY) -> list[str]:
    return [strategy.choose(key, candidates).name for _ in range(n)]


def max_run(seq: list[str], name: str) -> int:
    best = run = 0
    for s in seq:
        run = run + 1 if s == name else 0
        best = max(best, run)
    return best


# -- factory ------------------------------------------------------------------------------


def test_make_strategy_names() -> None:
    for name in STRATEGY_NAMES:
        assert make_strategy(name, rng=random.Random(0)).name == name


def test_make_strategy_unknown_name() -> None:
    with pytest.raises(ValueError, match="Fastest"):
        make_strategy("Fastest")
    with pytest.raises(ValueError, match="fallback"):
        make_strategy("LeastLatency", "Nope")


@pytest.mark.parametrize("name", ["LeastLatency", "ConsistentHash"])
def test_fallback_equal_to_itself_becomes_round_robin(name: str) -> None:
    s = make_strategy(name, name, rng=random.Random(0), clock=FakeClock())
    cs = backends("a", "b", "c")
    assert picks(s, cs, 6) == ["a", "b", "c", "a", "b", "c"]


def test_fallback_chain_least_latency_then_consistent_hash() -> None:
    s = make_strategy("LeastLatency", "ConsistentHash", rng=random.Random(0), clock=FakeClock())
    cs = backends("a", "b", "c")
    key = RouteKey("m", "session-1")
    # No latency data: the ConsistentHash fallback decides, so a key sticks...
    assert len(set(picks(s, cs, 20, key))) == 1
    # ...and without a key, its own RoundRobin fallback does.
    assert picks(s, cs, 3) == ["a", "b", "c"]


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        StrategyOptions(exploration=1.5)
    with pytest.raises(ValueError):
        StrategyOptions(hash_load_factor=0.5)


def test_state_is_per_instance() -> None:
    one, two = make_strategy("RoundRobin"), make_strategy("RoundRobin")
    cs = backends("a", "b")
    assert picks(one, cs, 3) == ["a", "b", "a"]
    assert picks(two, cs, 1) == ["a"]


# -- RoundRobin ---------------------------------------------------------------------------


def test_round_robin_equal_split() -> None:
    s = make_strategy("RoundRobin")
    cs = backends("a", "b", "c")
    counts = Counter(picks(s, cs, 3000))
    assert counts == {"a": 1000, "b": 1000, "c": 1000}


def test_round_robin_cursor_per_model() -> None:
    s = make_strategy("RoundRobin")
    cs = backends("a", "b", "c")
    other = RouteKey("other")
    assert picks(s, cs, 2) == ["a", "b"]
    assert picks(s, cs, 2, other) == ["a", "b"]
    assert picks(s, cs, 1) == ["c"]
    assert picks(s, cs, 1, other) == ["c"]


# -- WeightedRoundRobin -------------------------------------------------------------------


def test_weighted_round_robin_exact_cycle() -> None:
    s = make_strategy("WeightedRoundRobin")
    cs = backends("a", "b", "c", a=5, b=2, c=1)
    for _ in range(10):  # every full cycle of 8 picks, not just the total
        assert Counter(picks(s, cs, 8)) == {"a": 5, "b": 2, "c": 1}


def test_weighted_round_robin_is_smooth() -> None:
    s = make_strategy("WeightedRoundRobin")
    cs = backends("a", "b", a=5, b=1)
    # nginx's sequence (a tie goes to the earlier candidate): the cycle a,a,b,a,a,a
    # starting one pick later, and the same on every cycle.
    assert picks(s, cs, 12) == ["a", "a", "a", "b", "a", "a"] * 2
    seq = picks(s, cs, 6000)
    assert max_run(seq, "a") <= 5
    # 3:1 interleaves as a,a,b,a: never more than 3 heavy picks in a row.
    s = make_strategy("WeightedRoundRobin")
    cs = backends("a", "b", a=3, b=1)
    seq = picks(s, cs, 4000)
    assert seq[:4] == ["a", "a", "b", "a"]
    assert max_run(seq, "a") <= 3
    assert max_run(seq, "b") == 1
    assert Counter(seq) == {"a": 3000, "b": 1000}


def test_weighted_round_robin_keeps_state_across_candidate_changes() -> None:
    s = make_strategy("WeightedRoundRobin")
    a, b, c = backends("a", "b", "c", a=2, b=1, c=1)
    seq = []
    for i in range(4000):
        # c drops out of every third request (e.g. already tried); a and b keep their share
        cs = [a, b] if i % 3 == 0 else [a, b, c]
        seq.append(s.choose(KEY, cs).name)
    counts = Counter(seq)
    assert counts["a"] == pytest.approx(2 * counts["b"], rel=0.05)


def test_weighted_round_robin_per_model() -> None:
    s = make_strategy("WeightedRoundRobin")
    cs = backends("a", "b", a=3, b=1)
    assert picks(s, cs, 2) == ["a", "a"]
    assert picks(s, cs, 2, RouteKey("other")) == ["a", "a"]
    assert picks(s, cs, 1) == ["b"]


# -- Random -------------------------------------------------------------------------------


def test_random_is_uniform() -> None:
    s = make_strategy("Random", rng=random.Random(1234))
    cs = backends("a", "b", "c", "d")
    counts = Counter(picks(s, cs, 10_000))
    assert set(counts) == {"a", "b", "c", "d"}
    for n in counts.values():
        assert n == pytest.approx(2500, rel=0.05)


def test_random_is_deterministic_with_a_seed() -> None:
    cs = backends("a", "b", "c")
    one = picks(make_strategy("Random", rng=random.Random(7)), cs, 50)
    two = picks(make_strategy("Random", rng=random.Random(7)), cs, 50)
    assert one == two


# -- LeastLatency -------------------------------------------------------------------------


def least_latency(clock: FakeClock, seed: int = 42, **options: float) -> LeastLatency:
    s = make_strategy(
        "LeastLatency",
        options=StrategyOptions(**options),  # type: ignore[arg-type]
        rng=random.Random(seed),
        clock=clock,
    )
    assert isinstance(s, LeastLatency)
    return s


def drive(
    s: Strategy, cs: list[Fake], n: int, latency: dict[str, float | None],
    clock: FakeClock | None = None, step: float = 0.0,
) -> Counter[str]:
    """``n`` requests, each recorded with the backend's latency (None = failure)."""
    counts: Counter[str] = Counter()
    for _ in range(n):
        name = s.choose(KEY, cs).name
        counts[name] += 1
        value = latency[name]
        s.record(name, "m", value, value is not None)
        if clock is not None:
            clock.now += step
    return counts


def test_least_latency_no_data_uses_fallback() -> None:
    s = least_latency(FakeClock())
    cs = backends("a", "b", "c")
    assert picks(s, cs, 6) == ["a", "b", "c", "a", "b", "c"]


def test_least_latency_prefers_the_fast_backend() -> None:
    clock = FakeClock()
    s = least_latency(clock)
    cs = backends("slow", "fast")
    counts = drive(s, cs, 4000, {"slow": 0.050, "fast": 0.010}, clock, 0.001)
    share = counts["fast"] / 4000
    assert 0.90 <= share <= 0.97
    assert s.ewma("fast", "m") == pytest.approx(0.010)
    assert s.ewma("slow", "m") == pytest.approx(0.050)


def test_least_latency_exploration_is_shared_by_the_others() -> None:
    clock = FakeClock()
    s = least_latency(clock, exploration=0.2)
    cs = backends("a", "b", "c")
    counts = drive(s, cs, 6000, {"a": 0.050, "b": 0.010, "c": 0.050}, clock, 0.001)
    assert counts["b"] / 6000 == pytest.approx(0.8, abs=0.03)
    assert counts["a"] == pytest.approx(counts["c"], rel=0.2)


def test_least_latency_exploration_zero_is_greedy() -> None:
    s = least_latency(FakeClock(), exploration=0.0)
    cs = backends("a", "b")
    s.record("a", "m", 0.02, True)
    s.record("b", "m", 0.01, True)
    assert picks(s, cs, 100) == ["b"] * 100


def test_least_latency_only_ok_samples_move_the_ewma() -> None:
    s = least_latency(FakeClock(), ewma_alpha=0.5)
    s.record("a", "m", 0.100, True)
    s.record("a", "m", 0.200, True)
    assert s.ewma("a", "m") == pytest.approx(0.150)
    s.record("a", "m", None, True)  # ok without a latency teaches nothing
    assert s.ewma("a", "m") == pytest.approx(0.150)
    s.record("a", "m", None, False)  # a failure doubles it
    assert s.ewma("a", "m") == pytest.approx(0.300)
    assert s.ewma("a", "other-model") is None


def test_least_latency_failing_backend_loses_traffic() -> None:
    clock = FakeClock()
    s = least_latency(clock)
    cs = backends("a", "b")
    # a was the faster one, then starts failing.
    s.record("a", "m", 0.010, True)
    s.record("b", "m", 0.050, True)
    counts = drive(s, cs, 2000, {"a": None, "b": 0.050}, clock, 0.001)
    assert counts["a"] / 2000 < 0.07
    assert counts["b"] / 2000 > 0.93


def test_least_latency_failure_without_data_ranks_below_unmeasured() -> None:
    s = least_latency(FakeClock())
    cs = backends("a", "b", "c")
    s.record("a", "m", None, False)
    # a has only failures: the fallback shares traffic among the ones never tried.
    assert picks(s, cs, 4) == ["b", "c", "b", "c"]
    s.record("b", "m", None, False)
    s.record("c", "m", None, False)
    # everyone failed: the fallback chooses among all.
    assert set(picks(s, cs, 6)) == {"a", "b", "c"}
    # one ok sample replaces a failure-only state.
    s.record("c", "m", 0.5, True)
    assert s.ewma("c", "m") == pytest.approx(0.5)


def test_least_latency_new_backend_is_tried_then_competes() -> None:
    clock = FakeClock()
    s = least_latency(clock)
    a, b = backends("a", "b")
    drive(s, [a], 50, {"a": 0.050}, clock, 0.001)
    cs = [a, b]  # b joins (e.g. back from unhealthy) with no data
    first_b = next(i for i in range(1000) if s.choose(KEY, cs) is b)
    assert first_b < 200  # exploration finds it soon
    s.record("b", "m", 0.010, True)
    counts = drive(s, cs, 2000, {"a": 0.050, "b": 0.010}, clock, 0.001)
    assert counts["b"] / 2000 > 0.90


def test_least_latency_stale_backend_gets_traffic_again() -> None:
    clock = FakeClock()
    s = least_latency(clock, stale_after=30.0)
    cs = backends("a", "b")
    s.record("a", "m", 0.050, True)
    s.record("b", "m", 0.100, True)
    for _ in range(20):  # b failed for a while: its EWMA is huge
        s.record("b", "m", None, False)
    # b has recovered (faster than a), but exploration samples barely dent its EWMA...
    counts = drive(s, cs, 300, {"a": 0.050, "b": 0.010}, clock, 0.001)
    assert counts["b"] / 300 < 0.10
    assert (s.ewma("b", "m") or 0.0) > 1.0
    # ...until its last sample is older than stale_after: then it counts as new, is
    # tried through exploration, starts a fresh EWMA and wins.
    clock.now += 31.0
    s.record("a", "m", 0.050, True)
    assert s.ewma("b", "m") is None
    counts = drive(s, cs, 3000, {"a": 0.050, "b": 0.010}, clock, 0.001)
    assert counts["b"] / 3000 > 0.85
    assert s.ewma("b", "m") == pytest.approx(0.010)


def test_least_latency_forwards_outcomes_to_its_fallback() -> None:
    clock = FakeClock()
    s = make_strategy("ConsistentHash", "LeastLatency", rng=random.Random(0), clock=clock)
    cs = backends("a", "b")
    s.record("a", "m", 0.050, True)
    s.record("b", "m", 0.010, True)
    # no hash key → LeastLatency, which learned from the outcomes ConsistentHash saw
    counts = Counter(picks(s, cs, 1000))
    assert counts["b"] > 900


# -- ConsistentHash -----------------------------------------------------------------------


def consistent_hash(**options: float) -> Strategy:
    return make_strategy(
        "ConsistentHash",
        options=StrategyOptions(**options),  # type: ignore[arg-type]
        rng=random.Random(0),
    )


KEYS = [f"session-{i}" for i in range(2000)]


def owners(s: Strategy, cs: list[Fake], keys: list[str] = KEYS) -> dict[str, str]:
    return {k: s.choose(RouteKey("m", k), cs).name for k in keys}


def test_consistent_hash_is_sticky() -> None:
    s = consistent_hash()
    cs = backends("a", "b", "c")
    for k in ("alice", "bob", "carol", "ünïcode", "\ud800 lone surrogate"):
        assert len(set(picks(s, cs, 100, RouteKey("m", k)))) == 1
    # the same keys map the same way in another instance (stable hash, not hash())
    assert owners(s, cs) == owners(consistent_hash(), cs)


def test_consistent_hash_spreads_keys_evenly() -> None:
    counts = Counter(owners(consistent_hash(), backends("a", "b", "c")).values())
    mean = len(KEYS) / 3
    for name in ("a", "b", "c"):
        assert abs(counts[name] - mean) <= 0.30 * mean


def test_consistent_hash_minimal_movement() -> None:
    s = consistent_hash()
    cs = backends("a", "b", "c", "d")
    before = owners(s, cs)
    after = owners(s, [c for c in cs if c.name != "c"])
    moved = [k for k in KEYS if before[k] != after[k]]
    # only the removed backend's keys move...
    assert all(before[k] == "c" for k in moved)
    assert len(moved) == sum(1 for k in KEYS if before[k] == "c")
    # ...and they are about 1/n of all keys
    assert len(moved) / len(KEYS) == pytest.approx(1 / 4, abs=0.25 * 0.3)
    # when it comes back, exactly those keys return
    assert owners(s, cs) == before


def test_consistent_hash_weights_shift_share() -> None:
    counts = Counter(owners(consistent_hash(), backends("a", "b", "c", b=2)).values())
    assert counts["b"] / len(KEYS) == pytest.approx(0.5, abs=0.08)
    assert counts["b"] > 1.5 * max(counts["a"], counts["c"])


def test_consistent_hash_bounded_load_spills_to_next_backend() -> None:
    s = consistent_hash()
    a, b, c = cs = backends("a", "b", "c")
    before = owners(s, cs, KEYS[:300])
    without_a = owners(s, [b, c], KEYS[:300])
    a.in_flight = 100  # bound = ceil(1.25 * 101 / 3) = 43
    during = owners(s, cs, KEYS[:300])
    assert "a" not in during.values()
    for k, owner in before.items():
        # a's keys go to the next backend clockwise (its owner in a ring without a);
        # the others stay put.
        assert during[k] == (without_a[k] if owner == "a" else owner)
    a.in_flight = 0
    assert owners(s, cs, KEYS[:300]) == before


def test_consistent_hash_bound_is_never_exceeded() -> None:
    factor = 1.25
    s = consistent_hash(hash_load_factor=factor)
    cs = backends("a", "b", "c")
    hot = RouteKey("m", "one-very-busy-session")
    home = s.choose(hot, cs)
    for total in range(1, 301):
        s.choose(hot, cs).in_flight += 1  # never released: load only grows
        assert max(c.in_flight for c in cs) <= math.ceil(factor * total / 3)
    assert home.in_flight == max(c.in_flight for c in cs)
    assert all(c.in_flight > 0 for c in cs)


def test_consistent_hash_without_key_uses_fallback() -> None:
    s = consistent_hash()
    cs = backends("a", "b", "c")
    assert picks(s, cs, 6) == ["a", "b", "c", "a", "b", "c"]


def test_consistent_hash_caches_rings_by_names() -> None:
    s = consistent_hash()
    assert isinstance(s, ConsistentHash)
    cs = backends("a", "b", "c")
    owners(s, cs, KEYS[:10])
    owners(s, cs[:2], KEYS[:10])
    owners(s, list(backends("a", "b", "c")), KEYS[:10])  # new objects, same names
    assert len(s._rings) == 2


# -- LeastConnections ---------------------------------------------------------------------


def test_least_connections_picks_fewest() -> None:
    s = make_strategy("LeastConnections")
    a, b, c = cs = backends("a", "b", "c")
    a.in_flight, b.in_flight, c.in_flight = 5, 1, 3
    assert picks(s, cs, 10) == ["b"] * 10
    for _ in range(30):  # as a load balancer: holding every request open evens them out
        s.choose(KEY, cs).in_flight += 1
    assert {x.in_flight for x in cs} == {13}


def test_least_connections_rotates_ties() -> None:
    s = make_strategy("LeastConnections")
    cs = backends("a", "b", "c")
    assert picks(s, cs, 6) == ["a", "b", "c", "a", "b", "c"]
    cs[1].in_flight = 2
    seq = picks(s, cs, 4)
    assert "b" not in seq
    assert Counter(seq) == {"a": 2, "c": 2}


# -- learns: whether the Router has to call record at all ---------------------------------


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_learns_is_true_only_where_record_keeps_something(name: str) -> None:
    """``learns`` False lets the Router skip ``record`` per attempt, so it must be False
    only for strategies whose choices no outcome changes: LeastLatency learns, and a
    ConsistentHash learns exactly when its fallback does."""
    s = make_strategy(name, "RoundRobin", rng=random.Random(1))
    assert s.learns is (name == "LeastLatency")
    over_latency = make_strategy(name, "LeastLatency", rng=random.Random(1))
    assert over_latency.learns is (name in ("LeastLatency", "ConsistentHash"))


def test_a_strategy_that_learns_nothing_chooses_the_same_whatever_is_recorded() -> None:
    """What ``learns = False`` promises: records change none of the choices."""
    cs = backends("a", "b", "c")
    for name in STRATEGY_NAMES:
        quiet = make_strategy(name, "RoundRobin", rng=random.Random(7))
        if quiet.learns:
            continue
        told = make_strategy(name, "RoundRobin", rng=random.Random(7))
        for _ in range(20):
            told.record("a", "m", None, False)
            told.record("b", "m", 0.001, True)
        assert picks(quiet, cs, 30) == picks(told, cs, 30), name
