"""Endpoints whose request or answer is not one JSON body: multipart uploads (audio to
transcribe, images to edit) relayed as they arrive, and binary answers (speech) relayed
as they come back.

An upload is routed by its form's ``model`` field. The form is read only until that field
is complete — with the OpenAI SDKs it comes before the file, so the file itself is never
held; a form that puts it later is read (and held) up to ``server.max_request_body_size``,
and refused past it. The bytes read so far (the *prefix*) are kept, so an attempt that fails
before the rest of the upload was relayed can be made again on another backend, with the
``model`` field rewritten for a fallback model; once the rest started flowing to one
backend, the upload is that backend's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

from ..apis.calls import Call, build_call
from ..apis.types import StreamTranslator
from ..core.errors import RouterError
from ..core.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    form_boundary,
)
from ..net.client.exchange import RequestBody
from ..net.server.connection import BodyStream, Request, ServerConnection
from .proxy import AttemptResult, Proxy, Relay, RequestState, Served, with_model

if TYPE_CHECKING:
    from .backend import BackendActor

#: Longest ``model`` value read from a form.
_MAX_MODEL: Final = 512


@final
class UploadBody:
    """A :class:`RequestBody`: the kept prefix (``model`` rewritten), then the rest of the
    client's upload as it arrives."""

    __slots__ = ("_prefix", "_sent_prefix", "_stream", "length", "touched")

    def __init__(self, prefix: bytes, stream: BodyStream, length: int | None) -> None:
        self._prefix = prefix
        self._stream = stream
        self._sent_prefix = False
        self.length = length
        #: Bytes of the live upload went to this body's reader: it cannot start over.
        self.touched = False

    async def receive_some(self) -> bytes:
        if not self._sent_prefix:
            self._sent_prefix = True
            if self._prefix:
                return self._prefix
        data = await self._stream.receive_some()
        if data:
            self.touched = True
        return data

    def rewind(self) -> bool:
        if self.touched:
            return False
        self._sent_prefix = False
        return True


@final
class FormPrefix:
    """The head of an upload form, read up to its ``model`` field (see the module
    docstring): the bytes, and where the model's value sits in them."""

    __slots__ = ("data", "model", "model_end", "model_start")

    def __init__(self, data: bytes, model: str, model_start: int, model_end: int) -> None:
        self.data = data
        self.model = model
        self.model_start = model_start
        self.model_end = model_end

    def with_model(self, model: str) -> bytes:
        """The prefix with another ``model`` value."""
        if model == self.model:
            return self.data
        return (self.data[:self.model_start] + model.encode()
                + self.data[self.model_end:])


async def read_form_prefix(stream: BodyStream, boundary: bytes, limit: int) -> FormPrefix:
    """Read the form until its ``model`` field is complete (a 400 RouterError when the form
    is malformed, ends without one, or holds more than ``limit`` bytes before it)."""
    parser = MultipartParser(boundary)
    pieces: list[bytes] = []
    size = 0
    in_model = False
    model_start = -1
    value = b""
    try:
        while not parser.done:
            data = await stream.receive_some()
            if not data:
                parser.end()
            pieces.append(data)
            size += len(data)
            for event in parser.feed(data):
                if isinstance(event, PartStart):
                    in_model = event.name == "model"
                    model_start = event.data_start
                elif in_model and isinstance(event, PartData):
                    value += event.data
                    if len(value) > _MAX_MODEL:
                        raise RouterError(400, "The form's model field is too long",
                                          param="model")
                elif in_model and isinstance(event, PartEnd):
                    return FormPrefix(b"".join(pieces), value.decode("utf-8", "replace"),
                                      model_start, event.data_end)
            if size > limit:
                raise RouterError(
                    400, f"No model field in the first {limit} bytes of the form: send "
                    "'model' before the file (server.max_request_body_size)",
                    param="model", code="missing_model")
    except MultipartError as exc:
        raise RouterError(exc.status, f"Malformed multipart form: {exc.message}") from None
    raise RouterError(400, "You must provide a 'model' form field", param="model",
                      code="missing_model")


@final
class UploadPlan:
    """A :class:`~continuum.actors.proxy.Plan` relaying one upload."""

    __slots__ = ("_body", "_prefix", "_proxy", "_request", "_stream", "endpoint", "relay")

    def __init__(self, request: Request, prefix: FormPrefix, stream: BodyStream) -> None:
        self._request = request
        self._prefix = prefix
        self._stream = stream
        self._body: UploadBody | None = None
        self.endpoint = request.path
        self.relay: Relay = "sse"  # a transcription with stream=true answers events

    def call(self, backend: BackendActor, model: str, stream: bool) -> Call:
        request = self._request
        prefix = self._prefix.with_model(model)
        length = self._stream.length
        if length is not None:
            length += len(prefix) - len(self._prefix.data)
        self._body = UploadBody(prefix, self._stream, length)
        return build_call(request.path, backend.profile, request.query, request.headers, b"",
                          model, stream)

    def upload(self) -> RequestBody | None:
        return self._body

    def can_retry(self) -> bool:
        body = self._body
        return body is None or not body.touched

    async def answered(self, answer: AttemptResult) -> None:
        return None

    async def streamed(self, translator: StreamTranslator) -> None:
        return None


@final
class RelayPlan:
    """A :class:`~continuum.actors.proxy.Plan` for a JSON request whose answer is binary
    (speech): passed through, the answer relayed as it comes."""

    __slots__ = ("_model", "_request", "endpoint", "relay")

    def __init__(self, request: Request, model: str) -> None:
        self._request = request
        self._model = model
        self.endpoint = request.path
        self.relay: Relay = "binary"

    def call(self, backend: BackendActor, model: str, stream: bool) -> Call:
        request = self._request
        body = request.body if model == self._model else with_model(request.body, model)
        return build_call(request.path, backend.profile, request.query, request.headers, body,
                          model, stream)

    def upload(self) -> RequestBody | None:
        return None

    def can_retry(self) -> bool:
        return True

    async def answered(self, answer: AttemptResult) -> None:
        return None

    async def streamed(self, translator: StreamTranslator) -> None:
        return None


@final
class Uploads:
    """The handlers of the upload and binary-answer endpoints (the Ingress routes them)."""

    def __init__(self, proxy: Proxy, prefix_limit: int) -> None:
        self._proxy = proxy
        self._limit = prefix_limit

    async def handle_upload(self, request: Request, conn: ServerConnection,
                            state: RequestState) -> Served:
        """A multipart upload; a JSON body on the same path is an ordinary request."""
        stream = request.body_stream
        if stream is None:
            return await self._proxy.handle(request, conn, state)
        boundary = form_boundary(request.header(b"content-type"))
        if boundary is None:
            raise RouterError(400, "A multipart/form-data body needs a boundary parameter")
        proxy = self._proxy
        proxy.arm_timeout(conn, request.path)
        prefix = await read_form_prefix(stream, boundary, self._limit)
        model = prefix.model
        if not model:
            raise RouterError(400, "You must provide a 'model' form field", param="model",
                              code="missing_model")
        state.model = model
        chain = proxy.chain(model, request.path)
        return await proxy.handle_planned(request, conn, state, model, chain, False,
                                          UploadPlan(request, prefix, stream),
                                          proxy.hash_key(request))

    async def handle_binary(self, request: Request, conn: ServerConnection,
                            state: RequestState) -> Served:
        """A JSON request whose answer is relayed as it comes (``/v1/audio/speech``)."""
        proxy = self._proxy
        peek = await proxy.peek(request, state)
        model = state.model
        chain = proxy.chain(model, request.path)
        proxy.arm_timeout(conn, request.path)
        return await proxy.handle_planned(request, conn, state, model, chain, False,
                                          RelayPlan(request, model),
                                          proxy.hash_key(request, peek.user))
