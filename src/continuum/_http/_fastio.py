"""Send and receive on a trio stream, trying the socket directly first.

Why: each ``SocketStream.send_all``/``receive_some`` costs a conflict-detector context, a
``_try_sync`` context, a cancellation check and a scheduler round trip on top of the
syscall — measured as most of the router's per-request overhead over the bare-socket
floor. On a keep-alive proxy the kernel can almost always take the write and usually has
the read ready, so the syscall is tried first and trio is awaited only when the kernel says
"would block". A send still yields once (see ``send_all``); a receive that finds data does
not, so the request loops add explicit checkpoints and no connection can starve the others.
"""

from __future__ import annotations

import errno
import socket
from typing import final

import trio

_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    if type(stream) is not trio.SocketStream:
        return None  # TLS and test streams take trio's path
    raw = getattr(stream.socket, "_sock", None)  # trio's socket wraps a stdlib one
    return raw if isinstance(raw, socket.socket) else None


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc.strerror or exc}")


@final
class FastStream:
    """A thin wrapper with the two calls the HTTP layers use."""

    __slots__ = ("_raw", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._raw = _raw_socket(stream)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raw = self._raw
        if raw is not None:
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _broken(exc) from exc
            if sent == len(data):
                # Yield once, as trio's send_all would: by the time this task runs again
                # the peer has usually answered, so the next receive finds data instead of
                # registering with epoll (that registration churn cost more than the yield).
                await trio.lowlevel.checkpoint()
                return
            data = memoryview(data)[sent:]
        await self.stream.send_all(data)

    async def receive_some(self, max_bytes: int) -> bytes | bytearray:
        raw = self._raw
        if raw is not None:
            try:
                return raw.recv(max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _broken(exc) from exc
        return await self.stream.receive_some(max_bytes)
