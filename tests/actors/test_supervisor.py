"""The supervisor restarts a crashed actor with backoff and logs why."""

from __future__ import annotations

import itertools
import logging

import httpx
import pytest
import trio
import trio.testing

from continuum.actors.supervisor import supervise
from helpers import router_config, start_mock, start_router


async def test_crashed_actor_is_restarted_with_growing_backoff(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(trio.current_time())
        if len(starts) <= 3:
            raise RuntimeError(f"boom {len(starts)}")

    with caplog.at_level(logging.ERROR, logger="continuum.supervisor"):
        await supervise("flaky", flaky)
    assert len(starts) == 4  # three crashes, then a clean return ends supervision
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([0.1, 0.2, 0.4])  # exponential backoff (virtual clock)
    crashes = [r for r in caplog.records if "actor flaky crashed" in r.getMessage()]
    assert len(crashes) == 3
    assert crashes[0].exc_info is not None and "boom 1" in str(crashes[0].exc_info[1])


async def test_metrics_sink_keeps_counting_after_a_crash(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash inside a real router's MetricsSink: it is restarted and /metrics works."""
    _, url = await start_mock(nursery, ["m"])
    router = await start_router(nursery, router_config([{"name": "a", "url": url}]))
    sink = router.metrics
    real_observe = sink.observe
    crashed = trio.Event()

    def observe_once_broken(obs: object) -> None:
        sink.observe = real_observe  # type: ignore[method-assign]
        crashed.set()
        raise RuntimeError("sink bug")

    sink.observe = observe_once_broken  # type: ignore[method-assign]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with caplog.at_level(logging.ERROR, logger="continuum.supervisor"):
        async with httpx.AsyncClient(base_url=router.url) as client:
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
            with trio.fail_after(5):
                await crashed.wait()
            await trio.sleep(0.5)  # the restart backoff
            for _ in range(3):
                assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
            metrics = (await client.get("/metrics")).text
    assert any("actor metrics crashed" in r.getMessage() for r in caplog.records)
    line = next(
        ln for ln in metrics.splitlines()
        if ln.startswith("http_requests_total{") and 'endpoint="/v1/chat/completions"' in ln
    )
    # The observation that crashed the sink is lost; the three after the restart count.
    assert float(line.rsplit(" ", 1)[1]) == 3.0
