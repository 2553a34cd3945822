"""A bounded chaos run: mixed streaming and plain load against three mock backends while one
of them is repeatedly killed and restarted on the same port.

The load is bounded by a request count (not a duration); timing is only used as hang guards.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from continuum.config import MockConfig
from continuum.core.clock import now as clock
from helpers import router_config, start_killable_mock, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}
REQUESTS = 150
CONCURRENCY = 10
#: (kill, restart) points, in answered requests: the chaos follows the load's progress, not
#: the clock, so a fast or a slow machine sees the same number of kills.
KILLS = ((15, 30), (45, 60), (75, 90), (105, 120))
RSS_GROWTH_LIMIT = 50 * 1024 * 1024


def rss_bytes() -> int:
    """This process's resident set size (the router runs in-process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def chat_body(i: int, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"request {i}"}],
        "stream": stream,
    }


def is_openai_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(data, dict)
        and set(data) == {"error"}
        and isinstance(data["error"], dict)
        and set(data["error"]) == ERROR_KEYS
        and bool(data["error"]["message"])
    )


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    _waiters: dict[int, trio.Event] = field(default_factory=dict)

    def count(self) -> None:
        self.answered += 1
        event = self._waiters.pop(self.answered, None)
        if event is not None:
            event.set()

    async def reached(self, answered: int) -> None:
        """Wait until ``answered`` requests have been answered (one way or another)."""
        if self.answered < answered:
            await self._waiters.setdefault(answered, trio.Event()).wait()


async def one_request(client: httpx.AsyncClient, i: int, tally: Tally) -> None:
    stream = i % 2 == 0
    kind = "stream" if stream else "plain"
    try:
        with trio.fail_after(15):
            async with client.stream("POST", CHAT, json=chat_body(i, stream)) as response:
                raw = b""
                async for data in response.aiter_raw():
                    raw += data
    except trio.TooSlowError:
        tally.problems.append(f"#{i} {kind}: hung")
        return
    except httpx.HTTPError as exc:
        tally.problems.append(f"#{i} {kind}: transport error {exc!r}")
        return
    status = response.status_code
    if status != 200:
        if is_openai_error(raw):
            tally.outcomes[f"{kind} error {status}"] += 1
        else:
            tally.problems.append(f"#{i} {kind}: {status} without OpenAI error JSON: {raw[:200]!r}")
        return
    tally.served_by[response.headers.get("x-continuum-backend", "?")] += 1
    if not stream:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            tally.problems.append(f"#{i} plain: 200 with a broken body: {raw[:200]!r}")
            return
        if content != f"Mock reply to: request {i}":
            tally.problems.append(f"#{i} plain: wrong content {content!r}")
            return
        tally.outcomes["plain ok"] += 1
        return
    text = raw.decode(errors="replace")
    if not text.endswith("data: [DONE]\n\n"):
        tally.problems.append(f"#{i} stream: did not end with [DONE]: {text[-200:]!r}")
        return
    events = text[:-2].split("\n\n")
    errors = [e for e in events if e.startswith("event: error")]
    for event in errors:
        lines = event.split("\n")
        if len(lines) < 2 or not is_openai_error(lines[1].removeprefix("data: ").encode()):
            tally.problems.append(f"#{i} stream: malformed error event {event!r}")
            return
    if errors:
        if events[-2] != errors[-1]:
            tally.problems.append(f"#{i} stream: error event not right before [DONE]")
            return
        tally.outcomes["stream cut with error event"] += 1
    else:
        tally.outcomes["stream ok"] += 1


async def test_chaos_kill_and_restart_one_of_three_backends(nursery: trio.Nursery) -> None:
    stream_config = MockConfig(tokens_per_second=200, stream_chunks=8)  # ~40 ms per stream
    _mock_a, url_a = await start_mock(nursery, (MODEL,), stream_config, name="a")
    _mock_b, url_b = await start_mock(nursery, (MODEL,), stream_config, name="b")
    victim = await start_killable_mock(nursery, (MODEL,), stream_config, name="c")
    restarts = 0
    router = await start_router(
        nursery,
        router_config(
            [
                {"name": "a", "url": url_a, "models": [MODEL]},
                {"name": "b", "url": url_b, "models": [MODEL]},
                {"name": "c", "url": victim.url, "models": [MODEL]},
            ],
            health_checks={
                "enabled": True, "interval": 0.1, "timeout": 0.3,
                "unhealthy_threshold": 1, "healthy_threshold": 1,
            },
            request={"max_retries": 2},
            # The kills may open c's breaker; a short timeout lets it half-open in time.
            circuit_breaker={"timeout": 0.2},
        ),
    )
    tally = Tally()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    with trio.fail_after(60):
        async with httpx.AsyncClient(base_url=router.url, timeout=10.0, limits=limits) as client:
            # warm-up, so the RSS baseline includes the steady-state buffers and pools
            for i in range(30):
                await one_request(client, i, Tally())
            rss_before = rss_bytes()

            next_index = iter(range(REQUESTS))

            async def worker() -> None:
                for i in next_index:
                    await one_request(client, i, tally)
                    tally.count()

            async def chaos() -> None:
                nonlocal restarts
                for kill_at, restart_at in KILLS:
                    await tally.reached(kill_at)
                    await victim.kill()
                    await tally.reached(restart_at)
                    await victim.start()
                    restarts += 1

            async with trio.open_nursery() as load:
                load.start_soon(chaos)
                for _ in range(CONCURRENCY):
                    load.start_soon(worker)

            # After the storm: nothing leaked, and the restarted backend is used again.
            backends = router.backends.values()
            with trio.move_on_after(5):
                while any(b.pool.stats.in_use or b.in_flight for b in backends):
                    await trio.sleep(0.02)
            leaks = {
                b.name: (b.pool.stats.in_use, b.in_flight)
                for b in backends
                if b.pool.stats.in_use or b.in_flight
            }
            # Healthy again (probes) and its breaker, if the kills opened it, half-open.
            with trio.move_on_after(10):
                while not router.backends["c"].available(clock()):
                    await trio.sleep(0.02)
            assert router.backends["c"].available(clock()), "the restarted backend never came back"
            recovered = Tally()
            for i in range(9):
                await one_request(client, 1000 + 2 * i + 1, recovered)
            rss_after = rss_bytes()

    assert restarts == len(KILLS)
    assert not tally.problems, "\n".join(tally.problems[:20])
    assert sum(tally.outcomes.values()) == REQUESTS, tally.outcomes
    # A non-streamed request never sent a byte before its answer was whole: with two live
    # backends and retries left, a dying backend must be invisible to it.
    plain = {k: v for k, v in tally.outcomes.items() if k.startswith("plain")}
    assert plain == {"plain ok": REQUESTS // 2}, tally.outcomes
    assert not leaks, f"connections/in-flight slots leaked: {leaks}"
    assert recovered.outcomes == {"plain ok": 9}, (recovered.outcomes, recovered.problems)
    assert recovered.served_by["c"] >= 1, recovered.served_by
    growth = rss_after - rss_before
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"
