"""Ingress: one task per client connection — route, authenticate, proxy, answer.

The hot path per proxied request: decode only ``model``/``stream`` (msgspec), ask the Router
for a backend (a synchronous call), start the exchange on that backend's pool from this very
task, and forward the answer: whole for plain responses (one ``send_all``), chunk by chunk
as it arrives for SSE. One ``send_nowait`` to the MetricsSink at the end, and one access-log
call when ``logging.access_log`` is on.

Every request gets a request id: the client's ``x-request-id`` or ``<router prefix>-<n>``
(a random per-router prefix and a counter). A generated id (and, with tracing on, a generated
``traceparent``) is appended to the request's headers, so every upstream call — pass-through
or translated — carries it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, final
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec
import trio

from .._calls import ENDPOINT_APIS
from .._clock import now as clock
from .._config import Config
from .._errors import JSON_HEADERS, RouterError, openai_error_body, quoted
from .._http._server import Request, ServerConnection
from .._logging import loggable
from .._messages import RequestObserved
from .._providers.anthropic import anthropic_error_body
from .._proxy import Proxy, RequestState, Served, client_key, decode_peek
from .._tracing import new_traceparent, valid_traceparent
from .cache import CacheKeeper
from .metrics import MetricsSink, metrics_auth_header, serve_metrics_request
from .router import Router

log = logging.getLogger("continuum.ingress")
access_log = logging.getLogger("continuum.access")

_ACCESS_FORMAT: Final = (
    "%s %s %s status=%d model=%s backend=%s duration_ms=%.3f upstream_ms=%.3f "
    "attempts=%d stream=%s bytes_out=%d"
)

_PROXY_ENDPOINTS: Final = tuple(ENDPOINT_APIS)

_encode = msgspec.json.Encoder().encode


def public_url(url: str) -> str:
    """A backend URL without any ``user:password@`` part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


Route = Callable[[Request, ServerConnection, RequestState], Awaitable["Served | None"]]


@final
class Ingress:
    def __init__(
        self,
        config: Config,
        router: Router,
        cache: CacheKeeper,
        metrics: MetricsSink,
        observations: trio.MemorySendChannel[RequestObserved],
        proxy: Proxy,
    ) -> None:
        self.config = config
        self.proxy = proxy
        self.router = router
        self.cache = cache
        self.metrics = metrics
        self._observations = observations
        keys = config.api_keys
        self._blocking = keys.mode == "blocking"
        self._keys = frozenset(k.key.encode() for k in keys.api_keys if k.enabled and k.key)
        self._metrics_auth = metrics_auth_header(config.metrics)
        self._access_log = config.logging.access_log
        self._tracing = proxy.tracing
        self._trace = self._tracing.enabled
        self._spans = self._tracing.spans
        self._id_prefix = os.urandom(6).hex().encode() + b"-"
        self._id_counter = 0
        self._routes: dict[str, tuple[str, Route]] = {
            "/health": ("GET", self._health),
            "/healthz": ("GET", self._health),
            "/ready": ("GET", self._ready),
            "/admin/health": ("GET", self._admin_health),
            "/v1/models": ("GET", self._models),
            "/v1/models/": ("GET", self._models),  # clients that join "models/" + ""
        }
        for path in _PROXY_ENDPOINTS:
            self._routes[path] = ("POST", proxy.handle)
        if config.metrics.enabled and config.metrics.bind_address is None:
            self._routes[config.metrics.endpoint] = ("GET", self._metrics)

    # -- dispatch ------------------------------------------------------------------------

    def _request_id(self, request: Request) -> bytes:
        rid = request.header(b"x-request-id")
        if rid is None or not rid or len(rid) > 200:
            if rid is not None:  # empty or oversized: replaced by ours
                request.headers = [(n, v) for n, v in request.headers if n != b"x-request-id"]
            self._id_counter += 1
            rid = b"%s%x" % (self._id_prefix, self._id_counter)
            request.headers.append((b"x-request-id", rid))  # forwarded upstream
        return rid

    async def handle(self, request: Request, conn: ServerConnection) -> None:
        started = clock()
        path = request.path
        route = self._routes.get(path)
        endpoint = path
        if route is None and path.startswith("/v1/models/"):
            route, endpoint = ("GET", self._model), "/v1/models/{id}"
        status = 500
        served: Served | None = None
        state = RequestState(self._request_id(request), started)
        conn.request_id = state.id
        if self._trace:
            self._start_trace(request, state)
        try:
            if route is None:
                endpoint = "other"
                raise RouterError(404, f"Unknown path: {request.method} {path}", code="not_found")
            method, handler = route
            if request.method != method:
                raise RouterError(
                    405, f"Method {request.method} not allowed on {path}; use {method}",
                    headers=[(b"allow", method.encode())],
                )
            if path.startswith("/v1/"):
                self._authenticate(request)
            served = await handler(request, conn, state)
            status = 200 if served is None else served.status
        except RouterError as exc:
            status = exc.status
            if not conn.responded:
                body = (anthropic_error_body(exc.status, exc.message)
                        if path.startswith("/v1/messages") else exc.body())
                state.bytes_out = len(body)
                await conn.send_response(
                    exc.status, [*JSON_HEADERS, *exc.headers, (b"x-request-id", state.id)], body
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.closing = True
            status = 499
        except Exception:
            log.exception("internal error while handling %s %s", request.method, path)
            status = 500
            if not conn.responded:
                await conn.send_response(
                    500, JSON_HEADERS, openai_error_body(500, "Internal router error")
                )
            conn.closing = True
        finally:
            duration = clock() - started
            if conn.expired is not None and conn.expired.status:
                status = conn.expired.status  # the server answers it once we unwind
            if served is not None:
                obs = RequestObserved(
                    request.method, endpoint, status, duration, served.backend, served.model,
                    served.backend_duration, served.attempts, state.upstream, state.stream,
                    state.ttft, state.max_gap, state.prompt_tokens, state.completion_tokens,
                    () if state.retried is None else tuple(state.retried),
                    () if state.failed_over is None else tuple(state.failed_over),
                )
            else:
                obs = RequestObserved(
                    request.method, endpoint, status, duration, upstream=state.upstream,
                    stream=state.stream,
                    retried=() if state.retried is None else tuple(state.retried),
                    failed_over=() if state.failed_over is None else tuple(state.failed_over),
                )
            self._observe(obs)
            if self._access_log:
                self._log_access(request, state, obs)
            if state.span is not None:
                self._tracing.end(state.span, status)

    def _start_trace(self, request: Request, state: RequestState) -> None:
        """Tracing on: make sure a valid ``traceparent`` goes upstream (a new trace when
        the client sent none), and open the ingress span when spans are exported."""
        traceparent = request.header(b"traceparent")
        if traceparent is not None and not valid_traceparent(traceparent):
            request.headers = [(n, v) for n, v in request.headers
                               if n not in (b"traceparent", b"tracestate")]
            traceparent = None
        if self._spans:
            state.span = self._tracing.start_ingress(
                request.method, request.path, traceparent, request.header(b"tracestate"))
            state.span.set_attribute("continuum.request_id", state.id.decode("latin-1"))
        elif traceparent is None:
            request.headers.append((b"traceparent", new_traceparent()))

    def _log_access(self, request: Request, state: RequestState, obs: RequestObserved) -> None:
        """The access line: ids, route, outcome and timings — never keys, never content."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        model = loggable(obs.model or self._client_model(request))  # client-given: cut
        fields: dict[str, Any] = {
            "request_id": loggable(state.id.decode("latin-1")),
            "method": request.method,
            "path": loggable(request.path),
            "status": obs.status,
            "model": model,
            "backend": obs.backend,
            "duration_ms": round(obs.duration * 1000.0, 3),
            "upstream_ms": round(obs.upstream * 1000.0, 3),
            "attempts": obs.attempts,
            "stream": obs.stream,
            "bytes_out": state.bytes_out,
        }
        access_log.info(
            _ACCESS_FORMAT, fields["request_id"], request.method, fields["path"],
            obs.status, model or "-", obs.backend or "-", fields["duration_ms"],
            fields["upstream_ms"], obs.attempts, "yes" if obs.stream else "no",
            state.bytes_out, extra={"access": fields},
        )

    @staticmethod
    def _client_model(request: Request) -> str:
        """The model the client asked for (requests that never reached a backend)."""
        if request.method != "POST" or not request.body:
            return ""
        try:
            return decode_peek(request.body).model or ""
        except msgspec.MsgspecError:
            return ""

    def _observe(self, obs: RequestObserved) -> None:
        try:
            self._observations.send_nowait(obs)
        except trio.WouldBlock:
            self.metrics.metrics.observations_dropped.inc()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _authenticate(self, request: Request) -> None:
        """``blocking`` mode: a valid key or 401. ``permissive``: anyone passes (clients such
        as the openai SDK always send some key, so a foreign key is not an error there)."""
        if not self._blocking:
            return
        key = client_key(request)
        if key is None:
            raise RouterError(401, "Missing API key: send 'Authorization: Bearer <key>'")
        if key not in self._keys:
            raise RouterError(401, "Invalid API key")

    # -- simple endpoints ----------------------------------------------------------------

    async def _health(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        await conn.send_response(200, JSON_HEADERS, b'{"status":"ok"}')

    async def _ready(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        """Readiness for load balancers: 200 while some backend is healthy and serves a
        model; else 503 saying why. ``/health`` stays pure liveness."""
        ready, why = self.router.readiness()
        if not ready:
            raise RouterError(503, f"Not ready: no healthy backend serves a model ({why})",
                              code="not_ready", retry_after=1)
        await conn.send_response(200, JSON_HEADERS,
                                 b'{"status":"ready","healthy_backends":%d}' % ready)

    async def _admin_health(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        backends = []
        for backend in self.router.backends.values():
            snap = backend.snapshot()
            backends.append({
                "name": snap.name,
                "url": public_url(snap.url),
                "type": snap.type,
                "healthy": snap.healthy,
                "status": snap.state,
                "reason": snap.reason,
                "circuit_breaker": {
                    "state": snap.circuit.state.value,
                    "consecutive_failures": snap.circuit.consecutive_failures,
                    "failure_rate": round(snap.circuit.failure_rate, 4),
                    "requests_in_window": snap.circuit.requests_in_window,
                    "opened_total": snap.circuit.opened_total,
                    "retry_after": round(snap.circuit.retry_after, 3),
                },
                "cooldown_seconds": round(snap.cooldown, 3),
                "in_flight": snap.in_flight,
                "latency_ms": snap.latency_ms,
                "requests": snap.requests,
                "failures": snap.failures,
                "models": list(snap.models),
                "pool": {"in_use": snap.pool.in_use, "idle": snap.pool.idle,
                         "waiting": snap.pool.waiting, "opened_total": snap.pool.opened_total},
            })
        healthy = sum(1 for b in backends if b["healthy"])
        overall = "healthy" if healthy == len(backends) else "degraded" if healthy else "unhealthy"
        cache = self.cache.stats
        body = _encode({
            "status": overall,
            "backends": backends,
            "model_cache": {"hits": cache.hits, "misses": cache.misses,
                            "evictions": cache.evictions},
        })
        await conn.send_response(200, JSON_HEADERS, body)

    async def _models(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        await conn.send_response(200, JSON_HEADERS, self.cache.models_response())

    async def _model(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        model = unquote(request.path[len("/v1/models/"):])  # SDKs send org%2Fname
        body = self.cache.model_response(model)
        if body is None:
            raise RouterError(404, f"The model {quoted(model)} does not exist",
                              code="model_not_found", param="model")
        await conn.send_response(200, JSON_HEADERS, body)

    async def _metrics(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        await serve_metrics_request(self.metrics, self._metrics_auth, request, conn)

    # -- the proxy -----------------------------------------------------------------------
