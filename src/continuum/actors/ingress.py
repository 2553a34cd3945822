"""Ingress: one task per client connection — route, authenticate, proxy, answer.

The hot path per proxied request: decode only ``model``/``stream`` (msgspec), ask the Router
for a backend (a synchronous call), start the exchange on that backend's pool from this very
task, and forward the answer: whole for plain responses (one ``send_all``), chunk by chunk
as it arrives for SSE. One observation appended to the MetricsSink's inbox at the end, and
one access-log call when ``logging.access_log`` is on.

Every request gets a request id: the client's ``x-request-id`` or ``<router prefix>-<n>``
(a random per-router prefix and a counter). A generated id (and, with tracing on, a generated
``traceparent``) is appended to the request's headers, so every upstream call — pass-through
or translated — carries it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, final
from urllib.parse import unquote

import msgspec
import trio

from ..apis.calls import ENDPOINT_APIS
from ..config import Config
from ..core.clock import now as clock
from ..core.errors import (
    JSON_HEADERS,
    RouterError,
    anthropic_error_body,
    is_messages_api,
    openai_error_body,
    quoted,
)
from ..core.http import Headers
from ..core.jsondepth import MAX_JSON_DEPTH
from ..core.messages import RequestObserved
from ..core.realtime import REALTIME_PATH
from ..core.urls import without_userinfo
from ..net.server.connection import ProtocolError, Refusal, Request, ServerConnection
from ..observability.logs import loggable
from ..observability.tracing import new_traceparent, valid_traceparent
from .access import AccessControl, cors_policy
from .backend import BackendActor
from .catalog import ModelCatalog
from .metrics import MetricsSink, metrics_auth_header, serve_metrics_request
from .proxy import Proxy, RequestState, Served
from .realtime import NO_LIMITS, LimitedSession, RealtimeServed, RealtimeTicket, realtime_key
from .router import Router

log = logging.getLogger("continuum.ingress")
access_log = logging.getLogger("continuum.access")

_ACCESS_FORMAT: Final = (
    "%s %s %s status=%d model=%s backend=%s duration_ms=%.3f upstream_ms=%.3f "
    "attempts=%d stream=%s bytes_out=%d key=%s"
)

_PROXY_ENDPOINTS: Final = tuple(ENDPOINT_APIS)

_encode = msgspec.json.Encoder().encode


Route = Callable[[Request, ServerConnection, RequestState], Awaitable["Served | None"]]
#: A route for a family of paths (``/v1/files/{id}``): given a path that is no exact route,
#: (the methods it takes, its handler, the metrics endpoint label), or None. Methods are
#: one name or several joined by ", ".
RouteMatch = Callable[[str], "tuple[str, Route, str] | None"]


def backend_detail(backend: BackendActor) -> dict[str, Any]:
    """One backend as ``/admin/health`` (and ``/admin/backends``) show it."""
    snap = backend.snapshot()
    return {
        "name": snap.name,
        "url": without_userinfo(snap.url),
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
                 "waiting": snap.pool.waiting, "opened_total": snap.pool.opened_total,
                 "closed_total": snap.pool.closed_total},
    }


def _error_body(status: int, message: str, path: str, *, code: str | None = None,
                param: str | None = None) -> bytes:
    """An error in the client's API: Anthropic's shape on /v1/messages, else OpenAI's."""
    if is_messages_api(path):
        return anthropic_error_body(status, message)
    return openai_error_body(status, message, code=code, param=param)


def _allows(methods: str, method: str) -> bool:
    """Does a route taking ``methods`` (names joined by ", ") take ``method``?"""
    allowed = methods.split(", ")
    return method in allowed or (method == "HEAD" and "GET" in allowed)


_TOO_DEEP: Final = (f"Request body nesting too deep: at most {MAX_JSON_DEPTH} levels of arrays "
                    "and objects")


@final
class Ingress:
    def __init__(
        self,
        config: Config,
        router: Router,
        catalog: ModelCatalog,
        metrics: MetricsSink,
        proxy: Proxy,
        routes: Mapping[str, tuple[str, Route]] | None = None,
        matches: Sequence[RouteMatch] = (),
        access: AccessControl | None = None,
    ) -> None:
        self.config = config
        self.proxy = proxy
        self.router = router
        self.catalog = catalog
        self.metrics = metrics
        #: Where each request's observation goes (the sink's pending list); with
        #: ``metrics.enabled: false`` nowhere (the setting needs a restart, so this is fixed
        #: for the Ingress's life).
        self._observations = metrics.pending if config.metrics.enabled else None
        self._observations_limit = metrics.pending_limit
        #: Client keys and limits (None: no keys, no limits, nothing to check).
        self.access = access
        self._cors = cors_policy(config)
        metrics.auth = metrics_auth_header(config.metrics)
        self.configure(config)
        self._tracing = proxy.tracing
        self._trace = self._tracing.enabled
        self._spans = self._tracing.spans
        self._trace_rng = self._tracing.rng
        self._id_prefix = os.urandom(6).hex().encode() + b"-"
        self._id_counter = 0
        self._routes: dict[str, tuple[str, Route]] = {
            "/health": ("GET", self._health),
            "/healthz": ("GET", self._health),
            "/ready": ("GET", self._ready),
            "/admin/health": ("GET", self.admin_health),
            "/v1/models": ("GET", self._models),
            "/v1/models/": ("GET", self._models),  # clients that join "models/" + ""
        }
        for path in _PROXY_ENDPOINTS:
            self._routes[path] = ("POST", proxy.handle)
        if routes:  # other subsystems' endpoints (they may take over a proxied path)
            self._routes.update(routes)
        self._matches = tuple(matches)
        if config.metrics.enabled and config.metrics.bind_address is None:
            self._routes[config.metrics.endpoint] = ("GET", self._metrics)
        #: Subtrees served by one handler that checks methods itself: (prefix, handler,
        #: the path's metrics label). See :meth:`mount`.
        self._mounts: list[tuple[str, Route, Callable[[str], str]]] = []

    def mount(self, prefix: str, handler: Route, label: Callable[[str], str]) -> None:
        """Serve every path under ``prefix`` (that no fixed route takes) with ``handler``,
        which answers 404 and 405 itself; ``label(path)`` is the path's ``endpoint`` label
        in the metrics (a route pattern, so the label set stays bounded)."""
        self._mounts.append((prefix, handler, label))

    def configure(self, config: Config) -> None:
        """A config reload: the settings the Ingress reads per request (``logging.access_log``,
        ``metrics.optional_metrics``; ``metrics.auth`` lives on the MetricsSink)."""
        self.config = config
        self._access_log = config.logging.access_log
        optional = config.metrics.optional_metrics
        wanted = (optional.enable_request_body_size, optional.enable_response_body_size)
        #: Which body sizes each observation carries; None (the default): neither, at the
        #: cost of one test per request.
        self._sizes = wanted if any(wanted) else None
        self.metrics.body_sizes = any(wanted)

    def use_cors(self, config: Config) -> None:
        """A config reload changed ``cors``: the next request is answered by it."""
        self._cors = cors_policy(config)

    def add_routes(self, routes: Mapping[str, tuple[str, Route]]) -> None:
        """Register a subsystem's routes (path: (method, handler)), e.g. the Realtime
        relay's ``GET /v1/realtime``. Their ``/v1/`` paths are authenticated like the rest."""
        self._routes.update(routes)

    async def admit_realtime(self, request: Request, conn: ServerConnection,
                             state: RequestState, model: str, chain: tuple[str, ...]
                             ) -> tuple[RealtimeTicket, tuple[str, ...]]:
        """Admission of one Realtime session, before any backend is asked: the key (checked
        by :meth:`handle`, from ``Authorization``, ``x-api-key`` or the browser's
        ``openai-insecure-api-key.<key>`` subprotocol) must be allowed the model (403), and
        the rate and concurrency limits admit it as one request (429). The ticket counts
        each response's tokens against the token limits and gives back the session's
        leases when it ends. Returns the ticket and the models of ``chain`` the key may use."""
        access = self.access
        admission = state.access
        if access is None or admission is None:
            return NO_LIMITS, chain
        resolved = self.router.resolve(model)
        chain = access.allowed_chain(admission, model, resolved, chain)
        reservation = access.default_reservation if access.counts_tokens else 0.0
        await access.admit(admission, request, conn, resolved, reservation)
        if not admission.limited or not (admission.decisions or access.per_backend):
            return NO_LIMITS, chain
        return LimitedSession(access, admission), chain

    # -- dispatch ------------------------------------------------------------------------

    def _new_id(self) -> bytes:
        self._id_counter += 1
        return b"%s%x" % (self._id_prefix, self._id_counter)

    def _request_id(self, request: Request) -> bytes:
        rid = request.header(b"x-request-id")
        if not rid or len(rid) > 200:  # none, empty or oversized: ours, forwarded upstream
            rid = self._new_id()
            request.set_header(b"x-request-id", rid)
        return rid

    def _route(self, path: str) -> tuple[str, Route | None, str]:
        """(the method the path takes, "" when its handler checks; its handler or None; the
        metrics endpoint label)."""
        route = self._routes.get(path)
        if route is not None:
            return route[0], route[1], path
        if path.startswith("/v1/models/"):
            return "GET", self._model, "/v1/models/{id}"
        for prefix, handler, label in self._mounts:
            if path.startswith(prefix):
                return "", handler, label(path)
        for match in self._matches:
            found = match(path)
            if found is not None:
                return found
        return "", None, "other"

    async def handle(self, request: Request, conn: ServerConnection) -> None:
        started = clock()
        path = request.path
        route = self._routes.get(path)  # the common case, without a call
        handler: Route | None
        if route is not None:
            method, handler = route
            endpoint = path
        else:
            method, handler, endpoint = self._route(path)
        status = 500
        served: Served | None = None
        state = RequestState(self._request_id(request), started)
        conn.request_id = state.id
        if self._trace:
            self._start_trace(request, state)
        try:
            if self._cors is not None and request.header(b"origin") is not None:
                status = await self._cors_request(request, conn)
                if status:
                    return  # a preflight, answered (observed and logged below)
            if handler is None:
                raise RouterError(404, f"Unknown path: {request.method} {quoted(path)}",
                                  code="not_found")
            if method and request.method != method and not (
                request.method == "HEAD" and method == "GET"
            ) and not _allows(method, request.method):
                # HEAD is GET without the body (the connection never sends one for HEAD).
                allow = method.replace("GET", "GET, HEAD").encode()
                raise RouterError(
                    405, f"Method {request.method} not allowed on {path}; use {method}",
                    headers=[(b"allow", allow)],
                )
            if self.access is not None and path.startswith("/v1/"):
                state.access = (
                    self.access.authenticate_request(request) if path != REALTIME_PATH
                    else self.access.authenticate(request, realtime_key(request)))
            served = await handler(request, conn, state)
            status = 200 if served is None else served.status
        except RouterError as exc:
            status = exc.status
            if not conn.responded:
                body = _error_body(exc.status, exc.message, path, code=exc.code,
                                   param=exc.param)
                await conn.send_response(
                    exc.status, [*JSON_HEADERS, *exc.headers], body
                )
        except ProtocolError as exc:
            # An upload's body failed while a handler read it (408, 413, the client left):
            # the connection closes once this is answered.
            status = exc.status
            conn.closing = True
            if not conn.responded:
                await conn.send_response(exc.status, JSON_HEADERS,
                                         _error_body(exc.status, exc.message, path))
        except RecursionError:
            # Deeper than any decoder here can take, whatever the depth check let through:
            # the request's fault, and never the process's end.
            status = 400
            if not conn.responded:
                await conn.send_response(400, JSON_HEADERS, _error_body(400, _TOO_DEEP, path))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.closing = True
            status = 499
        except Exception:
            log.exception("internal error while handling %s %s (request %s)", request.method,
                          loggable(path), state.id.decode("latin-1"))
            status = 500
            conn.closing = True
            if not conn.responded:
                await conn.send_response(500, JSON_HEADERS,
                                         _error_body(500, "Internal router error", path))
        finally:
            duration = clock() - started
            if conn.expired is not None and conn.expired.status:
                status = conn.expired.status  # the server answers it once we unwind
            if served is not None:
                obs = RequestObserved(
                    request.method, endpoint, status, duration, served.backend, served.model,
                    served.backend_duration, served.attempts, state.upstream, state.stream,
                    state.ttft, state.max_gap, state.prompt_tokens, state.completion_tokens,
                    state.retried, state.failed_over,
                )
            else:
                obs = RequestObserved(
                    request.method, endpoint, status, duration, upstream=state.upstream,
                    stream=state.stream,
                    retried=state.retried, failed_over=state.failed_over,
                )
            if self._sizes is not None:
                obs = self._sized(obs, request, conn.bytes_out)
            self._observe(obs)
            if self._access_log and access_log.isEnabledFor(logging.INFO):
                self._log_access(state.id, request.method, path, obs, state.model,
                                 conn.bytes_out,
                                 state.access.label if state.access is not None else "-",
                                 served.session if isinstance(served, RealtimeServed) else None)
            if state.span is not None:
                self._tracing.end(state.span, status)

    def refuse(self, refusal: Refusal) -> tuple[Headers, bytes]:
        """The HTTP layer's own answers (400, 408, 413, 431, 501: a request no handler saw)
        get what every answer gets: their own id, the client's error shape, one observation
        and one access-log line."""
        rid = self._new_id()
        body = _error_body(refusal.status, refusal.message, refusal.path)
        method = refusal.method or "-"
        endpoint = self._route(refusal.path)[2]
        obs = RequestObserved(method, endpoint, refusal.status, clock() - refusal.started)
        self._observe(obs)
        if self._access_log and access_log.isEnabledFor(logging.INFO):
            self._log_access(rid, method, refusal.path or "-", obs, "",
                             0 if method == "HEAD" else len(body), "-")
        return [*JSON_HEADERS, (b"x-request-id", rid)], body

    def _start_trace(self, request: Request, state: RequestState) -> None:
        """Tracing on: make sure a valid ``traceparent`` goes upstream (a new trace when
        the client sent none), and open the ingress span when spans are exported."""
        traceparent = request.header(b"traceparent")
        if traceparent is not None and not valid_traceparent(traceparent):
            request.drop_headers((b"traceparent", b"tracestate"))
            traceparent = None
        if not self._spans:
            if traceparent is None:
                request.set_header(b"traceparent", new_traceparent(self._trace_rng))
            return
        state.span = self._tracing.start_ingress(
            request.method, request.path, traceparent, request.header(b"tracestate"))
        state.span.set_attribute("continuum.request_id", state.id.decode("latin-1"))

    def _log_access(self, rid: bytes, method: str, path: str, obs: RequestObserved,
                    client_model: str, bytes_out: int, key: str,
                    extra: Mapping[str, Any] | None = None) -> None:
        """The access line: ids, route, outcome and timings, the client key's id (its label:
        never the key) — never content. A Realtime session adds its counters (``extra``).
        Client-given values are cut to a bounded length; no body is parsed here (the model
        the client asked for comes from the request's state). Callers check first that
        the access logger takes INFO lines (not built at all when it does not)."""
        request_id = loggable(rid.decode("latin-1"))
        path = loggable(path)
        model = loggable(obs.model or client_model)
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": obs.status,
            "model": model,
            "backend": obs.backend,
            "duration_ms": round(obs.duration * 1000.0, 3),
            "upstream_ms": round(obs.upstream * 1000.0, 3),
            "attempts": obs.attempts,
            "stream": obs.stream,
            "bytes_out": bytes_out,
            "key_id": key,
        }
        if extra:  # a Realtime session's counters, after the common fields
            fields.update(extra)
            access_log.info(
                _ACCESS_FORMAT + " %s", request_id, method, path, obs.status, model or "-",
                obs.backend or "-", fields["duration_ms"], fields["upstream_ms"], obs.attempts,
                "yes" if obs.stream else "no", bytes_out, key,
                " ".join(f"{k}={'-' if v is None or v == '' else v}" for k, v in extra.items()),
                extra={"access": fields},
            )
            return
        access_log.info(
            _ACCESS_FORMAT, request_id, method, path, obs.status, model or "-",
            obs.backend or "-", fields["duration_ms"], fields["upstream_ms"], obs.attempts,
            "yes" if obs.stream else "no", bytes_out, key, extra={"access": fields},
        )

    def _sized(self, obs: RequestObserved, request: Request, sent: int) -> RequestObserved:
        """``obs`` with the body sizes ``metrics.optional_metrics`` asks for: the request's
        as received (an upload's streamed part included), the answer's as sent."""
        assert self._sizes is not None
        want_request, want_response = self._sizes
        received = len(request.body)
        if request.body_stream is not None:
            received += request.body_stream.received
        return msgspec.structs.replace(obs, request_bytes=received if want_request else -1,
                                       response_bytes=sent if want_response else -1)

    def _observe(self, obs: RequestObserved) -> None:
        observations = self._observations
        if observations is None:
            return  # metrics off: the registry is not fed
        if len(observations) < self._observations_limit:  # the sink's bound: count the rest
            observations.append(obs)
        else:
            self.metrics.metrics.observations_dropped.inc()

    async def _cors_request(self, request: Request, conn: ServerConnection) -> int:
        """A browser's request (it has an ``Origin``): a preflight is answered here, without
        auth (returns its status); an actual request gets the CORS headers on every answer
        (returns 0)."""
        cors = self._cors
        assert cors is not None
        origin = request.header(b"origin")
        assert origin is not None
        method = request.header(b"access-control-request-method")
        if request.method != "OPTIONS" or method is None:
            conn.extra_head = cors.response_head(origin)
            return 0
        head, refused = cors.preflight(origin, method,
                                       request.header(b"access-control-request-headers"))
        if head is None:
            body = _error_body(403, f"CORS preflight refused: {refused}", request.path,
                               code="cors_refused")
            conn.extra_head = b"vary: origin\r\n"
            await conn.send_response(403, JSON_HEADERS, body)
            return 403
        conn.extra_head = head
        await conn.send_response(204, b"", b"")
        return 204

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

    async def admin_health(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        """``/admin/health``: open, on the main port (and on ``admin.bind_address``)."""
        backends = [backend_detail(backend) for backend in self.router.backends.values()]
        healthy = sum(1 for b in backends if b["healthy"])
        overall = "healthy" if healthy == len(backends) else "degraded" if healthy else "unhealthy"
        catalog = self.catalog.stats
        body = _encode({
            "status": overall,
            "backends": backends,
            "model_cache": {"hits": catalog.hits, "misses": catalog.misses,
                            "evictions": catalog.evictions},
        })
        await conn.send_response(200, JSON_HEADERS, body)

    async def _models(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        await conn.send_response(200, JSON_HEADERS, self.catalog.models_response())

    async def _model(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        model = unquote(request.path[len("/v1/models/"):])  # SDKs send org%2Fname
        body = self.catalog.model_response(model)
        if body is None:
            raise RouterError(404, f"The model {quoted(model)} does not exist",
                              code="model_not_found", param="model")
        await conn.send_response(200, JSON_HEADERS, body)

    async def _metrics(
        self, request: Request, conn: ServerConnection, state: RequestState
    ) -> None:
        await serve_metrics_request(self.metrics, self.metrics.auth, request, conn)

    # -- the proxy -----------------------------------------------------------------------
