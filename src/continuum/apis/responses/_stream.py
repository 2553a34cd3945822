"""Chat Completions chunk SSE → the Responses event sequence (a ``StreamTranslator``).

The sequence a Responses client expects::

    response.created, response.in_progress
    per output item: response.output_item.added
        reasoning: reasoning_summary_part.added, reasoning_summary_text.delta…,
                   reasoning_summary_text.done, reasoning_summary_part.done
        message:   content_part.added, output_text.delta… (or refusal.delta…),
                   output_text.done (refusal.done), content_part.done
        function call: function_call_arguments.delta…, function_call_arguments.done
    response.output_item.done
    response.completed | response.incomplete | (error, response.failed)

Every event carries the next ``sequence_number``. Reasoning and message items open and
close in turn (a new kind of delta closes the open one); function calls are keyed by the
chat ``index`` and stay open together, so parallel calls whose fragments interleave each
keep their own item, until the finish reason. A call's item opens once its name is known
(arguments that come first wait for it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import msgspec

from ...core.sse import DONE_MARK, SSEReader
from ._answer import INCOMPLETE_REASONS, call_item, message_item, reasoning_item, text_part
from ._common import (
    JSON,
    ResponseContext,
    decode,
    encode,
    failure_code,
    logprobs_of,
    now_seconds,
    response_object,
    response_usage,
)

__all__ = ["ChatToResponsesStream"]


def _delta_prefix(kind: bytes, item_id: str, index: int, more: bytes = b"") -> bytes:
    """A delta event of one item, encoded up to its sequence number (``more``: the
    fields between, such as the content index)."""
    return (b"event: " + kind + b'\ndata: {"type":"' + kind + b'","item_id":'
            + encode(item_id) + b',"output_index":' + str(index).encode() + more
            + b',"sequence_number":')


@final
class _Reasoning:
    __slots__ = ("id", "index", "pieces", "prefix")

    def __init__(self, index: int, item_id: str) -> None:
        self.index = index
        self.id = item_id
        self.pieces: list[str] = []
        self.prefix = _delta_prefix(
            b"response.reasoning_summary_text.delta", item_id, index, b',"summary_index":0')


@final
class _Message:
    __slots__ = ("id", "index", "kind", "logprobs", "parts", "pieces", "prefix")

    def __init__(self, index: int, item_id: str) -> None:
        self.index = index
        self.id = item_id
        self.parts: list[JSON] = []  # closed content parts
        self.kind: str | None = None  # the open part: "text" | "refusal"
        self.pieces: list[str] = []
        self.logprobs: list[JSON] = []
        self.prefix = b""  # the open text part's delta event, up to its sequence number


@final
class _Call:
    __slots__ = ("call_id", "closed", "id", "index", "name", "pieces", "prefix")

    def __init__(self, call_id: str, name: str) -> None:
        self.call_id = call_id
        self.name = name
        self.index = -1  # output index once its item opened
        self.id = ""
        self.pieces: list[str] = []
        self.closed = False
        self.prefix = b""


@final
class ChatToResponsesStream:
    """Chat ``chat.completion.chunk`` SSE → Responses SSE events, incrementally.

    ``truncated`` turns True when the upstream ended before a finish reason (the router
    counts that a failure of the backend); ``response`` holds the final Response object
    once the stream ended (completed, incomplete or failed), for the conversation store.
    """

    __slots__ = ("_calls", "_clock", "_done", "_finish", "_last_key", "_message", "_output",
                 "_reader", "_reasoning", "_seq", "_started", "_usage", "ctx", "response",
                 "truncated")

    def __init__(self, ctx: ResponseContext, *, clock: Callable[[], int] = now_seconds) -> None:
        self.ctx = ctx
        self._clock = clock
        self.truncated = False
        self.response: JSON | None = None
        self._reader = SSEReader()
        self._seq = 0
        self._started = False
        self._done = False
        self._output: list[JSON] = []  # items by output index, in their latest shape
        self._reasoning: _Reasoning | None = None
        self._message: _Message | None = None
        self._calls: dict[object, _Call] = {}
        self._last_key: object = 0
        self._finish: str | None = None
        self._usage: JSON | None = None

    # -- StreamTranslator ------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        out = b"" if self._started else self._start()
        for payload in self._reader.feed(data):
            out += self._payload(payload)
        return out

    def finish(self) -> bytes:
        if self._done:
            return b""
        out = b"" if self._started else self._start()
        for payload in self._reader.tail():
            out += self._payload(payload)
        if self._done:
            return out
        if self._finish is not None:
            return out + self._end()  # some backends omit [DONE]
        self.truncated = True
        return out + self._fail(502, None, "upstream stream ended before the response was "
                                           "complete")

    def error(self, status: int, message: str) -> bytes:
        if self._done:
            return b""
        out = b"" if self._started else self._start()
        return out + self._fail(status, None, message)

    # -- events ----------------------------------------------------------------------
    def _event(self, kind: str, fields: JSON) -> bytes:
        seq = self._seq
        self._seq = seq + 1
        return (b"event: " + kind.encode() + b"\ndata: "
                + encode({"type": kind, "sequence_number": seq, **fields}) + b"\n\n")

    def _fast(self, prefix: bytes, tail: bytes) -> bytes:
        """An event pre-encoded up to its sequence number (the per-delta hot path)."""
        seq = self._seq
        self._seq = seq + 1
        return prefix + str(seq).encode() + tail

    def _start(self) -> bytes:
        self._started = True
        obj = response_object(self.ctx, "in_progress", [])
        return (self._event("response.created", {"response": obj})
                + self._event("response.in_progress", {"response": obj}))

    def _add_item(self, item: JSON) -> bytes:
        self._output.append(item)
        return self._event("response.output_item.added",
                           {"output_index": len(self._output) - 1, "item": item})

    def _item_done(self, index: int, item: JSON) -> bytes:
        self._output[index] = item
        return self._event("response.output_item.done", {"output_index": index, "item": item})

    # -- chunks ----------------------------------------------------------------------
    def _payload(self, payload: bytes) -> bytes:
        if self._done:
            return b""
        if payload.strip() == DONE_MARK:
            return self._end()
        try:
            chunk = decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return b""  # not JSON: nothing a client could use
        if not isinstance(chunk, dict):
            return b""
        err = chunk.get("error")
        if err is not None:
            if isinstance(err, dict):
                return self._fail(502, err.get("code"), str(err.get("message") or err))
            return self._fail(502, None, str(err or "upstream error"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        out = b""
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the bridge never asks for n > 1
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out += self._delta(delta, choice)
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self._finish = finish
                out += self._close_all()
        return out

    def _delta(self, delta: JSON, choice: JSON) -> bytes:
        out = b""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out += self._reasoning_delta(reasoning)
        text = delta.get("content")
        if isinstance(text, str) and text:
            out += self._text_delta("text", text, choice)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            out += self._text_delta("refusal", refusal, choice)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    out += self._call_delta(call)
        return out

    # -- reasoning -------------------------------------------------------------------
    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        r = self._reasoning
        if r is None:
            out = self._close_message() + self._close_calls()
            index = len(self._output)
            r = self._reasoning = _Reasoning(index, self.ctx.item_id("rs_", index))
            out += self._add_item({"id": r.id, "type": "reasoning", "summary": []})
            out += self._event("response.reasoning_summary_part.added", {
                "item_id": r.id, "output_index": index, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}})
        r.pieces.append(text)
        return out + self._fast(r.prefix, b',"delta":' + encode(text) + b"}\n\n")

    def _close_reasoning(self) -> bytes:
        r = self._reasoning
        if r is None:
            return b""
        self._reasoning = None
        text = "".join(r.pieces)
        where = {"item_id": r.id, "output_index": r.index, "summary_index": 0}
        return (self._event("response.reasoning_summary_text.done", {**where, "text": text})
                + self._event("response.reasoning_summary_part.done",
                              {**where, "part": {"type": "summary_text", "text": text}})
                + self._item_done(r.index, reasoning_item(r.id, text)))

    # -- message ---------------------------------------------------------------------
    def _text_delta(self, kind: str, text: str, choice: JSON) -> bytes:
        out = b""
        m = self._message
        if m is None:
            out = self._close_reasoning() + self._close_calls()
            index = len(self._output)
            m = self._message = _Message(index, self.ctx.item_id("msg_", index))
            out += self._add_item(message_item(m.id, [], "in_progress"))
        if m.kind != kind:
            out += self._close_part(m)
            m.kind = kind
            part = text_part("") if kind == "text" else {"type": "refusal", "refusal": ""}
            out += self._event("response.content_part.added", {
                "item_id": m.id, "output_index": m.index, "content_index": len(m.parts),
                "part": part})
            if kind == "text":
                m.prefix = _delta_prefix(b"response.output_text.delta", m.id, m.index,
                                        b',"content_index":' + str(len(m.parts)).encode())
        m.pieces.append(text)
        if kind == "refusal":
            return out + self._event("response.refusal.delta", {
                "item_id": m.id, "output_index": m.index, "content_index": len(m.parts),
                "delta": text})
        tail = b"[]}\n\n"
        if self.ctx.logprobs:
            logprobs = logprobs_of(choice)
            m.logprobs.extend(logprobs)
            tail = encode(logprobs) + b"}\n\n"
        return out + self._fast(m.prefix, b',"delta":' + encode(text) + b',"logprobs":' + tail)

    def _close_part(self, m: _Message) -> bytes:
        if m.kind is None:
            return b""
        where = {"item_id": m.id, "output_index": m.index, "content_index": len(m.parts)}
        text = "".join(m.pieces)
        if m.kind == "text":
            part = text_part(text, m.logprobs)
            out = self._event("response.output_text.done",
                              {**where, "text": text, "logprobs": m.logprobs})
        else:
            part = {"type": "refusal", "refusal": text}
            out = self._event("response.refusal.done", {**where, "refusal": text})
        m.parts.append(part)
        m.kind = None
        m.pieces = []
        m.logprobs = []
        return out + self._event("response.content_part.done", {**where, "part": part})

    def _close_message(self) -> bytes:
        m = self._message
        if m is None:
            return b""
        self._message = None
        out = self._close_part(m)
        return out + self._item_done(m.index, message_item(m.id, m.parts, self._item_status()))

    # -- function calls --------------------------------------------------------------
    def _call_delta(self, delta: JSON) -> bytes:
        fn = delta.get("function")
        if not isinstance(fn, dict):
            fn = {}
        index = delta.get("index")
        call_id = delta.get("id")
        # Calls are keyed by their chat index; a backend that leaves it out is followed by
        # the call id, and a fragment with neither continues the last call.
        key: object = (index if isinstance(index, int) and not isinstance(index, bool)
                       else call_id if isinstance(call_id, str) and call_id
                       else self._last_key)
        self._last_key = key
        call = self._calls.get(key)
        out = b""
        if call is None:
            out = self._close_reasoning() + self._close_message()
            call = self._calls[key] = _Call(
                call_id if isinstance(call_id, str) and call_id else "",
                "")
        elif call.closed:
            return b""  # its item is closed already (another item came between)
        name = fn.get("name")
        if not call.name and isinstance(name, str) and name:
            call.name = name
        if not call.call_id and isinstance(call_id, str) and call_id:
            call.call_id = call_id
        args = fn.get("arguments")
        if isinstance(args, dict):  # a few backends send the arguments as an object
            args = encode(args).decode()
        if call.index < 0:
            if isinstance(args, str) and args:
                call.pieces.append(args)
            if call.name:
                out += self._open_call(call)
            return out
        if isinstance(args, str) and args:
            call.pieces.append(args)
            out += self._fast(call.prefix, b',"delta":' + encode(args) + b"}\n\n")
        return out

    def _open_call(self, call: _Call) -> bytes:
        index = call.index = len(self._output)
        call.id = self.ctx.item_id("fc_", index)
        if not call.call_id:
            call.call_id = self.ctx.item_id("call_", index)
        call.prefix = _delta_prefix(b"response.function_call_arguments.delta", call.id, index)
        out = self._add_item(call_item(call.id, call.call_id, call.name, "", "in_progress"))
        if call.pieces:
            out += self._fast(call.prefix,
                              b',"delta":' + encode("".join(call.pieces)) + b"}\n\n")
        return out

    def _close_calls(self) -> bytes:
        out = b""
        for call in self._calls.values():
            if call.closed:
                continue
            if call.index < 0:
                out += self._open_call(call)  # its name never came: an item all the same
            call.closed = True
            args = "".join(call.pieces)
            out += self._event("response.function_call_arguments.done",
                               {"item_id": call.id, "output_index": call.index,
                                "arguments": args})
            out += self._item_done(call.index, call_item(
                call.id, call.call_id, call.name, args, self._item_status()))
        return out

    # -- the end ---------------------------------------------------------------------
    def _item_status(self) -> str:
        return "incomplete" if self._finish in INCOMPLETE_REASONS else "completed"

    def _close_all(self) -> bytes:
        return self._close_reasoning() + self._close_message() + self._close_calls()

    def _end(self) -> bytes:
        out = self._close_all()
        self._done = True
        reason = INCOMPLETE_REASONS.get(self._finish or "")
        obj = response_object(
            self.ctx, "completed" if reason is None else "incomplete", self._output,
            response_usage(self._usage), incomplete_reason=reason,
            completed_at=self._clock() if reason is None else None)
        self.response = obj
        kind = "response.completed" if reason is None else "response.incomplete"
        return out + self._event(kind, {"response": obj})

    def _fail(self, status: int, code: object, message: str) -> bytes:
        """An ``error`` event, then ``response.failed`` carrying what was produced so far."""
        self._done = True
        output = self._snapshot()
        err_code = failure_code(status, code)
        obj = response_object(self.ctx, "failed", output, response_usage(self._usage),
                              error={"code": err_code, "message": message})
        self.response = obj
        return (self._event("error", {"code": err_code, "message": message, "param": None})
                + self._event("response.failed", {"response": obj}))

    def _snapshot(self) -> list[JSON]:
        """The output so far, with the items still open marked incomplete."""
        output = list(self._output)
        r = self._reasoning
        if r is not None:
            output[r.index] = reasoning_item(r.id, "".join(r.pieces))
        m = self._message
        if m is not None:
            parts = list(m.parts)
            if m.kind == "text":
                parts.append(text_part("".join(m.pieces), m.logprobs))
            elif m.kind == "refusal":
                parts.append({"type": "refusal", "refusal": "".join(m.pieces)})
            output[m.index] = message_item(m.id, parts, "incomplete")
        for call in self._calls.values():
            if call.index >= 0 and not call.closed:
                output[call.index] = call_item(call.id, call.call_id, call.name,
                                               "".join(call.pieces), "incomplete")
        return output
