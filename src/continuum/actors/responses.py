"""The Responses API front: ``POST /v1/responses`` to any backend, and the stored
responses (``GET``/``DELETE /v1/responses/{id}``, ``GET .../input_items``).

A backend serves ``/v1/responses`` natively (the request passes through: ``type: openai``)
or through the bridge (``continuum.apis.responses``: translated onto chat completions, and
on through the Anthropic or Gemini translator), per its ``responses`` key. Bridged
responses are stored by the router (``responses.store``), so ``previous_response_id``
chains turns through a backend that keeps no state; native ones are stored by their
provider. A chained request therefore goes to the kind of backend that holds its previous
turn: one the router stored goes to bridged backends (any of them: the stored conversation
is sent whole), one it did not goes to native backends. ``GET``/``DELETE`` of an id the
router did not store are asked of the native backends in turn.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from ..apis.calls import Call, bridged_responses_call, build_call
from ..apis.listing import list_page, page_query
from ..apis.responses import (
    BridgeError,
    ChatBridge,
    ChatToResponsesStream,
    ConversationStore,
    ResponsesRequest,
    StoredResponse,
    new_response_id,
    parse_responses_request,
    responses_to_chat,
)
from ..apis.types import StreamTranslator, TranslationError
from ..core.clock import now as clock
from ..core.endpoints import RESPONSES, RESPONSES_BRIDGE, RESPONSES_NATIVE
from ..core.errors import JSON_HEADERS, RouterError, quoted
from ..net.client.exchange import RequestBody, UpstreamError
from ..net.server.connection import Request, ServerConnection
from .conversations import StoreUnavailable
from .proxy import AttemptResult, Proxy, Relay, RequestState, Served, with_model

if TYPE_CHECKING:
    from .backend import BackendActor
    from .ingress import Route
    from .router import Router

log = logging.getLogger("continuum.responses")

_PREFIX: Final = "/v1/responses/"
_ITEMS: Final = "/input_items"
#: Largest answer read from a native backend for GET/DELETE.
_NATIVE_LIMIT: Final = 64 * 1024 * 1024
_COMPLETE: Final = frozenset({"completed", "incomplete"})

_encode = msgspec.json.Encoder().encode
_decode_items = msgspec.json.Decoder(list[dict[str, Any]]).decode


def _bridge_error(exc: TranslationError) -> RouterError:
    return RouterError(exc.status, exc.message, param=exc.param, code=exc.code)


def _not_found(response_id: str) -> RouterError:
    return RouterError(404, f"Response with id {quoted(response_id)} not found.",
                       param="response_id", code="not_found")


@final
class ResponsesPlan:
    """One Responses request's :class:`~continuum.actors.proxy.Plan`: passed through to a
    native backend, bridged for the others; a bridged answer is stored before the client
    has it whole."""

    __slots__ = (
        "_bridge",
        "_created",
        "_front",
        "_id",
        "_model",
        "_previous",
        "_req",
        "_request",
        "_stream",
        "endpoint",
        "relay",
    )

    def __init__(self, front: ResponsesFront, request: Request, req: ResponsesRequest,
                 previous: StoredResponse | None, model: str, endpoint: str) -> None:
        self._front = front
        self._request = request
        self._req = req
        self._previous = previous
        self._model = model
        self._id = new_response_id()  # one id whichever attempt answers
        self._created = int(time.time())
        self._bridge: ChatBridge | None = None
        self._stream: ChatToResponsesStream | None = None
        self.endpoint = endpoint
        self.relay: Relay = ""

    def call(self, backend: BackendActor, model: str, stream: bool) -> Call:
        request = self._request
        self._stream = None
        if RESPONSES_NATIVE in backend.endpoints:
            self._bridge = None
            body = request.body if model == self._model else with_model(request.body, model)
            return build_call(RESPONSES, backend.profile, request.query, request.headers,
                              body, model, stream)
        openai = backend.type == "openai"  # OpenAI itself, bridged: its newer role name
        bridge = self._bridge = responses_to_chat(
            self._req, model=model, previous=self._previous,
            max_tokens_field=backend.profile.chat_dialect.max_tokens_field,
            developer_role="developer" if openai else "system",
            response_id=self._id, created_at=self._created,
        )
        return bridged_responses_call(bridge, backend.profile, request.headers, model,
                                      self._keep_stream)

    def _keep_stream(self, translator: ChatToResponsesStream) -> None:
        self._stream = translator

    def upload(self) -> RequestBody | None:
        return None

    def can_retry(self) -> bool:
        return True

    async def answered(self, answer: AttemptResult) -> None:
        bridge = self._bridge
        if bridge is not None and bridge.store:
            await self._front.keep(bridge.stored(answer.body))

    async def streamed(self, translator: StreamTranslator) -> None:
        bridge, events = self._bridge, self._stream
        if bridge is None or not bridge.store or events is None or events.response is None:
            return
        if events.response.get("status") in _COMPLETE:
            await self._front.keep(bridge.stored(events.response))


@final
class ResponsesFront:
    """The handlers of ``/v1/responses`` and ``/v1/responses/{id}[/input_items]``."""

    def __init__(self, proxy: Proxy, router: Router, store: ConversationStore) -> None:
        self._proxy = proxy
        self._router = router
        self.store = store

    def routes(self) -> dict[str, tuple[str, Route]]:
        return {RESPONSES: ("POST", self.create)}

    def match(self, path: str) -> tuple[str, Route, str] | None:
        """The route of ``/v1/responses/{id}`` and ``.../input_items``."""
        if not path.startswith(_PREFIX):
            return None
        rest = path[len(_PREFIX):]
        if rest.endswith(_ITEMS) and rest.count("/") == 1 and len(rest) > len(_ITEMS):
            return "GET", self.input_items, "/v1/responses/{id}/input_items"
        if rest and "/" not in rest:
            return "GET, DELETE", self.item, "/v1/responses/{id}"
        return None

    # -- create ----------------------------------------------------------------------

    async def create(self, request: Request, conn: ServerConnection,
                     state: RequestState) -> Served:
        proxy = self._proxy
        peek = await proxy.peek(request, state)
        model = state.model
        if proxy.files is not None:
            await proxy.files.resolve(request)
        try:
            req = parse_responses_request(request.body)
        except BridgeError as exc:
            raise _bridge_error(exc) from None
        previous: StoredResponse | None = None
        endpoint = RESPONSES
        previous_id = req.previous_response_id
        if previous_id is not None:
            previous = await self._get(previous_id)
            # The previous turn lives where it was made: with us (bridged) or upstream.
            endpoint = RESPONSES_BRIDGE if previous is not None else RESPONSES_NATIVE
        try:
            chain = proxy.chain(model, endpoint)
        except RouterError:
            if previous_id is None or previous is not None:
                raise
            proxy.chain(model, RESPONSES)  # no backend at all: that 404 first
            raise RouterError(
                400, f"Previous response with id {quoted(previous_id)} not found.",
                param="previous_response_id", code="previous_response_not_found") from None
        proxy.arm_timeout(conn, request.path)
        plan = ResponsesPlan(self, request, req, previous, model, endpoint)
        return await proxy.handle_planned(request, conn, state, model, chain, req.stream,
                                          plan, proxy.hash_key(request, peek.user))

    async def _get(self, response_id: str) -> StoredResponse | None:
        try:
            return await self.store.get(response_id)
        except StoreUnavailable as exc:
            raise RouterError(503, f"The conversation store is unavailable: {exc}",
                              code="store_unavailable", retry_after=1) from None

    async def keep(self, stored: StoredResponse) -> None:
        """Store a bridged response (a failure is logged: the answer still goes out)."""
        try:
            kept = await self.store.put(stored)
        except StoreUnavailable as exc:
            log.warning("response %s not stored: %s", stored.id, exc)
            return
        if not kept:
            log.warning("response %s not stored: %d bytes is over responses.max_bytes",
                        stored.id, stored.size)

    # -- stored responses ----------------------------------------------------------------

    async def item(self, request: Request, conn: ServerConnection,
                   state: RequestState) -> Served | None:
        """``GET`` (or ``DELETE``) ``/v1/responses/{id}``."""
        response_id = request.path[len(_PREFIX):]
        if request.method == "DELETE":
            try:
                deleted = await self.store.delete(response_id)
            except StoreUnavailable as exc:
                raise RouterError(503, f"The conversation store is unavailable: {exc}",
                                  code="store_unavailable", retry_after=1) from None
            if deleted:
                await conn.send_response(200, JSON_HEADERS, _encode(
                    {"id": response_id, "object": "response", "deleted": True}))
                return None
            return await self._native(request, conn, response_id)
        stored = await self._get(response_id)
        if stored is None:
            return await self._native(request, conn, response_id)
        await conn.send_response(200, JSON_HEADERS, stored.response)
        return None

    async def input_items(self, request: Request, conn: ServerConnection,
                          state: RequestState) -> Served | None:
        """``GET /v1/responses/{id}/input_items`` (paged as OpenAI pages it)."""
        response_id = request.path[len(_PREFIX):-len(_ITEMS)]
        try:
            page = page_query(request.query)
        except TranslationError as exc:
            raise _bridge_error(exc) from None
        stored = await self._get(response_id)
        if stored is None:
            return await self._native(request, conn, response_id)
        await conn.send_response(200, JSON_HEADERS,
                                 _encode(list_page(_decode_items(stored.input_items), page)))
        return None

    async def _native(self, request: Request, conn: ServerConnection,
                      response_id: str) -> Served:
        """Ask the native backends in turn (the first one that knows the id answers)."""
        backends = [b for b in self._router.backends.values()
                    if RESPONSES_NATIVE in b.endpoints and b.healthy]
        target = request.path.encode() + (b"?" + request.query.encode() if request.query
                                          else b"")
        for backend in backends:
            profile = backend.profile
            started = clock()
            exchange = None
            try:
                exchange = await backend.start(request.method.encode(),
                                               profile.target(target),
                                               profile.request_headers(request.headers), b"")
                body = await exchange.read_all(_NATIVE_LIMIT)
            except UpstreamError as exc:
                backend.finish(exchange, None)
                log.info("backend %s: %s %s failed: %s", backend.name, request.method,
                         request.path[:120], exc)
                continue
            latency = clock() - started
            backend.finish(exchange, latency)
            if exchange.status == 404:
                continue
            headers = [(n, v) for n, v in exchange.headers if n == b"content-type"]
            if not headers:
                headers = list(JSON_HEADERS)
            headers.append((b"x-continuum-backend", backend.name.encode()))
            await conn.send_response(exchange.status, headers, body)
            return Served(exchange.status, backend.name, "", latency, 1)
        raise _not_found(response_id)
