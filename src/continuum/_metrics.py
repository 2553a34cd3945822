"""Metric definitions (names from the reference guide's "Prometheus Metrics"), one registry
per router so several routers can live in one process."""

from __future__ import annotations

from typing import final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)

#: Label value for anything outside the known set (bounded cardinality).
OTHER = "other"


@final
class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests answered by the router.",
            ["method", "endpoint", "status"], registry=r,
        )
        self.request_duration = Histogram(
            "http_request_duration_seconds", "Time from request parsed to response sent.",
            ["method", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.backend_duration = Histogram(
            "backend_request_duration_seconds", "Upstream time of the attempt that answered.",
            ["backend", "model"], buckets=_LATENCY_BUCKETS, registry=r,
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
        self.model_cache = Counter(
            "model_cache_events", "Merged /v1/models cache events.", ["event"], registry=r,
        )
        self.observations_dropped = Counter(
            "continuum_observations_dropped",
            "Observations dropped because the metrics sink lagged.", registry=r,
        )
