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
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, final

import msgspec
import trio

from ._calls import ENDPOINT_APIS, Call, build_call
from ._config import Config
from ._dedup import Deduplicator, StoredResponse, dedup_key
from ._errors import RouterError, openai_error_body
from ._http._client import Exchange, Headers, UpstreamError
from ._http._server import ProtocolError, Request, ServerConnection
from ._providers._types import StreamTranslator, TranslationError
from ._providers.anthropic import anthropic_error_body
from ._retry import Backoff, parse_retry_after

if TYPE_CHECKING:
    from .actors.backend import BackendActor
    from .actors.router import Router

log = logging.getLogger("continuum.proxy")

#: Upstream statuses worth another backend (the request itself was not at fault; 529 is
#: Anthropic's "overloaded").
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504, 529})

#: Upstream response headers never passed back: hop-by-hop and our own framing.
_DROPPED_RESPONSE_HEADERS: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te",
     b"trailer", b"upgrade", b"proxy-connection", b"date", b"server"}
)
_SSE_DONE: Final = b"data: [DONE]\n\n"
_DONE_MARK: Final = b"[DONE]"


class Peek(msgspec.Struct):
    """The only fields the router reads from a request body."""

    model: str | None = None
    stream: bool | None = None
    user: str | None = None


decode_peek = msgspec.json.Decoder(Peek).decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


class Served(msgspec.Struct, frozen=True):
    """What a proxied request reports for the access metrics."""

    status: int
    backend: str
    model: str
    backend_duration: float
    attempts: int


def sse_error_event(message: str, status: int, code: str) -> bytes:
    """An error after the first streamed byte: an SSE ``error`` event, then ``[DONE]``."""
    body = openai_error_body(status, message, code=code)
    return b"event: error\ndata: " + body + b"\n\n" + _SSE_DONE


def anthropic_sse_error_event(message: str, status: int) -> bytes:
    """The same for an Anthropic event stream (which has no ``[DONE]``)."""
    return b"event: error\ndata: " + anthropic_error_body(status, message) + b"\n\n"


@final
class _PassThrough:
    """Pass-through streams as a StreamTranslator: bytes unchanged, and the end checked
    for the API's own terminator (a clean end without it is a truncation)."""

    __slots__ = ("_anthropic", "_tail", "truncated")

    def __init__(self, anthropic_events: bool) -> None:
        self._anthropic = anthropic_events
        self._tail = b""
        self.truncated = False

    def feed(self, data: bytes) -> bytes:
        self._tail = (self._tail + data[-32:])[-32:]  # the terminator may span chunks
        return data

    def finish(self) -> bytes:
        mark = b"message_stop" if self._anthropic else _DONE_MARK
        if mark in self._tail:
            return b""
        self.truncated = True
        return self.error(502, "Upstream ended the stream before its end marker")

    def error(self, status: int, message: str) -> bytes:
        if self._anthropic:
            return anthropic_sse_error_event(message, status)
        code = "upstream_timeout" if status == 504 else "bad_gateway"
        return sse_error_event(message, status, code)


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


def client_key(request: Request) -> bytes | None:
    auth = request.header(b"authorization")
    if auth is not None and auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return request.header(b"x-api-key")


@final
class _Answer:
    """A complete non-streamed answer, ready to send (or to share through dedup)."""

    __slots__ = ("body", "headers", "served", "status")

    def __init__(self, status: int, headers: Headers, body: bytes, served: Served) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.served = served


@final
class Proxy:
    def __init__(self, config: Config, router: Router, dedup: Deduplicator | None) -> None:
        self.router = router
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
        self._rng = random.Random()
        timeout_message = f"Upstream timeout: no answer within {self._timeout:g}s (request.timeout)"
        self._timeout_error = ProtocolError(504, timeout_message)
        self._timeout_error_anthropic = ProtocolError(
            504, timeout_message, anthropic_error_body(504, timeout_message)
        )
        self._response_limit = max(config.server.max_request_body_size, 64 * 1024 * 1024)
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

    async def handle(self, request: Request, conn: ServerConnection) -> Served:
        try:
            peek = decode_peek(request.body)
        except msgspec.ValidationError as exc:
            raise RouterError(400, f"Invalid request body: {exc}") from None
        except msgspec.DecodeError:
            raise RouterError(400, "Request body is not valid JSON") from None
        model = peek.model
        if not model:
            raise RouterError(400, "You must provide a 'model' parameter", param="model",
                              code="missing_model")
        router = self.router
        chain = router.chain(router.resolve(model))
        if not any(router.candidates(m) for m in chain):
            raise RouterError(404, f"The model '{model}' does not exist or no backend serves it",
                              code="model_not_found", param="model")
        apis = ENDPOINT_APIS[request.path]
        chain = tuple(m for m in chain if any(b.api in apis for b in router.candidates(m)))
        if not chain:
            raise RouterError(404, f"No backend serving model '{model}' supports {request.path}",
                              code="unsupported_endpoint", param="model")
        hash_key = self._hash_key(request, peek) if self._hash_key is not None else None
        # request.timeout covers every attempt's connect, head and plain body. When it
        # passes, the server's timer sweep cancels the connection and answers 504 for us.
        conn.arm_timer(
            trio.current_time() + self._timeout,
            self._timeout_error_anthropic if request.path.startswith("/v1/messages")
            else self._timeout_error,
        )
        stream = peek.stream is True
        if not stream and self._dedup is not None:
            target = f"{request.path}?{request.query}" if request.query else request.path
            key = dedup_key(target, request.body, client_key(request),
                            include_nondeterministic=self._include_nondeterministic)
            if key is not None:
                return await self._deduplicated(key, request, conn, model, chain, hash_key)
        answer = await self._forward(request, conn, model, chain, hash_key, stream)
        if isinstance(answer, Served):  # streamed already
            return answer
        conn.disarm_timer()
        await conn.send_response(answer.status, answer.headers, answer.body)
        return answer.served

    async def _deduplicated(
        self, key: bytes, request: Request, conn: ServerConnection, model: str,
        chain: tuple[str, ...], hash_key: str | None,
    ) -> Served:
        assert self._dedup is not None
        produced: list[Served] = []

        async def produce() -> StoredResponse:
            answer = await self._forward(request, conn, model, chain, hash_key, False)
            assert isinstance(answer, _Answer)
            produced.append(answer.served)
            return StoredResponse(answer.status, tuple(answer.headers), answer.body)

        stored, outcome = await self._dedup.run(key, produce)
        conn.disarm_timer()
        headers = [*stored.headers, (b"x-continuum-dedup", outcome.encode())]
        await conn.send_response(stored.status, headers, stored.body)
        if produced:
            return produced[0]
        return Served(stored.status, "", model, 0.0, 0)

    # -- attempts ------------------------------------------------------------------------

    async def _forward(
        self, request: Request, conn: ServerConnection, client_model: str,
        chain: tuple[str, ...], hash_key: str | None, stream: bool,
    ) -> _Answer | Served:
        """Try the chain's models and their backends; return the answer to send, or — when
        it was streamed to the client already — what was served."""
        router = self.router
        apis = ENDPOINT_APIS[request.path]
        retries = 0
        last_error = ""
        held: _Answer | None = None  # a retryable answer kept in case nothing better comes
        for model in chain:
            body = request.body if model == client_model else with_model(request.body, model)
            tried: list[BackendActor] = []
            for attempt in range(self._max_retries + 1):
                if retries:
                    if not router.has_alternative(model, tried, apis):
                        break
                    await trio.sleep(self._backoff.delay(retries, self._rng))
                backend = router.choose(model, tried, hash_key, stream, apis)
                if backend is None:
                    break
                tried.append(backend)
                retries += 1
                last = model == chain[-1] and attempt == self._max_retries
                result = await self._attempt(request, conn, backend, model, body,
                                             stream, retries, last)
                if isinstance(result, str):
                    last_error = result
                    log.info("model %s attempt %d: %s", model, retries, last_error)
                    continue
                if isinstance(result, tuple):  # a retryable answer: keep it, try another
                    last_error, held = result
                    log.info("model %s attempt %d: %s; trying another", model, retries,
                             last_error)
                    continue
                return result
        if held is not None:
            return held  # every backend failed; the last retryable answer says why
        if last_error:
            raise RouterError(502, f"Upstream failed: {last_error}")
        reason, wait = router.why_unavailable(chain[0])
        if reason == "overloaded":
            raise RouterError(429, f"Every backend for model '{client_model}' is at capacity",
                              code="overloaded", retry_after=max(wait, 1.0))
        if reason == "circuit_open":
            raise RouterError(503, f"Every backend for model '{client_model}' is failing "
                              "(circuit breaker open)", code="circuit_open",
                              retry_after=max(wait, 1.0))
        raise RouterError(503, f"No healthy backend is available for model '{client_model}'",
                          retry_after=max(wait, 1.0))

    async def _attempt(
        self, request: Request, conn: ServerConnection, backend: BackendActor, model: str,
        body: bytes, stream: bool, attempt: int, last: bool,
    ) -> _Answer | Served | str | tuple[str, _Answer]:
        """One attempt on one backend. Returns the final answer (or what was streamed), an
        error message to retry after, or a retryable answer with its message.

        Every attempt ends in exactly one ``Router.record`` (an outcome) or
        ``Router.release`` (none: cancelled, or the client left), so a half-open breaker's
        trial slot is never lost.
        """
        router = self.router
        recorded = False

        def record(latency: float | None, ok: bool, reason: str = "") -> None:
            nonlocal recorded
            recorded = True
            router.record(backend, model, latency, ok, reason, stream)

        started = trio.current_time()
        try:
            try:
                call = build_call(request.path, backend, request, body, model, stream)
            except TranslationError as exc:
                record(None, True)  # the request's fault, not the backend's
                raise RouterError(400, exc.message, param=exc.param) from None
            try:
                exchange = await backend.start(call.method, call.target, call.headers,
                                               call.body)
            except UpstreamError as exc:
                backend.fail_before_start()
                record(None, False, str(exc))
                return f"backend '{backend.name}' failed: {exc}"
            status = exchange.status
            to_head = trio.current_time() - started
            if status in RETRYABLE_STATUSES:
                self._cool_down(backend, exchange.headers)
            if status in RETRYABLE_STATUSES and not last:
                answer = await self._read(exchange, backend, model, call, started, attempt)
                record(None, False, f"answered {status}")
                message = f"backend '{backend.name}' answered {status}"
                return message if answer is None else (message, answer)
            if stream and status == 200 and _is_event_stream(exchange.headers):
                conn.disarm_timer()  # streams have streaming_timeout and idle_timeout
                headers = self._response_headers(exchange.headers, backend, model)
                translator: StreamTranslator = (
                    call.stream() if call.stream is not None
                    else _PassThrough(request.path == "/v1/messages")
                )
                ok = await self._stream(conn, backend, exchange, headers, translator)
                if ok is not None:
                    record(to_head if ok else None, ok, "" if ok else "stream failed")
                return Served(status, backend.name, model, trio.current_time() - started,
                              attempt)
            answer = await self._read(exchange, backend, model, call, started, attempt)
            if answer is None:
                record(None, False, "broken response body")
                return f"backend '{backend.name}' broke off its answer"
            ok = status < 500
            record(to_head if ok else None, ok, "" if ok else f"answered {status}")
            return answer
        finally:
            if not recorded:
                router.release(backend)

    async def _read(
        self, exchange: Exchange, backend: BackendActor, model: str, call: Call,
        started: float, attempts: int,
    ) -> _Answer | None:
        """The whole body, in the client's API; None (connection discarded) if the upstream
        broke it off."""
        status = exchange.status
        try:
            body = await exchange.read_all(self._response_limit)
        except UpstreamError as exc:
            log.info("backend %s: answer broken off: %s", backend.name, exc)
            backend.finish(exchange, False, None)
            return None
        except BaseException:
            backend.finish(exchange, False, None)
            raise
        latency = trio.current_time() - started
        backend.finish(exchange, status < 500, latency)
        headers = self._response_headers(exchange.headers, backend, model)
        if call.translate is not None:
            translated = call.translate(status, body)
            status, body = translated.status, translated.body
            headers = [(n, v) for n, v in headers if n != b"content-type"]
            headers.append((b"content-type", translated.content_type))
            headers.extend(translated.headers)
        return _Answer(status, headers, body, Served(status, backend.name, model, latency,
                                                     attempts))

    def _cool_down(self, backend: BackendActor, headers: Headers) -> None:
        for name, value in headers:
            if name == b"retry-after":
                wait = parse_retry_after(value)
                if wait:
                    wait = min(wait, self._max_retry_after)
                    backend.cooldown_until = max(backend.cooldown_until,
                                                 trio.current_time() + wait)
                return

    @staticmethod
    def _response_headers(upstream: Headers, backend: BackendActor, model: str) -> Headers:
        headers = [(n, v) for n, v in upstream if n not in _DROPPED_RESPONSE_HEADERS]
        headers.append((b"x-continuum-backend", backend.name.encode()))
        headers.append((b"x-continuum-model", model.encode()))
        return headers

    # -- streaming -----------------------------------------------------------------------

    async def _stream(
        self, conn: ServerConnection, backend: BackendActor, exchange: Exchange,
        headers: Headers, translator: StreamTranslator,
    ) -> bool | None:
        """Forward SSE bytes as they arrive (through ``translator``); end with an error
        event on failure.

        Returns True when the stream completed, False when the upstream failed, broke off
        or timed out (the client got an error event and the stream's end), None when the
        client went away. A client that goes away cancels the upstream read at once (the
        watcher), and the half-read upstream connection is closed, never pooled.
        """
        ending = b""
        ok = False
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
                end = trio.current_time() + self._streaming_timeout
                idle = self._idle_timeout
                try:
                    # One scope for the stream; the idle gap between chunks is a connection
                    # timer moved per chunk (a float write), not a trio deadline.
                    with trio.CancelScope(deadline=end) as scope:
                        receive, send, feed = (exchange.receive_some, conn.send_chunk,
                                               translator.feed)
                        while True:
                            conn.arm_timer(trio.current_time() + idle, scope=scope)
                            data = await receive()
                            if not data:
                                break
                            out = feed(data)
                            if out:
                                await send(out)
                    conn.disarm_timer()
                    if scope.cancelled_caught:
                        if trio.current_time() >= end:
                            message = (f"Stream exceeded request.streaming_timeout "
                                       f"({self._streaming_timeout:g}s)")
                        else:
                            message = (f"Upstream sent nothing for {idle:g}s "
                                       "(request.idle_timeout)")
                        ending = translator.error(504, message)
                    else:
                        ending = translator.finish()
                        ok = not getattr(translator, "truncated", False)
                except UpstreamError as exc:
                    conn.disarm_timer()
                    ending = translator.error(502, f"Upstream stream failed: {exc}")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    client_gone = True
                nursery.cancel_scope.cancel()
        except BaseException:
            conn.disarm_timer()
            backend.finish(exchange, False, None)
            raise
        backend.finish(exchange, ok and not client_gone, None)
        if client_gone:
            conn.closing = True
            return None
        await conn.end_chunked(ending)
        return ok
