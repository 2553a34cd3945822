"""Metric definitions (names from the reference guide's "Prometheus Metrics").

One registry per router, so several routers live in one process. The per-request series
use light collectors of our own (a list of bucket counts and ``bisect``): prometheus-client's
Histogram takes a lock and scans its buckets linearly on every observation, which showed up
in the request-path profile. Everything else is plain prometheus-client.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections import Counter as _Tally
from collections.abc import Callable, Iterator, Sequence
from functools import partial, reduce
from operator import add
from typing import Final, Generic, TypeVar, final

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)

#: Streams: time to first token and the longest gap between chunks.
STREAM_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: The router's own time per request: tens of microseconds up to a retry's backoff.
OVERHEAD_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0,
)

#: Request and answer bodies: a short chat to a long context or a large upload.
SIZE_BUCKETS: Final = (
    100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0, 100_000_000.0,
)
#: Realtime sessions: seconds to an hour.
SESSION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Redis round trips: a loopback call is ~0.1 ms, a slow one is cut at its timeout.
REDIS_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

#: Label value for anything outside the known set (bounded cardinality).
OTHER: Final = "other"


@final
class HistogramChild:
    __slots__ = ("_bounds", "_bucket", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self._bucket: Callable[[float], int] = partial(bisect_left, bounds)
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf only
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def observe_all(self, values: list[float]) -> None:
        """``observe`` each value, in order, with no Python step per value: the buckets are
        tallied and the sum folded in C (the same additions in the same order, so the same
        sum to the bit). The metrics sink applies its batches this way."""
        counts = self.counts
        for index, n in _Tally(map(self._bucket, values)).items():
            counts[index] += n
        self.sum = reduce(add, values, self.sum)


@final
class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


ChildT = TypeVar("ChildT", HistogramChild, CounterChild)


class _LabeledFamily(Collector, Generic[ChildT]):
    """A metric family whose children are made on first use of a label tuple."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        new_child: Callable[[], ChildT],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._new_child: Callable[[], ChildT] = new_child
        self._children: dict[tuple[str, ...], ChildT] = {}
        registry.register(self)

    def labels(self, *values: str) -> ChildT:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child


@final
class LabeledHistogram(_LabeledFamily[HistogramChild]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.buckets = tuple(buckets)
        super().__init__(name, documentation, labelnames, registry,
                         lambda: HistogramChild(self.buckets))

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, count in zip(self.buckets, child.counts, strict=False):
                cumulative += count
                points.append((repr(float(bound)), cumulative))
            points.append(("+Inf", cumulative + child.counts[-1]))
            family.add_metric(list(values), points, child.sum)
        yield family


@final
class LabeledCounter(_LabeledFamily[CounterChild]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry, CounterChild)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


@final
class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        # process_resident_memory_bytes, process_cpu_seconds_total, ... (the dashboard's
        # memory and CPU panels); summed over workers in multi-process mode.
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = LabeledCounter(
            "http_requests", "HTTP requests answered by the router.",
            ["method", "endpoint", "status"], r,
        )
        self.request_duration = LabeledHistogram(
            "http_request_duration_seconds", "Time from request parsed to response sent.",
            ["method", "endpoint"], r,
        )
        # metrics.optional_metrics: no series until switched on.
        self.request_size = LabeledHistogram(
            "http_request_size_bytes", "Request body sizes (optional_metrics).",
            ["method", "endpoint"], r, buckets=SIZE_BUCKETS,
        )
        self.response_size = LabeledHistogram(
            "http_response_size_bytes", "Answer body sizes as sent (optional_metrics).",
            ["method", "endpoint"], r, buckets=SIZE_BUCKETS,
        )
        self.backend_duration = LabeledHistogram(
            "backend_request_duration_seconds", "Upstream time of the attempt that answered.",
            ["backend", "model"], r,
        )
        self.backend_health = Gauge(
            "backend_health_status", "1 when the backend is healthy, else 0.",
            ["backend"], registry=r,
        )
        self.active_connections = Gauge(
            "active_connections", "Client connections currently open.", registry=r,
        )
        self.backend_in_flight = Gauge(
            "backend_in_flight_requests", "Requests in flight per backend.",
            ["backend"], registry=r,
        )
        self.model_catalog = Counter(
            "model_cache_events", "Merged /v1/models cache events.", ["event"], registry=r,
        )
        self.circuit_state = Gauge(
            "backend_circuit_breaker_state",
            "Circuit breaker per backend: 0 closed, 1 half-open, 2 open.",
            ["backend"], registry=r,
        )
        self.dedup = Counter(
            "deduplication_events",
            "Deduplicated requests: hit (stored answer), shared (joined an in-flight call), "
            "miss (made the upstream call).", ["event"], registry=r,
        )
        self.overhead = LabeledHistogram(
            "continuum_overhead_seconds",
            "Time spent in the router itself per proxied request: total minus upstream time.",
            [], r, buckets=OVERHEAD_BUCKETS,
        )
        self.ttft = LabeledHistogram(
            "continuum_time_to_first_token_seconds",
            "Streams: from request parsed to the first chunk forwarded to the client.",
            ["backend", "model"], r, buckets=STREAM_BUCKETS,
        )
        self.chunk_gap = LabeledHistogram(
            "continuum_stream_chunk_gap_seconds",
            "Streams: the longest gap between two forwarded chunks, one value per stream.",
            ["backend", "model"], r, buckets=STREAM_BUCKETS,
        )
        self.retries = LabeledCounter(
            "continuum_retries",
            "Attempts retried on another backend, by the backend whose attempt failed.",
            ["backend"], r,
        )
        self.failovers = LabeledCounter(
            "continuum_failovers",
            "Moves to the next model of a fallback chain, by the model left.", ["model"], r,
        )
        self.tokens = LabeledCounter(
            "continuum_tokens",
            "Tokens reported in upstream usage (prompt = input, completion = output).",
            ["backend", "model", "direction"], r,
        )
        self.pool_connections = Gauge(
            "continuum_pool_connections",
            "Upstream connections per backend: idle, in_use; waiting = requests queued for one.",
            ["backend", "state"], registry=r,
        )
        self.upstream_opened = Counter(
            "continuum_upstream_connections_opened",
            "Upstream connections opened per backend (TCP connect, TLS, HTTP/2 preface).",
            ["backend"], registry=r,
        )
        self.upstream_closed = Counter(
            "continuum_upstream_connections_closed",
            "Upstream connections closed per backend: trimmed idle, broken, refused reuse.",
            ["backend"], registry=r,
        )
        self.observations_dropped = Counter(
            "continuum_observations_dropped",
            "Observations dropped because the metrics sink lagged.", registry=r,
        )
        # The Realtime relay (WebSocket sessions), applied once per session.
        self.realtime_active = Gauge(
            "continuum_realtime_sessions_active", "Realtime sessions being relayed now.",
            registry=r,
        )
        self.realtime_sessions = LabeledCounter(
            "continuum_realtime_sessions",
            "Realtime sessions relayed, by backend and by how they ended (client, upstream, "
            "upstream_error, client_timeout, cancelled).", ["backend", "ended_by"], r,
        )
        self.realtime_duration = LabeledHistogram(
            "continuum_realtime_session_duration_seconds",
            "Realtime sessions: from the relay's start to both hops closed.", ["backend"], r,
            buckets=SESSION_BUCKETS,
        )
        self.realtime_messages = LabeledCounter(
            "continuum_realtime_messages",
            "WebSocket messages relayed (client_to_upstream, upstream_to_client), counted "
            "when the session ends.", ["backend", "direction"], r,
        )
        self.realtime_bytes = LabeledCounter(
            "continuum_realtime_bytes",
            "WebSocket payload bytes relayed, by direction, counted when the session ends.",
            ["backend", "direction"], r,
        )
        # Access control and rate limits (issue 11). Label values are fixed sets.
        self.rate_limited = LabeledCounter(
            "rate_limited",
            "Requests refused by a rate or concurrency limit: limit = requests | tokens | "
            "concurrency, scope = api_key | client | model | backend | global.",
            ["limit", "scope"], r,
        )
        self.auth_failures = LabeledCounter(
            "auth_failures",
            "Requests refused by client key checks: reason = missing | unknown | disabled | "
            "expired (401), scope | model (403).", ["reason"], r,
        )
        self.redis_latency = LabeledHistogram(
            "continuum_redis_request_duration_seconds",
            "Redis round trips of the rate limiter (admission and settling), successful ones.",
            ["call"], r, buckets=REDIS_BUCKETS,
        )
        self.redis_errors = LabeledCounter(
            "continuum_redis_errors",
            "Rate limiter calls to Redis that failed: error = timeout | connection | "
            "unavailable (refused during the back-off after a failure) | reply | protocol.",
            ["call", "error"], r,
        )

    def forget_backend(self, name: str) -> None:
        """Drop the gauges of a backend that left the config (a reload): a gauge says how
        things are now, and a removed backend is not anything now. Counters and histograms
        keep its series, as Prometheus expects of totals."""
        for gauge in (self.backend_health, self.backend_in_flight, self.circuit_state):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        for state in ("idle", "in_use", "waiting"):
            with contextlib.suppress(KeyError):
                self.pool_connections.remove(name, state)
