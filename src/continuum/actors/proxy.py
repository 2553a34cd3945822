"""Forwarding one inference request: backend choice, retries and failover, model fallback,
deduplication, and SSE pass-through.

The Ingress hands each ``POST /v1/...`` here. The rules users rely on:

* a failure before any byte reached the client (connect error, reset, a 429/502/503/504
  answer, a broken body) is retried on another backend of the same model, up to
  ``max_retries`` retries, with jittered backoff; an upstream ``Retry-After`` keeps that
  backend out of rotation for that long (bounded by ``retry.max_retry_after``);
* when no backend of the model can answer, the models of ``fallbacks`` are tried in order;
* an answer caused by the request itself (400, 401, 404, 413, 422, ...) is returned as is;
* after the first streamed byte a failure ends the stream with an SSE ``error`` event and
  ``data: [DONE]`` — never a silent truncation.
"""

from __future__ import annotations

import logging
import math
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, final

import msgspec
import trio

from ..apis.calls import Call, build_call
from ..apis.files import REFERENCE_MARK
from ..apis.types import StreamTranslator, TranslationError
from ..config import Config
from ..core.clock import now as clock
from ..core.endpoints import CHAT, MESSAGES
from ..core.errors import (
    RouterError,
    anthropic_error_body,
    is_messages_api,
    quoted,
)
from ..core.http import Headers
from ..core.jsondepth import MAX_JSON_DEPTH, scan, scan_step, shallow
from ..core.ratelimit import Check, Decision
from ..core.retry import Backoff, parse_retry_after
from ..core.sse import (
    PassThrough,
    prompt_tokens_from_message_start,
    usage_from_body,
    usage_from_sse_tail,
)
from ..net.client.exchange import Exchange, RequestBody, UpstreamError
from ..net.client.http1 import HTTP1Connection
from ..net.client.http1_pool import HTTP1Exchange
from ..net.server.connection import ProtocolError, Request, ServerConnection
from ..net.server.watch import ClientWatch
from ..net.stream_pump import CLIENT_GONE, STOPPED, UPSTREAM_FAILED, StreamPump
from ..observability.tracing import Tracing
from .access import AccessControl, Admission, client_key
from .dedup import Deduplicator, StoredResponse, dedup_key

if TYPE_CHECKING:
    from .backend import BackendActor
    from .router import Router

log = logging.getLogger("continuum.proxy")

#: Upstream statuses worth another backend (the request itself was not at fault; 529 is
#: Anthropic's "overloaded").
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504, 529})

#: Upstream response headers never passed back: hop-by-hop and our own framing.
_DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te",
     b"trailer", b"upgrade", b"proxy-connection", b"date", b"server"}
)
_CHAIN_CACHE_MAX: Final = 4096
_SHUTTING_DOWN: Final = "The router is shutting down"
_NO_DEADLINE: Final = math.inf


class Peek(msgspec.Struct):
    """The only fields the router reads from a request body."""

    model: str | None = None
    stream: bool | None = None
    user: str | None = None


decode_peek = msgspec.json.Decoder(Peek).decode


class TokenPeek(Peek):
    """With token limits: also the answer's size limit, to reserve tokens from (any
    number; anything else is left to the upstream to refuse)."""

    max_tokens: Any = None
    max_completion_tokens: Any = None
    max_output_tokens: Any = None

    def reservation(self, default: float) -> float:
        for value in (self.max_completion_tokens, self.max_tokens, self.max_output_tokens):
            if type(value) in (int, float) and value > 0:
                return float(value)
        return default


decode_token_peek = msgspec.json.Decoder(TokenPeek).decode
_TOO_DEEP: Final = (f"Request body nesting too deep: at most {MAX_JSON_DEPTH} levels of arrays "
                    "and objects")


def _peek(body: bytes, decode: Callable[[bytes], Peek] = decode_peek) -> Peek:
    """The fields the router reads of a JSON body; a 400 without a ``model``."""
    try:
        peek = decode(body)
    except msgspec.ValidationError as exc:
        raise RouterError(400, f"Invalid request body: {exc}") from None
    except msgspec.DecodeError:
        raise RouterError(400, "Request body is not valid JSON") from None
    if not peek.model:
        raise RouterError(400, "You must provide a 'model' parameter", param="model",
                          code="missing_model")
    return peek
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


async def json_too_deep_yielding(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """The JSON depth rule (:func:`continuum.core.jsondepth.scan`) with a scheduler
    checkpoint between its steps, so a hostile body cannot hold the event loop."""
    steps = scan(body, limit)
    while (answer := scan_step(steps)) is None:
        await trio.lowlevel.checkpoint()
    return answer

@final
class RequestState(msgspec.Struct):
    """What one request's handling learns on the way, for headers, metrics, logs and
    spans: filled by the Proxy, read by the Ingress when the request ends.

    Made with its id and start only: a Struct, whose other fields take their defaults in
    C; a plain pass-through request writes a few of them."""

    id: bytes
    started: float  # clock() when the request was parsed
    upstream: float = 0.0  # seconds spent in upstream calls, every attempt
    stream: bool = False
    ttft: float = -1.0
    max_gap: float = -1.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The model the client asked for (for the access log: no body is parsed twice).
    model: str = ""
    #: Backends retried after and models failed over from, in order (tuples, grown only
    #: on a retry: the observation takes them as they are).
    retried: tuple[str, ...] = ()
    failed_over: tuple[str, ...] = ()
    span: Any = None  # the ingress span when tracing exports spans
    #: Who the client is and what its admission took (None: access control is off).
    access: Admission | None = None


def overhead_ms(seconds: float) -> bytes:
    return b"%.3f" % (seconds * 1000.0 if seconds > 0.0 else 0.0)


class Served(msgspec.Struct, frozen=True):
    """What a proxied request reports for the access metrics."""

    status: int
    backend: str
    model: str
    backend_duration: float
    attempts: int


#: How a 200 answer is relayed as it arrives, besides a stream the client asked for:
#: ``sse`` — an event stream (a transcription with ``stream=true``); ``binary`` — any
#: answer, bytes as they come (audio).
Relay = Literal["", "sse", "binary"]


class Plan(Protocol):
    """A request whose upstream calls are not the client's body passed to ``build_call``
    (a Responses request bridged to chat, an upload, a binary answer): what the attempt
    loop asks of it. Its hooks run before the answer's last bytes reach the client, so
    whatever they record (a stored response) exists once the client has the answer."""

    #: The routing key: only backends listing it in their ``endpoints`` are tried.
    endpoint: str
    relay: Relay

    def call(self, backend: BackendActor, model: str, stream: bool) -> Call:
        """This attempt's upstream call (raises TranslationError or RouterError)."""
        ...

    def upload(self) -> RequestBody | None:
        """The body to relay for the call just made, if it is an upload."""
        ...

    def can_retry(self) -> bool:
        """May another attempt follow a failed one? (Not once an upload has flowed.)"""
        ...

    async def answered(self, answer: AttemptResult) -> None:
        """A complete 200 answer, in the client's API, before it is sent."""
        ...

    async def streamed(self, translator: StreamTranslator) -> None:
        """A stream that completed, before its ending is sent."""
        ...


class FileResolver(Protocol):
    """Inlines the router's stored files that a request references (``files.enabled``)."""

    async def resolve(self, request: Request) -> None: ...


class StreamTail(Protocol):
    """What a forwarded stream leaves for its accounting: the first chunk's time and the
    longest gap (seconds, clock), the first chunk and the last three (for the usage scan).
    The pump's ``PumpedStream`` is one; the task's own loop makes a :class:`_LoopTail`."""

    @property
    def first(self) -> float: ...
    @property
    def max_gap(self) -> float: ...
    @property
    def head(self) -> bytes: ...
    @property
    def c1(self) -> bytes: ...
    @property
    def c2(self) -> bytes: ...
    @property
    def c3(self) -> bytes: ...


@final
class _LoopTail:
    __slots__ = ("c1", "c2", "c3", "first", "head", "max_gap")

    def __init__(self, first: float, max_gap: float, head: bytes, c1: bytes, c2: bytes,
                 c3: bytes) -> None:
        self.first, self.max_gap, self.head = first, max_gap, head
        self.c1, self.c2, self.c3 = c1, c2, c3


@final
class _BinaryRelay:
    """A StreamTranslator for bytes that are not SSE: passed on unchanged. A failure has
    no in-band signal: the stream's proper end is withheld instead (see ``_stream``)."""

    __slots__ = ()
    truncated = False

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""

    def error(self, status: int, message: str) -> bytes:
        return b""


#: The translators whose ``feed`` does no more than the pump allows: bytes out as they came
#: in, and never a truncation found mid-stream (only at ``finish``).
_PUMPED_TRANSLATORS: Final = (PassThrough, _BinaryRelay)


def _is_event_stream(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value[:17].lower() == b"text/event-stream"
    return False


def with_model(body: bytes, model: str) -> bytes:
    """``body`` with its ``model`` replaced; the other fields are re-emitted untouched."""
    fields = _decode_fields(body)
    fields["model"] = msgspec.Raw(_encode(model))
    return _encode(fields)


def _tokens_used(state: RequestState, served: Served | None) -> int | None:
    """What a finished request used, for its token reservation: the answer's usage; else
    nothing when it got no good answer; else unknown (the reservation stays charged: a
    stream that never reported usage)."""
    used = state.prompt_tokens + state.completion_tokens
    if used:
        return used
    if served is None or served.status != 200:
        return 0
    return None


def _settle(access: AccessControl, admission: Admission, state: RequestState,
            served: Served | None) -> None:
    """A limited request has ended (``served``: None when it raised): its leases go back
    and its token reservations are corrected by what it used."""
    if admission.limited:
        access.settle(admission, _tokens_used(state, served),
                      served.backend if served is not None else "")


#: What a failed attempt served: nothing.
_NOTHING_SERVED: Final = Served(0, "", "", 0.0, 0)


class AttemptResult(msgspec.Struct):
    """What one attempt on one backend came to: the one result type of the attempt loop.

    * an answer to send, or to share through dedup: ``status``, ``headers``, ``body`` and
      ``served`` set, ``error`` empty;
    * an answer already streamed to the client: ``streamed``, and ``served``;
    * a failure to retry after: ``error`` says why, and ``timed_out`` whether the backend was
      too slow rather than broken (a 504 rather than a 502 when no attempt is left). When
      the backend answered a retryable status, its answer is kept too (``status`` is not 0),
      to send if nothing better comes.

    A Struct: made once per attempt, its constructor runs in C.
    """

    served: Served = _NOTHING_SERVED
    status: int = 0
    headers: Headers = msgspec.field(default_factory=list)
    body: bytes = b""
    error: str = ""
    timed_out: bool = False
    streamed: bool = False


@final
class Proxy:
    def __init__(self, config: Config, router: Router, dedup: Deduplicator | None,
                 access: AccessControl | None = None) -> None:
        self.router = router
        self.use_access(access)
        self._rng = random.Random()
        self._chains: dict[tuple[str, str], tuple[str, ...]] = {}
        self._chains_version = -1
        self._response_limit = max(config.server.max_request_body_size, 64 * 1024 * 1024)
        #: Connections whose plain request waits upstream; its ``run`` notices clients
        #: that leave meanwhile (the supervisor runs it).
        self.clients = ClientWatch()
        #: Connections streaming an answer now, for :meth:`stop_streams`.
        self.streams: set[ServerConnection] = set()
        #: Set once the router is shutting down: a stream cut now says so.
        self.stopping = False
        #: Forwards pass-through streams with one task (its ``run`` is the supervisor's).
        self.pump = StreamPump()
        #: File references in chat requests are resolved by it (None: no Files API).
        self.files: FileResolver | None = None
        #: Tracing (propagation, and spans when the OpenTelemetry SDK is there).
        self.tracing = Tracing(config.tracing)
        self._spans = self.tracing.spans
        self.configure(config, dedup)

    def use_access(self, access: AccessControl | None) -> None:
        """Check client keys' models and the limits with ``access`` (None: nothing to
        check); again after a reload changed them (a request admitted before settles
        with the AccessControl that admitted it)."""
        #: Client keys' models and the limits (None: nothing to check).
        self.access = access
        self._decode_peek = (decode_token_peek if access is not None and access.counts_tokens
                             else decode_peek)

    def configure(self, config: Config, dedup: Deduplicator | None) -> None:
        """Take the settings read per request (at start, and on a config reload):
        ``request``, ``retry``, the consistent-hash key and deduplication. A request
        already running keeps what it read when it started."""
        self._dedup = dedup
        self._include_nondeterministic = config.cache.deduplication.include_nondeterministic
        request = config.request
        self._timeout = request.timeout
        self._streaming_timeout = request.streaming_timeout
        self._idle_timeout = request.idle_timeout
        self._max_retries = config.max_retries
        retry = config.retry
        self._backoff = Backoff(retry.base_delay, retry.max_delay, retry.exponential_backoff,
                                retry.jitter)
        self._max_retry_after = retry.max_retry_after
        timeout_message = f"Upstream timeout: no answer within {self._timeout:g}s (request.timeout)"
        self._timeout_error = ProtocolError(504, timeout_message)
        self._timeout_error_anthropic = ProtocolError(
            504, timeout_message, anthropic_error_body(504, timeout_message)
        )
        ch = config.routing.consistent_hash
        self._hash_key: Callable[[Request, Peek], str | None] | None = None
        if config.routing.strategy == "ConsistentHash":
            if ch.key == "header":
                header = ch.header.lower().encode()

                def from_header(request: Request, peek: Peek) -> str | None:
                    value = request.header(header)
                    return value.decode("latin-1") if value else None

                self._hash_key = from_header
            elif ch.key == "user":
                self._hash_key = lambda request, peek: peek.user
            else:

                def from_api_key(request: Request, peek: Peek) -> str | None:
                    key = client_key(request)
                    return key.decode("latin-1") if key else None

                self._hash_key = from_api_key

    # -- entry ---------------------------------------------------------------------------

    def _chain(self, model: str, path: str) -> tuple[str, ...]:
        """The models to try for ``model`` on endpoint ``path`` (a routing key: alias
        resolved, fallbacks after it, only models some backend serving ``path`` has).
        Cached until the Router's table changes: it is the same answer for every request
        of a model."""
        router = self.router
        if self._chains_version != router.version:
            self._chains.clear()
            self._chains_version = router.version
        key = (model, path)
        chain = self._chains.get(key)
        if chain is not None:
            return chain
        full = router.chain(router.resolve(model))
        if not any(router.candidates(m) for m in full):
            raise RouterError(404, f"The model {quoted(model)} does not exist or no backend "
                              "serves it", code="model_not_found", param="model")
        chain = tuple(m for m in full if any(path in b.endpoints for b in router.candidates(m)))
        if not chain:
            raise RouterError(
                404, f"No backend serving model {quoted(model)} supports "
                f"{path.partition('#')[0]}", code="unsupported_endpoint", param="model")
        if len(self._chains) < _CHAIN_CACHE_MAX:  # client-chosen model names: bounded
            self._chains[key] = chain
        return chain

    def chain(self, model: str, endpoint: str) -> tuple[str, ...]:
        """The fallback chain of ``model`` among backends serving ``endpoint`` (a 404
        RouterError when there are none)."""
        return self._chain(model, endpoint)

    def arm_timeout(self, conn: ServerConnection, path: str) -> None:
        """Start ``request.timeout`` for a request being proxied (``handle`` does it)."""
        conn.arm_timer(
            clock() + self._timeout,
            self._timeout_error_anthropic if is_messages_api(path) else self._timeout_error,
        )

    def handle(self, request: Request, conn: ServerConnection,
               state: RequestState) -> Awaitable[Served]:
        """Proxy a JSON request; returns what to await for its outcome. The common case (a
        shallow body without file references) needs nothing awaited before the backend is
        chosen: it returns :meth:`_serve`'s coroutine itself, one coroutine level fewer for
        every suspension of the request (:meth:`_admitted` when limits need a Redis call
        or settling); the rest takes :meth:`_handle`."""
        body = request.body
        files = self.files
        if not shallow(body) or (files is not None and REFERENCE_MARK in body):
            return self._handle(request, conn, state)
        peek = _peek(body, self._decode_peek)
        model = state.model = peek.model or ""
        if self.access is None or state.access is None:  # access control off: no cost
            return self._serve(request, conn, state, peek, model,
                               self._chain(model, request.path))
        return self._admit(self.access, state.access, request, conn, state, peek, model,
                           self._chain(model, request.path))

    async def _handle(self, request: Request, conn: ServerConnection,
                      state: RequestState) -> Served:
        body = request.body
        # Before any decoder sees the body: deep nesting is refused by one fixed rule (see
        # _jsondepth), so no decode of it anywhere can hit Python's recursion limit.
        if not shallow(body) and await json_too_deep_yielding(body):
            raise RouterError(400, _TOO_DEEP)
        peek = _peek(body, self._decode_peek)
        model = state.model = peek.model or ""
        files = self.files
        if files is not None and REFERENCE_MARK in body and (
                request.path == CHAT or request.path == MESSAGES):
            await files.resolve(request)
        chain = self._chain(model, request.path)
        access = self.access
        if access is not None and state.access is not None:
            return await self._admit(access, state.access, request, conn, state, peek, model,
                                     chain)
        return await self._serve(request, conn, state, peek, model, chain)

    def _admit(self, access: AccessControl, admission: Admission, request: Request,
               conn: ServerConnection, state: RequestState, peek: Peek, model: str,
               chain: tuple[str, ...]) -> Awaitable[Served]:
        """The key's models and the limits (access control on), then :meth:`_serve`.
        An admission in memory needs no await, and one that leaves nothing to settle (no
        lease, no token reservation: most) needs no ``finally``: then ``_serve``'s own
        coroutine is returned."""
        resolved = self.router.resolve(model)
        chain = access.allowed_chain(admission, model, resolved, chain)
        reservation = (peek.reservation(access.default_reservation)
                       if isinstance(peek, TokenPeek) else 0.0)
        checks = access.admit_now(admission, request, conn, resolved, reservation)
        if checks is None and not (admission.settles or access.per_backend):
            return self._serve(request, conn, state, peek, model, chain)
        return self._admitted(access, admission, checks, request, conn, state, peek, model,
                              resolved, chain)

    async def _admitted(self, access: AccessControl, admission: Admission,
                        checks: Sequence[Check] | None, request: Request,
                        conn: ServerConnection, state: RequestState, peek: Peek, model: str,
                        resolved: str, chain: tuple[str, ...]) -> Served:
        """:meth:`_serve` for a limited request that settles when it ends (``checks``: the
        Redis admission still to make)."""
        if checks is not None:
            await access.admit_redis(admission, conn, checks, resolved)
        served: Served | None = None
        try:
            served = await self._serve(request, conn, state, peek, model, chain)
            return served
        finally:
            _settle(access, admission, state, served)

    async def _serve(self, request: Request, conn: ServerConnection, state: RequestState,
                     peek: Peek, model: str, chain: tuple[str, ...]) -> Served:
        """The admitted request: dedup, then the attempts; the answer is sent from here."""
        hash_key = self._hash_key(request, peek) if self._hash_key is not None else None
        # request.timeout covers every attempt's connect, head and plain body. When it
        # passes, the server's timer sweep cancels the connection and answers 504 for us.
        conn.arm_timer(
            clock() + self._timeout,
            self._timeout_error_anthropic if is_messages_api(request.path)
            else self._timeout_error,
        )
        stream = state.stream = peek.stream is True
        if not stream and self._dedup is not None:
            target = f"{request.path}?{request.query}" if request.query else request.path
            key = dedup_key(target, request.body, client_key(request),
                            include_nondeterministic=self._include_nondeterministic)
            if key is not None:
                return await self._deduplicated(key, request, conn, model, chain, hash_key,
                                                state)
        answer = await (self._forward(request, conn, model, chain, hash_key, stream, state)
                        if self._spans else self._forward_chain(
                            request, conn, model, chain, hash_key, stream, state, None))
        return await self._answer(conn, state, answer)

    async def peek(self, request: Request, state: RequestState) -> Peek:
        """What :meth:`handle` reads of a JSON body (``model`` required), for the handlers
        that proxy through a plan."""
        body = request.body
        if not shallow(body) and await json_too_deep_yielding(body):
            raise RouterError(400, _TOO_DEEP)
        peek = _peek(body, self._decode_peek)
        state.model = peek.model or ""
        if isinstance(peek, TokenPeek) and state.access is not None and self.access is not None:
            state.access.reservation = peek.reservation(self.access.default_reservation)
        return peek

    def hash_key(self, request: Request, user: str | None = None) -> str | None:
        """The ConsistentHash key of a request (None without that strategy)."""
        if self._hash_key is None:
            return None
        return self._hash_key(request, Peek(user=user))

    async def handle_planned(
        self, request: Request, conn: ServerConnection, state: RequestState, model: str,
        chain: tuple[str, ...], stream: bool, plan: Plan, hash_key: str | None = None,
    ) -> Served:
        """Proxy a request through ``plan`` (the caller armed the timeout with
        :meth:`arm_timeout` and found the ``chain``): same attempts, retries, fallbacks,
        streaming and accounting as :meth:`handle`, without deduplication; the key's
        models and the limits apply as in :meth:`handle` (the token reservation is what
        :meth:`peek` read, else the default)."""
        state.stream = stream
        access = self.access
        admission = state.access
        if access is None or admission is None:
            return await self._serve_planned(request, conn, state, model, chain, stream, plan,
                                             hash_key)
        resolved = self.router.resolve(model)
        chain = access.allowed_chain(admission, model, resolved, chain)
        reservation = admission.reservation or (
            access.default_reservation if access.counts_tokens else 0.0)
        await access.admit(admission, request, conn, resolved, reservation)
        served: Served | None = None
        try:
            served = await self._serve_planned(request, conn, state, model, chain, stream,
                                               plan, hash_key)
            return served
        finally:
            _settle(access, admission, state, served)

    async def _serve_planned(
        self, request: Request, conn: ServerConnection, state: RequestState, model: str,
        chain: tuple[str, ...], stream: bool, plan: Plan, hash_key: str | None,
    ) -> Served:
        answer = await self._forward(request, conn, model, chain, hash_key, stream, state,
                                     plan)
        if not answer.streamed and answer.status == 200 and not answer.error:
            await plan.answered(answer)
        return await self._answer(conn, state, answer)

    async def _answer(self, conn: ServerConnection, state: RequestState,
                      answer: AttemptResult) -> Served:
        """Send the answer the attempt loop returned (unless it was streamed already)."""
        if answer.streamed:
            return answer.served
        conn.disarm_timer()
        headers = answer.headers
        headers.append((b"x-continuum-overhead-ms",
                        overhead_ms(clock() - state.started - state.upstream)))
        await conn.send_response(answer.status, headers, answer.body)
        return answer.served

    async def _deduplicated(
        self, key: bytes, request: Request, conn: ServerConnection, model: str,
        chain: tuple[str, ...], hash_key: str | None, state: RequestState,
    ) -> Served:
        assert self._dedup is not None
        produced: list[Served] = []

        async def produce() -> StoredResponse:
            answer = await self._forward(request, conn, model, chain, hash_key, False, state)
            produced.append(answer.served)
            return StoredResponse(answer.status, tuple(answer.headers), answer.body)

        stored, outcome = await self._dedup.run(key, produce)
        conn.disarm_timer()
        headers = [*stored.headers, (b"x-continuum-dedup", outcome.encode()),
                   (b"x-continuum-overhead-ms",
                    overhead_ms(clock() - state.started - state.upstream))]
        await conn.send_response(stored.status, headers, stored.body)
        if produced:
            return produced[0]
        return Served(stored.status, "", model, 0.0, 0)

    # -- attempts ------------------------------------------------------------------------

    async def _forward(
        self, request: Request, conn: ServerConnection, client_model: str,
        chain: tuple[str, ...], hash_key: str | None, stream: bool, state: RequestState,
        plan: Plan | None = None,
    ) -> AttemptResult:
        """Try the chain's models and their backends; return the answer to send, or — when
        it was streamed to the client already — what was served (never a failure: when no
        attempt succeeded, the last retryable answer, or a RouterError)."""
        if not self._spans:
            return await self._forward_chain(request, conn, client_model, chain, hash_key,
                                             stream, state, None, plan)
        span = self.tracing.start_child(state.span, "routing", {"continuum.model":
                                                                client_model})
        error = ""
        try:
            return await self._forward_chain(request, conn, client_model, chain, hash_key,
                                             stream, state, span, plan)
        except RouterError as exc:
            error = exc.message
            raise
        finally:
            self.tracing.end(span, None, error)

    async def _forward_chain(
        self, request: Request, conn: ServerConnection, client_model: str,
        chain: tuple[str, ...], hash_key: str | None, stream: bool, state: RequestState,
        span: Any, plan: Plan | None = None,
    ) -> AttemptResult:
        router = self.router
        endpoint = request.path if plan is None else plan.endpoint
        retries = 0
        last_error = ""
        timed_out = False  # the last failure was a slow backend, not a broken one
        held: AttemptResult | None = None  # a retryable answer, in case nothing better comes
        previous: BackendActor | None = None  # the last backend that failed
        final = False  # the plan cannot make another attempt
        access = self.access
        admission = state.access if access is not None and access.per_backend else None
        refused: Decision | None = None  # per_backend: the last backend limit that refused
        # Indexed, not enumerate(): the loop waits on the backend, and an enumerate and its
        # tuple iterator would be two more objects per request in flight for the collector.
        for index in range(len(chain)):
            model = chain[index]
            if index:
                state.failed_over += (chain[index - 1],)
            body = (request.body if model == client_model or plan is not None
                    else with_model(request.body, model))
            tried: list[BackendActor] = []
            for attempt in range(self._max_retries + 1):
                if retries:
                    if not router.has_alternative(model, tried, endpoint=endpoint):
                        break
                    await trio.sleep(self._backoff.delay(retries, self._rng))
                if admission is not None and admission.limited:
                    assert access is not None
                    backend, refusal = await router.choose_admitted(
                        model, tried, partial(access.admit_backend, admission, conn),
                        hash_key, stream, endpoint=endpoint)
                    if refusal is not None:
                        refused = refusal
                else:
                    backend = router.choose(model, tried, hash_key, stream, endpoint=endpoint)
                if backend is None:
                    break
                if previous is not None:  # this attempt retries ``previous``'s failure
                    state.retried += (previous.name,)
                    previous = None
                tried.append(backend)
                retries += 1
                last = attempt == self._max_retries and model == chain[-1]
                result = await self._attempt(request, conn, backend, model, body,
                                             stream, retries, last, state, span, plan)
                if not result.error:
                    return result
                previous = backend
                last_error, timed_out = result.error, result.timed_out
                if result.status:  # a retryable answer: keep it, try another
                    held = result
                    log.info("model %s attempt %d: %s; trying another", model, retries,
                             last_error)
                else:
                    log.info("model %s attempt %d: %s", model, retries, last_error)
                if plan is not None and not plan.can_retry():
                    final = True
                    break
            if final:  # (checked here, not on every model: a first try skips it)
                break
        if held is not None:
            return held  # every backend failed; the last retryable answer says why
        if refused is not None and not last_error:
            assert access is not None and admission is not None
            raise access.backend_refusal(admission, refused, client_model)
        if timed_out:
            raise RouterError(504, f"Upstream timeout: {last_error}")
        if last_error:
            raise RouterError(502, f"Upstream failed: {last_error}")
        raise router.unavailable_error(chain, None, client_model, endpoint)

    async def _attempt(
        self, request: Request, conn: ServerConnection, backend: BackendActor, model: str,
        body: bytes, stream: bool, attempt: int, last: bool, state: RequestState,
        routing_span: Any = None, plan: Plan | None = None,
    ) -> AttemptResult:
        """One attempt on one backend: the final answer (or what was streamed), or a
        failure to retry after (with the backend's answer when it was a retryable one).

        Every attempt ends in exactly one ``Router.record`` (an outcome) or
        ``Router.release`` (none: cancelled, or the client left), so a half-open breaker's
        trial slot is never lost.
        """
        # Every outcome goes through _record, with ``recorded`` set beside it; a failure's
        # message also ends the span (``span_error``). Plain locals rather than closures:
        # an attempt in flight holds no function or cell objects for the collector.
        recorded = False
        span: Any = None
        span_error = ""

        # A plain request's client is watched while the upstream works (a stream watches
        # its own, see _stream): one that leaves ends the request as a 499, upstream call
        # included.
        waiting = None if stream else self.clients.waiting
        if waiting is not None:
            waiting.add(conn)
        relay: Relay = ""
        upload: RequestBody | None = None
        try:
            try:
                if plan is None:
                    call = build_call(request.path, backend.profile, request.query,
                                      request.headers, body, model, stream)
                else:
                    call = plan.call(backend, model, stream)
                    upload = plan.upload()
                    relay = plan.relay
            except TranslationError as exc:
                recorded = True
                self._record(backend, model, stream, None, True)  # the request's fault
                raise RouterError(exc.status, exc.message, param=exc.param,
                                  code=exc.code) from None
            headers = call.headers
            if routing_span is not None:
                span = self.tracing.start_child(
                    routing_span, "upstream attempt",
                    {"continuum.backend": backend.name, "continuum.model": model,
                     "continuum.attempt": attempt}, client=True)
                value = self.tracing.traceparent(span)
                headers = [(n, v) for n, v in headers if n != b"traceparent"]
                headers.append((b"traceparent", value))
            started = clock()
            try:
                if stream:
                    # The first-byte timeout: a stream's head, then its first chunk, must
                    # each come within idle_timeout. Nothing has reached the client yet, so
                    # a backend that is too slow is retried on another one while
                    # request.timeout leaves time.
                    exchange = None
                    with trio.move_on_after(self._idle_timeout):
                        exchange = await (
                            backend.start(call.method, call.target, headers, call.body)
                            if upload is None else
                            backend.start_upload(call.method, call.target, headers, upload))
                    if exchange is None:
                        recorded = True
                        span_error = (f"backend '{backend.name}' sent no response head within "
                                      f"{self._idle_timeout:g}s (request.idle_timeout)")
                        return self._failed(backend, model, stream, state, span_error,
                                            started, timed_out=True)
                elif upload is None:
                    exchange = await backend.start(call.method, call.target, headers,
                                                   call.body)
                else:
                    exchange = await backend.start_upload(call.method, call.target, headers,
                                                          upload)
            except UpstreamError as exc:
                recorded = True
                span_error = f"backend '{backend.name}' failed: {exc}"
                return self._failed(backend, model, stream, state, span_error, started)
            if span is not None:
                span.set_attribute("http.response.status_code", exchange.status)
            status = exchange.status
            retryable = status in RETRYABLE_STATUSES
            if retryable:
                self._cool_down(backend, exchange.headers)
            elif status == 200 and (stream or relay) and (
                    relay == "binary" or _is_event_stream(exchange.headers)):
                to_head = clock() - started  # a stream's latency: to its head
                if waiting is not None:  # the stream watches its client itself
                    waiting.discard(conn)
                    waiting = None
                cannot = await self._first_chunk(exchange, backend)
                if cannot is not None:
                    recorded = True
                    span_error = cannot.error
                    return self._failed(backend, model, stream, state, span_error, started,
                                        cannot.timed_out)
                conn.disarm_timer()  # streams have streaming_timeout and idle_timeout
                out_headers = self._response_headers(exchange.headers, backend, model)
                # Router time so far: everything before this attempt's upstream call
                # that was not an earlier attempt's upstream time.
                out_headers.append((b"x-continuum-overhead-ms",
                                    overhead_ms(started - state.started - state.upstream)))
                translator: StreamTranslator = (
                    call.stream() if call.stream is not None
                    else _BinaryRelay() if relay == "binary"
                    else PassThrough(request.path)
                )
                streams = self.streams
                streams.add(conn)
                try:
                    ok = await self._stream(conn, backend, exchange, out_headers, translator,
                                            state, plan)
                finally:
                    streams.discard(conn)
                if ok is not None and (ok or not self.stopping):  # a shutdown is no outcome
                    recorded = True
                    self._record(backend, model, stream, to_head if ok else None, ok,
                                 "" if ok else "stream failed")
                elapsed = clock() - started
                state.upstream += elapsed
                return AttemptResult(Served(status, backend.name, model, elapsed, attempt),
                                     streamed=True)
            # The whole body, in the client's API (read here rather than in a helper: one
            # coroutine level fewer for every plain answer). A body broken off discards
            # the connection.
            try:
                body = await exchange.read_all(self._response_limit)
            except UpstreamError as exc:
                log.info("backend %s: answer broken off: %s", backend.name, exc)
                backend.finish(exchange, None)
                state.upstream += clock() - started
                recorded = True
                if retryable and not last:
                    self._record(backend, model, stream, None, False, f"answered {status}")
                    return AttemptResult(error=f"backend '{backend.name}' answered {status}")
                self._record(backend, model, stream, None, False, "broken response body")
                return AttemptResult(
                    error=f"backend '{backend.name}' broke off its answer: {exc}")
            except BaseException:
                backend.finish(exchange, None)
                raise
            latency = clock() - started
            state.upstream += latency
            backend.finish(exchange, latency)
            headers = self._response_headers(exchange.headers, backend, model)
            answered = status
            if call.translate is not None:
                translated = call.translate(status, body)
                answered, body = translated.status, translated.body
                headers = [(n, v) for n, v in headers if n != b"content-type"]
                headers.append((b"content-type", translated.content_type))
                headers.extend(translated.headers)
            if answered == 200:
                tokens = usage_from_body(body)
                if tokens is not None:
                    state.prompt_tokens, state.completion_tokens = tokens
            answer = AttemptResult(Served(answered, backend.name, model, latency, attempt),
                                   answered, headers, body)
            if retryable and not last:  # kept, in case no other backend does better
                recorded = True
                self._record(backend, model, stream, None, False, f"answered {status}")
                answer.error = f"backend '{backend.name}' answered {status}"
                return answer
            if answer.status != status and answer.status in RETRYABLE_STATUSES:
                # The translation found a good-looking answer unusable (Gemini's failed
                # function call, a body that is not the API's): the backend's failure,
                # and worth another backend like any retryable answer.
                recorded = True
                self._record(backend, model, stream, None, False,
                             f"answer unusable ({answer.status})")
                if not last:
                    answer.error = f"backend '{backend.name}' gave an unusable answer"
                return answer
            # A 429/529 ("overloaded") counts against the backend whether or not it was
            # retried; other 4xx are the request's doing.
            recorded = True
            if status < 500 and not retryable:  # the common case: straight to the Router
                # A plain answer's latency is the whole answer's (Router.record).
                self.router.record(backend, model, latency, True, "", stream)
            else:
                self._record(backend, model, stream, None, False, f"answered {status}")
            return answer
        finally:
            if waiting is not None:
                waiting.discard(conn)
            if not recorded:
                expired = conn.expired
                if expired is not None and expired.status == 504:
                    # request.timeout passed during this attempt: the backend's failure
                    # (a backend that hangs must lose traffic, not only the probes' say).
                    self._record(backend, model, stream, None, False,
                                 "request.timeout passed")
                else:
                    self.router.release(backend)
            if span is not None:
                self.tracing.end(span, None, span_error)

    def _record(self, backend: BackendActor, model: str, stream: bool, latency: float | None,
                ok: bool, reason: str = "") -> None:
        """An attempt's outcome (exactly one per attempt, see :meth:`_attempt`)."""
        if not ok:
            backend.failures += 1
        self.router.record(backend, model, latency, ok, reason, stream)

    def _failed(self, backend: BackendActor, model: str, stream: bool, state: RequestState,
                message: str, started: float, timed_out: bool = False) -> AttemptResult:
        """An attempt that ended without an answer: the backend's failure."""
        state.upstream += clock() - started
        self._record(backend, model, stream, None, False, message)
        return AttemptResult(error=message, timed_out=timed_out)

    def stop_streams(self) -> int:
        """Shutdown: end every stream now forwarding chunks with an error event (and
        ``[DONE]`` where its API has one) instead of letting the drain deadline cut it
        mid-stream. Returns how many were told; call it again for streams that were only
        starting (their idle timer is not armed yet)."""
        self.stopping = True
        told = 0
        for conn in list(self.streams):
            if conn.deadline < math.inf:  # in the forwarding loop: the timer is the stream's
                conn.expire()  # cancels the stream's own scope, not the connection
                told += 1
        return told

    async def _first_chunk(
        self, exchange: Exchange, backend: BackendActor
    ) -> AttemptResult | None:
        """Wait (up to idle_timeout) for a stream's first bytes before its head goes to the
        client, and put them back for the stream to forward. Returns why the stream cannot
        start (``timed_out`` when it was too slow; the exchange is finished), or None."""
        first = b""
        try:
            with trio.move_on_after(self._idle_timeout) as wait:
                first = await exchange.receive_some()
        except UpstreamError as exc:
            backend.finish(exchange, None)
            return AttemptResult(error=f"backend '{backend.name}' broke off its stream before "
                                       f"the first byte: {exc}")
        except BaseException:
            backend.finish(exchange, None)
            raise
        if wait.cancelled_caught:
            backend.finish(exchange, None)
            return AttemptResult(
                error=f"backend '{backend.name}' sent no stream data within "
                      f"{self._idle_timeout:g}s of its head (request.idle_timeout)",
                timed_out=True)
        if first:
            exchange.unread(first)
        return None

    def _cool_down(self, backend: BackendActor, headers: Headers) -> None:
        for name, value in headers:
            if name == b"retry-after":
                wait = parse_retry_after(value)
                if wait:
                    wait = min(wait, self._max_retry_after)
                    backend.cooldown_until = max(backend.cooldown_until,
                                                 clock() + wait)
                return

    @staticmethod
    def _response_headers(upstream: Headers, backend: BackendActor, model: str) -> Headers:
        headers = [field for field in upstream if field[0] not in _DROPPED_RESPONSE_HEADERS]
        headers += backend.name_header, (b"x-continuum-model", model.encode())
        return headers

    # -- streaming -----------------------------------------------------------------------

    def _handover(
        self, conn: ServerConnection, exchange: Exchange, translator: StreamTranslator
    ) -> tuple[HTTP1Connection, socket.socket, socket.socket] | None:
        """What the stream pump needs to forward this stream, when it can: the pump runs,
        the answer is passed through unchanged (no per-chunk work of a translation), and
        both sides are plain HTTP/1.1 sockets (the native front; not TLS, not HTTP/2).
        None: the stream takes the task's own loop."""
        if (type(translator) not in _PUMPED_TRANSLATORS or not self.pump.running
                or type(exchange) is not HTTP1Exchange or type(conn) is not ServerConnection):
            return None
        upstream = exchange.pump_connection()
        if upstream is None:
            return None
        upstream_sock, client = upstream.pump_socket(), conn.pump_socket()
        if upstream_sock is None or client is None:
            return None
        return upstream, upstream_sock, client

    async def _pumped(
        self, conn: ServerConnection, translator: StreamTranslator, upstream: HTTP1Connection,
        upstream_sock: socket.socket, client: socket.socket,
    ) -> tuple[bytes, bool, bool, StreamTail]:
        """Forward a stream through the pump (see :meth:`_stream`): this task only waits,
        under the stream's own deadline, for the pump to finish it or for a timer (idle,
        write, ``stop_streams``) to cut it. Returns the ending to send, whether the stream
        completed, whether the client is gone, and the stream's metrics."""
        pump = self.pump
        end = trio.current_time() + self._streaming_timeout
        with trio.CancelScope(deadline=end) as scope:
            conn.arm_timer(_NO_DEADLINE, scope=scope)  # the pump moves it per frame
            stream = pump.add(upstream, upstream_sock, client, translator.feed, conn,
                              self._idle_timeout, conn.limits.write_timeout)
            try:
                await stream.done.wait()
            finally:
                pump.detach(stream)
                conn.disarm_timer()
        outcome = stream.outcome
        if scope.cancelled_caught:
            if stream.blocked:  # cut while the client held up a write
                return b"", False, True, stream
            return self._cut(translator, end), False, False, stream
        if outcome == CLIENT_GONE:
            return b"", False, True, stream
        if outcome == UPSTREAM_FAILED:
            return (translator.error(502, f"Upstream stream failed: {stream.error}"), False,
                    False, stream)
        if outcome == STOPPED:  # the pump's task ended under the stream
            if self.stopping:
                return translator.error(503, _SHUTTING_DOWN), False, False, stream
            return (translator.error(502, "Stream forwarding stopped"), False, False,
                    stream)
        ending = translator.finish()
        return ending, not translator.truncated, False, stream

    async def _looped(
        self, conn: ServerConnection, exchange: Exchange, translator: StreamTranslator,
    ) -> tuple[bytes, bool, bool, StreamTail]:
        """Forward a stream with this task's own loop (see :meth:`_stream`), one receive and
        one send per chunk, with a watcher task for the client's reset. Returns what
        :meth:`_pumped` returns: the ending to send, whether the stream completed, whether
        the client is gone, and the stream's metrics."""
        ending = b""
        ok = False
        client_gone = False
        sending = False  # a write to the client is under way (it may be cut mid-chunk)
        # Stream metrics cost a few float operations per chunk (the clock is read anyway
        # for the idle timer): the first chunk's time, the longest gap, and the last three
        # chunks kept by reference for the usage scan at the end.
        first = 0.0
        max_gap = -1.0
        head = c1 = c2 = c3 = b""
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal client_gone
                if await conn.watch_disconnect():
                    client_gone = True
                    nursery.cancel_scope.cancel()
                # A clean EOF is a half-close: the answer still goes out.

            nursery.start_soon(watch)
            end = trio.current_time() + self._streaming_timeout
            idle = self._idle_timeout
            try:
                # One scope for the stream; the idle gap between chunks is a connection
                # timer moved per chunk (a float write), not a trio deadline. It covers
                # the upstream read only: writes have server.write_timeout.
                with trio.CancelScope(deadline=end) as scope:
                    receive, send, feed = (exchange.receive_some, conn.send_chunk,
                                           translator.feed)
                    now = last = clock()
                    while True:
                        conn.arm_timer(now + idle, scope=scope)
                        data = await receive()
                        conn.deadline = _NO_DEADLINE
                        if not data:
                            break
                        out = feed(data)
                        if out:
                            sending = True
                            await send(out)
                            sending = False
                            c1, c2, c3 = c2, c3, out
                        now = clock()
                        if first:
                            if now - last > max_gap:
                                max_gap = now - last
                        else:
                            first = now
                            head = out
                        last = now
                        if translator.truncated:
                            break  # ended with its error event: read no further
                conn.disarm_timer()
                if scope.cancelled_caught:
                    if sending:
                        client_gone = True  # cut while the client held up a write
                    else:
                        ending = self._cut(translator, end)
                else:
                    ending = translator.finish()
                    ok = not translator.truncated
            except UpstreamError as exc:
                conn.disarm_timer()
                ending = translator.error(502, f"Upstream stream failed: {exc}")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                client_gone = True
            nursery.cancel_scope.cancel()
        return ending, ok, client_gone, _LoopTail(first, max_gap, head, c1, c2, c3)

    def _cut(self, translator: StreamTranslator, end: float) -> bytes:
        """The ending of a stream its timer cut: shutdown, streaming or idle timeout."""
        status = 504
        if self.stopping:  # stop_streams: the drain deadline is near
            status, message = 503, _SHUTTING_DOWN
        elif trio.current_time() >= end:
            message = (f"Stream exceeded request.streaming_timeout "
                       f"({self._streaming_timeout:g}s)")
        else:
            message = f"Upstream sent nothing for {self._idle_timeout:g}s (request.idle_timeout)"
        return translator.error(status, message)

    async def _stream(
        self, conn: ServerConnection, backend: BackendActor, exchange: Exchange,
        headers: Headers, translator: StreamTranslator, state: RequestState,
        plan: Plan | None = None,
    ) -> bool | None:
        """Forward SSE bytes as they arrive (through ``translator``); end with an error
        event on failure.

        Returns True when the stream completed, False when the upstream failed, broke off
        or timed out (the client got an error event and the stream's end), None when the
        client went away or could not keep up (``server.write_timeout``, or a deadline that
        passed while a write to it was blocked): that is not the backend's doing, and the
        connection is closed, never sent more after a chunk that may be partial.

        A client that goes away (a reset) cancels the upstream read at once (the watcher),
        and the half-read upstream connection is closed, never pooled. A client that only
        half-closes (EOF after its request) still gets the whole stream. While the client
        does not read, the upstream is not read either: the forwarder is blocked in the
        write, and TCP (or HTTP/2 flow control) holds the backend back.

        A stream the pump can forward (:meth:`_handover`) is moved by it instead of this
        task's loop, with the same behaviour (:meth:`_pumped`); the ending is this task's
        either way.
        """
        try:
            await conn.start_chunked(200, headers)
            handover = self._handover(conn, exchange, translator)
            ending, ok, client_gone, tail = await (
                self._pumped(conn, translator, *handover) if handover is not None
                else self._looped(conn, exchange, translator))
        except BaseException:
            conn.disarm_timer()
            backend.finish(exchange, None)
            raise
        # The exchange is closed either way (a half-read stream is never pooled); a client
        # that left or could not keep up is no failure of the backend's (the outcome is
        # recorded by the caller).
        backend.finish(exchange, None)
        if tail.first:
            state.ttft = tail.first - state.started
            state.max_gap = tail.max_gap
        if client_gone:
            conn.closing = True
            return None
        if not ok and type(translator) is _BinaryRelay:
            # Bytes have no error event: the client sees the body end without its final
            # chunk (a broken transfer), never a truncated file that looks whole.
            conn.closing = True
            return False
        if ok and plan is not None:
            await plan.streamed(translator)
        try:
            await conn.end_chunked(ending)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.closing = True  # the upstream's outcome stands; the client left at the end
        if ok:
            tokens = usage_from_sse_tail(tail.c1 + tail.c2 + tail.c3 + ending)
            if tokens is not None:
                prompt, completion = tokens
                if not prompt and tail.head:
                    prompt = prompt_tokens_from_message_start(tail.head)
                state.prompt_tokens, state.completion_tokens = prompt, completion
        return ok
