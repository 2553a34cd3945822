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

from .._config import Config
from .._errors import JSON_HEADERS, RouterError, openai_error_body
from .._http._client import Exchange, Headers, UpstreamError
from .._http._server import ProtocolError, Request, ServerConnection
from .._messages import RequestObserved
from .backend import BackendActor
from .cache import CacheKeeper
from .metrics import MetricsSink
from .router import Router

log = logging.getLogger("continuum.ingress")

#: Upstream statuses worth another backend (the request itself was not at fault).
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})

#: Upstream response headers we never pass back: hop-by-hop and our own framing.
_DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te",
     b"trailer", b"upgrade", b"proxy-connection", b"date", b"server"}
)

_PROXY_ENDPOINTS: Final = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_SSE_DONE: Final = b"data: [DONE]\n\n"


class _Peek(msgspec.Struct):
    """The only fields the router reads from a request body."""

    model: str | None = None
    stream: bool | None = None


_decode_peek = msgspec.json.Decoder(_Peek).decode
_encode = msgspec.json.Encoder().encode


def _response_headers(upstream: Headers, backend: BackendActor) -> Headers:
    headers = [(n, v) for n, v in upstream if n not in _DROPPED_RESPONSE_HEADERS]
    headers.append((b"x-continuum-backend", backend.name.encode()))
    return headers


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


def sse_error_event(message: str, code: str) -> bytes:
    """An error after the first streamed byte: an SSE ``error`` event, then ``[DONE]``."""
    body = openai_error_body(502 if code != "upstream_timeout" else 504, message, code=code)
    return b"event: error\ndata: " + body + b"\n\n" + _SSE_DONE


class Served(msgspec.Struct, frozen=True):
    """What a proxied request's handler reports for the access metrics."""

    status: int
    backend: str
    model: str
    backend_duration: float
    attempts: int


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
    ) -> None:
        self.config = config
        self.router = router
        self.cache = cache
        self.metrics = metrics
        self._observations = observations
        self._timeout = config.request.timeout
        self._streaming_timeout = config.request.streaming_timeout
        self._max_retries = config.request.max_retries
        self._timeout_error = ProtocolError(
            504, f"Upstream timeout: no answer within {self._timeout:g}s (request.timeout)"
        )
        self._response_limit = max(config.server.max_request_body_size, 64 * 1024 * 1024)
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
            self._routes[path] = ("POST", self._proxy)
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
                await conn.send_response(exc.status, JSON_HEADERS + exc.headers, exc.body())
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
                "status": "healthy" if snap.healthy else "unhealthy",
                "reason": snap.reason,
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

    async def _proxy(self, request: Request, conn: ServerConnection) -> Served:
        try:
            peek = _decode_peek(request.body)
        except msgspec.ValidationError as exc:
            raise RouterError(400, f"Invalid request body: {exc}") from None
        except msgspec.DecodeError:
            raise RouterError(400, "Request body is not valid JSON") from None
        model = peek.model
        if not model:
            raise RouterError(400, "You must provide a 'model' parameter", param="model",
                              code="missing_model")
        router = self.router
        if not router.candidates(model):
            raise RouterError(404, f"The model '{model}' does not exist or no backend serves it",
                              code="model_not_found", param="model")
        target = request.path.encode()
        if request.query:
            target += b"?" + request.query.encode()
        stream = peek.stream is True
        # request.timeout covers every attempt's connect, head and plain body. When it
        # passes, the server's timer sweep cancels the connection and answers 504 for us.
        conn.arm_timer(trio.current_time() + self._timeout, self._timeout_error)
        tried: list[BackendActor] = []
        last_error = ""
        for attempt in range(1, self._max_retries + 2):
            backend = router.choose(model, tried)
            if backend is None:
                break
            tried.append(backend)
            started = trio.current_time()
            try:
                exchange = await backend.start(
                    b"POST", target, backend.upstream_request_headers(request.headers),
                    request.body,
                )
            except UpstreamError as exc:
                backend.fail_before_start()
                last_error = f"backend '{backend.name}' failed: {exc}"
                log.info("attempt %d for model %s: %s", attempt, model, last_error)
                continue
            status = exchange.status
            if (
                status in RETRYABLE_STATUSES
                and attempt <= self._max_retries
                and router.choose(model, tried) is not None
            ):
                backend.finish(exchange, False, None)
                last_error = f"backend '{backend.name}' answered {status}"
                log.info("attempt %d for model %s: %s; trying another backend",
                         attempt, model, last_error)
                continue
            headers = _response_headers(exchange.headers, backend)
            if stream and status == 200:
                conn.disarm_timer()  # streams have streaming_timeout instead
                await self._stream(conn, backend, exchange, headers)
                return Served(status, backend.name, model,
                              trio.current_time() - started, attempt)
            try:
                body = await exchange.read_all(self._response_limit)
            except UpstreamError as exc:
                # Nothing reached the client yet: another backend may still answer.
                backend.finish(exchange, False, None)
                last_error = f"backend '{backend.name}' failed mid-response: {exc}"
                log.info("attempt %d for model %s: %s", attempt, model, last_error)
                continue
            except BaseException:
                backend.finish(exchange, False, None)
                raise
            latency = trio.current_time() - started
            backend.finish(exchange, status < 500, latency)
            conn.disarm_timer()
            await conn.send_response(status, headers, body)
            return Served(status, backend.name, model, latency, attempt)
        conn.disarm_timer()
        if last_error:
            raise RouterError(502, f"Upstream failed: {last_error}")
        raise RouterError(503, f"No healthy backend is available for model '{model}'",
                          retry_after=self.config.health_checks.interval)

    async def _stream(
        self, conn: ServerConnection, backend: BackendActor, exchange: Exchange, headers: Headers
    ) -> bool:
        """Forward SSE bytes as they arrive; end with an error event on failure.

        A client that goes away cancels the upstream read at once (the watcher), and the
        half-read upstream connection is closed rather than returned to the pool.
        """
        started = trio.current_time()
        failure: bytes | None = None
        client_gone = False
        try:
            await conn.start_chunked(200, headers)
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal client_gone
                    await conn.watch_disconnect()
                    client_gone = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    with trio.move_on_after(self._streaming_timeout) as timeout:
                        receive, send = exchange.receive_some, conn.send_chunk
                        while data := await receive():
                            await send(data)
                    if timeout.cancelled_caught:
                        failure = sse_error_event(
                            f"Stream exceeded streaming_timeout ({self._streaming_timeout:g}s)",
                            "upstream_timeout",
                        )
                except UpstreamError as exc:
                    failure = sse_error_event(f"Upstream stream failed: {exc}", "bad_gateway")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    client_gone = True
                nursery.cancel_scope.cancel()
        except BaseException:
            backend.finish(exchange, False, None)
            raise
        ok = failure is None and not client_gone
        backend.finish(exchange, ok, trio.current_time() - started if ok else None)
        if client_gone:
            conn.closing = True
            return False
        await conn.end_chunked(failure or b"")
        return ok
