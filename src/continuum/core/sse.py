"""Server-sent events: the one module that reads and ends SSE streams, for every translator
and for pass-through.

* :class:`SSEReader` — the ``data`` payloads of complete events, from bytes split anywhere.
  It follows the SSE line rules: a line ends at CR, LF or CRLF (a CR at the end of one chunk
  and an LF at the start of the next are one line end), ``data:`` lines of an event are
  joined with LF, a blank line ends the event, other fields and comments are skipped. With
  ``max_event`` it raises :class:`SSETooLarge` rather than hold more of one event.
* :data:`DONE_MARK` / :data:`DONE_EVENT` — OpenAI's ``[DONE]`` terminator.
* :data:`END_MARKS` / :data:`EVENT_MARKS` — how a complete stream of each endpoint ends, so
  a clean close without it is a truncation; :class:`PassThrough` forwards a stream's bytes
  unchanged and checks its end.
* :func:`sse_error_event` / :func:`anthropic_sse_error_event` — how a stream that already
  started ends after a failure, in each API's shape.
* :func:`usage_from_sse_tail` (and :func:`usage_from_body` for a complete answer,
  :func:`prompt_tokens_from_message_start` for Anthropic's first event) — token counts, read
  with a byte search first so only the one event that has them is decoded.
"""

from __future__ import annotations

from typing import Final, final

import msgspec

from .errors import anthropic_error_body, is_messages_api, openai_error_body

#: OpenAI's stream terminator, and the event that carries it.
DONE_MARK: Final = b"[DONE]"
DONE_EVENT: Final = b"data: " + DONE_MARK + b"\n\n"


class SSETooLarge(Exception):
    """An upstream event grew past the reader's ``max_event`` bytes."""


@final
class SSEReader:
    """Feed bytes split anywhere; get the payloads of the events they complete.

    ``max_event`` bounds what one event may hold (its unfinished line and its data lines):
    a translator keeps at most that much of a hostile upstream's endless event, then
    :class:`SSETooLarge` ends the stream. None: no bound (our own, well-formed streams).
    """

    __slots__ = ("_data", "_held", "_max", "_partial", "_skip_lf")

    def __init__(self, max_event: int | None = None) -> None:
        self._partial = b""  # an unfinished line
        self._data: list[bytes] = []  # data lines of the event being read
        self._skip_lf = False  # the last chunk ended on CR: a leading LF belongs to it
        self._max = max_event
        self._held = 0  # bytes of the data lines in ``_data``

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads of the events that ``chunk`` completes (often none or one)."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        buf = self._partial + chunk if self._partial else chunk
        events: list[bytes] = []
        if b"\r" not in buf:
            # LF line ends only (what nearly every server sends): split in C, one Python
            # step per line.
            lines = buf.split(b"\n")
            self._partial = lines.pop()
            data = self._data
            for line in lines:
                if not line:
                    if data:
                        if self._max is not None and self._held > self._max:
                            self._check()
                        events.append(b"\n".join(data))
                        data = self._data = []
                        self._held = 0
                elif line[:5] == b"data:":
                    value = line[5:]
                    data.append(value[1:] if value[:1] == b" " else value)
                    self._held += len(value)
            if self._max is not None:
                self._check()
            return events
        pos = 0
        size = len(buf)
        while pos < size:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, lf if lf >= 0 else size)
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt < size and buf[nxt] == 0x0A:
                    nxt += 1
                elif nxt == size:
                    self._skip_lf = True
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(buf[pos:end], events)
            pos = nxt
        self._partial = buf[pos:]
        if self._max is not None:
            self._check()
        return events

    def _check(self) -> None:
        assert self._max is not None
        if self._held + len(self._partial) > self._max:
            self._partial = b""
            self._data = []
            self._held = 0
            raise SSETooLarge(f"an upstream event is larger than {self._max} bytes")

    def tail(self) -> list[bytes]:
        """At the end of the stream: the last event if it lacked its blank line."""
        events: list[bytes] = []
        if self._partial:
            self._line(self._partial, events)
            self._partial = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                if self._max is not None and self._held > self._max:
                    self._check()
                events.append(b"\n".join(self._data))
                self._data = []
                self._held = 0
        elif line[:5] == b"data:":
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)
            self._held += len(value)


# -- how a stream ends --------------------------------------------------------------------

#: How a complete stream ends, per endpoint (chat and completions: ``[DONE]``).
END_MARKS: Final[dict[str, tuple[bytes, ...]]] = {
    "/v1/messages": (b"message_stop",),
    # The Responses API ends on a terminal event (``EVENT_MARKS``); some servers add
    # [DONE] too.
    "/v1/responses": (DONE_MARK,),
}
#: Terminal events that carry a whole object (the Responses API's ``response.completed``
#: holds the final response), so their name is far from the stream's end: they are looked
#: for in every chunk of that endpoint, as the ``type`` of an event's JSON (which no string
#: value inside it can fake: its quotes would be escaped).
def _type_marks(*names: bytes) -> tuple[bytes, ...]:
    return tuple(b'"type":' + space + b'"' + name + b'"' for name in names
                 for space in (b"", b" "))


EVENT_MARKS: Final[dict[str, tuple[bytes, ...]]] = {
    "/v1/responses": _type_marks(b"response.completed", b"response.incomplete",
                                 b"response.failed"),
    # Transcriptions with stream=true end on their last event, with no [DONE].
    "/v1/audio/transcriptions": _type_marks(b"transcript.text.done"),
    "/v1/audio/translations": _type_marks(b"transcript.text.done"),
}
#: The ``code`` of a pass-through stream's error event, by status.
_STREAM_ERROR_CODES: Final = {502: "bad_gateway", 503: "shutting_down", 504: "upstream_timeout"}


def sse_error_event(message: str, status: int, code: str) -> bytes:
    """An error after the first streamed byte: an SSE ``error`` event, then ``[DONE]``."""
    body = openai_error_body(status, message, code=code)
    return b"event: error\ndata: " + body + b"\n\n" + DONE_EVENT


def anthropic_sse_error_event(message: str, status: int) -> bytes:
    """The same for an Anthropic event stream (which has no ``[DONE]``)."""
    return b"event: error\ndata: " + anthropic_error_body(status, message) + b"\n\n"


@final
class PassThrough:
    """Pass-through streams as a StreamTranslator: bytes unchanged, and the end checked
    for the API's own terminator (a clean end without it is a truncation)."""

    __slots__ = ("_anthropic", "_ended", "_event_marks", "_marks", "_tail", "truncated")

    def __init__(self, endpoint: str) -> None:
        self._anthropic = is_messages_api(endpoint)
        self._marks = END_MARKS.get(endpoint, (DONE_MARK,))
        self._event_marks = EVENT_MARKS.get(endpoint, ())
        self._ended = False
        self._tail = b""
        self.truncated = False

    def feed(self, data: bytes) -> bytes:
        if self._event_marks and not self._ended:
            edge = self._tail[-40:] + data[:40]  # a mark split between two chunks
            self._ended = any(mark in data or mark in edge for mark in self._event_marks)
        self._tail = (self._tail + data[-64:])[-64:]  # the terminator may span chunks
        return data

    def finish(self) -> bytes:
        if self._ended or any(mark in self._tail for mark in self._marks):
            return b""
        self.truncated = True
        return self.error(502, "Upstream ended the stream before its end marker")

    def error(self, status: int, message: str) -> bytes:
        # An upstream that broke off mid-event left an unfinished line or event: end it
        # first, or the error event would be glued onto it and parse as neither.
        tail = self._tail
        if not tail or tail.endswith((b"\n\n", b"\r\n\r\n")):
            boundary = b""
        else:
            boundary = b"\n" if tail.endswith(b"\n") else b"\n\n"
        if self._anthropic:
            return boundary + anthropic_sse_error_event(message, status)
        code = _STREAM_ERROR_CODES.get(status, "bad_gateway")
        return boundary + sse_error_event(message, status, code)


# -- usage --------------------------------------------------------------------------------

class _Usage(msgspec.Struct):
    """Token counts: OpenAI names and Anthropic names (whichever the answer uses)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class _UsageOnly(msgspec.Struct):
    """The only field read from a plain answer (or the final usage chunk of a stream)."""

    usage: _Usage | None = None


class _UsageEvent(msgspec.Struct):
    """A stream event with usage: at the top (chat's final chunk, Anthropic's
    ``message_delta``, a transcription's last event) or in the ``response`` of the
    Responses API's terminal event."""

    usage: _Usage | None = None
    response: _UsageOnly | None = None


class _MessageStart(msgspec.Struct):
    """An Anthropic ``message_start`` event: the prompt's tokens sit in ``message.usage``."""

    message: _UsageOnly | None = None


_decode_usage = msgspec.json.Decoder(_UsageOnly).decode
_decode_usage_event = msgspec.json.Decoder(_UsageEvent).decode
_decode_message_start = msgspec.json.Decoder(_MessageStart).decode
_USAGE_MARK: Final = b'"usage"'


def _tokens(usage: _Usage) -> tuple[int, int]:
    return (usage.prompt_tokens or usage.input_tokens,
            usage.completion_tokens or usage.output_tokens)


def usage_from_body(body: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a complete JSON answer; None without ``usage``.

    Answers put ``usage`` last, after the content: the object from its last ``"usage"``
    key to the end is decoded first (``{`` + that tail is valid JSON only when the key is
    one of the top-level object's; a nested key leaves closing brackets over, a string
    ``"usage"`` is followed by no colon). Anything else decodes the whole body."""
    pos = body.rfind(_USAGE_MARK)
    if pos < 0:
        return None
    try:
        usage = _decode_usage(b"{" + body[pos:]).usage
    except msgspec.MsgspecError:
        try:
            usage = _decode_usage(body).usage
        except msgspec.MsgspecError:
            return None
    return None if usage is None else _tokens(usage)


def _sse_data(data: bytes, pos: int) -> bytes | None:
    """The JSON of the ``data:`` line holding byte ``pos``."""
    start = data.rfind(b"data:", 0, pos)
    if start < 0:
        return None
    end = data.find(b"\n", pos)
    return data[start + 5: end if end >= 0 else len(data)].strip()


def usage_from_sse_tail(tail: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the last ``data:`` event of ``tail`` that has a
    ``usage`` (the final usage chunk before ``[DONE]``, or Anthropic's ``message_delta``).
    A byte search first: only that one event is decoded."""
    pos = tail.rfind(_USAGE_MARK)
    if pos < 0:
        return None
    line = _sse_data(tail, pos)
    if not line:
        return None
    try:
        event = _decode_usage_event(line)
    except msgspec.MsgspecError:
        return None
    usage = event.usage
    if usage is None and event.response is not None:
        usage = event.response.usage
    return None if usage is None else _tokens(usage)


def prompt_tokens_from_message_start(head: bytes) -> int:
    """Anthropic streams report the prompt's tokens in ``message_start`` (the first event)."""
    pos = head.find(b'"message_start"')
    if pos < 0 or _USAGE_MARK not in head:
        return 0
    line = _sse_data(head, pos)
    if not line:
        return 0
    try:
        message = _decode_message_start(line).message
    except msgspec.MsgspecError:
        return 0
    if message is None or message.usage is None:
        return 0
    return _tokens(message.usage)[0]
