"""The tool calls of a streamed chat answer, assembled from their deltas for Anthropic's
event stream (where blocks never overlap and each opens with the call's id and name).

Servers differ in how they send parallel calls, and all of these must come out as one
``tool_use`` block per call with every argument fragment in it:

* OpenAI: each call's first delta has ``index``, ``id`` and ``name``; later ones only
  ``index`` and an ``arguments`` fragment, one call after the other;
* Gemini's OpenAI-compatible endpoint: no ``index``; each delta is a whole call with its id;
* some servers interleave fragments of several calls (index 0, 1, 0, 1, ...), or reuse an
  index with a new id.

So a delta finds its call by ``id`` first (a new id is a new call), then by ``index``,
then (neither given) it continues the latest call, unless it names a function while the
latest call has its name already (a whole new call). A delta with nothing but a Gemini
thought signature (``extra_content``) belongs to the latest call, or the next one when none
came yet. Arguments past a complete JSON value cannot be glued on: they end the stream with
an error rather than hand the client an input that is not JSON. The first call's block
streams live;
a call that appears while another's block is open waits (its fragments held, bounded)
until the open call's arguments are a complete JSON value — then the open block closes and
the waiting call's block opens with what it holds — or until the answer's end.
"""

from __future__ import annotations

import re
from typing import Final, final

from ..limits import MAX_BLOCKS, MAX_HELD_ARGUMENTS
from ._common import JSON

#: The characters that matter to JSON nesting; everything else is skipped at C speed.
_JSON_MARKS: Final = re.compile(rb'["\\{}\[\]]')


class ToolCallError(Exception):
    """The upstream's tool call deltas cannot be assembled (bounds, broken order)."""


@final
class JSONEnd:
    """Tells when streamed text has become one complete JSON object or array, reading each
    fragment once (the marks only: quotes, backslashes, brackets)."""

    __slots__ = ("_depth", "_escaped", "_in_string", "_offset", "complete")

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escaped = -1  # the offset a backslash escapes
        self._offset = 0  # bytes read so far
        self.complete = False

    def feed(self, text: str) -> None:
        data = text.encode()
        base = self._offset
        self._offset += len(data)
        if self.complete:
            return
        for mark in _JSON_MARKS.finditer(data):
            at = base + mark.start()
            if at == self._escaped:
                continue
            char = mark.group()
            if self._in_string:
                if char == b"\\":
                    self._escaped = at + 1
                elif char == b'"':
                    self._in_string = False
            elif char == b'"':
                self._in_string = True
            elif char in b"{[":
                self._depth += 1
            elif char in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    self.complete = True
                    return


@final
class ToolCall:
    """One tool call of the answer, as far as its deltas told."""

    __slots__ = ("block_id", "emitted_signature", "end", "held", "index", "name", "ordinal",
                 "signature", "state", "upstream_id")

    def __init__(self, ordinal: int, index: int | None, upstream_id: str | None) -> None:
        self.ordinal = ordinal
        self.index = index
        self.upstream_id = upstream_id
        self.block_id = ""  # the tool_use id the client gets (set when the block opens)
        self.name = ""
        self.signature: str | None = None  # a Gemini thought signature (extra_content)
        self.emitted_signature = False
        self.held: list[str] = []  # fragments waiting for the block to open
        self.end = JSONEnd()
        self.state = "waiting"  # waiting → open → closed


@final
class ToolCalls:
    """Finds the call each delta belongs to, and holds what cannot be sent yet."""

    __slots__ = ("_by_id", "_by_index", "_held", "_latest", "_signature", "calls", "waiting")

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        #: Calls whose block has not opened yet, in the order they appeared.
        self.waiting: list[ToolCall] = []
        self._by_id: dict[str, ToolCall] = {}
        self._by_index: dict[int, ToolCall] = {}
        self._latest: ToolCall | None = None
        self._held = 0
        self._signature: str | None = None  # a signature that came before any call

    def find(self, delta: JSON, name: str, signature: str | None) -> ToolCall | None:
        """The call ``delta`` (one entry of ``delta.tool_calls``, which names function
        ``name`` or "") belongs to, new or known; None for a delta that only brought a
        thought signature before any call (it goes to the next call)."""
        index = delta.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            index = None
        elif not 0 <= index < MAX_BLOCKS:
            raise ToolCallError(f"tool call index {index} is out of range")
        call_id = delta.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = None
        if call_id is None and index is None and self._latest is None and not name:
            fn = delta.get("function")
            if signature is not None and not (isinstance(fn, dict) and fn.get("arguments")):
                self._signature = signature
                return None
        if call_id is not None:
            known = self._by_id.get(call_id)
            if known is not None:
                return known
            same_index = self._by_index.get(index) if index is not None else None
            if same_index is not None and same_index.upstream_id is None:
                same_index.upstream_id = call_id  # its id came after its first fragment
                self._by_id[call_id] = same_index
                return same_index
        elif index is not None:
            known = self._by_index.get(index)
            if known is not None:
                return known
        elif self._latest is not None and not (name and self._latest.name):
            return self._latest
        return self._new(index, call_id)

    def _new(self, index: int | None, call_id: str | None) -> ToolCall:
        if len(self.calls) >= MAX_BLOCKS:
            raise ToolCallError(f"more than {MAX_BLOCKS} tool calls in one answer")
        call = ToolCall(len(self.calls), index, call_id)
        call.signature, self._signature = self._signature, None
        self.calls.append(call)
        self.waiting.append(call)
        if call_id is not None:
            self._by_id[call_id] = call
        if index is not None:
            self._by_index[index] = call
        self._latest = call
        return call

    def hold(self, call: ToolCall, fragment: str) -> None:
        """Keep ``fragment`` of a call whose block has not opened yet."""
        self._held += len(fragment)
        if self._held > MAX_HELD_ARGUMENTS:
            raise ToolCallError(
                f"more than {MAX_HELD_ARGUMENTS} bytes of tool call arguments held back")
        call.held.append(fragment)

    def release(self, call: ToolCall) -> str:
        """What ``call`` held, now that its block opens."""
        text = "".join(call.held)
        self._held -= sum(len(f) for f in call.held)
        call.held = []
        return text
