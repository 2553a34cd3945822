"""Send and receive on a trio stream, trying the socket directly first.

Why: each ``SocketStream.send_all``/``receive_some`` costs a conflict-detector context, a
``_try_sync`` context, a cancellation check and a scheduler round trip on top of the
syscall — measured as most of the router's per-request overhead over the bare-socket
floor. On a keep-alive proxy the kernel can almost always take the write and usually has
the read ready, so the syscall is tried first and trio is awaited only when the kernel says
"would block".

Two guarantees sit on top, both off the fast path:

* **No read loop holds the event loop.** A receive that finds data does not yield, so a
  peer that always has bytes ready (a never-ending header, a flood during a stream) could
  keep one task running forever. Each receive draws on a budget (its bytes plus a fixed
  cost per call); when it runs out, the receive yields once: at least every
  :data:`YIELD_EVERY_BYTES` bytes or :data:`YIELD_EVERY_RECEIVES` receives. A send always
  yields once (see ``send_all``).
* **A write the kernel took is a schedule point, not a cancel point.** It yields with
  ``cancel_shielded_checkpoint``: trio's ``checkpoint`` adds a task lookup and a
  cancellation test (~35 bytecodes, twice per proxied request). A cancellation is still
  delivered within bounded work: every loop of the HTTP layers reads between its writes,
  and a read either waits (a cancel point) or draws on the budget above, whose yield is a
  full ``checkpoint``.
* **A peer that stops reading cannot hold a write forever.** Only the would-block path is
  timed (``write_timeout``): a write the kernel takes at once costs nothing extra. The
  deadline moves with progress, so it bounds how long the peer accepts *nothing*, not how
  long a large answer takes. On expiry :class:`WriteTimeout` is raised; part of the data may
  have gone out, so the caller must close the connection (never write more after it).
"""

from __future__ import annotations

import errno
import math
import socket
from typing import Final, final

import trio

_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})

#: A read loop yields at least once per this many bytes received without yielding...
YIELD_EVERY_BYTES: Final = 256 * 1024
#: ... and at least once per this many receives (each counts as this many bytes).
YIELD_EVERY_RECEIVES: Final = 32
_RECEIVE_COST: Final = YIELD_EVERY_BYTES // YIELD_EVERY_RECEIVES

Buffer = bytes | bytearray | memoryview


class WriteTimeout(trio.BrokenResourceError):
    """The peer accepted no bytes for ``write_timeout`` seconds; the connection must close."""


def raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a plain ``trio.SocketStream``, for syscalls tried before
    trio is awaited (the HTTP layers here, the Redis connection); None for TLS and other
    streams, which take trio's path."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)  # trio's socket wraps a stdlib one
    return raw if isinstance(raw, socket.socket) else None


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc.strerror or exc}")


def _try_send(raw: socket.socket, data: Buffer | tuple[Buffer, ...]) -> int:
    """Bytes the kernel took at once (``sendmsg`` for several parts); 0 if it would block."""
    try:
        return raw.sendmsg(data) if isinstance(data, tuple) else raw.send(data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise _broken(exc) from exc


@final
class FastStream:
    """A thin wrapper with the calls the HTTP layers use."""

    __slots__ = ("_budget", "_raw", "_write_timeout", "stream")

    def __init__(self, stream: trio.abc.Stream, write_timeout: float = math.inf) -> None:
        self.stream = stream
        self._raw = raw_socket(stream)
        self._write_timeout = write_timeout
        self._budget = YIELD_EVERY_BYTES

    async def send_all(self, data: Buffer) -> None:
        raw = self._raw
        if raw is not None:
            sent = _try_send(raw, data)
            if sent == len(data):
                # Yield once, as trio's send_all would: by the time this task runs again
                # the peer has usually answered, so the next receive finds data instead of
                # registering with epoll (that registration churn cost more than the yield).
                # A schedule point without the cancellation check (see the module's notes).
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            await self._send_blocked(raw, memoryview(data)[sent:])
            return
        await self._send_stream(data)

    async def send_all_parts(self, parts: tuple[Buffer, ...]) -> None:
        """Send ``parts`` one after the other without joining them (one ``sendmsg``): for a
        head and a large body, which would otherwise be copied into one buffer."""
        raw = self._raw
        if raw is None:
            for part in parts:
                await self._send_stream(part)
            return
        sent = _try_send(raw, parts)
        blocked = False
        for part in parts:
            if sent >= len(part):
                sent -= len(part)
                continue
            await self._send_blocked(raw, memoryview(part)[sent:])
            sent = 0
            blocked = True
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()  # as in send_all

    async def _send_blocked(self, raw: socket.socket, view: memoryview) -> None:
        """The rest of a write the kernel did not take at once: wait until the socket is
        writable, under the write deadline (pushed back on every byte that goes out)."""
        timeout = self._write_timeout
        if timeout == math.inf:
            await self.stream.send_all(view)
            return
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            while view:
                await trio.lowlevel.wait_writable(raw)
                view = view[_try_send(raw, view):]
                if view:
                    scope.deadline = trio.current_time() + timeout
        if scope.cancelled_caught:
            raise WriteTimeout(f"the peer accepted nothing for {timeout:g}s")

    async def _send_stream(self, data: Buffer) -> None:
        """trio's own send (TLS and test streams), under the write deadline."""
        if self._write_timeout == math.inf:
            await self.stream.send_all(data)
            return
        with trio.move_on_after(self._write_timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise WriteTimeout(f"the peer accepted nothing for {self._write_timeout:g}s")

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What a plain socket holds now (b"" at EOF), None when nothing is ready: the read
        of a task that waits for readiness elsewhere (``continuum.net.stream_pump``)."""
        raw = self._raw
        if raw is None:
            raise trio.ClosedResourceError("not a plain socket")
        try:
            return raw.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _broken(exc) from exc

    async def receive_some(self, max_bytes: int) -> bytes | bytearray:
        raw = self._raw
        if raw is None:
            return await self.stream.receive_some(max_bytes)
        data: bytes | None
        try:
            data = raw.recv(max_bytes)
        except BlockingIOError:
            # Waited for outside the handler: inside it the exception and its traceback
            # would live as long as the wait (two objects more for the collector per
            # waiting connection, and the __context__ of whatever the wait raises).
            data = None
        except OSError as exc:
            raise _broken(exc) from exc
        if data is None:
            # Nothing to read yet: wait for the socket, then read. Straight to the wait:
            # trio's ``receive_some`` would try the read once more first, a second syscall
            # that fails the same way, under two context managers. In this coroutine, not
            # a helper: a connection waiting here holds one coroutine object less. A close
            # of the socket by another task ends the wait with ``ClosedResourceError``, as
            # trio's receive does.
            self._budget = YIELD_EVERY_BYTES  # the wait yields
            while data is None:
                await trio.lowlevel.wait_readable(raw)
                try:
                    data = raw.recv(max_bytes)
                except BlockingIOError:
                    pass  # woken without data after all
                except OSError as exc:
                    raise _broken(exc) from exc
            return data
        self._budget -= len(data) + _RECEIVE_COST
        if self._budget < 0:
            # Data was ready every time for a while: let the other tasks run.
            self._budget = YIELD_EVERY_BYTES
            await trio.lowlevel.checkpoint()
        return data
