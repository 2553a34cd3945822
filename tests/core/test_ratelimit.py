"""Rate and concurrency limits: GCRA in memory, the same decisions from the Redis scripts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuum.core.ratelimit import (
    ADMIT_SCRIPT,
    SETTLE_SCRIPT,
    Check,
    ConcurrencyCheck,
    Decision,
    FixedChecks,
    MemoryLimiter,
    Rate,
    RateCheck,
    admission_arguments,
    decode_admission,
    format_duration,
    ratelimit_head,
    ratelimit_headers,
    settlement_arguments,
)
from continuum.net.redis import RedisClient, Script
from continuum.testing.redis_server import RedisServer

ADMIT = Script(ADMIT_SCRIPT)
SETTLE = Script(SETTLE_SCRIPT)


# -- GCRA in memory ---------------------------------------------------------------------


def test_burst_then_the_sustained_rate() -> None:
    limiter = MemoryLimiter()
    check = RateCheck("api_key", "k", Rate(10.0, 5))
    decisions = [limiter.admit([check], now=0.0) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.states[0].remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[5]
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.states[0].reset_after == pytest.approx(0.5)
    assert not limiter.admit([check], now=0.099).allowed
    assert limiter.admit([check], now=0.1).allowed
    # Requests every 10 ms for 10 s: the burst, plus one per 100 ms.
    limiter = MemoryLimiter()
    admitted = sum(limiter.admit([check], now=ms / 1000).allowed for ms in range(0, 10_000, 10))
    assert admitted == 5 + 99


def test_per_minute_means_a_minute_at_once_then_one_a_second() -> None:
    rate = Rate.per_minute(60)
    assert (rate.per_second, rate.burst) == (1.0, 60)
    limiter = MemoryLimiter()
    check = RateCheck("api_key", "k", rate)
    assert sum(limiter.admit([check], now=0.0).allowed for _ in range(200)) == 60
    assert sum(limiter.admit([check], now=2.5).allowed for _ in range(200)) == 2


class _Bucket:
    """A token bucket in exact arithmetic: the reference GCRA must agree with."""

    def __init__(self, rate: Fraction, burst: Fraction) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.last: Fraction | None = None

    def take(self, now: Fraction, cost: int) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= min(cost, self.burst):
            self.tokens -= cost  # a cost above the burst leaves the bucket in debt
            return True
        return False


@dataclass(frozen=True)
class _Plan:
    rate: int  # per second
    burst: int
    steps: list[tuple[int, int]]  # (ms since the previous step, cost)


_plans = st.builds(
    _Plan,
    rate=st.sampled_from([1, 3, 7, 10, 250]),
    burst=st.sampled_from([1, 2, 5, 60]),
    steps=st.lists(st.tuples(st.integers(0, 700), st.integers(1, 8)), min_size=1, max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(_plans)
def test_gcra_admits_exactly_what_a_token_bucket_admits(plan: _Plan) -> None:
    bucket = _Bucket(Fraction(plan.rate), Fraction(plan.burst))
    limiter = MemoryLimiter()
    check_rate = Rate(float(plan.rate), plan.burst)
    ms = 0
    for gap, cost in plan.steps:
        ms += gap
        check = RateCheck("client", "c", check_rate, cost=cost, tokens=True)
        expected = bucket.take(Fraction(ms, 1000), cost)
        decision = limiter.admit([check], now=ms / 1000)
        assert decision.allowed == expected, (ms, cost)
        if expected:
            assert decision.states[0].remaining == max(0, int(bucket.tokens))


#: Clock readings as a long-running process sees them: the router's ``perf_counter`` (its
#: seconds since boot: ~12 days, a year) and Redis' ``TIME`` (seconds since the epoch).
_LATE_CLOCKS = (1.0e6, 3.0e7)
_EPOCH_NOW = 1.796e9
#: Rates whose interval does not survive ``(now + interval) - now`` at those magnitudes.
_FAST_RATES = (24.0, 60.0, 1e4, 1e7)


@pytest.mark.parametrize("start", _LATE_CLOCKS)
@pytest.mark.parametrize("per_second", _FAST_RATES)
def test_an_idle_bucket_admits_whatever_the_clock_reads(start: float, per_second: float) -> None:
    """The bucket is judged by distances from now: an idle one (its TAT behind now) admits
    a request that needs all of it (burst 1, or a reservation of the whole burst), and its
    remaining count is exact, however large the clock's reading. Comparing instants, the
    rounding of ``now + interval`` at such a reading exceeded a fast limit's slack: every
    idle request was refused."""
    limiter = MemoryLimiter()
    whole = RateCheck("api_key", "one", Rate(per_second, 1.0))
    tokens = RateCheck("api_key", "five", Rate(per_second, 5.0), cost=5.0, tokens=True)
    wide = RateCheck("global", "", Rate(per_second, 5.0))
    gap = 7.0 / per_second  # more than a whole bucket refills between requests
    for i in range(50):
        now = start + i * gap
        decision = limiter.admit([whole, tokens, wide], now)
        assert decision.allowed, (i, now)
        assert [s.remaining for s in decision.states] == [0, 0, 4]
        assert decision.states[0].reset_after == pytest.approx(1.0 / per_second)
    # ...and a bucket in use still refuses: right after, the next one must wait.
    refused = limiter.admit([whole], now)
    assert not refused.allowed
    assert refused.retry_after is not None and 0.0 < refused.retry_after <= 2.0 / per_second


def test_a_request_under_several_limits_takes_from_all_or_none() -> None:
    limiter = MemoryLimiter()
    wide = RateCheck("global", "", Rate(100.0, 100))
    narrow = RateCheck("api_key", "k", Rate(1.0, 2))
    assert limiter.admit([wide, narrow], now=0.0).allowed
    assert limiter.admit([wide, narrow], now=0.0).allowed
    refused = limiter.admit([wide, narrow], now=0.0)
    assert not refused.allowed
    assert [s.allowed for s in refused.states] == [True, False]
    assert refused.denied == (refused.states[1],)
    # The refused request took nothing from the global limit: 98 left, not 97.
    assert limiter.admit([wide], now=0.0).states[0].remaining == 97


def test_a_reservation_bigger_than_the_bucket_waits_for_a_full_bucket() -> None:
    limiter = MemoryLimiter()
    small = RateCheck("api_key", "k", Rate(10.0, 100), cost=10, tokens=True)
    huge = RateCheck("api_key", "k", Rate(10.0, 100), cost=250, tokens=True)
    assert limiter.admit([small], now=0.0).allowed
    refused = limiter.admit([huge], now=0.0)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0)  # the 10 used come back in 1 s
    assert limiter.admit([huge], now=1.0).allowed  # admitted into debt ...
    assert not limiter.admit([small], now=1.0).allowed  # ... which blocks the rest
    assert not limiter.admit([small], now=16.0).allowed
    assert limiter.admit([small], now=17.0).allowed  # 150 in debt + 10: back after 16 s


def test_memory_is_bounded_and_idle_keys_go() -> None:
    limiter = MemoryLimiter(max_keys=100)
    rate = Rate(1.0, 5)
    for i in range(1000):
        assert limiter.admit([RateCheck("client", f"10.0.{i // 256}.{i % 256}", rate)], 0.0)
    assert len(limiter) == 100
    # Every bucket is full again 1 s later, the newcomer's 1 s after it was charged: the
    # sweep drops the idle keys from the least recently charged on, and stops at the
    # first still in use. Admitting does not sweep.
    limiter.admit([RateCheck("client", "newcomer", rate)], now=3.0)
    assert len(limiter) == 100  # one old key made room
    assert limiter.sweep(now=0.5) == 0
    assert limiter.sweep(now=2.0) == 99
    assert len(limiter) == 1
    assert limiter.sweep(now=3.5) == 0
    assert limiter.sweep(now=4.0) == 1 and len(limiter) == 0


def test_long_or_odd_idents_are_hashed() -> None:
    check = RateCheck("client", "x" * 500, Rate(1.0, 1))
    assert len(check.key) < 100
    assert check.key.startswith("rq:client:sha256:")
    assert RateCheck("client", "a\nb", Rate(1.0, 1)).key.startswith("rq:client:sha256:")
    assert RateCheck("model", "gpt-4o", Rate(1.0, 1)).key == "rq:model:gpt-4o"
    assert RateCheck("api_key", "k", Rate(1.0, 1), tokens=True).key == "tk:api_key:k"
    assert ConcurrencyCheck("api_key", "k", limit=1, ttl=1).key == "cc:api_key:k"


def test_invalid_limits_are_refused() -> None:
    for bad in (lambda: Rate(0, 1), lambda: Rate(1, 0.5), lambda: Rate(float("inf"), 1)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        ConcurrencyCheck("api_key", "k", limit=0, ttl=1)
    with pytest.raises(ValueError):
        RateCheck("api_key", "k", Rate(1, 1), cost=-1)
    with pytest.raises(ValueError, match="lease"):
        MemoryLimiter().admit([ConcurrencyCheck("api_key", "k", limit=1, ttl=1)], now=0)


def test_concurrency_leases_release_and_expire() -> None:
    limiter = MemoryLimiter()
    slots = ConcurrencyCheck("api_key", "k", limit=2, ttl=30.0)
    first = limiter.admit([slots], now=0.0, lease="a")
    second = limiter.admit([slots], now=0.0, lease="b")
    assert first.lease == "a"
    assert [first.states[0].remaining, second.states[0].remaining] == [1, 0]
    refused = limiter.admit([slots], now=1.0, lease="c")
    assert not refused.allowed
    assert refused.lease is None
    assert refused.retry_after is None  # nobody knows when a request ends
    limiter.settle(first, tokens_used=None, now=2.0)
    assert limiter.admit([slots], now=2.0, lease="d").allowed
    # "b" and "d" are never released (their instance died): they expire after the ttl.
    assert not limiter.admit([slots], now=29.0, lease="e").allowed
    assert limiter.admit([slots], now=30.5, lease="e").allowed  # "b" is gone
    assert not limiter.admit([slots], now=31.0, lease="f").allowed
    assert limiter.admit([slots], now=32.5, lease="f").allowed  # "d" is gone
    assert len(limiter) == 1


def test_token_reservations_are_reconciled() -> None:
    limiter = MemoryLimiter()
    rate = Rate(1000 / 60, 1000)  # tokens_per_minute: 1000

    def reserve(tokens: int, now: float) -> Decision:
        return limiter.admit([RateCheck("api_key", "k", rate, cost=tokens, tokens=True)], now)

    first = reserve(600, 0.0)
    assert first.states[0].remaining == 400
    assert not reserve(600, 0.0).allowed
    limiter.settle(first, tokens_used=100, now=0.0)  # 500 come back
    second = reserve(600, 0.0)
    assert second.allowed
    assert second.states[0].remaining == 300
    limiter.settle(second, tokens_used=900, now=0.0)  # 300 more than reserved
    assert reserve(1, 0.0).states[0].remaining == 0
    third = reserve(1, 60.0)
    limiter.settle(third, tokens_used=None, now=60.0)  # usage unknown: stays charged
    assert reserve(1, 60.0).states[0].remaining == 998


# -- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (59.9999, "1m0s"),
    ],
)
def test_durations_read_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_show_the_tightest_limits() -> None:
    limiter = MemoryLimiter()
    checks: list[Check] = [
        RateCheck("global", "", Rate(100.0, 100)),
        RateCheck("api_key", "k", Rate.per_minute(60)),
        RateCheck("api_key", "k", Rate(1000 / 60, 1000), cost=250, tokens=True),
    ]
    headers = dict(ratelimit_headers(limiter.admit(checks, now=0.0)))
    assert headers == {
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"59",
        b"x-ratelimit-reset-requests": b"1s",
        b"x-ratelimit-limit-tokens": b"1000",
        b"x-ratelimit-remaining-tokens": b"750",
        b"x-ratelimit-reset-tokens": b"15s",
    }
    for _ in range(3):
        limiter.admit(checks, now=0.0)
    refused = dict(ratelimit_headers(limiter.admit(checks, now=0.0)))
    assert refused[b"x-ratelimit-remaining-tokens"] == b"0"
    assert refused[b"retry-after"] == b"15"
    assert ratelimit_headers(Decision(True, ())) == []


# -- over Redis -------------------------------------------------------------------------


async def _admit(
    client: RedisClient,
    checks: Sequence[Check],
    prefix: str,
    lease: str | None = None,
    now: float | None = None,
) -> Decision:
    keys, args = admission_arguments(checks, prefix, lease, now)
    return decode_admission(checks, await client.evalsha(ADMIT, keys, args), lease)


async def _settle(
    client: RedisClient,
    decision: Decision,
    used: int | None,
    prefix: str,
    now: float | None = None,
) -> None:
    arguments = settlement_arguments(decision, used, prefix, now)
    if arguments is not None:
        await client.evalsha(SETTLE, *arguments)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=_plans, concurrency=st.lists(st.booleans(), min_size=60, max_size=60))
def test_redis_decides_like_memory(
    redis_server: RedisServer, plan: _Plan, concurrency: list[bool]
) -> None:
    """The same requests, the same simulated clock: the script and the in-memory limiter
    give the same answers (allowed, remaining, reset, retry-after), settling included.

    Redis expires a key in real time (its TAT's distance, plus a millisecond), so the
    simulated clock never runs slower than the real one: each step adds the real time gone
    (in whole milliseconds, rounded up) to the plan's gap. Otherwise a slow moment of the
    machine let Redis forget a key the memory limiter still held."""

    async def main() -> None:
        prefix = f"t{id(plan)}:{trio.current_time()}:"
        memory = MemoryLimiter()
        rate = Rate(float(plan.rate), plan.burst)
        slots = ConcurrencyCheck("api_key", "k", limit=2, ttl=3.0)
        async with RedisClient.from_url(redis_server.url) as client:
            ms = 0
            started = trio.current_time()
            for i, (gap, cost) in enumerate(plan.steps):
                ms += gap
                now = (ms + math.ceil((trio.current_time() - started) * 1000)) / 1000
                checks: list[Check] = [
                    RateCheck("api_key", "k", rate),
                    RateCheck("api_key", "k", rate, cost=cost, tokens=True),
                ]
                if concurrency[i]:
                    checks.append(slots)
                lease = f"lease{i}"
                mine = memory.admit(checks, now, lease)
                theirs = await _admit(client, checks, prefix, lease, now)
                assert theirs.allowed == mine.allowed
                assert theirs.lease == mine.lease
                for a, b in zip(theirs.states, mine.states, strict=True):
                    assert (a.allowed, a.remaining) == (b.allowed, b.remaining)
                    assert a.reset_after == pytest.approx(b.reset_after, abs=2e-6)
                    if b.retry_after is None:
                        assert a.retry_after is None
                    else:
                        assert a.retry_after == pytest.approx(b.retry_after, abs=2e-6)
                if i % 2 == 0:  # some requests end (and report usage), others linger
                    used = None if i % 4 else cost // 2
                    memory.settle(mine, used, now)
                    await _settle(client, theirs, used, prefix, now)

    trio.run(main)


async def test_redis_admits_an_idle_bucket_whatever_the_clock_reads(
    redis_server: RedisServer,
) -> None:
    """The script judges a bucket by distances from now as the memory limiter does: with
    Redis' own clock (microseconds since the epoch, where a double's step is 0.25 us) and
    with a late clock sent along, an idle bucket of burst 1 admits, for rates whose interval
    does not survive ``(now + interval) - now`` there."""
    async with RedisClient.from_url(redis_server.url) as client:
        for per_second in _FAST_RATES[:2]:
            whole = RateCheck("api_key", f"late{per_second}", Rate(per_second, 1.0))
            five = RateCheck("api_key", f"five{per_second}", Rate(per_second, 5.0))
            gap = 3.0 / per_second
            for i in range(5):
                sent = await _admit(client, [whole, five], "late:", now=_EPOCH_NOW + i * gap)
                assert sent.allowed, (per_second, i)
                assert [s.remaining for s in sent.states] == [0, 4]
                own = await _admit(client, [whole, five], "own:")  # the server's TIME
                assert own.allowed, (per_second, i)
                assert [s.remaining for s in own.states] == [0, 4]
                await trio.sleep(gap)


async def test_two_instances_share_one_limit(redis_server: RedisServer) -> None:
    a = RedisClient.from_url(redis_server.url)
    b = RedisClient.from_url(redis_server.url)
    checks: list[Check] = [RateCheck("api_key", "shared", Rate.per_minute(60))]
    admitted = 0

    async def request(client: RedisClient) -> None:
        nonlocal admitted
        decision = await _admit(client, checks, "two:")  # the server's clock
        admitted += decision.allowed
        if not decision.allowed:
            assert decision.retry_after is not None and 0 < decision.retry_after <= 1.0

    async with a, b:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(request, a if i % 2 else b)
    assert 60 <= admitted <= 62


async def test_redis_concurrency_leases(redis_server: RedisServer) -> None:
    slots = ConcurrencyCheck("api_key", "k", limit=2, ttl=10.0)
    async with RedisClient.from_url(redis_server.url) as client:
        one = await _admit(client, [slots], "cc:", "one", now=100.0)
        two = await _admit(client, [slots], "cc:", "two", now=100.0)
        assert (one.allowed, two.allowed) == (True, True)
        assert two.states[0].remaining == 0
        assert not (await _admit(client, [slots], "cc:", "three", now=101.0)).allowed
        await _settle(client, one, None, "cc:", now=102.0)
        assert await client.execute("ZRANGE", "cc:" + slots.key, 0, -1) == [b"two"]
        assert (await _admit(client, [slots], "cc:", "four", now=102.0)).allowed
        # "two" and "four" are never released: they expire with their ttl.
        assert not (await _admit(client, [slots], "cc:", "five", now=109.0)).allowed
        assert (await _admit(client, [slots], "cc:", "five", now=110.5)).allowed
        assert not (await _admit(client, [slots], "cc:", "six", now=111.0)).allowed
        assert (await _admit(client, [slots], "cc:", "six", now=112.5)).allowed
        assert await client.execute("ZRANGE", "cc:" + slots.key, 0, -1) == [b"five", b"six"]
        # The key itself expires, so a crashed fleet leaves nothing behind.
        assert 0 < await client.execute("PTTL", "cc:" + slots.key) <= 10_001


async def test_redis_token_reservations_are_reconciled(redis_server: RedisServer) -> None:
    rate = Rate(1000 / 60, 1000)
    async with RedisClient.from_url(redis_server.url) as client:

        async def reserve(tokens: int) -> Decision:
            check = RateCheck("api_key", "k", rate, cost=tokens, tokens=True)
            return await _admit(client, [check], "tk:")  # the server's clock

        first = await reserve(600)
        assert first.states[0].remaining == 400
        refused = await reserve(600)
        assert not refused.allowed
        assert refused.retry_after == pytest.approx(12.0, abs=0.5)  # 200 tokens at 1000/min
        await _settle(client, first, 100, "tk:")
        second = await reserve(600)
        assert second.allowed
        assert second.states[0].remaining in (299, 300)  # a few ms of refill at most
        ttl = await client.execute("PTTL", "tk:tk:api_key:k")
        assert 40_000 < ttl <= 42_100  # the key lives until the bucket is full again
        assert settlement_arguments(second, 600, "tk:") is None  # exact: no round trip


async def test_redis_keys_carry_the_prefix_and_expire(redis_server: RedisServer) -> None:
    checks: list[Check] = [RateCheck("model", "gpt-4o", Rate(2.0, 4))]
    async with RedisClient.from_url(redis_server.url) as client:
        await _admit(client, checks, "team-a:rl:")
        assert await client.execute("KEYS", "*") == [b"team-a:rl:rq:model:gpt-4o"]
        assert 0 < await client.execute("PTTL", "team-a:rl:rq:model:gpt-4o") <= 502
        decision = await _admit(client, checks, "team-a:rl:", now=None)
        assert decision.states[0].remaining == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.5, 1e6), st.integers(1, 10**6), st.booleans(),
                       st.integers(0, 50_000)), min_size=1, max_size=4),
    st.floats(0.0, 100.0), st.integers(1, 5),
)
def test_the_header_block_is_the_header_pairs_joined(
        limits: list[tuple[float, int, bool, int]], step: float, calls: int) -> None:
    """The admitted request's header bytes (one %-format) say exactly what the pairs of
    ratelimit_headers say, refused or not, under a second or over."""
    limiter = MemoryLimiter()
    checks = [RateCheck("api_key", f"k{i}", Rate(rate, burst), cost=float(cost) if tokens
                        else 1.0, tokens=tokens)
              for i, (rate, burst, tokens, cost) in enumerate(limits)]
    for n in range(calls):
        decision = limiter.admit(checks, now=n * step)
        pairs = ratelimit_headers(decision)
        assert ratelimit_head(decision) == b"".join(
            name + b": " + value + b"\r\n" for name, value in pairs)


def test_only_a_decision_with_leases_or_token_reservations_settles() -> None:
    """``settles`` lets the caller skip settling an admission of request limits only; a
    token reservation or a lease makes it settle (the settle tests above rely on that)."""
    limiter = MemoryLimiter()
    requests = RateCheck("api_key", "k", Rate(10.0, 10.0))
    tokens = RateCheck("api_key", "k", Rate(100.0, 100.0), cost=50, tokens=True)
    slots = ConcurrencyCheck("api_key", "k", limit=2, ttl=30.0)
    assert not limiter.admit([requests], now=0.0).settles
    assert limiter.admit([requests, tokens], now=0.0).settles
    assert limiter.admit([requests, slots], now=0.0, lease="a").settles
    # Built elsewhere (Redis replies, a Realtime session's charge): settled as before.
    assert Decision(True, ()).settles


def _held(limiter: MemoryLimiter, now: float) -> dict[str, float]:
    """The TATs that say something at ``now`` (an idle one reads as no entry)."""
    return {k: v for k, v in limiter._tats.items() if v > now}


def _said(decision: Decision, now: float) -> tuple[object, ...]:
    """A decision as it reads at ``now`` (a TAT before now reads as now)."""
    return decision.allowed, decision.settles, [
        (s.check, s.allowed, s.limit, s.remaining, s.reset_after, s.retry_after,
         max(s.tat, now)) for s in decision.states]


@settings(max_examples=200, deadline=None)
@given(
    # Up to a million a second: past that, with a burst of 1, ``admit`` itself can refuse
    # a full bucket at ``now`` ~1000 (the sum's rounding exceeds its millionth of slack).
    st.lists(st.tuples(st.floats(0.01, 1e6), st.integers(1, 10**9)), min_size=1, max_size=3),
    st.lists(st.floats(0.0, 3.0), min_size=1, max_size=30),
)
def test_a_full_bucket_admission_is_the_general_one(
        rates: list[tuple[float, int]], gaps: list[float]) -> None:
    """``admit_full`` (fixed request limits, every bucket full) moves the TATs exactly as
    ``admit`` does, and its precomputed decision says what ``admit``'s says; when a bucket
    is not full it takes nothing, and ``admit`` decides as if it had not been asked."""
    checks = tuple(RateCheck("api_key" if i == 0 else "global", f"k{i}", Rate(rate, float(burst)))
                   for i, (rate, burst) in enumerate(rates))
    fixed = FixedChecks(checks)
    assert fixed.full is not None and fixed.steps == tuple((c.key, c.step) for c in checks)
    assert fixed.head == ratelimit_head(fixed.full)
    fast, general = MemoryLimiter(), MemoryLimiter()
    now = 1000.0
    for gap in gaps:
        now += gap
        expected = general.admit(checks, now)
        before = _held(fast, now)
        if fast.admit_full(fixed, now):
            assert expected.allowed
            for mine, theirs in zip(fixed.full.states, expected.states, strict=True):
                assert (mine.check, mine.allowed, mine.limit, mine.remaining, mine.retry_after
                        ) == (theirs.check, True, theirs.limit, theirs.remaining, None)
                assert mine.reset_after == pytest.approx(theirs.reset_after, rel=1e-6,
                                                         abs=1e-9)
        else:
            assert before and _held(fast, now) == before  # some bucket was not full
            assert _said(fast.admit(checks, now), now) == _said(expected, now)
        assert fast._tats == general._tats


def test_fixed_checks_know_their_outcome_only_for_request_limits() -> None:
    requests = RateCheck("api_key", "k", Rate(10.0, 10.0))
    glob = RateCheck("global", "", Rate(100.0, 50.0))
    tokens = RateCheck("api_key", "k", Rate(100.0, 100.0), cost=50, tokens=True)
    slots = ConcurrencyCheck("api_key", "k", limit=2, ttl=30.0)
    both = FixedChecks((requests, glob))
    assert both.full is not None and not both.full.settles
    assert [s.remaining for s in both.full.states] == [9, 49]
    assert both.head == (b"x-ratelimit-limit-requests: 10\r\nx-ratelimit-remaining-requests: 9"
                         b"\r\nx-ratelimit-reset-requests: 100ms\r\n")
    for checks in ((requests, tokens), (requests, slots), (requests, requests), ()):
        fixed = FixedChecks(checks)
        assert (fixed.full, fixed.head, fixed.steps) == (None, b"", ())


def test_a_full_admission_puts_back_what_it_took_when_a_bucket_is_not_full() -> None:
    first = RateCheck("api_key", "a", Rate(1.0, 5.0))
    second = RateCheck("global", "", Rate(1.0, 5.0))
    limiter = MemoryLimiter(max_keys=2)
    assert limiter.admit([second], now=0.0).allowed  # second: TAT 1.0
    fixed = FixedChecks((first, second))
    assert not limiter.admit_full(fixed, now=0.5)
    assert limiter._tats == {"rq:global:": 1.0}  # "a" charged, then given back
    # A bucket found in use is not tried again before its TAT (where a busy client's
    # requests would fail the pass every time): admit decides, even if it is full now.
    assert fixed.busy_until == 1.0
    limiter._tats.clear()
    assert not limiter.admit_full(fixed, now=0.9) and not limiter._tats
    assert limiter.admit_full(fixed, now=1.0)
    assert limiter._tats == {"rq:api_key:a": 2.0, "rq:global:": 2.0}
    third = FixedChecks((RateCheck("client", "c", Rate(1.0, 5.0)),))
    assert limiter.admit_full(third, now=1.0)
    assert len(limiter) == 2  # max_keys holds: the least recently charged went
