"""A mock OpenAI Realtime upstream: a WebSocket server at ``/v1/realtime?model=M``.

It speaks enough of the Realtime API for the official ``openai`` SDK's realtime client
(``client.realtime.connect``, and ``client.beta.realtime.connect``, which sends
``OpenAI-Beta: realtime=v1`` and gets the beta event names), deterministically:

- ``session.created`` on connect; ``session.update`` -> ``session.updated``;
- ``conversation.item.create`` -> ``conversation.item.added`` + ``conversation.item.done``
  (beta: ``conversation.item.created``);
- ``input_audio_buffer.append`` (counted), ``.commit`` -> ``input_audio_buffer.committed`` and
  the user's audio item, ``.clear`` -> ``input_audio_buffer.cleared``;
- ``response.create`` -> a scripted response (:class:`RealtimeScript`): ``response.created``,
  ``response.output_item.added``, ``response.content_part.added``, text or transcript deltas and
  base64 audio deltas, their ``...done`` events, ``response.done`` with usage;
- binary messages are echoed back as they are (the API defines none: this is for relay tests);
- anything else gets an ``error`` event, and the session stays open, as OpenAI does.

Failures are queued with :meth:`MockRealtime.fail_next`, one per session: ``refuse`` the
handshake with a status, ``close`` the session with a code, ``reset`` the TCP connection
(no close frame, as a killed process), ``stall`` (stop reading, writing and answering pings),
each after a given number of server events; and ``drip`` (a delay before every event).

It imports only trio, trio-websocket, msgspec and the standard library, and serves its own
listener (:func:`serve_mock_realtime`); :meth:`MockRealtime.serve_stream` takes any accepted
trio stream, so another listener can hand connections to it: every ``MockUpstream`` of the
OpenAI API has one (``upstream.realtime``) on its own HTTP port, as a real OpenAI-compatible
server would. No module-level state.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, final
from urllib.parse import parse_qs

import msgspec
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

#: Every kind ``fail_next`` accepts.
REALTIME_FAILURE_KINDS: Final = frozenset({"refuse", "close", "reset", "stall", "drip"})

_PCM_BYTES_PER_TOKEN: Final = 4800  # 100 ms of 24 kHz 16-bit mono audio
_HANDSHAKE_TIMEOUT: Final = 10.0
_CLOSE_TIMEOUT: Final = 5.0

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class RealtimeScript:
    """What every response of the mock contains."""

    #: Text (or audio transcript) deltas per response; one delta is one output text token.
    text_chunks: int = 4
    #: Audio deltas per response when audio is asked for; one delta is one output audio token.
    audio_chunks: int = 2
    #: PCM bytes per audio delta (its base64 is 4/3 as long).
    audio_chunk_bytes: int = 4800

    def __post_init__(self) -> None:
        if self.text_chunks < 1 or self.audio_chunks < 0 or self.audio_chunk_bytes < 0:
            raise ValueError("text_chunks must be >= 1, audio_chunks and audio_chunk_bytes >= 0")


@dataclass(frozen=True, slots=True)
class RealtimeFailure:
    """One queued failure (see :meth:`MockRealtime.fail_next`)."""

    kind: str
    #: ``refuse``: the handshake's HTTP status.
    status: int = 503
    #: ``close``: the close code.
    code: int = 1011
    #: ``close``/``reset``/``stall``: server events sent first (1: just ``session.created``).
    after: int = 1
    #: ``drip``: seconds before each server event.
    delay: float = 0.05
    #: ``stall``: seconds the connection stays frozen before it is reset.
    duration: float = 3600.0


@dataclass(frozen=True, slots=True)
class Handshake:
    """A handshake the mock received (for tests: what the proxy sent upstream)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    subprotocols: tuple[str, ...]


@dataclass(slots=True)
class RealtimeCounters:
    sessions: int = 0
    active: int = 0
    refused: int = 0
    events_received: int = 0
    events_sent: int = 0
    binary_received: int = 0


def _pcm(size: int) -> bytes:
    """Deterministic "audio": a ramp, so a test can check every byte arrived intact."""
    ramp = bytes(range(256))
    return (ramp * (size // 256 + 1))[:size]


def _pieces(text: str, n: int) -> list[str]:
    if len(text) < n:
        text = text.ljust(n, ".")
    size, extra = divmod(len(text), n)
    out, at = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append(text[at:at + step])
        at += step
    return out


def _words(text: str) -> int:
    return len(text.split())


@final
class _Line(trio.abc.Stream):
    """The mock's side of one TCP connection, which it can freeze (``stall``) or reset."""

    __slots__ = ("_frozen", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._frozen = False

    def freeze(self) -> None:
        self._frozen = True

    @property
    def frozen(self) -> bool:
        return self._frozen

    async def reset(self) -> None:
        """Close with a TCP RST where possible: the peer sees the connection die, no close."""
        inner: object = self.stream
        while not isinstance(inner, trio.SocketStream) and hasattr(inner, "stream"):
            inner = inner.stream  # a wrapper (the HTTP listener's replay of the head)
        if isinstance(inner, trio.SocketStream):
            with contextlib.suppress(OSError):
                inner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._frozen:
            await trio.sleep_forever()
        data = await self.stream.receive_some(max_bytes)
        if self._frozen:
            await trio.sleep_forever()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._frozen:
            await trio.sleep_forever()
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Ended(Exception):
    """The session is over (a failure acted, or the client closed)."""


class MockRealtime:
    """One mock Realtime upstream (any number can run in one process)."""

    def __init__(
        self,
        models: Sequence[str] = ("gpt-realtime",),
        *,
        script: RealtimeScript | None = None,
        name: str = "mock-realtime",
        max_message_size: int = 16 * 1024 * 1024,
    ) -> None:
        #: Models served; empty serves any model.
        self.models = frozenset(models)
        self.script = script or RealtimeScript()
        self.name = name
        self.max_message_size = max_message_size
        self.counters = RealtimeCounters()
        #: The last handshakes and client close frames seen (code, reason), newest last.
        self.handshakes: deque[Handshake] = deque(maxlen=100)
        self.client_closes: deque[tuple[int, str | None]] = deque(maxlen=100)
        self._failures: deque[RealtimeFailure] = deque()
        self._audio: dict[int, str] = {}
        self._sequence = 0

    def fail_next(
        self,
        kind: str,
        *,
        status: int = 503,
        code: int = 1011,
        after: int = 1,
        delay: float = 0.05,
        duration: float = 3600.0,
    ) -> None:
        """Queue a failure for the next session (each is used once, in order)."""
        if kind not in REALTIME_FAILURE_KINDS:
            raise ValueError(
                f"unknown realtime failure {kind!r}; expected one of "
                f"{', '.join(sorted(REALTIME_FAILURE_KINDS))}"
            )
        if not 300 <= status <= 599:
            raise ValueError(f"a refusal status must be 300..599, got {status}")
        if not (1000 <= code <= 4999 and code not in (1005, 1006, 1015)):
            raise ValueError(f"close code {code} cannot be sent in a close frame")
        self._failures.append(RealtimeFailure(kind, status, code, after, delay, duration))

    def audio_base64(self, size: int) -> str:
        """The base64 of the mock's ``size``-byte audio delta (cached per size)."""
        encoded = self._audio.get(size)
        if encoded is None:
            encoded = self._audio[size] = base64.b64encode(_pcm(size)).decode()
        return encoded

    def next_id(self, prefix: str) -> str:
        self._sequence += 1
        return f"{prefix}_mock{self._sequence:012d}"

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection until its session ends."""
        line = _Line(stream)
        try:
            async with trio.open_nursery() as nursery:
                request: WebSocketRequest | None = None
                with trio.move_on_after(_HANDSHAKE_TIMEOUT):
                    request = await trio_websocket.wrap_server_stream(
                        nursery, line, max_message_size=self.max_message_size,
                        receive_buffer_size=65536,
                    )
                if request is not None:
                    await self._handle(request, line)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(line)

    async def _handle(self, request: WebSocketRequest, line: _Line) -> None:
        path, _, query_string = request.path.partition("?")
        query = {k: v[-1] for k, v in parse_qs(query_string).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        offered = request.proposed_subprotocols
        self.handshakes.append(Handshake(path, query, headers, tuple(offered)))
        failure = self._failures.popleft() if self._failures else None
        refusal = self._refusal(path, query, failure)
        if refusal is not None:
            self.counters.refused += 1
            status, body = refusal
            with contextlib.suppress(ConnectionClosed):
                await request.reject(
                    status, extra_headers=[(b"content-type", b"application/json")], body=body
                )
            return
        beta = "realtime=v1" in headers.get("openai-beta", "") or (
            "openai-beta.realtime-v1" in offered
        )
        ws = await request.accept(subprotocol="realtime" if "realtime" in offered else None)
        self.counters.sessions += 1
        self.counters.active += 1
        session = _Session(self, ws, line, query.get("model", ""), beta, failure)
        try:
            await session.run()
            closed = ws.closed
            if not session.ended_by_mock and closed is not None and closed.code != 1006:
                self.client_closes.append((closed.code, closed.reason))
        finally:
            self.counters.active -= 1
            if not line.frozen:  # a frozen line would only make the close wait its timeout
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                    await ws.aclose()

    def _refusal(
        self, path: str, query: dict[str, str], failure: RealtimeFailure | None
    ) -> tuple[int, bytes] | None:
        if path != "/v1/realtime":
            return 404, _error_body("invalid_request_error", "not_found", f"No route {path}")
        model = query.get("model")
        if not model and "call_id" not in query and query.get("intent") != "transcription":
            return 400, _error_body(
                "invalid_request_error", "missing_model", "The 'model' query parameter is missing"
            )
        if model and self.models and model not in self.models:
            return 404, _error_body(
                "invalid_request_error", "model_not_found",
                f"The model '{model}' does not exist or you do not have access to it.",
            )
        if failure is not None and failure.kind == "refuse":
            return failure.status, _error_body(
                "server_error" if failure.status >= 500 else "invalid_request_error",
                "mock_refused", f"mock: handshake refused with {failure.status}",
            )
        return None


def _error_body(kind: str, code: str, message: str) -> bytes:
    return _encode({"error": {"message": message, "type": kind, "param": None, "code": code}})


@final
class _Session:
    """One accepted session: the event loop of the mock model."""

    def __init__(
        self,
        mock: MockRealtime,
        ws: WebSocketConnection,
        line: _Line,
        model: str,
        beta: bool,
        failure: RealtimeFailure | None,
    ) -> None:
        self.mock = mock
        self.ws = ws
        self.line = line
        self.beta = beta
        self.failure = failure
        self.delay = failure.delay if failure is not None and failure.kind == "drip" else 0.0
        self.sent = 0
        self.ended_by_mock = False
        self.id = mock.next_id("sess")
        self.conversation_id = mock.next_id("conv")
        self.session: dict[str, Any] = _default_session(self.id, model or "gpt-realtime", beta)
        self.last_item: str | None = None
        self.last_user_text = ""
        self.pending_audio = 0  # PCM bytes appended and not committed
        self.text_tokens = 0  # the conversation so far, as the model would read it
        self.audio_tokens = 0
        self.cached = 0  # the previous response's input (a cached prefix)

    # -- sending ------------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        if self.delay:
            await trio.sleep(self.delay)
        event["event_id"] = self.mock.next_id("event")
        try:
            await self.ws.send_message(_encode(event).decode())
        except ConnectionClosed:
            raise _Ended from None
        self.sent += 1
        self.mock.counters.events_sent += 1
        if self.failure is not None and self.sent == self.failure.after:
            await self._fail(self.failure)

    async def _fail(self, failure: RealtimeFailure) -> None:
        self.ended_by_mock = failure.kind != "drip"
        if failure.kind == "close":
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await self.ws.aclose(failure.code, "mock: session closed on purpose")
            raise _Ended
        if failure.kind == "reset":
            await self.line.reset()
            raise _Ended
        if failure.kind == "stall":
            self.line.freeze()
            await trio.sleep(failure.duration)
            await self.line.reset()
            raise _Ended

    async def error(
        self, message: str, code: str, client_event: str | None, param: str | None = None
    ) -> None:
        await self.send({
            "type": "error",
            "error": {
                "type": "invalid_request_error", "code": code, "message": message,
                "param": param, "event_id": client_event,
            },
        })

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self.failure is not None and self.failure.after == 0:
                await self._fail(self.failure)
            await self.send({"type": "session.created", "session": dict(self.session)})
            while True:
                try:
                    message = await self.ws.get_message()
                except ConnectionClosed:
                    return
                if isinstance(message, bytes):
                    self.mock.counters.binary_received += 1
                    try:
                        await self.ws.send_message(message)
                    except ConnectionClosed:
                        return
                    continue
                self.mock.counters.events_received += 1
                await self.dispatch(message)
        except _Ended:
            return

    async def dispatch(self, message: str) -> None:
        try:
            event = _decode(message)
        except msgspec.DecodeError:
            await self.error("The message is not valid JSON", "invalid_json", None)
            return
        kind = event.get("type")
        client_event = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await self.error(
                f"Invalid value: {kind!r}. Not a client event the mock knows",
                "invalid_value", client_event, "type",
            )
            return
        await handler(self, event, client_event)

    # -- client events --------------------------------------------------------------------------

    async def on_session_update(self, event: dict[str, Any], client_event: str | None) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            await self.error("Missing required parameter: 'session'", "missing_required_parameter",
                             client_event, "session")
            return
        self.session.update({k: v for k, v in update.items() if k not in ("id", "object")})
        await self.send({"type": "session.updated", "session": dict(self.session)})

    async def on_item_create(self, event: dict[str, Any], client_event: str | None) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            await self.error("Missing required parameter: 'item'", "missing_required_parameter",
                             client_event, "item")
            return
        item = dict(item)
        item.setdefault("id", self.mock.next_id("item"))
        item.setdefault("object", "realtime.item")
        item["status"] = "completed"
        text = " ".join(
            part.get("text", "") for part in item.get("content", [])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
        if item.get("role") == "user" and text:
            self.last_user_text = text
        self.text_tokens += _words(text)
        await self._item_added(item)

    async def _item_added(self, item: dict[str, Any]) -> None:
        previous, self.last_item = self.last_item, item["id"]
        if self.beta:
            await self.send({"type": "conversation.item.created", "previous_item_id": previous,
                             "item": item})
        else:
            await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                             "item": item})
            await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                             "item": item})

    async def on_audio_append(self, event: dict[str, Any], client_event: str | None) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            await self.error("Missing required parameter: 'audio'", "missing_required_parameter",
                             client_event, "audio")
            return
        self.pending_audio += len(audio) * 3 // 4

    async def on_audio_commit(self, event: dict[str, Any], client_event: str | None) -> None:
        if not self.pending_audio:
            await self.error("Error committing input audio buffer: the buffer is empty",
                             "input_audio_buffer_commit_empty", client_event)
            return
        size, self.pending_audio = self.pending_audio, 0
        item_id = self.mock.next_id("item")
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": self.last_item,
                         "item_id": item_id})
        self.audio_tokens += max(1, size // _PCM_BYTES_PER_TOKEN)
        self.last_user_text = f"{size} bytes of audio"
        await self._item_added({
            "id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_audio", "transcript": None}],
        })

    async def on_audio_clear(self, event: dict[str, Any], client_event: str | None) -> None:
        self.pending_audio = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_item_delete(self, event: dict[str, Any], client_event: str | None) -> None:
        await self.send({"type": "conversation.item.deleted", "item_id": event.get("item_id")})

    async def on_response_cancel(self, event: dict[str, Any], client_event: str | None) -> None:
        await self.error("Cancellation failed: no active response found",
                         "response_cancel_not_active", client_event)

    async def on_response_create(self, event: dict[str, Any], client_event: str | None) -> None:
        params = event.get("response") if isinstance(event.get("response"), dict) else {}
        assert isinstance(params, dict)
        modalities_key = "modalities" if self.beta else "output_modalities"
        modalities = params.get(modalities_key) or self.session.get(modalities_key) or ["audio"]
        audio = "audio" in modalities
        script = self.mock.script
        text = f"Mock realtime reply to: {self.last_user_text}" if self.last_user_text else (
            "Mock realtime reply.")
        pieces = _pieces(text, script.text_chunks)
        text = "".join(pieces)
        response_id = self.mock.next_id("resp")
        item_id = self.mock.next_id("item")
        response: dict[str, Any] = {
            "id": response_id, "object": "realtime.response", "status": "in_progress",
            "status_details": None, "output": [], "conversation_id": self.conversation_id,
            modalities_key: modalities, "usage": None, "metadata": params.get("metadata"),
        }
        await self.send({"type": "response.created", "response": dict(response)})
        item: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": "message",
                                "status": "in_progress", "role": "assistant", "content": []}
        await self.send({"type": "response.output_item.added", "response_id": response_id,
                         "output_index": 0, "item": dict(item)})
        at = {"response_id": response_id, "item_id": item_id, "output_index": 0,
              "content_index": 0}
        part_type = "audio" if audio else "text"
        field_name = "transcript" if audio else "text"
        await self.send({"type": "response.content_part.added", **at,
                         "part": {"type": part_type, field_name: ""}})
        names = _BETA_NAMES if self.beta else _GA_NAMES
        text_delta = names["transcript_delta" if audio else "text_delta"]
        audio_chunks = script.audio_chunks if audio else 0
        audio_b64 = self.mock.audio_base64(script.audio_chunk_bytes) if audio_chunks else ""
        for i in range(max(len(pieces), audio_chunks)):
            if i < len(pieces):
                await self.send({"type": text_delta, **at, "delta": pieces[i]})
            if i < audio_chunks:
                await self.send({"type": names["audio_delta"], **at, "delta": audio_b64})
        if audio:
            await self.send({"type": names["audio_done"], **at})
            await self.send({"type": names["transcript_done"], **at, "transcript": text})
        else:
            await self.send({"type": names["text_done"], **at, "text": text})
        content = {"type": part_type, field_name: text}
        await self.send({"type": "response.content_part.done", **at, "part": content})
        item["status"] = "completed"
        item["content"] = [{"type": "output_audio" if audio else "output_text", field_name: text}]
        await self.send({"type": "response.output_item.done", "response_id": response_id,
                         "output_index": 0, "item": item})
        self.last_item = item_id
        if not self.beta:
            await self.send({"type": "conversation.item.done", "previous_item_id": None,
                             "item": item})
        response.update(status="completed", output=[item], usage=self._usage(len(pieces),
                                                                               audio_chunks))
        await self.send({"type": "response.done", "response": response})

    def _usage(self, text_out: int, audio_out: int) -> dict[str, Any]:
        text_in, audio_in = self.text_tokens, self.audio_tokens
        input_tokens = text_in + audio_in
        cached = min(self.cached, input_tokens)
        cached_text = min(cached, text_in)
        self.cached = input_tokens
        self.text_tokens += text_out  # the answer is part of the next turn's input
        self.audio_tokens += audio_out
        return {
            "total_tokens": input_tokens + text_out + audio_out,
            "input_tokens": input_tokens,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
                "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached_text,
                                          "audio_tokens": cached - cached_text,
                                          "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }


_GA_NAMES: Final = {
    "text_delta": "response.output_text.delta",
    "text_done": "response.output_text.done",
    "audio_delta": "response.output_audio.delta",
    "audio_done": "response.output_audio.done",
    "transcript_delta": "response.output_audio_transcript.delta",
    "transcript_done": "response.output_audio_transcript.done",
}
_BETA_NAMES: Final = {
    "text_delta": "response.text.delta",
    "text_done": "response.text.done",
    "audio_delta": "response.audio.delta",
    "audio_done": "response.audio.done",
    "transcript_delta": "response.audio_transcript.delta",
    "transcript_done": "response.audio_transcript.done",
}

_HANDLERS: Final = {
    "session.update": _Session.on_session_update,
    "conversation.item.create": _Session.on_item_create,
    "conversation.item.delete": _Session.on_item_delete,
    "input_audio_buffer.append": _Session.on_audio_append,
    "input_audio_buffer.commit": _Session.on_audio_commit,
    "input_audio_buffer.clear": _Session.on_audio_clear,
    "response.create": _Session.on_response_create,
    "response.cancel": _Session.on_response_cancel,
}


def _default_session(session_id: str, model: str, beta: bool) -> dict[str, Any]:
    if beta:
        return {
            "id": session_id, "object": "realtime.session", "model": model,
            "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
            "input_audio_format": "pcm16", "output_audio_format": "pcm16",
            "input_audio_transcription": None, "turn_detection": None, "tools": [],
            "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf",
        }
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
        "max_output_tokens": "inf", "tracing": None, "prompt": None, "include": None,
        "audio": {
            "input": {"format": pcm, "transcription": None, "noise_reduction": None,
                      "turn_detection": None},
            "output": {"format": pcm, "voice": "alloy", "speed": 1.0},
        },
    }


async def serve_mock_realtime(
    mock: MockRealtime,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``mock`` on its own TCP listener until cancelled; ``nursery.start`` returns the
    ``host:port`` it listens on (``[::1]:port`` for IPv6)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, mock.serve_stream, listeners)
        task_status.started(f"{shown}:{bound[1]}")
