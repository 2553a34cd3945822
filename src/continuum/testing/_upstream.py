"""A mock LLM upstream (OpenAI, Anthropic or Gemini API), with latency, pacing and failures.

Three users:

* the router: a backend with ``type: mock`` runs one in-process on ``127.0.0.1:0``, so
  ``configs/demo.yaml`` works on a laptop with no API keys;
* the test suite: the upstream behind the failure tests (resets, hangs, drips, bad JSON);
* the command line: ``trio-continuum mock --bind 127.0.0.1:9000 --fail status:503@0.2``
  (its options are parsed in :mod:`continuum.cli`).

It is served by the project's own HTTP/1.1 layer (:mod:`continuum.net`). It speaks one
API per instance (``api``: ``"openai"``, ``"anthropic"`` or ``"gemini"``). Answers are built by
the sans-IO :mod:`continuum.testing._openai`, :mod:`continuum.testing._anthropic` and
:mod:`continuum.testing._gemini`; which failure to act out is decided by
:mod:`continuum.testing._failures`; this module owns the state, routes and does the I/O.

Usage from a test::

    upstream = MockUpstream(models=["gpt-x"], seed=1)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_mock, upstream)   # "127.0.0.1:41234"
        upstream.fail_next("reset")
        ...
        nursery.cancel_scope.cancel()
"""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import struct
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal, final
from urllib.parse import parse_qs

import trio

from ..config import MockConfig, MockFailure
from ..core.errors import render_error
from ..core.multipart import MultipartError, form_boundary
from ..net.server.connection import HTTPLimits, Request, ServerConnection, status_line
from ..net.server.listeners import HTTPServer, open_listeners
from ..net.websocket_relay import ReplayStream, handshake_request
from . import _anthropic as anth
from . import _gemini as gem
from . import _media as media
from . import _openai as oai
from . import _responses as responses
from ._failures import INFERENCE_PATHS, Failure, FailurePlan
from ._realtime import MockRealtime
from ._replies import SSE_HEADERS, Reply, Settings, StreamReply, json_reply
from ._responses import ResponseStore

__all__ = ["MockUpstream", "ResponseStore", "open_mock_server", "serve_mock"]

#: Pause between two bytes of a "drip" response unless the MockUpstream says otherwise.
DEFAULT_DRIP_DELAY: Final = 0.01
#: SSE events a "reset_mid_stream" failure sends before the reset.
RESET_AFTER_EVENTS: Final = 2

_POST: Final = ("POST",)
_GET: Final = ("GET",)
_ROUTES: Final[dict[str, tuple[str, ...]]] = {
    "/v1/chat/completions": _POST,
    "/v1/completions": _POST,
    "/v1/embeddings": _POST,
    "/v1/responses": _POST,
    "/v1/moderations": _POST,
    "/v1/images/generations": _POST,
    "/v1/images/edits": _POST,
    "/v1/images/variations": _POST,
    "/v1/audio/speech": _POST,
    "/v1/audio/transcriptions": _POST,
    "/v1/audio/translations": _POST,
    "/v1/rerank": _POST,
    "/v1/models": _GET,
    "/health": _GET,
}
#: Paths answered from a multipart form (read as it arrives, see ``_read_form``).
_FORM_PATHS: Final = frozenset(
    {"/v1/images/edits", "/v1/images/variations", "/v1/audio/transcriptions",
     "/v1/audio/translations"})
_MODELS_PREFIX: Final = "/v1/models/"
_RESPONSES_PREFIX: Final = "/v1/responses/"
_GET_DELETE: Final = ("GET", "DELETE")
_LIMITS: Final = HTTPLimits(stream_paths=frozenset(p.encode() for p in _FORM_PATHS),
                            max_upload_size=1 << 32)
#: The Realtime API's WebSocket path, served on the same listener (OpenAI API only).
_REALTIME_PATH: Final = "/v1/realtime"
_UPGRADE_PATHS: Final = frozenset({_REALTIME_PATH})

Api = Literal["openai", "anthropic", "gemini"]
APIS: Final[tuple[Api, ...]] = ("openai", "anthropic", "gemini")
#: Gemini's OpenAI-compatible endpoint: ``/v1beta/openai/X`` is answered as ``/v1/X``.
GEMINI_OPENAI_PREFIX: Final = "/v1beta/openai/"
#: Gemini native prefixes (``/v1beta`` is what the SDKs use; ``/v1`` is the stable one).
_GEMINI_MODEL_PREFIXES: Final = ("/v1beta/models", "/v1/models")
_ANTHROPIC_ROUTES: Final[dict[str, tuple[str, ...]]] = {
    "/v1/messages": _POST,
    "/v1/messages/count_tokens": _POST,
    "/v1/models": _GET,
    "/health": _GET,
}
#: A failure-plan key that stands for "an inference request" (see ``_pick_failure``).
_INFERENCE_KEY: Final = "/v1/chat/completions"
_GEMINI_METHODS: Final = ("generateContent", "streamGenerateContent", "countTokens")


#: The JSON endpoints of :mod:`._media`.
_MEDIA: Final[dict[str, Callable[[bytes, Settings], Reply | StreamReply | media.BinaryReply]]] = {
    "/v1/moderations": media.moderations,
    "/v1/images/generations": media.image_generation,
    "/v1/audio/speech": media.speech,
    "/v1/rerank": media.rerank,
}


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a non-OpenAI request goes: what answers it, and in which error shape."""

    kind: str  # e.g. "messages", "models", "generate", "openai"
    methods: tuple[str, ...]
    dialect: Api  # the error shape
    inference: bool = False
    arg: str = ""  # the model (Gemini) or the OpenAI path (Gemini's OpenAI endpoint)


@final
class MockUpstream:
    """The behaviour and the counters of one mock upstream (serve it with :func:`serve_mock`).

    Nothing is shared between instances: each owns its settings, its failure queue, its
    ``random.Random`` (seed it with ``seed`` for reproducible failure rates) and its counters.
    Everything can be changed while it serves; the next request sees the change.
    """

    def __init__(
        self,
        config: MockConfig | None = None,
        models: Sequence[str] = ("mock-model",),
        *,
        name: str = "mock",
        seed: int | None = None,
        drip_delay: float = DEFAULT_DRIP_DELAY,
        api: str | None = None,
        responses_store: ResponseStore | None = None,
        endpoints: Collection[str] | None = None,
    ) -> None:
        config = config if config is not None else MockConfig()
        chosen = api if api is not None else config.api
        if chosen not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, got {chosen!r}")
        #: The API this upstream speaks (fixed at construction).
        self.api: Api = chosen
        self.name = name
        #: The Realtime API (WebSocket) on the same listener: ``GET /v1/realtime?model=M``
        #: with ``Upgrade: websocket`` (OpenAI API only). Its own failures and counters.
        self.realtime = MockRealtime(models, name=f"{name}-realtime")
        self.models: tuple[str, ...] = ()
        self.set_models(models)
        self.latency = 0.0
        self.set_latency(config.latency)
        self.tokens_per_second = float(config.tokens_per_second)
        self.stream_chunks = int(config.stream_chunks)
        self.drip_delay = float(drip_delay)
        self.health_status = 200
        # counters, for tests
        self.requests = 0
        self.requests_by_path: dict[str, int] = {}
        self.active_streams = 0
        #: Headers (lower-case names; repeated ones joined with ", ") of the last POST.
        self.last_request_headers: dict[str, str] = {}
        #: Body of the last POST (None until one arrives).
        self.last_request_body: bytes | None = None
        self._rng = random.Random(seed)
        self._plan = FailurePlan(config.failures, self._rng)
        self._id_prefix = f"{self._rng.getrandbits(48):012x}"
        self._ids = itertools.count(1)
        #: Stored Responses API answers (``previous_response_id``, GET, DELETE); pass one
        #: store to several mocks to make them look like replicas of one provider.
        self.responses = responses_store if responses_store is not None else (
            ResponseStore()
        )
        #: The OpenAI-API paths it serves besides ``/v1/models`` and ``/health`` (None:
        #: all of them); others answer 404 as a server without them would.
        self.endpoints: frozenset[str] | None = (
            None if endpoints is None else frozenset(endpoints))

    def __repr__(self) -> str:
        return f"<MockUpstream {self.name!r} api={self.api} models={list(self.models)!r}>"

    # -- test controls ---------------------------------------------------------------------

    def fail_next(
        self, kind: str, count: int = 1, status: int = 500, *, path: str | None = None
    ) -> None:
        """Act out failure ``kind`` for the next ``count`` requests.

        Kinds: ``status`` (answer ``status`` with an OpenAI-shaped error), ``reset`` (TCP RST
        before any response byte), ``reset_mid_stream`` (head and a couple of SSE events,
        then RST; a non-streamed answer is cut in the middle of its body), ``hang`` (never
        answer; ends when the client leaves or the server is cancelled), ``drip`` (the whole
        response one byte at a time, ``drip_delay`` apart), ``malformed`` (200 whose JSON,
        or first SSE event, does not parse).

        By default they apply to the inference endpoints (chat, completions, embeddings,
        responses; Anthropic ``/v1/messages``; Gemini ``:generateContent``,
        ``:streamGenerateContent`` and ``/v1beta/openai/chat/completions`` and
        ``embeddings``); give ``path`` (e.g.
        ``"/v1/models"``) to aim at exactly one path instead. Queued failures are used
        before the configured, probabilistic ones. ``status`` errors use the error shape of
        the API that path belongs to.
        """
        self._plan.push(kind, count, status, path)

    def clear_failures(self) -> None:
        """Forget the failures queued with :meth:`fail_next` (configured ones stay)."""
        self._plan.clear()

    @property
    def pending_failures(self) -> int:
        """How many :meth:`fail_next` failures are still queued."""
        return self._plan.queued

    def set_failures(self, failures: Sequence[MockFailure]) -> None:
        """Replace the configured (probabilistic) failures."""
        self._plan.configure(failures)

    def set_latency(self, seconds: float) -> None:
        """Delay before every response head (and before a reset)."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self.latency = float(seconds)

    def set_models(self, models: Sequence[str]) -> None:
        """The models this upstream serves and lists (others get 404 model_not_found)."""
        if isinstance(models, str):
            raise TypeError("models must be a sequence of model names, not a string")
        self.models = tuple(models)
        self.realtime.models = frozenset(self.models)

    def set_health_status(self, status: int) -> None:
        """What ``GET /health`` and ``GET /v1/models`` answer with (e.g. 503 = warming up)."""
        if not 100 <= status <= 599:
            raise ValueError(f"status must be 100..599, got {status}")
        self.health_status = status

    # -- the HTTP handler --------------------------------------------------------------------

    async def handle(self, request: Request, conn: ServerConnection) -> None:
        """The :data:`continuum.net.server.connection.Handler` that answers every request."""
        path = request.path
        self.requests += 1
        self.requests_by_path[path] = self.requests_by_path.get(path, 0) + 1
        if conn.upgrade is not None and self.api == "openai":
            await self._realtime(request, conn)
            return
        if request.method == "POST":
            self._record(request)
        if self.api != "openai":
            await self._handle_provider(request, conn)
            return
        allowed = _ROUTES.get(path)
        if allowed is None and path.startswith(_MODELS_PREFIX) and len(path) > len(_MODELS_PREFIX):
            allowed = _GET
        if allowed is None and path.startswith(_RESPONSES_PREFIX):
            rest = path[len(_RESPONSES_PREFIX) :]
            if rest and "/" not in rest:
                allowed = _GET_DELETE
            elif rest.endswith("/input_items") and rest.count("/") == 1 and len(rest) > 12:
                allowed = _GET
        if allowed is not None and not self._serves(path):
            allowed = None
        if allowed is None:
            await self._send(
                conn, oai.error_reply(404, f"Invalid URL ({request.method} {path})")
            )
            return
        if request.method not in allowed:
            reply = oai.error_reply(
                405,
                f"Method {request.method} is not allowed on {path}",
                headers=((b"allow", ", ".join(allowed).encode()),),
            )
            await self._send(conn, reply)
            return
        failure = self._plan.pick(path)
        if failure is not None and failure.kind == "hang":
            await _hang(conn)
            return
        if path in _FORM_PATHS and request.method == "POST":
            await self._deliver(conn, await self._form_answer(path, request), failure)
            return
        await self._deliver(conn, self._answer(path, request.body, request.method), failure)

    async def _realtime(self, request: Request, conn: ServerConnection) -> None:
        """A WebSocket upgrade on ``/v1/realtime``: the session goes to :attr:`realtime`
        (which answers the handshake itself, refusals included)."""
        target = f"{request.path}?{request.query}" if request.query else request.path
        head = handshake_request(request.method, target, request.headers)
        stream, rest = conn.detach()
        await self.realtime.serve_stream(ReplayStream(stream, head + rest))

    def _serves(self, path: str) -> bool:
        served = self.endpoints
        if served is None or path in ("/v1/models", "/health") or path.startswith(
                _MODELS_PREFIX):
            return True
        if path.startswith(_RESPONSES_PREFIX):
            path = "/v1/responses"
        return path in served

    async def _form_answer(self, path: str, request: Request) -> Reply | StreamReply:
        """An upload's answer: the form read as it arrives (files hashed, never held)."""
        boundary = form_boundary(request.header(b"content-type"))
        if boundary is None:
            return oai.error_reply(400, "Expected a multipart/form-data body with a boundary.")
        reader = media.FormReader(boundary)
        try:
            stream = request.body_stream
            if stream is None:
                reader.feed(request.body)
            else:
                while data := await stream.receive_some():
                    reader.feed(data)
            form = reader.end()
        except MultipartError as exc:
            return oai.error_reply(400, f"Malformed multipart body: {exc.message}")
        if path.startswith("/v1/images/"):
            return media.image_upload(path, form, self._settings())
        return media.transcription(path, form, self._settings())

    # -- Anthropic and Gemini ------------------------------------------------------------

    async def _handle_provider(self, request: Request, conn: ServerConnection) -> None:
        path, method = request.path, request.method
        route = self._route(path)
        if route is None:
            dialect: Api = self.api
            if self.api == "gemini" and path.startswith(GEMINI_OPENAI_PREFIX):
                dialect = "openai"
            await self._send(conn, self._error(dialect, 404, f"Invalid URL ({method} {path})"))
            return
        if method not in route.methods:
            allow = ((b"allow", ", ".join(route.methods).encode()),)
            message = f"Method {method} is not allowed on {path}"
            await self._send(conn, self._error(route.dialect, 405, message, allow))
            return
        denied = self._check_auth(route, request)
        if denied is not None:
            await self._send(conn, denied)
            return
        failure = self._pick_failure(path, route.inference)
        if failure is not None and failure.kind == "hang":
            await _hang(conn)
            return
        answer = self._provider_answer(route, request)
        await self._deliver(conn, answer, failure, route.dialect)

    def _route(self, path: str) -> _Route | None:
        if self.api == "anthropic":
            allowed = _ANTHROPIC_ROUTES.get(path)
            if allowed is not None:
                kind = path.rsplit("/", 1)[-1]
                return _Route(kind, allowed, "anthropic", inference=kind == "messages")
            if path.startswith(_MODELS_PREFIX) and len(path) > len(_MODELS_PREFIX):
                return _Route("model", _GET, "anthropic", arg=path[len(_MODELS_PREFIX) :])
            return None
        if path == "/health":
            return _Route("health", _GET, "gemini")
        if path.startswith(GEMINI_OPENAI_PREFIX):
            oai_path = "/v1/" + path[len(GEMINI_OPENAI_PREFIX) :]
            allowed = _ROUTES.get(oai_path)
            if allowed is None and oai_path.startswith(_MODELS_PREFIX):
                allowed = _GET if len(oai_path) > len(_MODELS_PREFIX) else None
            if allowed is None or oai_path in ("/health", "/v1/responses"):
                return None
            inference = oai_path in INFERENCE_PATHS
            return _Route("openai", allowed, "openai", inference=inference, arg=oai_path)
        for prefix in _GEMINI_MODEL_PREFIXES:
            if path == prefix:
                return _Route("models", _GET, "gemini")
            if path.startswith(prefix + "/") and len(path) > len(prefix) + 1:
                rest = path[len(prefix) + 1 :]
                model, colon, verb = rest.rpartition(":")
                if not colon:
                    return _Route("model", _GET, "gemini", arg=rest)
                if verb not in _GEMINI_METHODS or not model:
                    return None
                return _Route(verb, _POST, "gemini", inference=verb != "countTokens", arg=model)
        return None

    def _check_auth(self, route: _Route, request: Request) -> Reply | None:
        if route.kind == "health":
            return None
        if self.api == "anthropic":
            return anth.check_headers(
                request.header(b"x-api-key"),
                request.header(b"anthropic-version"),
                request.header(b"authorization"),
            )
        google_key = request.header(b"x-goog-api-key")
        if route.dialect == "openai":
            auth = request.header(b"authorization") or b""
            if google_key or (auth[:7].lower() == b"bearer " and auth[7:].strip()):
                return None
            return oai.error_reply(
                401, "Missing bearer authentication in header", code="invalid_api_key"
            )
        keys = parse_qs(request.query, keep_blank_values=True).get("key")
        return gem.check_auth(google_key, keys[0] if keys else None)

    def _pick_failure(self, path: str, inference: bool) -> Failure | None:
        """Like ``FailurePlan.pick``, with this API's inference paths counting as inference.

        A failure queued for exactly ``path`` wins; otherwise an inference request is
        matched as if it were ``_INFERENCE_KEY`` (a path no non-OpenAI mock serves), which
        picks the queued path-less failures and the configured ones.
        """
        failure = self._plan.pick(path)
        if failure is None and inference and path not in INFERENCE_PATHS:
            failure = self._plan.pick(_INFERENCE_KEY)
        return failure

    def _provider_answer(
        self, route: _Route, request: Request
    ) -> Reply | StreamReply | media.BinaryReply:
        kind, body = route.kind, request.body
        if kind == "openai":
            return self._answer(route.arg, body)
        if kind == "messages":
            return anth.messages(body, self._settings())
        if kind == "count_tokens":
            return anth.count_tokens_reply(body, self._settings())
        if kind in ("generateContent", "streamGenerateContent"):
            sse = "sse" in parse_qs(request.query).get("alt", ())
            stream = kind == "streamGenerateContent"
            return gem.generate_content(route.arg, body, self._settings(), stream=stream, sse=sse)
        if kind == "countTokens":
            return gem.count_tokens_reply(route.arg, body, self._settings())
        if not 200 <= self.health_status < 300:
            return self._unhealthy_as(route.dialect)
        if kind == "health":
            return json_reply({"status": "ok"}, self.health_status)
        if self.api == "anthropic":
            if kind == "models":
                return anth.model_list(self.models, request.query)
            return anth.model_reply(route.arg, self.models)
        if kind == "models":
            params = parse_qs(request.query)
            size, token = params.get("pageSize", [None])[0], params.get("pageToken", [None])[0]
            return gem.model_list(self.models, size, token)
        return gem.model_reply(route.arg, self.models)

    def _error(
        self,
        dialect: Api,
        status: int,
        message: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> Reply:
        if dialect == "anthropic":
            return anth.error_reply(status, message, headers=headers)
        if dialect == "gemini":
            return gem.error_reply(status, message, headers=headers)
        return oai.error_reply(status, message, headers=headers)

    def _unhealthy_as(self, dialect: Api) -> Reply:
        if dialect == "openai":
            return self._unhealthy()
        status = self.health_status
        headers = ((b"retry-after", b"1"),) if status in (429, 503, 529) else ()
        message = (
            f"Mock upstream {self.name!r} is warming up (loading model)"
            if status == 503
            else f"Mock upstream {self.name!r} reports HTTP {status}"
        )
        return self._error(dialect, status, message, headers)

    def _record(self, request: Request) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.last_request_headers = headers
        self.last_request_body = request.body

    def _settings(self) -> Settings:
        return Settings(
            models=self.models,
            stream_chunks=self.stream_chunks,
            tokens_per_second=self.tokens_per_second,
            ident=f"{self._id_prefix}{next(self._ids):08x}",
            created=int(time.time()),
        )

    def _answer(
        self, path: str, body: bytes, method: str = "POST"
    ) -> Reply | StreamReply | media.BinaryReply:
        if path == "/v1/chat/completions":
            return oai.chat_completion(body, self._settings())
        if path == "/v1/responses":
            return responses.create(body, self._settings(), self.responses)
        if path.startswith(_RESPONSES_PREFIX):
            ident, _, tail = path[len(_RESPONSES_PREFIX) :].partition("/")
            if tail:
                return responses.input_items(ident, self.responses)
            if method == "DELETE":
                return responses.delete(ident, self.responses)
            return responses.retrieve(ident, self.responses)
        if path == "/v1/completions":
            return oai.text_completion(body, self._settings())
        if path == "/v1/embeddings":
            return oai.embeddings(body, self._settings())
        media_answer = _MEDIA.get(path)
        if media_answer is not None:
            return media_answer(body, self._settings())
        if not 200 <= self.health_status < 300:
            return self._unhealthy()
        if path == "/health":
            return json_reply({"status": "ok"}, self.health_status)
        if path == "/v1/models":
            return oai.model_list(self.models, self.name)
        model = path[len(_MODELS_PREFIX) :]
        if model not in self.models:
            return oai.model_not_found(model)
        return json_reply(oai.model_object(model, self.name))

    def _unhealthy(self) -> Reply:
        status = self.health_status
        if status == 503:
            return oai.error_reply(
                503,
                f"Mock upstream {self.name!r} is warming up (loading model)",
                code="model_loading",
                headers=((b"retry-after", b"1"),),
            )
        return oai.error_reply(status, f"Mock upstream {self.name!r} reports HTTP {status}")

    def _injected(self, status: int, dialect: Api = "openai") -> Reply:
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if status in (429, 503) or (status == 529 and dialect == "anthropic"):
            headers = ((b"retry-after", b"1"),)
        if dialect != "openai":
            message = f"Injected failure: HTTP {status} from mock upstream {self.name!r}"
            if dialect == "anthropic" and status == 529:
                message = "Overloaded"
            return self._error(dialect, status, message, headers)
        return oai.error_reply(
            status,
            f"Injected failure: HTTP {status} from mock upstream {self.name!r}",
            code="mock_injected_failure",
            headers=headers,
        )

    # -- delivery ----------------------------------------------------------------------------

    async def _deliver(
        self,
        conn: ServerConnection,
        reply: Reply | StreamReply | media.BinaryReply,
        failure: Failure | None,
        dialect: Api = "openai",
    ) -> None:
        kind = failure.kind if failure is not None else None
        if failure is not None and kind == "status":
            reply = self._injected(failure.status, dialect)
        elif kind == "malformed" and not isinstance(reply, media.BinaryReply):
            if dialect == "anthropic":
                reply = anth.malformed(reply)
            elif dialect == "gemini":
                reply = gem.malformed(reply)
            else:
                reply = oai.malformed(reply)
        if self.latency > 0:
            await trio.sleep(self.latency)
        if kind == "reset":
            await _reset(conn)
        elif kind == "reset_mid_stream":
            if isinstance(reply, StreamReply):
                await self._stream(conn, reply, cut_after=RESET_AFTER_EVENTS)
            elif isinstance(reply, media.BinaryReply):
                await self._binary(conn, reply, cut_after=1)
            else:
                await _send_half_then_reset(conn, reply)
        elif kind == "drip":
            inner = conn.use_stream(_DripStream(conn.stream, self.drip_delay))
            try:
                await self._send(conn, reply)
            finally:
                conn.use_stream(inner)
        else:
            await self._send(conn, reply)

    async def _send(
        self, conn: ServerConnection, reply: Reply | StreamReply | media.BinaryReply
    ) -> None:
        if isinstance(reply, StreamReply):
            await self._stream(conn, reply)
        elif isinstance(reply, media.BinaryReply):
            await self._binary(conn, reply)
        else:
            await conn.send_response(reply.status, reply.header_list(), reply.body)

    async def _binary(
        self, conn: ServerConnection, reply: media.BinaryReply, *, cut_after: int | None = None
    ) -> None:
        """A binary answer, chunk by chunk as it is produced (a reader that stops reading
        holds the mock back); ends early if the client leaves."""
        self.active_streams += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, conn, nursery.cancel_scope)
                await conn.start_chunked(200, [(b"content-type", reply.content_type)])
                for index, chunk in enumerate(reply.chunks):
                    if cut_after is not None and index >= cut_after:
                        await _reset(conn)
                        break
                    await conn.send_chunk(chunk)
                else:
                    await conn.end_chunked()
                nursery.cancel_scope.cancel()
        finally:
            self.active_streams -= 1

    async def _stream(
        self, conn: ServerConnection, reply: StreamReply, *, cut_after: int | None = None
    ) -> None:
        """One chunk per SSE event, paced; ends early (cancelled) if the client leaves."""
        self.active_streams += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, conn, nursery.cancel_scope)
                await conn.start_chunked(200, SSE_HEADERS)
                for index, (pause, event) in enumerate(reply.events):
                    if cut_after is not None and index >= cut_after:
                        await _reset(conn)
                        break
                    if pause > 0:
                        await trio.sleep(pause)
                    await conn.send_chunk(event)
                else:
                    await conn.end_chunked()
                nursery.cancel_scope.cancel()
        finally:
            self.active_streams -= 1


# -- raw socket tricks -------------------------------------------------------------------------


@final
class _DripStream(trio.abc.Stream):
    """Wraps a connection's stream so every ``send_all`` goes out one byte at a time."""

    def __init__(self, inner: trio.abc.Stream, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for i in range(len(view)):
            await self.inner.send_all(view[i : i + 1])
            await trio.sleep(self.delay)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _reset(conn: ServerConnection) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0, then close)."""
    conn.abort()
    stream = conn.stream
    if isinstance(stream, _DripStream):
        stream = stream.inner
    if isinstance(stream, trio.SocketStream):
        # On a Unix socket SO_LINGER may be refused: a plain close will have to do.
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def _send_half_then_reset(conn: ServerConnection, reply: Reply) -> None:
    """A head promising the whole body, half of the body, then RST."""
    head = bytearray(status_line(reply.status))
    for name, value in reply.header_list():
        head += name + b": " + value + b"\r\n"
    head += b"content-length: %d\r\n\r\n" % len(reply.body)
    await conn.stream.send_all(bytes(head) + reply.body[: len(reply.body) // 2])
    await _reset(conn)


async def _hang(conn: ServerConnection) -> None:
    """Never answer: wait until the client leaves (or we are cancelled), then close."""
    conn.abort()
    try:
        await conn.watch_disconnect()
    finally:
        await trio.aclose_forcefully(conn.stream)


async def _cancel_on_disconnect(conn: ServerConnection, scope: trio.CancelScope) -> None:
    await conn.watch_disconnect()
    scope.cancel()


# -- serving -------------------------------------------------------------------------------------


async def open_mock_server(upstream: MockUpstream, bind: str = "127.0.0.1:0") -> HTTPServer:
    """Bind ``upstream``'s listener now (``server.addresses`` says where) and return the
    server; ``await server.run()`` serves it until cancelled. A bind failure raises OSError
    here."""
    listeners = await open_listeners([bind])
    return HTTPServer(
        listeners, upstream.handle, _LIMITS, shutdown_timeout=0.0, render_error=render_error,
        upgrade_paths=_UPGRADE_PATHS,
    )


async def serve_mock(
    upstream: MockUpstream,
    bind: str = "127.0.0.1:0",
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``upstream`` on ``bind`` until cancelled.

    ``task_status.started`` gets the bound address (``"127.0.0.1:41234"``), so
    ``address = await nursery.start(serve_mock, upstream)`` works. A bind failure raises
    OSError from ``nursery.start``.
    """
    server = await open_mock_server(upstream, bind)
    task_status.started(server.addresses[0])
    await server.run()

