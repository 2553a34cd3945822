"""HealthProber: probes each backend on its own schedule and reports to the Router."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import final

import trio

from .._config import HealthChecksConfig
from .._http._client import UpstreamError
from .._messages import ControlMessage, HealthReport
from .backend import BackendActor

log = logging.getLogger("continuum.health")

_PROBE_BODY_LIMIT = 4 * 1024 * 1024


async def probe(backend: BackendActor, endpoint: str, timeout: float) -> HealthReport:
    """One ``GET endpoint`` through the backend's own pool (which keeps a connection warm)."""
    started = trio.current_time()
    exchange = None
    try:
        with trio.fail_after(timeout):
            exchange = await backend.pool.start(
                b"GET", endpoint.encode(), list(backend.upstream_headers), b""
            )
            await exchange.read_all(_PROBE_BODY_LIMIT)
    except trio.TooSlowError:
        return HealthReport(backend.name, False, 0, 0.0, f"probe timed out after {timeout:g}s")
    except UpstreamError as exc:
        return HealthReport(backend.name, False, 0, 0.0, str(exc))
    finally:
        if exchange is not None:
            exchange.close()
    status = exchange.status
    latency = trio.current_time() - started
    ok = 200 <= status < 300
    return HealthReport(backend.name, ok, status, latency, "" if ok else f"probe answered {status}")


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

    async def probe_all(self) -> list[HealthReport]:
        """One round over every backend at once (made before ``serve`` reports ready)."""
        reports: list[HealthReport] = []

        async def one(backend: BackendActor) -> None:
            reports.append(await probe(backend, self.config.endpoint, self.config.timeout))

        async with trio.open_nursery() as nursery:
            for backend in self.backends:
                nursery.start_soon(one, backend)
        return reports

    async def _probe_and_report(self, backend: BackendActor) -> None:
        report = await probe(backend, self.config.endpoint, self.config.timeout)
        await self._router.send(report)

    async def _loop(self, backend: BackendActor) -> None:
        while True:
            await trio.sleep(self.config.interval)
            await self._probe_and_report(backend)

    async def run(self) -> None:
        if not self.config.enabled:
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            for backend in self.backends:
                nursery.start_soon(self._loop, backend)
