"""Request deduplication: keys (which requests qualify) and the single-flight + TTL store."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from continuum.actors.dedup import Deduplicator, StoredResponse, dedup_key

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
OK = StoredResponse(200, ((b"content-type", b"application/json"),), b'{"id":"x"}')


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _key(path: str = CHAT, body: bytes | None = None, api_key: bytes | None = b"k", *,
         nondet: bool = False) -> bytes | None:
    if body is None:
        body = _body(model="m", temperature=0, messages=[{"role": "user", "content": "hi"}])
    return dedup_key(path, body, api_key, include_nondeterministic=nondet)


class Producer:
    """A ``produce`` callable that counts calls and can be told to block or fail."""

    def __init__(self, response: StoredResponse = OK, *, delay: float = 1.0,
                 error: Exception | None = None) -> None:
        self.response = response
        self.delay = delay
        self.error = error
        self.calls = 0

    async def __call__(self) -> StoredResponse:
        self.calls += 1
        await trio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.response


async def _gather(
    dedup: Deduplicator, key: bytes, produce: Callable[[], Awaitable[StoredResponse]], count: int
) -> list[tuple[StoredResponse, str] | BaseException]:
    """Run ``count`` concurrent callers; each one's result or exception, in start order."""
    results: list[tuple[StoredResponse, str] | BaseException] = [ValueError("unset")] * count

    async def one(i: int) -> None:
        try:
            results[i] = await dedup.run(key, produce)
        except Exception as exc:
            results[i] = exc

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
                await trio.sleep(0)  # a stable start order: the first one leads
    return results


# -- keys -------------------------------------------------------------------------------------


def test_key_ignores_whitespace_and_key_order() -> None:
    a = b'{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
    b = (b'{ "messages" : [ {"content": "hi", "role": "user"} ],\n'
         b'  "temperature": 0,  "model": "m" }')
    ka, kb = _key(body=a), _key(body=b)
    assert ka is not None
    assert ka == kb
    assert len(ka) == 16


def test_key_differs_by_api_key_model_path_and_body() -> None:
    base = _key()
    assert base is not None
    others = [
        _key(api_key=b"other"),
        _key(api_key=None),
        _key(body=_body(model="m2", temperature=0, messages=[{"role": "user", "content": "hi"}])),
        _key(path="/v1/completions"),
        _key(body=_body(model="m", temperature=0, messages=[{"role": "user", "content": "yo"}])),
        _key(body=_body(model="m", temperature=0, max_tokens=5,
                        messages=[{"role": "user", "content": "hi"}])),
    ]
    assert all(k is not None for k in others)
    assert len({base, *others}) == len(others) + 1


def test_missing_and_empty_api_key_are_the_same() -> None:
    assert _key(api_key=None) == _key(api_key=b"")


def test_stream_is_never_deduplicated() -> None:
    body = _body(model="m", temperature=0, stream=True, messages=[])
    assert _key(body=body) is None
    assert _key(body=body, nondet=True) is None
    assert _key(EMBED, _body(model="e", input="x", stream=True)) is None
    assert _key(body=_body(model="m", temperature=0, stream=False, messages=[])) is not None
    assert _key(body=_body(model="m", temperature=0, stream=None, messages=[])) is not None


@pytest.mark.parametrize("fields", [
    {"temperature": 0},
    {"temperature": 0.0},
    {"seed": 42},
    {"seed": 0, "temperature": 0.7},
    {"temperature": 0, "n": 1},
])
def test_deterministic_requests_get_a_key(fields: dict[str, object]) -> None:
    assert _key(body=_body(model="m", messages=[], **fields)) is not None
    assert _key("/v1/completions", _body(model="m", prompt="p", **fields)) is not None


@pytest.mark.parametrize("fields", [
    {},
    {"temperature": 0.7},
    {"temperature": None},
    {"temperature": False},
    {"seed": None, "temperature": 1},
    {"temperature": 0, "n": 2},
    {"seed": 7, "n": 3},
])
def test_nondeterministic_requests_only_with_the_option(fields: dict[str, object]) -> None:
    body = _body(model="m", messages=[], **fields)
    assert _key(body=body) is None
    assert _key(body=body, nondet=True) is not None


def test_embeddings_always_get_a_key() -> None:
    assert _key(EMBED, _body(model="e", input=["a", "b"])) is not None
    assert _key(EMBED + "/", _body(model="e", input="a")) is not None


@pytest.mark.parametrize("body", [
    b"", b"{", b"not json", b"[1, 2]", b'"string"', b"null", b"\xff\xfe{}",
    b'{"model": "m", "temperature": 0} trailing',
    b'{"model": "m", "seed": 1e999}',  # out of range
    b"[" * 100_000 + b"]" * 100_000,  # too deep
])
def test_malformed_or_non_object_bodies_get_no_key(body: bytes) -> None:
    assert _key(body=body, nondet=True) is None


# -- single flight ------------------------------------------------------------------------------


async def test_concurrent_identical_requests_share_one_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dedup = Deduplicator(ttl=5)
    produce = Producer()
    results = await _gather(dedup, b"k", produce, 10)
    assert produce.calls == 1
    outcomes = [r[1] for r in results if isinstance(r, tuple)]
    assert outcomes == ["miss"] + ["shared"] * 9
    assert all(isinstance(r, tuple) and r[0] is OK for r in results)
    assert (dedup.misses, dedup.shared, dedup.hits) == (1, 9, 0)
    assert dedup.in_flight == 0
    assert len(dedup) == 1


async def test_different_keys_do_not_share(autojump_clock: trio.testing.MockClock) -> None:
    dedup = Deduplicator(ttl=5)
    produce = Producer()
    async with trio.open_nursery() as nursery:
        for key in (b"a", b"b", b"c"):
            nursery.start_soon(dedup.run, key, produce)
    assert produce.calls == 3
    assert dedup.misses == 3
    assert len(dedup) == 3


async def test_hit_within_ttl_then_produce_again_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dedup = Deduplicator(ttl=10)
    produce = Producer(delay=0)
    assert await dedup.run(b"k", produce) == (OK, "miss")
    await trio.sleep(9.5)
    assert await dedup.run(b"k", produce) == (OK, "hit")
    assert produce.calls == 1
    await trio.sleep(1)  # 10.5 s after it was stored
    assert await dedup.run(b"k", produce) == (OK, "miss")
    assert produce.calls == 2
    assert (dedup.misses, dedup.hits, dedup.evictions) == (2, 1, 1)


async def test_ttl_counts_from_completion(autojump_clock: trio.testing.MockClock) -> None:
    dedup = Deduplicator(ttl=2)
    produce = Producer(delay=5)  # slower than the TTL
    await dedup.run(b"k", produce)
    await trio.sleep(1.5)
    assert (await dedup.run(b"k", produce))[1] == "hit"


async def test_zero_ttl_shares_in_flight_only(autojump_clock: trio.testing.MockClock) -> None:
    dedup = Deduplicator(ttl=0)
    produce = Producer()
    results = await _gather(dedup, b"k", produce, 3)
    assert [r[1] for r in results if isinstance(r, tuple)] == ["miss", "shared", "shared"]
    assert len(dedup) == 0
    assert (await dedup.run(b"k", produce))[1] == "miss"
    assert produce.calls == 2


async def test_error_answer_is_shared_in_flight_but_not_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failed = StoredResponse(500, (), b'{"error":{}}')
    dedup = Deduplicator(ttl=60)
    produce = Producer(failed)
    results = await _gather(dedup, b"k", produce, 4)
    assert produce.calls == 1
    assert [r for r in results] == [(failed, "miss")] + [(failed, "shared")] * 3
    assert len(dedup) == 0
    assert await dedup.run(b"k", produce) == (failed, "miss")
    assert produce.calls == 2


@pytest.mark.parametrize("status", [201, 204, 299])
async def test_any_2xx_is_stored(status: int, autojump_clock: trio.testing.MockClock) -> None:
    dedup = Deduplicator(ttl=60)
    produce = Producer(StoredResponse(status, (), b""), delay=0)
    await dedup.run(b"k", produce)
    assert (await dedup.run(b"k", produce))[1] == "hit"


@pytest.mark.parametrize("status", [199, 304, 400, 429, 502])
async def test_non_2xx_is_not_stored(status: int, autojump_clock: trio.testing.MockClock) -> None:
    dedup = Deduplicator(ttl=60)
    produce = Producer(StoredResponse(status, (), b""), delay=0)
    await dedup.run(b"k", produce)
    assert (await dedup.run(b"k", produce))[1] == "miss"


async def test_exception_reaches_every_waiter_and_is_not_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    boom = RuntimeError("upstream exploded")
    dedup = Deduplicator(ttl=60)
    produce = Producer(error=boom)
    results = await _gather(dedup, b"k", produce, 5)
    assert produce.calls == 1
    assert all(r is boom for r in results)
    assert (dedup.misses, dedup.shared) == (1, 0)
    assert len(dedup) == 0
    assert dedup.in_flight == 0
    produce.error = None
    assert await dedup.run(b"k", produce) == (OK, "miss")
    assert produce.calls == 2


async def test_cancelled_leader_does_not_break_followers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dedup = Deduplicator(ttl=60)
    calls = 0

    async def produce() -> StoredResponse:
        nonlocal calls
        calls += 1
        await trio.sleep(1 if calls > 1 else 1_000)  # the first call would take forever
        return OK

    results: list[tuple[StoredResponse, str]] = []

    async def follower() -> None:
        results.append(await dedup.run(b"k", produce))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(follower)  # they start once this task blocks
            # This task leads (it registers the flight before its first checkpoint) and is
            # stopped at t=2, as when its client goes away.
            with trio.move_on_after(2) as leader_scope:
                await dedup.run(b"k", produce)
            assert leader_scope.cancelled_caught
    assert calls == 2
    assert sorted(outcome for _, outcome in results) == ["miss", "shared", "shared"]
    assert all(response is OK for response, _ in results)
    assert trio.current_time() == pytest.approx(3)
    assert dedup.in_flight == 0
    assert len(dedup) == 1


async def test_cancelled_leader_alone_leaves_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dedup = Deduplicator(ttl=60)
    produce = Producer(delay=100)
    with trio.move_on_after(1):
        await dedup.run(b"k", produce)
    assert dedup.in_flight == 0
    assert len(dedup) == 0
    produce.delay = 0
    assert await dedup.run(b"k", produce) == (OK, "miss")


async def test_cancelled_follower_does_not_disturb_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dedup = Deduplicator(ttl=60)
    produce = Producer(delay=5)
    outcomes: list[str] = []

    async def caller(timeout: float) -> None:
        with trio.move_on_after(timeout):
            outcomes.append((await dedup.run(b"k", produce))[1])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, 100)
        await trio.sleep(0)
        nursery.start_soon(caller, 1)  # gives up before the answer
        nursery.start_soon(caller, 100)
    assert outcomes == ["miss", "shared"]
    assert produce.calls == 1


# -- storage limits ------------------------------------------------------------------------------


async def test_max_entries_evicts_the_oldest(autojump_clock: trio.testing.MockClock) -> None:
    dedup = Deduplicator(ttl=60, max_entries=3)
    produce = Producer(delay=0)
    for key in (b"a", b"b", b"c", b"d", b"e"):
        await dedup.run(key, produce)
        await trio.sleep(1)
    assert len(dedup) == 3
    assert dedup.evictions == 2
    assert (await dedup.run(b"a", produce))[1] == "miss"  # evicted
    assert (await dedup.run(b"e", produce))[1] == "hit"
    assert (await dedup.run(b"d", produce))[1] == "hit"


async def test_expired_entries_are_evicted_lazily(autojump_clock: trio.testing.MockClock) -> None:
    dedup = Deduplicator(ttl=5)
    produce = Producer(delay=0)
    for key in (b"a", b"b", b"c"):
        await dedup.run(key, produce)
    assert len(dedup) == 3
    await trio.sleep(6)
    await dedup.run(b"z", produce)  # any call sweeps what expired
    assert len(dedup) == 1
    assert dedup.evictions == 3


async def test_large_body_is_shared_but_not_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    big = StoredResponse(200, (), b"x" * 101)
    dedup = Deduplicator(ttl=60, max_body=100)
    produce = Producer(big)
    results = await _gather(dedup, b"k", produce, 3)
    assert [r for r in results] == [(big, "miss"), (big, "shared"), (big, "shared")]
    assert len(dedup) == 0
    assert (await dedup.run(b"k", produce))[1] == "miss"
    exact = StoredResponse(200, (), b"x" * 100)
    produce.response = exact
    await dedup.run(b"j", produce)
    assert (await dedup.run(b"j", produce)) == (exact, "hit")


def test_default_size_cap_is_one_mib() -> None:
    assert Deduplicator(ttl=1).max_body == 1 << 20


async def test_instances_are_independent(autojump_clock: trio.testing.MockClock) -> None:
    one, two = Deduplicator(ttl=60), Deduplicator(ttl=60)
    produce = Producer(delay=0)
    await one.run(b"k", produce)
    assert (await two.run(b"k", produce))[1] == "miss"
    assert produce.calls == 2


async def test_custom_clock() -> None:
    now = [100.0]
    dedup = Deduplicator(ttl=10, clock=lambda: now[0])
    produce = Producer(delay=0)
    await dedup.run(b"k", produce)
    now[0] = 109.0
    assert (await dedup.run(b"k", produce))[1] == "hit"
    now[0] = 110.0
    assert (await dedup.run(b"k", produce))[1] == "miss"
