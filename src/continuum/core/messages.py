"""Every message that crosses between actors, in one place.

The request path itself sends none of these through a channel round trip: it calls the
Router's and BackendActors' synchronous methods (trio is single-threaded, so a method that
does not await is atomic) and appends one :class:`RequestObserved` to the MetricsSink's
pending list. Channels carry control traffic: health, model lists.
"""

from __future__ import annotations

import msgspec


class HealthReport(msgspec.Struct, frozen=True):
    """HealthProber → Router: the outcome of one probe of one backend."""

    backend: str
    ok: bool
    status: int  # HTTP status of the probe, 0 when no response
    latency: float  # seconds; 0.0 when no response
    reason: str = ""


class ModelsDiscovered(msgspec.Struct, frozen=True):
    """ModelCatalog → Router: the model ids a backend's ``GET /v1/models`` listed."""

    backend: str
    models: tuple[str, ...]


class DiscoveryFailed(msgspec.Struct, frozen=True):
    """ModelCatalog → Router: a backend's model list could not be fetched."""

    backend: str
    reason: str


class RequestObserved(msgspec.Struct, frozen=True):
    """Ingress → MetricsSink, once per request, never blocking (dropped when the sink lags).

    Everything the MetricsSink needs for the request's series travels here, so the request
    path does one append and no metric work of its own.
    """

    method: str
    endpoint: str
    status: int
    duration: float  # whole request, seconds
    backend: str = ""  # "" when no backend was involved
    model: str = ""
    backend_duration: float = 0.0  # upstream time for the attempt that answered
    attempts: int = 0
    #: Time spent in upstream calls over every attempt (seconds); ``duration`` minus this
    #: is the router's own time.
    upstream: float = 0.0
    stream: bool = False
    #: Streams: request start to the first chunk forwarded (-1.0: none was).
    ttft: float = -1.0
    #: Streams: the longest gap between two forwarded chunks (-1.0: fewer than two).
    max_gap: float = -1.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Backends whose failed attempt was retried elsewhere, one entry per retry.
    retried: tuple[str, ...] = ()
    #: Models left for the next model of a fallback chain, one entry per failover.
    failed_over: tuple[str, ...] = ()
    #: Body sizes, set only when ``metrics.optional_metrics`` asks for them (-1: not).
    request_bytes: int = -1
    response_bytes: int = -1


ControlMessage = HealthReport | ModelsDiscovered | DiscoveryFailed
