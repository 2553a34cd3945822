"""HealthProber: probes each backend on its own schedule and reports to the Router.

Each backend has its own task. Its schedule is ``health_checks.interval`` (or the backend's
``health_check.interval`` override), shortened to ``warmup_check_interval`` while the
backend's :class:`~continuum.core.health.HealthState` says it is warming up. The Router applies
the reports, so the state a task reads may lag its own last report by a moment; the task
therefore never sleeps longer than the warm-up interval at a time and re-reads the state
on every wake-up — a backend that starts answering 503 is re-probed about one warm-up
interval later, not one full interval later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import final

import msgspec
import trio

from ..config import HealthChecksConfig
from ..core.messages import ControlMessage, HealthReport
from ..net.client.exchange import UpstreamError
from .backend import BackendActor
from .loops import PerBackend

log = logging.getLogger("continuum.health")

_PROBE_BODY_LIMIT = 4 * 1024 * 1024


class ProbeSettings(msgspec.Struct, frozen=True):
    """The health-check settings in force for one backend (global ones plus its override)."""

    enabled: bool
    endpoint: str
    interval: float
    timeout: float
    warmup_interval: float


def probe_settings(backend: BackendActor, config: HealthChecksConfig) -> ProbeSettings:
    """``health_checks`` with ``backends[].health_check`` laid over it; a field left unset
    (None) in the override keeps the global value."""
    override = getattr(backend.config, "health_check", None)

    def pick(name: str) -> object:
        return None if override is None else getattr(override, name, None)

    enabled, endpoint = pick("enabled"), pick("endpoint")
    interval = _seconds(pick("interval"), config.interval)
    return ProbeSettings(
        enabled=enabled if isinstance(enabled, bool) else config.enabled,
        endpoint=endpoint if isinstance(endpoint, str) else config.endpoint,
        interval=interval,
        timeout=_seconds(pick("timeout"), config.timeout),
        # Never probe a warming backend less often than a ready one.
        warmup_interval=min(config.warmup_check_interval, interval),
    )


def _seconds(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


async def probe(backend: BackendActor, endpoint: str, timeout: float) -> HealthReport:
    """One ``GET endpoint`` through the backend's own pool (which keeps a connection warm)."""
    started = trio.current_time()
    try:
        path = backend.profile.probe_path(endpoint)
        status, _ = await backend.get(path, timeout, _PROBE_BODY_LIMIT)
    except trio.TooSlowError:
        return HealthReport(backend.name, False, 0, 0.0, f"probe timed out after {timeout:g}s")
    except UpstreamError as exc:
        return HealthReport(backend.name, False, 0, 0.0, str(exc))
    latency = trio.current_time() - started
    ok = 200 <= status < 300
    if ok:
        reason = ""
    elif status == 503:
        reason = "warming up (probe answered 503)"
    else:
        reason = f"probe answered {status}"
    return HealthReport(backend.name, ok, status, latency, reason)


@final
class HealthProber:
    def __init__(
        self,
        backends: Sequence[BackendActor],
        config: HealthChecksConfig,
        router_inbox: trio.MemorySendChannel[ControlMessage],
    ) -> None:
        self.backends = backends
        self.config = config
        self._router = router_inbox
        self._loops = PerBackend(self._loop)

    def update(self, backends: Sequence[BackendActor], config: HealthChecksConfig) -> None:
        """A config reload: probe these backends with these settings from now on. A loop
        reads its settings on every round, so only backends that start or stop being
        probed start or stop a loop."""
        self.backends = backends
        self.config = config
        self._loops.want(self.probed())

    def settings(self, backend: BackendActor) -> ProbeSettings:
        return probe_settings(backend, self.config)

    def probed(self) -> list[BackendActor]:
        """The backends health checks are enabled for."""
        return [b for b in self.backends if self.settings(b).enabled]

    async def probe_all(self) -> list[HealthReport]:
        """One round over every probed backend at once (made before ``serve`` reports ready)."""
        reports: list[HealthReport] = []

        async def one(backend: BackendActor) -> None:
            settings = self.settings(backend)
            reports.append(await probe(backend, settings.endpoint, settings.timeout))

        async with trio.open_nursery() as nursery:
            for backend in self.probed():
                nursery.start_soon(one, backend)
        return reports

    async def _loop(self, backend: BackendActor) -> None:
        last = trio.current_time()  # the first round was made just before serving
        while True:
            settings = self.settings(backend)
            interval = backend.health.probe_interval(settings.interval, settings.warmup_interval)
            now = trio.current_time()
            due = last + interval
            if now < due:
                # Wake at least every warm-up interval: the Router may apply our last report
                # (and switch the backend to warming up) only after we went to sleep.
                await trio.sleep(min(due - now, settings.warmup_interval))
                continue
            last = now
            report = await probe(backend, settings.endpoint, settings.timeout)
            await self._router.send(report)

    async def run(self) -> None:
        self._loops.want(self.probed())
        await self._loops.run()
