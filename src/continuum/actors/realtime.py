"""The Realtime API route: ``GET /v1/realtime?model=M`` WebSocket sessions, relayed to a backend.

One session, in order:

1. the handshake is checked (:meth:`ServerConnection.websocket_problem`) and the model read
   from the query; refusals are ordinary HTTP answers through the Ingress (request id, error
   shape, access log);
2. the key was checked by the Ingress like any ``/v1/`` request's (also from the browser's
   subprotocol, :func:`realtime_key`); admission (:data:`Admit`: the Ingress's
   ``admit_realtime``: the key's models, the rate and concurrency limits) returns a
   :class:`RealtimeTicket`, told every ``response.done``'s usage and released at the end;
3. a backend is chosen like for any request (model aliases and fallbacks, the strategy,
   health, breaker, only backends of the OpenAI API), and the upstream WebSocket opened
   (``continuum.net.websocket_relay.open_upstream``); a failure to connect, or a 408, 429 or
   5xx refusal, is retried on another backend. All of this happens *before* the client's
   handshake is answered, so a client only ever sees a session that has an upstream, or an
   HTTP error saying why not (the upstream's own refusal when it gave one);
4. the client's handshake is completed with the upstream's subprotocol, and
   ``websocket_relay.relay`` runs until a side ends (an upstream that fails from then on
   gives the client an ``error`` event and a 1011 close);
5. the session's counters go to the metrics sink, its tokens to the request's state (the
   ``continuum_tokens`` series and the access-log line, one per session).

trio-websocket and the relay are imported at the first session, so a router that never
relays one does not pay for importing them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, final
from urllib.parse import parse_qsl, urlencode

import trio

from ..config import Config
from ..core.clock import now as clock
from ..core.errors import JSON_HEADERS, RouterError, quoted
from ..core.http import Headers
from ..core.realtime import (
    REALTIME_PATH,
    RealtimeUsage,
    UsageTally,
    client_subprotocol,
    forwarded_headers,
    parse_subprotocols,
    split_subprotocols,
    upstream_target,
)
from ..core.retry import Backoff
from ..net.server.connection import Request, ServerConnection
from ..observability.logs import loggable
from .access import client_key
from .proxy import RequestState, Served

if TYPE_CHECKING:
    from ..net.websocket_relay import (
        MessageConnection,
        RelaySettings,
        RelayStats,
        UpstreamConnectError,
    )
    from .access import AccessControl, Admission
    from .backend import BackendActor
    from .metrics import MetricsSink
    from .router import Router

log = logging.getLogger("continuum.realtime")

#: Realtime is an OpenAI API; only backends speaking it are offered a session.
_APIS: Final = frozenset({"openai"})


class RealtimeTicket(Protocol):
    """What admission hands a session: told the usage of every response (token limits),
    and released once when the session ends (concurrency limits)."""

    def settle(self, usage: RealtimeUsage) -> None: ...

    def release(self) -> None: ...

    async def admit_backend(self, conn: ServerConnection, backend: str, model: str
                            ) -> RouterError | None:
        """``per_backend`` limits: the refusal when ``backend``'s limit is reached (the
        session tries another), else ``None``: the session now holds a slot on it."""
        ...

    def backend_failed(self, backend: str) -> None:
        """The session could not open on ``backend``: its per-backend slot goes back now."""
        ...


#: Admission of one session, once the Ingress has authenticated it (``state.access``):
#: the request (headers, query, peer), the model asked for and the models that may serve it
#: (aliases and fallbacks resolved). Returns the ticket and the models the client may use;
#: raises ``RouterError`` (403, 429, 503...) to refuse: the refusal is the handshake's answer.
Admit = Callable[[Request, ServerConnection, RequestState, str, tuple[str, ...]],
                 Awaitable[tuple[RealtimeTicket, tuple[str, ...]]]]


@final
class NoLimits:
    """The ticket of a router without token or concurrency limits."""

    def settle(self, usage: RealtimeUsage) -> None:
        pass

    def release(self) -> None:
        pass

    async def admit_backend(self, conn: ServerConnection, backend: str, model: str
                            ) -> RouterError | None:
        return None

    def backend_failed(self, backend: str) -> None:
        pass


NO_LIMITS: Final = NoLimits()


@final
class LimitedSession:
    """The ticket of a session admitted under rate limits: each response's tokens count
    against the token limits as it ends (``response.done``); the session's end gives back
    its concurrency leases and refunds the token reservation its admission took."""

    __slots__ = ("_access", "_admission", "_backend", "_released")

    def __init__(self, access: AccessControl, admission: Admission) -> None:
        self._access = access
        self._admission = admission
        self._backend = ""  # the backend per_backend limits admitted the session on
        self._released = False

    def settle(self, usage: RealtimeUsage) -> None:
        tokens = usage.total_tokens or usage.input_tokens + usage.output_tokens
        self._access.charge(self._admission, tokens, self._backend)

    async def admit_backend(self, conn: ServerConnection, backend: str, model: str
                            ) -> RouterError | None:
        access = self._access
        if not access.per_backend:
            return None
        refused = await access.admit_backend(self._admission, conn, backend)
        if refused is not None:
            return access.backend_refusal(self._admission, refused, model)
        self._backend = backend
        return None

    def backend_failed(self, backend: str) -> None:
        if self._access.per_backend:
            self._access.release_backend(self._admission, backend)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._access.settle(self._admission, 0, "")


def realtime_key(request: Request) -> bytes | None:
    """The client's key for a session: ``Authorization: Bearer``, ``x-api-key``, or the key
    a browser sends as the ``openai-insecure-api-key.<key>`` subprotocol."""
    key = client_key(request)
    if key is not None:
        return key
    sub, _ = split_subprotocols(parse_subprotocols(request.headers))
    return sub.encode("latin-1") if sub else None


class RealtimeServed(Served, frozen=True):
    """A relayed session, for the Ingress's observation and its access-log line."""

    session: dict[str, Any] = {}


def relay_settings(config: Config) -> RelaySettings:
    """The relay's limits from ``realtime.*``."""
    from ..net.websocket_relay import RelaySettings

    rt = config.realtime
    return RelaySettings(
        max_message_size=rt.max_message_size,
        message_queue_size=rt.message_queue_size,
        ping_interval=rt.ping_interval,
        ping_timeout=rt.ping_timeout,
        connect_timeout=rt.connect_timeout,
        close_timeout=rt.close_timeout,
    )


@final
class _Opened:
    """An upstream session, before the client's handshake is answered."""

    __slots__ = ("attempts", "backend", "connection", "model")

    def __init__(self, connection: MessageConnection, backend: BackendActor, model: str,
                 attempts: int) -> None:
        self.connection = connection
        self.backend = backend
        self.model = model
        self.attempts = attempts


@final
class _Refused:
    """A backend refused the handshake for a reason of the client's (a 4xx): its answer."""

    __slots__ = ("attempts", "backend", "body", "model", "status")

    def __init__(self, status: int, body: bytes, backend: BackendActor, model: str,
                 attempts: int) -> None:
        self.status = status
        self.body = body
        self.backend = backend
        self.model = model
        self.attempts = attempts


@final
class RealtimeGateway:
    """Serves ``GET /v1/realtime`` (register :meth:`routes` with the Ingress)."""

    def __init__(self, config: Config, router: Router, metrics: MetricsSink,
                 admit: Admit) -> None:
        self.router = router
        self.metrics = metrics
        self.admit = admit
        #: The cancel scopes of the sessions being relayed (see :meth:`stop`).
        self.sessions: set[trio.CancelScope] = set()
        self._rng = random.Random()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take ``realtime.*``, ``request.max_retries`` and ``retry`` (at start, and on a
        config reload): new sessions use them, open ones keep the settings they started
        with."""
        self.max_sessions = config.realtime.max_sessions
        self.max_retries = config.max_retries
        retry = config.retry
        self._backoff = Backoff(retry.base_delay, retry.max_delay, retry.exponential_backoff,
                                retry.jitter)
        self._settings: RelaySettings | None = None
        self._config = config

    @property
    def settings(self) -> RelaySettings:
        if self._settings is None:
            self._settings = relay_settings(self._config)
        return self._settings

    def routes(self) -> dict[str, tuple[str, Callable[..., Any]]]:
        """The routes to register with the Ingress (path: (method, handler))."""
        return {REALTIME_PATH: ("GET", self.handle)}

    def stop(self) -> int:
        """Shutdown: end every session now (both hops get 1001). Returns how many."""
        for scope in self.sessions:
            scope.cancel()
        return len(self.sessions)

    # -- one session -------------------------------------------------------------------------

    async def handle(self, request: Request, conn: ServerConnection,
                     state: RequestState) -> Served:
        problem = conn.websocket_problem(request)
        if problem is not None:
            status, message = problem
            headers = [(b"upgrade", b"websocket")] if status == 426 else []
            raise RouterError(status, message, headers=headers)
        query = dict(parse_qsl(request.query, keep_blank_values=True))
        model = query.get("model", "")
        if not model:
            raise RouterError(400, "The 'model' query parameter is missing",
                              code="missing_model", param="model")
        state.model = model
        if self.max_sessions and len(self.sessions) >= self.max_sessions:
            raise RouterError(503, f"Too many Realtime sessions (realtime.max_sessions = "
                              f"{self.max_sessions})", code="overloaded", retry_after=1)
        ticket, chain = await self.admit(request, conn, state, model, self._chain(model))
        try:
            return await self._session(request, conn, state, query, model, chain, ticket)
        finally:
            ticket.release()

    def _chain(self, model: str) -> tuple[str, ...]:
        router = self.router
        full = router.chain(router.resolve(model))
        if not any(router.candidates(m) for m in full):
            raise RouterError(404, f"The model {quoted(model)} does not exist or no backend "
                              "serves it", code="model_not_found", param="model")
        chain = tuple(m for m in full if any(b.api in _APIS for b in router.candidates(m)))
        if not chain:
            raise RouterError(404, f"No backend serving model {quoted(model)} supports "
                              f"{REALTIME_PATH}", code="unsupported_endpoint", param="model")
        return chain

    async def _session(self, request: Request, conn: ServerConnection, state: RequestState,
                       query: dict[str, str], model: str, chain: tuple[str, ...],
                       ticket: RealtimeTicket) -> Served:
        offered = parse_subprotocols(request.headers)
        _, upstream_protocols = split_subprotocols(offered)
        forwarded = forwarded_headers(request.headers)
        forwarded.append((b"x-request-id", state.id))
        outcome: _Opened | _Refused | RouterError | None = None
        ended: list[RelayStats] = []
        tally = UsageTally()
        with trio.CancelScope() as scope:  # stop() ends the session here, both hops 1001
            self.sessions.add(scope)
            self.metrics.realtime_started()
            try:
                async with trio.open_nursery() as nursery:
                    outcome = await self._connect(nursery, conn, ticket, chain, query,
                                                  upstream_protocols, forwarded, state, model)
                    if isinstance(outcome, _Opened):
                        await self._run(request, conn, nursery, outcome, offered, tally,
                                        ticket, ended.append)
            finally:
                self.sessions.discard(scope)
                self.metrics.realtime_ended(
                    outcome.backend.name if isinstance(outcome, _Opened) else "",
                    ended[0] if ended else None)
        if outcome is None:  # stopped while connecting: the client was never answered
            raise RouterError(503, "The router is shutting down", retry_after=1)
        if isinstance(outcome, RouterError):
            raise outcome
        if isinstance(outcome, _Refused):
            return await self._refuse(conn, outcome)
        if not ended:  # the client left (or wsproto refused it) before its handshake ended
            return Served(499, outcome.backend.name, outcome.model, 0.0, outcome.attempts)
        stats = ended[0]
        state.upstream += stats.duration
        state.prompt_tokens, state.completion_tokens = tally.input_tokens, tally.output_tokens
        conn.bytes_out = stats.upstream_bytes
        return RealtimeServed(
            101, outcome.backend.name, outcome.model, stats.duration, outcome.attempts,
            session={
                "session_id": loggable(tally.session_id or ""),
                "ended_by": stats.ended_by,
                "close_code": stats.close_code,
                "messages_in": stats.client_messages,
                "messages_out": stats.upstream_messages,
                "bytes_in": stats.client_bytes,
                "responses": tally.responses,
                "input_tokens": tally.input_tokens,
                "output_tokens": tally.output_tokens,
            },
        )

    async def _run(
        self, request: Request, conn: ServerConnection, nursery: trio.Nursery, opened: _Opened,
        offered: list[str], tally: UsageTally, ticket: RealtimeTicket,
        report: Callable[[RelayStats], None],
    ) -> None:
        """Answer the client's handshake, then relay until a side ends (``report`` gets the
        counters, also when the session is stopped)."""
        from trio_websocket import ConnectionClosed

        from ..net.websocket_relay import HandshakeFailed, relay

        upstream = opened.connection
        headers: Headers = [
            (b"x-continuum-backend", opened.backend.name.encode()),
            (b"x-continuum-model", opened.model.encode()),
        ]
        subprotocol = client_subprotocol(upstream.subprotocol, offered)
        try:
            client = await conn.accept_websocket(request, nursery, subprotocol, headers,
                                                 self.settings)
        except (HandshakeFailed, ConnectionClosed, trio.BrokenResourceError,
                trio.ClosedResourceError):
            with trio.CancelScope(shield=True), trio.move_on_after(self.settings.close_timeout):
                await upstream.aclose(1001, "the client went away")
            return
        await relay(client, upstream, settings=self.settings, observer=_observer(tally, ticket),
                    report=report)

    async def _refuse(self, conn: ServerConnection, refused: _Refused) -> Served:
        """A backend's refusal for a reason of the client's, passed on: its JSON body as it
        is (OpenAI's error shape), else one of ours."""
        body = refused.body if refused.body.lstrip().startswith(b"{") else b""
        if not body:
            body = RouterError(refused.status, "The upstream refused the Realtime session "
                               f"with {refused.status}").body()
        headers = [*JSON_HEADERS, (b"x-continuum-backend", refused.backend.name.encode()),
                   (b"x-continuum-model", refused.model.encode())]
        await conn.send_response(refused.status, headers, body)
        return Served(refused.status, refused.backend.name, refused.model, 0.0,
                      refused.attempts)

    async def _connect(
        self, nursery: trio.Nursery, conn: ServerConnection, ticket: RealtimeTicket,
        chain: tuple[str, ...], query: dict[str, str], subprotocols: list[str],
        forwarded: Headers, state: RequestState, client_model: str,
    ) -> _Opened | _Refused | RouterError:
        """Open an upstream session for the first model of ``chain`` that has a backend
        able to; a retryable failure moves on to another backend (then the next model). A
        backend at its ``per_backend`` limit is skipped for another (429 when none has room,
        as on the HTTP path)."""
        from ..net.websocket_relay import UpstreamConnectError, open_upstream

        router = self.router
        settings = self.settings
        attempts = 0
        last: UpstreamConnectError | None = None
        failed: BackendActor | None = None  # the backend of ``last``
        last_model = client_model
        previous: BackendActor | None = None
        refused: RouterError | None = None  # per_backend: the last backend limit that refused
        for index, model in enumerate(chain):
            if index:
                state.failed_over += (chain[index - 1],)
            tried: list[BackendActor] = []
            for _ in range(self.max_retries + 1):
                if attempts:
                    if not router.has_alternative(model, tried, _APIS):
                        break
                    await trio.sleep(self._backoff.delay(attempts, self._rng))
                backend, refusal = await router.choose_admitted(
                    model, tried, partial(ticket.admit_backend, conn, model=model), None, False,
                    _APIS)
                if refusal is not None:
                    refused = refusal
                if backend is None:
                    break
                if previous is not None:
                    state.retried += (previous.name,)
                    previous = None
                tried.append(backend)
                attempts += 1
                target = upstream_target(
                    backend.url, urlencode({**query, "model": model}),
                    backend.profile.target(REALTIME_PATH.encode()).decode("latin-1"),
                )
                headers = [*backend.profile.auth, *forwarded]
                started = clock()
                try:
                    connection = await open_upstream(
                        nursery, target, subprotocols=subprotocols, headers=headers,
                        settings=settings, ssl_context=backend.ssl_context,
                    )
                except UpstreamConnectError as exc:
                    state.upstream += clock() - started
                    ticket.backend_failed(backend.name)
                    if not exc.retryable:  # the client's doing (404 model, 401 key...)
                        router.record(backend, model, clock() - started, True)
                        return _Refused(exc.status or 502, exc.body, backend, model, attempts)
                    router.record(backend, model, None, False, exc.message)
                    backend.failures += 1
                    log.info("realtime model %s attempt %d: %s", model, attempts, exc.message)
                    last, previous, failed, last_model = exc, backend, backend, model
                    continue
                except BaseException:
                    router.release(backend)  # cancelled: no outcome (a trial slot goes back)
                    raise
                latency = clock() - started
                state.upstream += latency
                router.record(backend, model, latency, True)
                return _Opened(connection, backend, model, attempts)
        if last is not None and last.status is not None and failed is not None:
            # Every backend refused: the last refusal says why (as the HTTP path answers).
            return _Refused(last.status, last.body, failed, last_model, attempts)
        if last is not None:
            return RouterError(504 if last.timeout else 502, f"Upstream failed: {last.message}")
        if refused is not None:
            return refused
        return router.unavailable_error(chain, _APIS, client_model)


def _observer(tally: UsageTally, ticket: RealtimeTicket) -> Callable[[str], None]:
    """The relay's observer: the session's tally, and every response's usage to the ticket."""
    if isinstance(ticket, NoLimits):
        return tally.observe

    def observe(message: str) -> None:
        before = tally.responses
        tally.observe(message)
        if tally.responses != before:
            ticket.settle(tally.usages[-1])

    return observe
