"""The HealthProber's per-backend schedule, first with a fake probe on trio's MockClock, then
against a real mock upstream (the HealthState machine it drives: tests/core/test_health.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from continuum import config_from_dict
from continuum.actors import prober as health_mod
from continuum.actors.backend import BackendActor
from continuum.actors.prober import HealthProber, probe_settings
from continuum.config import BackendConfig, HealthChecksConfig
from continuum.core.health import Health, HealthState
from continuum.core.messages import ControlMessage, HealthReport
from helpers import start_mock

PROBE = "/v1/models"


# -- HealthProber: schedule, with a fake probe and MockClock -------------------------------


def fake_backend(name: str, override: Any = None) -> BackendActor:
    health = HealthState(unhealthy_threshold=3, healthy_threshold=2, max_warmup_duration=300.0)
    config = SimpleNamespace(name=name, health_check=override)
    return cast(BackendActor, SimpleNamespace(name=name, config=config, health=health))


def checks(**values: Any) -> HealthChecksConfig:
    return HealthChecksConfig(**{"interval": 30.0, "warmup_check_interval": 1.0, **values})


class Upstream:
    """Answers fake probes; counts them with their (virtual) time."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.probes: dict[str, list[float]] = {}

    async def probe(self, backend: BackendActor, endpoint: str, timeout: float) -> HealthReport:
        self.probes.setdefault(backend.name, []).append(trio.current_time())
        status = self.status.get(backend.name, 200)
        return HealthReport(backend.name, 200 <= status < 300, status, 0.001, f"status {status}")

    def count(self, name: str, since: float) -> int:
        return sum(1 for t in self.probes.get(name, ()) if t > since)


async def apply_reports(
    inbox: trio.MemoryReceiveChannel[ControlMessage], backends: list[BackendActor]
) -> None:
    """What the Router does with a HealthReport."""
    by_name = {b.name: b for b in backends}
    async for message in inbox:
        assert isinstance(message, HealthReport)
        by_name[message.backend].health.record_probe(
            message.status, message.ok, message.reason, trio.current_time()
        )


async def run_prober(
    nursery: trio.Nursery, backends: list[BackendActor], config: HealthChecksConfig,
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
) -> HealthProber:
    monkeypatch.setattr(health_mod, "probe", upstream.probe)
    send, receive = trio.open_memory_channel[ControlMessage](16)
    prober = HealthProber(backends, config, send)
    for report in await prober.probe_all():
        by_name = {b.name: b for b in backends}
        by_name[report.backend].health.record_probe(
            report.status, report.ok, report.reason, trio.current_time(), first=True
        )
    nursery.start_soon(apply_reports, receive, backends)
    nursery.start_soon(prober.run)
    return prober


async def test_each_backend_on_its_own_schedule(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = Upstream()
    upstream.status["warming"] = 503
    ready, warming = fake_backend("ready"), fake_backend("warming")
    async with trio.open_nursery() as nursery:
        await run_prober(nursery, [ready, warming], checks(), upstream, monkeypatch)
        assert warming.health.warming_up and ready.health.healthy
        start = trio.current_time()
        await trio.sleep(95.5)
        assert upstream.count("ready", start) == 3  # every 30 s
        assert upstream.count("warming", start) >= 90  # about every second
        assert warming.health.warming_up
        # It is ready: one fast probe notices, then back to the normal interval.
        upstream.status["warming"] = 200
        await trio.sleep(2.5)
        assert warming.health.healthy
        after = trio.current_time()
        await trio.sleep(50.0)
        assert upstream.count("warming", after) == 1
        nursery.cancel_scope.cancel()


async def test_a_backend_turning_503_is_reprobed_at_the_warmup_interval(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = Upstream()
    backend = fake_backend("b")
    async with trio.open_nursery() as nursery:
        await run_prober(nursery, [backend], checks(), upstream, monkeypatch)
        upstream.status["b"] = 503
        await trio.sleep(30.5)  # the normal probe sees the 503
        assert backend.health.warming_up
        seen = trio.current_time()
        await trio.sleep(10.0)
        assert upstream.count("b", seen) >= 9
        nursery.cancel_scope.cancel()


async def test_warm_up_runs_out(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = Upstream()
    upstream.status["b"] = 503
    backend = fake_backend("b")
    async with trio.open_nursery() as nursery:
        await run_prober(nursery, [backend], checks(), upstream, monkeypatch)
        await trio.sleep(302.0)
        assert backend.health.state is Health.UNHEALTHY
        assert "still warming up" in backend.health.last_reason
        after = trio.current_time()
        await trio.sleep(59.0)
        assert upstream.count("b", after) <= 2  # back to the normal interval
        nursery.cancel_scope.cancel()


async def test_per_backend_override(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = Upstream()
    fast = fake_backend("fast", SimpleNamespace(interval=5.0, enabled=None, endpoint="/health",
                                                timeout=None))
    off = fake_backend("off", SimpleNamespace(enabled=False))
    plain = fake_backend("plain")
    config = checks()
    settings = probe_settings(fast, config)
    assert (settings.endpoint, settings.interval, settings.timeout) == ("/health", 5.0, 10.0)
    assert probe_settings(plain, config).endpoint == PROBE
    async with trio.open_nursery() as nursery:
        await run_prober(nursery, [fast, off, plain], config, upstream, monkeypatch)
        start = trio.current_time()
        await trio.sleep(60.5)
        assert upstream.count("fast", start) == 12
        assert upstream.count("plain", start) == 2
        assert "off" not in upstream.probes
        nursery.cancel_scope.cancel()


async def test_globally_disabled_but_enabled_per_backend(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = Upstream()
    on = fake_backend("on", SimpleNamespace(enabled=True))
    other = fake_backend("other")
    async with trio.open_nursery() as nursery:
        await run_prober(nursery, [on, other], checks(enabled=False), upstream, monkeypatch)
        await trio.sleep(61.0)
        assert len(upstream.probes["on"]) == 3  # the first round and two more
        assert "other" not in upstream.probes
        nursery.cancel_scope.cancel()


# -- HealthProber against a real mock upstream ---------------------------------------------


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


async def test_prober_against_a_warming_mock_upstream(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, ("m",))
    mock.set_health_status(503)
    # A normal interval far longer than the test: every probe after the first round is
    # a warm-up probe.
    config = config_from_dict(
        {
            "health_checks": {"interval": 3600, "warmup_check_interval": 0.05, "timeout": 5},
            "backends": [{"name": "m", "url": url, "models": ["m"]}],
        },
        source="<test>",
    )
    backend_config: BackendConfig = config.backends[0]
    backend = BackendActor(backend_config, url, config)
    send, receive = trio.open_memory_channel[ControlMessage](16)
    prober = HealthProber([backend], config.health_checks, send)
    try:
        (report,) = await prober.probe_all()
        assert (report.ok, report.status) == (False, 503)
        assert backend.health.record_probe(
            report.status, report.ok, report.reason, trio.current_time(), first=True
        )
        assert backend.health.warming_up
        first_round = mock.requests_by_path[PROBE]
        nursery.start_soon(apply_reports, receive, [backend])
        nursery.start_soon(prober.run)

        # Probed at warmup_check_interval: `interval` alone would give no probe at all.
        await wait_for(lambda: mock.requests_by_path[PROBE] >= first_round + 5)
        assert backend.health.warming_up
        assert not backend.health.healthy

        mock.set_health_status(200)
        await wait_for(lambda: backend.health.healthy)
        # Ready: back on the normal (hour-long) interval, so probing stops.
        settled = mock.requests_by_path[PROBE]
        await trio.sleep(0.3)
        assert mock.requests_by_path[PROBE] <= settled + 1
    finally:
        backend.close()
