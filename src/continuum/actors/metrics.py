"""MetricsSink: owns the Prometheus registry; the request path only ``send_nowait``s to it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, final

import trio
from prometheus_client import generate_latest

from .._circuit import BreakerState
from .._dedup import Deduplicator
from .._messages import RequestObserved
from .._metrics import OTHER, Metrics
from .backend import BackendActor
from .cache import CacheKeeper

_BREAKER_LEVEL: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

#: How often observations are applied; /metrics always drains first, so it is never stale.
DRAIN_PERIOD: Final = 0.1


@final
class MetricsSink:
    def __init__(
        self,
        metrics: Metrics,
        backends: Sequence[BackendActor],
        known_model: Callable[[str], bool],
        cache: CacheKeeper,
        active_connections: Callable[[], int],
        dedup: Deduplicator | None = None,
    ) -> None:
        self.metrics = metrics
        self.backends = backends
        self._known_model = known_model
        self._cache = cache
        self._active_connections = active_connections
        # Label children cached per label tuple: .labels() costs ~10x an observe.
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._backend_children: dict[tuple[str, str], Any] = {}
        self._cache_reported = (0, 0, 0)
        self._dedup = dedup
        self._dedup_reported = (0, 0, 0)
        self._inbox: trio.MemoryReceiveChannel[RequestObserved] | None = None

    def observe(self, obs: RequestObserved) -> None:
        key = (obs.method, obs.endpoint, str(obs.status))
        children = self._request_children.get(key)
        if children is None:
            m = self.metrics
            children = (
                m.requests.labels(*key),
                m.request_duration.labels(obs.method, obs.endpoint),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(obs.duration)
        if obs.backend:
            model = obs.model if self._known_model(obs.model) else OTHER
            bkey = (obs.backend, model)
            child = self._backend_children.get(bkey)
            if child is None:
                child = self.metrics.backend_duration.labels(*bkey)
                self._backend_children[bkey] = child
            child.observe(obs.backend_duration)

    def refresh_gauges(self) -> None:
        m = self.metrics
        for backend in self.backends:
            m.backend_health.labels(backend.name).set(1 if backend.healthy else 0)
            m.circuit_state.labels(backend.name).set(_BREAKER_LEVEL[backend.breaker.state])
            m.backend_in_flight.labels(backend.name).set(backend.in_flight)
        m.active_connections.set(self._active_connections())
        stats = self._cache.stats
        last = self._cache_reported
        for event, now, before in zip(
            ("hit", "miss", "eviction"), (stats.hits, stats.misses, stats.evictions), last,
            strict=True,
        ):
            if now > before:
                m.model_cache.labels(event).inc(now - before)
        self._cache_reported = (stats.hits, stats.misses, stats.evictions)
        dedup = self._dedup
        if dedup is not None:
            now_counts = (dedup.hits, dedup.shared, dedup.misses)
            for event, now_n, before_n in zip(
                ("hit", "shared", "miss"), now_counts, self._dedup_reported, strict=True
            ):
                if now_n > before_n:
                    m.dedup.labels(event).inc(now_n - before_n)
            self._dedup_reported = now_counts

    def drain(self) -> None:
        """Apply every observation waiting in the inbox."""
        inbox = self._inbox
        if inbox is None:
            return
        observe = self.observe
        while True:
            try:
                observe(inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    async def render(self) -> bytes:
        """Prometheus text, rendered in a worker thread: ~800 series blocked the loop 88 ms."""
        self.drain()
        self.refresh_gauges()
        return await trio.to_thread.run_sync(generate_latest, self.metrics.registry)

    async def run(self, inbox: trio.MemoryReceiveChannel[RequestObserved]) -> None:
        """Drain the inbox in batches. Waiting on it would wake this task once per request
        (a scheduler round trip each); a batch every ``DRAIN_PERIOD`` costs one wake-up."""
        self._inbox = inbox
        while True:
            await trio.sleep(DRAIN_PERIOD)
            self.drain()
