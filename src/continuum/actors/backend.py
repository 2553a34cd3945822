"""BackendActor: one upstream's connection pool, health, in-flight count and latency.

The request path calls :meth:`BackendActor.start` directly (no channel hop); the actor's
own task only does upkeep — pre-warming at start and closing idle connections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, final

import msgspec
import trio

from ..apis.profiles import backend_profile
from ..config import BackendConfig, CircuitBreakerConfig, Config
from ..core.circuit import BreakerSettings, BreakerSnapshot, BreakerState, CircuitBreaker
from ..core.clock import now as clock
from ..core.endpoints import (
    RESPONSES,
    RESPONSES_BRIDGE,
    RESPONSES_NATIVE,
    default_endpoints,
    responses_native,
)
from ..core.health import HealthState
from ..core.http import Headers
from ..net.client.connect import make_ssl_context
from ..net.client.exchange import (
    ConnectError,
    Exchange,
    Origin,
    Pool,
    PoolLimits,
    PoolStats,
    RequestBody,
)
from ..net.client.http1_pool import HTTP1Pool

log = logging.getLogger("continuum.backend")

_EWMA_ALPHA: Final = 0.3


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """What ``/admin/health`` shows for one backend."""

    name: str
    url: str
    type: str
    healthy: bool
    state: str
    reason: str
    circuit: BreakerSnapshot
    cooldown: float
    in_flight: int
    latency_ms: float | None
    models: tuple[str, ...]
    pool: PoolStats
    requests: int
    failures: int


#: Fields of ``backends[]`` that change on a running actor (:meth:`BackendActor.tune`). Any
#: other field needs a new pool, profile or mock: a new actor takes over and the old drains.
TUNABLE_FIELDS: Final = ("weight", "models", "health_check", "max_queue", "enabled")


def needs_new_actor(old: BackendConfig, new: BackendConfig) -> bool:
    """Does going from ``old`` to ``new`` take a new actor (a new URL, type, key, ...)?"""
    same = {name: getattr(old, name) for name in TUNABLE_FIELDS}
    return msgspec.structs.replace(new, **same) != old


def probes_enabled(config: BackendConfig, root: Config) -> bool:
    """Is this backend probed (``health_checks.enabled``, or its own override)?"""
    override = config.health_check
    if override is None or override.enabled is None:
        return root.health_checks.enabled
    return override.enabled


def breaker_settings(cb: CircuitBreakerConfig) -> BreakerSettings:
    return BreakerSettings(
        enabled=cb.enabled,
        failure_threshold=cb.failure_threshold,
        failure_rate_threshold=cb.failure_rate_threshold,
        minimum_requests=cb.minimum_requests,
        window=cb.window,
        open_timeout=cb.timeout,
        half_open_max_requests=cb.half_open_max_requests,
    )


def backend_endpoints(config: BackendConfig, api: str) -> frozenset[str]:
    """What a backend serves, as routing keys (see ``BackendActor.endpoints``)."""
    listed = config.endpoints
    endpoints = (frozenset(listed) if listed is not None
                 else default_endpoints(config.type, api))
    if RESPONSES in endpoints:
        native = responses_native(config.type, api, config.responses)
        endpoints |= {RESPONSES_NATIVE if native else RESPONSES_BRIDGE}
    return endpoints


@final
class BackendActor:
    def __init__(self, config: BackendConfig, url: str, root: Config) -> None:
        self.config = config
        self.name = config.name
        #: The ``x-continuum-backend`` header of its answers, encoded once.
        self.name_header = (b"x-continuum-backend", config.name.encode())
        self.url = url
        self.type = config.type
        http_client = root.http_client
        #: Requests that may be in flight at once (each holds an upstream connection); past
        #: it they queue for a connection, up to ``max_queue``, and then the backend is full.
        self.max_in_flight = config.max_in_flight or root.server.connection_pool_size
        limits = PoolLimits(
            max_connections=self.max_in_flight,
            max_idle=min(http_client.pool_max_idle_per_host, self.max_in_flight),
            idle_timeout=http_client.pool_idle_timeout,
            connect_timeout=http_client.connect_timeout,
            max_response_header_size=http_client.max_response_header_size,
            tcp_keepalive=http_client.tcp_keepalive_interval,
        )
        origin = Origin.from_url(url)
        ssl_context = None
        if origin.scheme == "https":
            ssl_context = make_ssl_context(config.ca_file, config.tls_verify)
        #: The backend's TLS context (its CA file, verification), for other connections
        #: than the pool's (the Realtime relay's WebSocket); None for http.
        self.ssl_context = ssl_context
        #: HTTP/1.1 until ``open`` has settled the protocol (``http2: auto|always``).
        self.pool: Pool = HTTP1Pool(origin, limits, ssl_context)
        self.health = HealthState()
        self.breaker = CircuitBreaker(breaker_settings(root.circuit_breaker), clock)
        #: Until when an upstream's Retry-After asked us to leave it alone.
        self.cooldown_until = 0.0
        self.discovered_models: frozenset[str] = frozenset()
        self.in_flight = 0
        self.latency_ewma: float | None = None
        self.requests = 0
        #: Attempts that counted against this backend (what its breaker saw as failures).
        self.failures = 0
        #: Why the last of them failed: what a 503 "circuit breaker open" says.
        self.last_failure = ""
        #: Its API's facts: credentials, paths, the model list (one home: apis.profiles).
        self.profile = backend_profile(config)
        #: The API this backend speaks: "openai" (every OpenAI-compatible server, and
        #: Gemini's OpenAI endpoint), "anthropic" (Messages) or "gemini" (generateContent).
        self.api = self.profile.api
        #: The model-routed endpoints it serves (``endpoints``, or its type's defaults),
        #: plus the routing key of how it serves ``/v1/responses``, if it does.
        self.endpoints = backend_endpoints(config, self.api)
        self.tune(config, root)

    def tune(self, config: BackendConfig, root: Config) -> None:
        """Take the settings that change without a new actor (a config reload; see
        :func:`needs_new_actor`): weight, models, queue length, health-check thresholds
        and the breaker's settings. Health and breaker states carry on."""
        self.config = config
        self.weight = root.backend_weight(config)
        self.capacity = self.max_in_flight + config.max_queue
        self.static_models = frozenset(config.models)
        hc = root.health_checks
        probed = probes_enabled(config, root)
        self.health.reconfigure(
            hc.unhealthy_threshold, hc.healthy_threshold,
            # Only probes bring a backend back, so without them passive marking would
            # remove it for good: the circuit breaker (which half-opens) covers that case.
            passive_threshold=hc.passive_failure_threshold if probed else 0,
            max_warmup_duration=hc.max_warmup_duration,
        )
        if not probed:
            self.health.reset()  # nothing else would ever bring it back
        self.breaker.reconfigure(breaker_settings(root.circuit_breaker))

    # -- routing view --------------------------------------------------------------------

    @property
    def models(self) -> frozenset[str]:
        """Static ``models`` win; otherwise what the backend's ``/v1/models`` listed."""
        return self.static_models or self.discovered_models

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    def available(self, now: float) -> bool:
        """May the Router pick this backend now? Healthy, breaker not open, room left,
        and not asked to back off by a Retry-After."""
        return (
            self.in_flight < self.capacity
            and now >= self.cooldown_until
            and self.health.healthy
            and (self.breaker.closed  # the fast path: no clock read
                 or self.breaker.state is not BreakerState.OPEN)
        )

    def unavailable_reason(self, now: float) -> tuple[str, float]:
        """Why ``available`` is False, and how long that is likely to last (seconds)."""
        if not self.health.healthy:
            return "unhealthy", 0.0
        if self.breaker.state is BreakerState.OPEN:
            return "circuit_open", max(0.0, self.breaker.retry_after)
        if now < self.cooldown_until:
            return "cooling_down", self.cooldown_until - now
        return "overloaded", 1.0

    # -- request path --------------------------------------------------------------------

    async def start(
        self, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> Exchange:
        """Send a request; return with the response head. Caller must ``finish`` it."""
        self.in_flight += 1
        self.requests += 1
        try:
            return await self.pool.start(method, target, headers, body)
        except BaseException:
            self.in_flight -= 1
            raise

    async def start_upload(
        self, method: bytes, target: bytes, headers: Headers, body: RequestBody
    ) -> Exchange:
        """:meth:`start` with a body relayed as it arrives (an upload)."""
        self.in_flight += 1
        self.requests += 1
        try:
            return await self.pool.start_upload(method, target, headers, body)
        except BaseException:
            self.in_flight -= 1
            raise

    def finish(self, exchange: Exchange | None, latency: float | None) -> None:
        """Release the exchange (connection back to the pool if clean); ``latency`` (the
        whole answer) feeds the EWMA. Failures are counted where the attempt's outcome is
        recorded (``failures``), not here."""
        if exchange is not None:
            exchange.close()
        self.in_flight -= 1
        if latency is not None:
            ewma = self.latency_ewma
            self.latency_ewma = latency if ewma is None else ewma + _EWMA_ALPHA * (latency - ewma)

    def snapshot(self) -> BackendSnapshot:
        return BackendSnapshot(
            name=self.name,
            url=self.url,
            type=self.type,
            healthy=self.healthy,
            state=self.health.state.value,
            reason=self.health.last_reason,
            circuit=self.breaker.snapshot(),
            cooldown=max(0.0, self.cooldown_until - clock()),
            in_flight=self.in_flight,
            latency_ms=None if self.latency_ewma is None else self.latency_ewma * 1000.0,
            models=tuple(sorted(self.models)),
            pool=self.pool.stats,
            requests=self.requests,
            failures=self.failures,
        )

    async def get(self, path: bytes, timeout: float, limit: int) -> tuple[int, bytes]:
        """``GET path`` with this backend's credentials, the whole answer within ``timeout``
        (raises trio.TooSlowError or UpstreamError): health probes and model discovery."""
        exchange = None
        try:
            with trio.fail_after(timeout):
                exchange = await self.pool.start(b"GET", path, list(self.profile.auth), b"")
                body = await exchange.read_all(limit)
        finally:
            if exchange is not None:
                exchange.close()
        return exchange.status, body

    # -- actor task ----------------------------------------------------------------------

    async def open(self, nursery: trio.Nursery) -> None:
        """Settle the upstream protocol (``http2``) before serving: ``auto`` asks the
        server by ALPN on https (one handshake, whose connection is kept), ``always`` runs
        an HTTP/2 pool (h2c on http). An HTTP/2 pool's connections live in ``nursery``."""
        mode = self.config.http2
        origin = self.pool.origin
        if mode == "never" or (mode == "auto" and origin.scheme != "https"):
            return
        # Loaded only here: the h2 library costs ~1.4 MB and ~15 ms of start-up that a
        # router without an HTTP/2-capable backend never needs.
        from ..net.client.h2 import HTTP2Pool, open_pool

        try:
            self.pool = await open_pool(
                origin, self.pool.limits, mode, nursery,
                ca_file=self.config.ca_file, verify=self.config.tls_verify,
            )
        except ConnectError as exc:
            # auto cannot decide without an answer: HTTP/1.1 until the router restarts.
            log.warning("backend %s: could not negotiate HTTP/2 (%s); using HTTP/1.1",
                        self.name, exc)
            return
        log.info("backend %s: upstream protocol %s", self.name,
                 "HTTP/2" if isinstance(self.pool, HTTP2Pool) else "HTTP/1.1")

    async def prewarm(self, count: int) -> None:
        try:
            opened = await self.pool.prewarm(count)
            log.debug("backend %s: pre-warmed %d connection(s)", self.name, opened)
        except Exception as exc:  # a down backend at start is the prober's business
            log.info("backend %s: pre-warming failed: %s", self.name, exc)

    async def run(self) -> None:
        """Upkeep: close connections idle past ``pool_idle_timeout``."""
        period = max(0.05, min(self.pool.limits.idle_timeout / 2, 5.0))
        while True:
            await trio.sleep(period)
            self.pool.reap_idle()

    def close(self) -> None:
        self.pool.close()
