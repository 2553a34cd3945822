"""Every message that crosses between actors, in one place.

The request path itself sends none of these through a channel round trip: it calls the
Router's and BackendActors' synchronous methods (trio is single-threaded, so a method that
does not await is atomic) and drops one :class:`RequestObserved` into the MetricsSink with
``send_nowait``. Channels carry control traffic: health, model lists, observations.
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
    """CacheKeeper → Router: the model ids a backend's ``GET /v1/models`` listed."""

    backend: str
    models: tuple[str, ...]


class DiscoveryFailed(msgspec.Struct, frozen=True):
    """CacheKeeper → Router: a backend's model list could not be fetched."""

    backend: str
    reason: str


class RequestObserved(msgspec.Struct, frozen=True):
    """Ingress → MetricsSink, once per request, never blocking (dropped when the sink lags)."""

    method: str
    endpoint: str
    status: int
    duration: float  # whole request, seconds
    backend: str = ""  # "" when no backend was involved
    model: str = ""
    backend_duration: float = 0.0  # upstream time for the attempt that answered
    attempts: int = 0


ControlMessage = HealthReport | ModelsDiscovered | DiscoveryFailed
