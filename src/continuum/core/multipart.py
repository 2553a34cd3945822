"""``multipart/form-data`` (RFC 7578) read incrementally, with bounds (sans-IO).

Uploads (audio to transcribe, images to edit, files) reach the router as forms whose file
part can be many megabytes. The router must find small fields (``model``, ``purpose``,
``stream``) without holding the file, and a hostile form must cost bounded work: so the
parser is fed bytes as they arrive and hands back events, never the whole body.

* :func:`form_boundary` — the boundary of a ``content-type`` header (None if it has none);
* :class:`MultipartParser` — ``feed(data)`` returns :class:`PartStart` / :class:`PartData` /
  :class:`PartEnd` events and, once the closing delimiter is seen, :data:`FORM_END`. Events
  carry absolute byte offsets into the body, so a caller can rewrite one field's value in
  bytes it kept (the ``model`` of a fallback) without re-encoding the form.

Bounds (a :class:`MultipartError` names which one tripped): bytes before the first
delimiter and each part's header block (``max_header_size``: a body without its boundary is
refused after that many bytes, not after the whole upload), and the number of parts
(``max_parts``). A part's data is not bounded here: that is the body-size limit's job.
"""

from __future__ import annotations

import re
from typing import Final, final

import msgspec

#: Parts a form may hold (OpenAI's forms have a handful; a flood of empty parts is work).
DEFAULT_MAX_PARTS: Final = 1000
#: Bytes of one part's header block, and of the preamble before the first delimiter.
DEFAULT_MAX_HEADER_SIZE: Final = 16 * 1024
#: RFC 2046 caps a boundary at 70 characters; anything much longer is refused.
_MAX_BOUNDARY: Final = 200

_BOUNDARY_PARAM: Final = re.compile(rb'boundary=(?:"([^"]*)"|([^\s;,"]*))', re.I)
_PARAM: Final = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


class MultipartError(ValueError):
    """A form the router refuses: ``status`` 400 (malformed) or 413 (over a bound)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class PartStart(msgspec.Struct, frozen=True):
    """A part's headers are complete; its data begins at body offset ``data_start``."""

    name: str
    filename: str | None
    content_type: str | None
    data_start: int


class PartData(msgspec.Struct, frozen=True):
    """A piece of the current part's data (a part may come in many)."""

    data: bytes


class PartEnd(msgspec.Struct, frozen=True):
    """The current part ended; its data stopped at body offset ``data_end``."""

    data_end: int


@final
class _FormEnd:
    """The closing delimiter was seen: the form is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FORM_END"


FORM_END: Final = _FormEnd()

Event = PartStart | PartData | PartEnd | _FormEnd


def form_boundary(content_type: bytes | None) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, or None (not a form, or
    no usable boundary)."""
    if content_type is None or not content_type[:19].lower().startswith(b"multipart/form-data"):
        return None
    match = _BOUNDARY_PARAM.search(content_type)
    if match is None:
        return None
    boundary = match.group(1) or match.group(2)
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        return None
    return boundary


def _disposition(value: str) -> tuple[str | None, str | None]:
    """(name, filename) of a ``form-data`` Content-Disposition value."""
    kind, _, rest = value.partition(";")
    if kind.strip().lower() != "form-data":
        return None, None
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        quoted = match.group(2)
        raw = match.group(3) if quoted is None else re.sub(r"\\(.)", r"\1", quoted)
        params.setdefault(match.group(1).lower(), raw or "")
    return params.get("name"), params.get("filename")


_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _DATA, _EPILOGUE = range(5)


@final
class MultipartParser:
    """Incremental ``multipart/form-data`` parser; see the module docstring."""

    __slots__ = ("_buffer", "_consumed", "_delimiter", "_max_header", "_max_parts", "_parts",
                 "_state", "done")

    def __init__(self, boundary: bytes, *, max_parts: int = DEFAULT_MAX_PARTS,
                 max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        if not boundary or len(boundary) > _MAX_BOUNDARY:
            raise MultipartError("multipart boundary missing or too long")
        #: Every delimiter but the first follows a CRLF; the first may open the body, so
        #: the buffer starts with a CRLF of our own (not counted in offsets).
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")
        self._consumed = -2  # body offset of the buffer's first byte
        self._state = _PREAMBLE
        self._parts = 0
        self._max_parts = max_parts
        self._max_header = max_header_size
        #: True once the closing delimiter was seen.
        self.done = False

    @property
    def parts(self) -> int:
        """Parts begun so far."""
        return self._parts

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` (the next bytes of the body); return what it completed."""
        events: list[Event] = []
        if self._state == _EPILOGUE:
            return events
        self._buffer += data
        while self._step(events):
            pass
        return events

    def end(self) -> None:
        """The body ended: raise if the form was not closed."""
        if not self.done:
            raise MultipartError("multipart body ended before its closing boundary")

    def _take(self, count: int) -> bytes:
        piece = bytes(self._buffer[:count])
        del self._buffer[:count]
        self._consumed += count
        return piece

    def _step(self, events: list[Event]) -> bool:
        """Advance once; False when more bytes are needed."""
        buf = self._buffer
        delimiter = self._delimiter
        state = self._state
        if state == _DATA:
            at = buf.find(delimiter)
            if at < 0:
                # Keep what could be the start of a delimiter split between two feeds.
                safe = len(buf) - len(delimiter) + 1
                if safe > 0:
                    events.append(PartData(self._take(safe)))
                return False
            if at:
                events.append(PartData(self._take(at)))
            events.append(PartEnd(self._consumed))
            self._take(len(delimiter))
            self._state = _AFTER_DELIMITER
            return True
        if state == _PREAMBLE:
            at = buf.find(delimiter)
            if at < 0:
                if self._consumed + len(buf) > self._max_header:
                    raise MultipartError("multipart body has no boundary delimiter where "
                                         "one was expected (check the content-type boundary)")
                keep = len(delimiter) - 1
                if len(buf) > keep:
                    self._take(len(buf) - keep)
                return False
            self._take(at + len(delimiter))
            self._state = _AFTER_DELIMITER
            return True
        if state == _AFTER_DELIMITER:
            # "--" closes the form; otherwise optional padding, then CRLF, then a part.
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self.done = True
                self._state = _EPILOGUE
                events.append(FORM_END)
                buf.clear()
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 256:
                    raise MultipartError("malformed multipart delimiter line")
                return False
            if buf[:end].strip(b" \t"):
                raise MultipartError("malformed multipart delimiter line")
            self._take(end + 2)
            self._parts += 1
            if self._parts > self._max_parts:
                raise MultipartError(f"multipart form has more than {self._max_parts} parts",
                                     413)
            self._state = _HEADERS
            return True
        # _HEADERS
        if buf[:2] == b"\r\n":
            raise MultipartError("a multipart part has no headers (no form-data name)")
        end = buf.find(b"\r\n\r\n")
        if end < 0 and len(buf) <= self._max_header:
            return False
        if end < 0 or end > self._max_header:
            raise MultipartError(f"a multipart part's headers exceed {self._max_header} bytes",
                                 413)
        events.append(self._part_start(self._take(end + 4)))
        self._state = _DATA
        return True

    def _part_start(self, head: bytes) -> PartStart:
        name: str | None = None
        filename: str | None = None
        content_type: str | None = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip().lower()
            if key == "content-disposition":
                name, filename = _disposition(value.strip())
            elif key == "content-type":
                content_type = value.strip()
        if name is None:
            raise MultipartError("a multipart part has no form-data name")
        return PartStart(name, filename, content_type, self._consumed)
