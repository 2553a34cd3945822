"""MetricsSink: owns the Prometheus registry; the request path only appends to its inbox.

Also the metrics endpoint itself — on the main port (through the Ingress) or on its own
listener (``metrics.bind_address``, :func:`serve_metrics`).
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from itertools import groupby, repeat
from operator import attrgetter, sub
from typing import TYPE_CHECKING, Any, Final, final

import trio
from prometheus_client import generate_latest

from ..config import MetricsConfig
from ..core.circuit import BreakerState
from ..core.errors import JSON_HEADERS, RouterError, quoted, render_error
from ..core.messages import RequestObserved
from ..net.server.connection import HTTPLimits, Request, ServerConnection
from ..net.server.listeners import serve_alone
from ..observability.metrics import OTHER, Metrics
from .backend import BackendActor
from .catalog import ModelCatalog
from .dedup import Deduplicator

if TYPE_CHECKING:
    from ..net.websocket_relay import RelayStats
    from ..observability.metrics import CounterChild, HistogramChild

log = logging.getLogger("continuum.metrics")

_TEXT_FORMAT: Final = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
_POOL_STATES: Final = ("idle", "in_use", "waiting")

_BREAKER_LEVEL: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

#: How often observations are applied; /metrics always drains first, so it is never stale.
DRAIN_PERIOD: Final = 0.1
#: What an observation's series depend on: observations equal in all of it are applied as
#: one group (``MetricsSink.observe``).
_GROUP: Final = attrgetter("method", "endpoint", "status", "backend", "model", "stream",
                           "attempts", "retried", "failed_over")
_DURATION: Final = attrgetter("duration")
_BACKEND_DURATION: Final = attrgetter("backend_duration")
_UPSTREAM: Final = attrgetter("upstream")
_PROMPT_TOKENS: Final = attrgetter("prompt_tokens")
_COMPLETION_TOKENS: Final = attrgetter("completion_tokens")
_REQUEST_BYTES: Final = attrgetter("request_bytes")
_RESPONSE_BYTES: Final = attrgetter("response_bytes")
#: Observations waiting at most (a sink that fell this far behind drops the newest and
#: counts them in ``continuum_observations_dropped_total``).
PENDING_LIMIT: Final = 16384


@final
class MetricsSink:
    def __init__(
        self,
        metrics: Metrics,
        backends: Sequence[BackendActor],
        known_model: Callable[[str], bool],
        catalog: ModelCatalog,
        active_connections: Callable[[], int],
        dedup: Deduplicator | None = None,
    ) -> None:
        self.metrics = metrics
        self.backends = backends
        self._known_model = known_model
        self._catalog = catalog
        self._active_connections = active_connections
        # Label children cached per label tuple: .labels() costs ~10x an observe.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._backend_children: dict[tuple[str, str], _BackendChildren] = {}
        self._retry_children: dict[str, CounterChild] = {}
        self._failover_children: dict[str, CounterChild] = {}
        self._overhead = metrics.overhead.labels()
        self._catalog_reported = (0, 0, 0)
        #: pool → (opened, closed) connection totals already added to its backend's
        #: counters. Keyed by the pool, not the name: a pool that replaces another (a reload
        #: replacing the backend, ``http2: auto`` settling on HTTP/2) counts from zero.
        self._pool_reported: dict[object, tuple[int, int]] = {}
        #: Backends a reload replaced (same name, a new actor), reported until their pool
        #: has closed its last connection, so its closes while draining are counted.
        self._retiring: list[BackendActor] = []
        self._dedup = dedup
        self._dedup_reported = (0, 0, 0)
        #: Observations waiting for :meth:`drain`, appended by the Ingress (at most
        #: ``pending_limit``; it counts the ones it drops). A plain list, not a memory
        #: channel: the Ingress and this sink share one trio thread and the sink drains on
        #: a timer, never waiting on the inbox, so a channel's bookkeeping (~90 bytecodes
        #: per request for its ``send_nowait`` and ``receive_nowait``) bought nothing.
        self.pending: list[RequestObserved] = []
        self.pending_limit = PENDING_LIMIT
        #: Set by a worker process: merges this process's text with its siblings'.
        self.gather: Callable[[bytes], Awaitable[bytes]] | None = None
        #: The ``Authorization`` value a scrape must send (``metrics.auth``), or None.
        self.auth: bytes | None = None
        #: ``metrics.optional_metrics`` asks for body sizes (set by the Ingress, which puts
        #: them in the observations).
        self.body_sizes = False

    def set_backends(self, backends: Sequence[BackendActor]) -> None:
        """A config reload: the backends whose gauges are reported from now on; the gauges
        of names no longer among them are dropped."""
        now = {b.name: b for b in backends}
        gone = {b.name for b in self.backends} - now.keys()
        self._retiring = [b for b in (*self._retiring, *self.backends)
                          if now.get(b.name, b) is not b]
        self.backends = backends
        for name in gone:
            self.metrics.forget_backend(name)

    def use_dedup(self, dedup: Deduplicator | None) -> None:
        """A config reload switched deduplication on or off (or changed its TTL)."""
        self._dedup = dedup
        self._dedup_reported = (0, 0, 0)

    def observe(self, group: list[RequestObserved]) -> None:
        """Apply observations that share every label and flag (``_GROUP``): one child
        lookup, one counter step and one batch per histogram for the whole group."""
        (method, endpoint, status, backend, model, stream, attempts, retried,
         failed_over) = _GROUP(group[0])
        n = len(group)
        key = (method, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            m = self.metrics
            children = (
                m.requests.labels(method, endpoint, str(status)),
                m.request_duration.labels(method, endpoint),
            )
            self._request_children[key] = children
        children[0].inc(n)
        durations = list(map(_DURATION, group))
        children[1].observe_all(durations)
        if self.body_sizes:
            self._observe_sizes(method, endpoint, group)
        if backend:
            bkey = (backend, model if self._known_model(model) else OTHER)
            child = self._backend_children.get(bkey)
            if child is None:
                child = self._backend_children[bkey] = _BackendChildren(self.metrics, bkey)
            child.duration.observe_all(list(map(_BACKEND_DURATION, group)))
            if stream:
                self._observe_streams(child, bkey, group)
            if prompt := sum(map(_PROMPT_TOKENS, group)):
                child.prompt.inc(prompt)
            if completion := sum(map(_COMPLETION_TOKENS, group)):
                child.completion.inc(completion)
        if attempts:  # the router's own time: never below zero
            self._overhead.observe_all(
                list(map(max, repeat(0.0), map(sub, durations, map(_UPSTREAM, group)))))
        for name in retried:
            counter = self._retry_children.get(name)
            if counter is None:
                counter = self._retry_children[name] = self.metrics.retries.labels(name)
            counter.inc(n)
        for name in failed_over:
            label = name if self._known_model(name) else OTHER
            counter = self._failover_children.get(label)
            if counter is None:
                counter = self._failover_children[label] = self.metrics.failovers.labels(label)
            counter.inc(n)

    def _observe_sizes(self, method: str, endpoint: str, group: list[RequestObserved]) -> None:
        """The body sizes the observations carry (-1: not asked for when it was made)."""
        for family, size in ((self.metrics.request_size, _REQUEST_BYTES),
                             (self.metrics.response_size, _RESPONSE_BYTES)):
            if values := [float(v) for v in map(size, group) if v >= 0]:
                family.labels(method, endpoint).observe_all(values)

    def _observe_streams(self, child: _BackendChildren, bkey: tuple[str, str],
                         group: list[RequestObserved]) -> None:
        """Time to first token of the streams that forwarded a chunk, and the longest gap
        of those that forwarded two."""
        ttfts = [obs.ttft for obs in group if obs.ttft >= 0.0]
        if not ttfts:
            return
        stream = child.stream
        if stream is None:  # created with the pair's first stream
            stream = child.stream = (self.metrics.ttft.labels(*bkey),
                                     self.metrics.chunk_gap.labels(*bkey))
        stream[0].observe_all(ttfts)
        if gaps := [obs.max_gap for obs in group if obs.ttft >= 0.0 and obs.max_gap >= 0.0]:
            stream[1].observe_all(gaps)

    def realtime_started(self) -> None:
        """A Realtime session began (called by the relay's gateway; no await)."""
        self.metrics.realtime_active.inc()

    def realtime_ended(self, backend: str, stats: RelayStats | None) -> None:
        """A Realtime session that ``realtime_started`` ended; ``stats`` is what its relay
        did (None: it ended before relaying). Once per session, so applied at once."""
        m = self.metrics
        m.realtime_active.dec()
        if stats is None:
            return
        m.realtime_sessions.labels(backend, stats.ended_by).inc()
        m.realtime_duration.labels(backend).observe(stats.duration)
        m.realtime_messages.labels(backend, "client_to_upstream").inc(stats.client_messages)
        m.realtime_messages.labels(backend, "upstream_to_client").inc(stats.upstream_messages)
        m.realtime_bytes.labels(backend, "client_to_upstream").inc(stats.client_bytes)
        m.realtime_bytes.labels(backend, "upstream_to_client").inc(stats.upstream_bytes)

    def refresh_gauges(self) -> None:
        m = self.metrics
        for backend in self.backends:
            m.backend_health.labels(backend.name).set(1 if backend.healthy else 0)
            m.circuit_state.labels(backend.name).set(_BREAKER_LEVEL[backend.breaker.state])
            m.backend_in_flight.labels(backend.name).set(backend.in_flight)
            pool = backend.pool.stats
            for state, value in zip(_POOL_STATES, (pool.idle, pool.in_use, pool.waiting),
                                    strict=True):
                m.pool_connections.labels(backend.name, state).set(value)
        self._report_churn()
        m.active_connections.set(self._active_connections())
        stats = self._catalog.stats
        last = self._catalog_reported
        for event, now, before in zip(
            ("hit", "miss", "eviction"), (stats.hits, stats.misses, stats.evictions), last,
            strict=True,
        ):
            if now > before:
                m.model_catalog.labels(event).inc(now - before)
        self._catalog_reported = (stats.hits, stats.misses, stats.evictions)
        dedup = self._dedup
        if dedup is not None:
            now_counts = (dedup.hits, dedup.shared, dedup.misses)
            for event, now_n, before_n in zip(
                ("hit", "shared", "miss"), now_counts, self._dedup_reported, strict=True
            ):
                if now_n > before_n:
                    m.dedup.labels(event).inc(now_n - before_n)
            self._dedup_reported = now_counts

    def _report_churn(self) -> None:
        """Add what each backend's pool (and a replaced backend's, while it drains) opened
        and closed since the last refresh to the counters of the backend's name."""
        reported = self._pool_reported
        now: dict[object, tuple[int, int]] = {}
        m = self.metrics
        for backend in (*self._retiring, *self.backends):
            pool = backend.pool
            stats = pool.stats
            before_opened, before_closed = reported.get(pool, (0, 0))
            if stats.opened_total > before_opened:
                m.upstream_opened.labels(backend.name).inc(stats.opened_total - before_opened)
            if stats.closed_total > before_closed:
                m.upstream_closed.labels(backend.name).inc(stats.closed_total - before_closed)
            now[pool] = (stats.opened_total, stats.closed_total)
        self._pool_reported = now
        if self._retiring:
            self._retiring = [b for b in self._retiring
                              if b.pool.stats.in_use or b.pool.stats.idle]

    def drain(self) -> None:
        """Apply every observation waiting in :attr:`pending` (``observe`` never awaits, so
        nothing is appended meanwhile), one group per distinct ``_GROUP`` key.

        Per request nothing runs in Python here: the keys, the grouping (a stable sort by
        each key's first arrival, so series are created in arrival order and every
        histogram sums in arrival order within a group) and each group's buckets and sums
        are C-level passes. Most batches are one group (one route, one backend, all 200s).
        """
        pending = self.pending
        if not pending:
            return
        keys = list(map(_GROUP, pending))
        first = dict.fromkeys(keys)
        if len(first) > 1:
            rank = {key: i for i, key in enumerate(first)}
            order = sorted(range(len(keys)), key=list(map(rank.__getitem__, keys)).__getitem__)
            pending[:] = map(pending.__getitem__, order)
        observe = self.observe
        taken = 0
        try:
            for _, members in groupby(pending, _GROUP):
                group = list(members)
                taken += len(group)
                observe(group)
        finally:  # a group that raised is gone, as a channel's items would be; the rest wait
            del pending[:taken]

    async def render_local(self) -> bytes:
        """This process's Prometheus text, rendered in a worker thread: ~800 series blocked
        the loop 88 ms."""
        self.drain()
        self.refresh_gauges()
        return await trio.to_thread.run_sync(generate_latest, self.metrics.registry)

    async def render(self) -> bytes:
        """What /metrics serves: this process's series, merged with the other workers'
        when ``gather`` is set (``server.workers > 1``)."""
        local = await self.render_local()
        gather = self.gather
        return local if gather is None else await gather(local)

    async def run(self) -> None:
        """Drain the pending observations in batches. Waiting for each would wake this task
        once per request (a scheduler round trip each); a batch every ``DRAIN_PERIOD``
        costs one wake-up."""
        while True:
            await trio.sleep(DRAIN_PERIOD)
            self.drain()


@final
class _BackendChildren:
    """The label children of one (backend, model) pair, created once."""

    __slots__ = ("completion", "duration", "prompt", "stream")

    def __init__(self, metrics: Metrics, key: tuple[str, str]) -> None:
        self.duration: HistogramChild = metrics.backend_duration.labels(*key)
        #: Time to first token and chunk gap, once the pair has streamed.
        self.stream: tuple[HistogramChild, HistogramChild] | None = None
        self.prompt: CounterChild = metrics.tokens.labels(*key, "prompt")
        self.completion: CounterChild = metrics.tokens.labels(*key, "completion")


# -- the endpoint ----------------------------------------------------------------------------


def metrics_auth_header(config: MetricsConfig) -> bytes | None:
    """The ``Authorization`` value /metrics requires, or None when auth is off."""
    auth = config.auth
    if not auth.enabled:
        return None
    token = base64.b64encode(f"{auth.username}:{auth.password}".encode())
    return b"Basic " + token


async def serve_metrics_request(
    sink: MetricsSink, expected: bytes | None, request: Request, conn: ServerConnection
) -> None:
    """Answer one metrics scrape (basic auth checked in constant time)."""
    if expected is not None:
        given = request.header(b"authorization") or b""
        if not hmac.compare_digest(given, expected):
            raise RouterError(401, "Metrics require basic auth",
                              headers=[(b"www-authenticate", b'Basic realm="metrics"')])
    body = await sink.render()
    await conn.send_response(200, _TEXT_FORMAT, body)


async def serve_metrics(
    sink: MetricsSink,
    config: MetricsConfig,
    *,
    shutdown_timeout: float = 5.0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve only the metrics endpoint on ``config.bind_address`` until cancelled.

    ``nursery.start(serve_metrics, sink, config.metrics)`` returns the bound addresses. Any
    other path is a 404; the main port then has no metrics endpoint.
    """
    if config.bind_address is None:
        raise ValueError("metrics.bind_address is not set")
    endpoint = config.endpoint

    async def handle(request: Request, conn: ServerConnection) -> None:
        try:
            if request.path != endpoint:
                raise RouterError(404, f"Unknown path: {request.method} {quoted(request.path)}",
                                  code="not_found")
            if request.method not in ("GET", "HEAD"):  # HEAD: the connection drops the body
                raise RouterError(405, f"Method {request.method} not allowed; use GET",
                                  headers=[(b"allow", b"GET, HEAD")])
            await serve_metrics_request(sink, sink.auth, request, conn)
        except RouterError as exc:
            await conn.send_response(exc.status, JSON_HEADERS + exc.headers, exc.body())

    await serve_alone(
        config.bind_address, handle, HTTPLimits(max_body_size=64 * 1024),
        shutdown_timeout=shutdown_timeout, render_error=render_error,
        announce=lambda address: log.info("metrics on http://%s%s", address, endpoint),
        task_status=task_status)
