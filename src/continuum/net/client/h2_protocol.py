"""The h2 library tuned for an upstream client (sans-IO): a connection state machine that
lets promised streams finish after a GOAWAY, a frame buffer that refuses oversized header
blocks before HPACK decodes them, and error code names. Used by :mod:`.h2`."""

from __future__ import annotations

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame


class FinishStreamsAfterGoaway(h2.connection.H2ConnectionStateMachine):
    """h2 moves its connection state to CLOSED as soon as a GOAWAY arrives (python-hyper/h2
    issue 1181), so every later frame — even for streams the server promised to finish — is a
    protocol error. RFC 9113 §6.8 lets those streams complete: a received GOAWAY leaves the
    state as it is, and the pool itself stops opening streams on the connection."""

    def process_input(self, input_: h2.connection.ConnectionInputs) -> list[h2.events.Event]:
        if input_ is h2.connection.ConnectionInputs.RECV_GOAWAY:
            return []
        return super().process_input(input_)


class BoundedHeaderBlocks(h2.frame_buffer.FrameBuffer):
    """h2 collects a header block's CONTINUATION frames (up to 64 of them, about 1 MiB)
    before HPACK decodes it, and decoding a MiB of Huffman code holds the event loop for
    ~0.4 s. A block is refused as soon as its encoded size exceeds the limit on the decoded
    header list: an encoder never makes a block larger than the list as HPACK counts it
    (name + value + 32 per field)."""

    def __init__(self, limit: int) -> None:
        super().__init__(server=False)
        self._limit = limit

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        f = super()._update_header_buffer(f)
        pending = self._headers_buffer
        size = sum(len(x.data) for x in pending) if pending else (
            len(f.data) if isinstance(f, HeadersFrame | ContinuationFrame) else 0)
        if size > self._limit:
            raise h2.exceptions.DenialOfServiceError(
                f"A header block larger than {self._limit} bytes is being received")
        return f


def error_name(code: int | None) -> str:
    if code is None:
        return "unknown"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"

