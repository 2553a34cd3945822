"""Ingress: one task per client connection — route, authenticate, proxy, answer.

The hot path per proxied request: decode only ``model``/``stream`` (msgspec), ask the Router
for a backend (a synchronous call), start the exchange on that backend's pool from this very
task, and forward the answer: whole for plain responses (one ``send_all``), chunk by chunk
as it arrives for SSE. One ``send_nowait`` to the MetricsSink at the end.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, final
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec
import trio

from .._calls import ENDPOINT_APIS
from .._config import Config
from .._errors import JSON_HEADERS, RouterError, openai_error_body
from .._http._server import Request, ServerConnection
from .._messages import RequestObserved
from .._providers.anthropic import anthropic_error_body
from .._proxy import Proxy, Served
from .cache import CacheKeeper
from .metrics import MetricsSink
from .router import Router

log = logging.getLogger("continuum.ingress")

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


Route = Callable[[Request, ServerConnection], Awaitable["Served | None"]]


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
        self._metrics_auth: bytes | None = None
        auth = config.metrics.auth
        if auth.enabled:
            token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            self._metrics_auth = b"Basic " + token.encode()
        self._routes: dict[str, tuple[str, Route]] = {
            "/health": ("GET", self._health),
            "/healthz": ("GET", self._health),
            "/admin/health": ("GET", self._admin_health),
            "/v1/models": ("GET", self._models),
        }
        for path in _PROXY_ENDPOINTS:
            self._routes[path] = ("POST", proxy.handle)
        if config.metrics.enabled:
            self._routes[config.metrics.endpoint] = ("GET", self._metrics)

    # -- dispatch ------------------------------------------------------------------------

    async def handle(self, request: Request, conn: ServerConnection) -> None:
        started = time.perf_counter()
        path = request.path
        route = self._routes.get(path)
        endpoint = path
        if route is None and path.startswith("/v1/models/"):
            route, endpoint = ("GET", self._model), "/v1/models/{id}"
        status = 500
        served: Served | None = None
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
            served = await handler(request, conn)
            status = 200 if served is None else served.status
        except RouterError as exc:
            status = exc.status
            if not conn.responded:
                body = (anthropic_error_body(exc.status, exc.message)
                        if path.startswith("/v1/messages") else exc.body())
                await conn.send_response(exc.status, JSON_HEADERS + exc.headers, body)
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
            duration = time.perf_counter() - started
            if conn.expired is not None and conn.expired.status:
                status = conn.expired.status  # the server answers it once we unwind
            if served is not None:
                obs = RequestObserved(request.method, endpoint, status, duration, served.backend,
                                      served.model, served.backend_duration, served.attempts)
            else:
                obs = RequestObserved(request.method, endpoint, status, duration)
            self._observe(obs)

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
        key: bytes | None = None
        auth = request.header(b"authorization")
        if auth is not None and auth[:7].lower() == b"bearer ":
            key = auth[7:].strip()
        else:
            key = request.header(b"x-api-key")
        if key is None:
            raise RouterError(401, "Missing API key: send 'Authorization: Bearer <key>'")
        if key not in self._keys:
            raise RouterError(401, "Invalid API key")

    # -- simple endpoints ----------------------------------------------------------------

    async def _health(self, request: Request, conn: ServerConnection) -> None:
        await conn.send_response(200, JSON_HEADERS, b'{"status":"ok"}')

    async def _admin_health(self, request: Request, conn: ServerConnection) -> None:
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

    async def _models(self, request: Request, conn: ServerConnection) -> None:
        await conn.send_response(200, JSON_HEADERS, self.cache.models_response())

    async def _model(self, request: Request, conn: ServerConnection) -> None:
        model = unquote(request.path[len("/v1/models/"):])  # SDKs send org%2Fname
        body = self.cache.model_response(model)
        if body is None:
            raise RouterError(404, f"The model '{model}' does not exist", code="model_not_found",
                              param="model")
        await conn.send_response(200, JSON_HEADERS, body)

    async def _metrics(self, request: Request, conn: ServerConnection) -> None:
        expected = self._metrics_auth
        if expected is not None:
            given = request.header(b"authorization") or b""
            if not hmac.compare_digest(given, expected):
                raise RouterError(401, "Metrics require basic auth",
                                  headers=[(b"www-authenticate", b'Basic realm="metrics"')])
        body = await self.metrics.render()
        await conn.send_response(
            200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], body
        )

    # -- the proxy -----------------------------------------------------------------------
