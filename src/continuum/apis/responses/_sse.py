"""A small incremental SSE reader: the ``data`` payloads of complete events.

The bridge's own until the layered package has one ``core/sse`` reader for every
translator. It follows the SSE line rules: a line ends at CR, LF or CRLF (a CR at the end
of one chunk and an LF at the start of the next are one line end), ``data:`` lines of an
event are joined with LF, a blank line ends the event, other fields and comments are
skipped.
"""

from __future__ import annotations

from typing import final

__all__ = ["SSEReader"]


@final
class SSEReader:
    """Feed bytes split anywhere; get the payloads of the events they complete."""

    __slots__ = ("_data", "_partial", "_skip_lf")

    def __init__(self) -> None:
        self._partial = b""  # an unfinished line
        self._data: list[bytes] = []  # data lines of the event being read
        self._skip_lf = False  # the last chunk ended on CR: a leading LF belongs to it

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads of the events that ``chunk`` completes (often none or one)."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        buf = self._partial + chunk if self._partial else chunk
        events: list[bytes] = []
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
        return events

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
                events.append(b"\n".join(self._data))
                self._data = []
        elif line[:5] == b"data:":
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)
