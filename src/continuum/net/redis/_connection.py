"""One Redis connection: RESP over a trio stream, shared by concurrent calls (pipelining).

Redis answers the commands of one connection in order, so concurrent calls need no
connection each: a call queues its command and a waiter, and replies are matched to
waiters first-in first-out. There is no background task. Two roles are taken by whichever
call needs them:

- the *flusher* sends everything queued so far in one write (calls that arrive while it
  writes are sent by its next write);
- the *reader* receives and parses replies, hands each to its waiter, and stops as soon as
  its own has arrived; the next waiter in line then takes the role over.

At concurrency 1 a call is one write and one read, as with a plain client: a *lone call*
(its caller knows no other call is in flight: an admission with no other limited request
being served) waits for its reply in a blocking ``poll`` of at most a millisecond instead of
going through trio (:meth:`Connection.lone_call`).
Under load the writes and reads batch up, and a few connections carry many concurrent calls.

A call must not be interrupted half-way (a half-sent command or an unread reply would put
the connection out of step), so the client runs each call in a scope shielded from outside
cancellation, bounded by its own deadline. When anything goes wrong — a deadline, a socket
error, garbage on the wire — the connection is *broken*: every call waiting on it fails with
the same error and it is closed. Nothing is retried here; the client decides.

Plain TCP and Unix sockets are written and read directly (the socket under the trio stream
is :func:`continuum.net.fastio.raw_socket`'s, as for the HTTP layers), trio being awaited
only to yield once after a write (see ``_flush``) and when the kernel says "would block"
(``wait_readable``): trio's ``send_all``/``receive_some`` take three scheduler passes per
round trip, this one or two (-20 % per call at concurrency 1 on loopback). TLS streams go
through trio.

Replies are parsed by hiredis' C reader (RESP2 and RESP3), kept within bounds against a
hostile or broken server:

- bytes received towards one reply are counted (hiredis moves array elements out of its
  buffer as it parses them, so its buffer length alone says little); a reply that grows
  past ``max_reply_bytes`` breaks the connection;
- hiredis allocates an array of the declared length when it reads the header, and freeing
  it touches every slot: a 13-byte ``*2147483647`` costs seconds of CPU. A count that could
  never fit in ``max_reply_bytes`` (at least 3 bytes an element) is refused before hiredis
  sees it, by a regular expression over each read. It cannot tell a header from the same
  text inside a string value, so a value containing an aggregate type byte followed by
  such a number (``*10000000`` with the default limit) reads as a protocol error: no
  command this router sends returns one.
"""

from __future__ import annotations

import re
import select
from collections import deque
from collections.abc import Callable
from typing import Any, Final, TypeAlias, final

import hiredis
import trio

from ..fastio import raw_socket
from ._errors import (
    RedisConnectionError,
    RedisError,
    RedisProtocolError,
    RedisTimeoutError,
    as_redis_error,
)

#: What a command can return. Error replies nested in arrays stay ``hiredis.ReplyError``
#: values; a top-level error reply is raised as a :class:`RedisReplyError` by the client.
Reply: TypeAlias = Any

_RECEIVE_SIZE: Final = 65536
_HEADER_MAX: Final = 24  # a type byte, a 20-digit count and CRLF
_INCOMPLETE: Final = object()
#: How long a lone call blocks for its reply (``poll`` counts in milliseconds), and at most
#: how many lone calls go the usual way after a reply later than that.
_LONE_WAIT_MS: Final = 1
_LONE_SKIP_MAX: Final = 128


@final
class _Waiter:
    """One command sent (or about to be) and the reply it is waiting for."""

    __slots__ = ("done", "error", "event", "reply")

    def __init__(self) -> None:
        self.done = False
        self.reply: Reply = None
        self.error: RedisError | None = None
        self.event: trio.Event | None = None


@final
class Connection:
    """A RESP connection; see the module docstring for how calls share it."""

    __slots__ = (
        "_fed",
        "_flushing",
        "_huge_count",
        "_lone_backoff",
        "_lone_skip",
        "_max_reply_bytes",
        "_on_broken",
        "_out",
        "_poll",
        "_reader",
        "_reading",
        "_sock",
        "_stream",
        "_tail",
        "_unsent",
        "_waiting",
        "address",
        "broken",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        address: str,
        max_reply_bytes: int,
        on_broken: Callable[[Connection], None],
    ) -> None:
        self._stream = stream
        self._sock = raw_socket(stream)
        self.address = address
        self._max_reply_bytes = max_reply_bytes
        self._huge_count = _huge_count_pattern(max_reply_bytes)
        self._tail: bytes | bytearray = b""  # the end of the last read (headers may span two)
        self._on_broken = on_broken
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._waiting: deque[_Waiter] = deque()
        self._out: list[bytes] = []
        self._unsent = 0  # commands in _out (the last ones of _waiting)
        self._flushing = False
        self._reading = False
        self._fed = 0  # bytes received towards the reply being parsed
        #: The socket alone, for a lone call's short blocking wait (:meth:`lone_call`).
        self._poll: select.poll | None = None
        if self._sock is not None:
            self._poll = select.poll()
            self._poll.register(self._sock, select.POLLIN)
        #: Lone calls left to make the usual way after one whose reply was late, and how
        #: many the next late one skips (doubling while replies stay late).
        self._lone_skip = 0
        self._lone_backoff = 0
        #: Set once the connection is unusable; calls on it fail with this error.
        self.broken: RedisError | None = None

    @property
    def load(self) -> int:
        """Calls waiting for a reply on this connection."""
        return len(self._waiting)

    async def roundtrip(self, command: bytes) -> Reply:
        """Send one packed command and return its reply (error replies are returned as
        ``hiredis.ReplyError`` values, not raised)."""
        if self.broken is not None:
            raise _fresh(self.broken)
        waiter = _Waiter()
        # No await between these two lines and the flush: the order of waiters is the
        # order of commands on the wire.
        self._waiting.append(waiter)
        self._out.append(command)
        self._unsent += 1
        await self._finish(waiter)
        return waiter.reply

    def lone_call(self, command: bytes) -> _Waiter | None:
        """Send ``command`` and wait for its reply without trio, when nothing else is in
        flight here: the caller (the client) knows no other call is in flight on any
        connection. Waiting through trio costs a lone call on loopback about as much as
        the round trip itself (registering the socket, a scheduler pass, the wake-up);
        blocking in ``poll`` on this one socket for at most ``_LONE_WAIT_MS`` does not,
        and holds up the other tasks no longer than a reply that fast takes.

        Returns the call's waiter: done (its reply is in), or not yet (the caller waits for
        it with :meth:`wait`, the usual way). A reply later than the bound sends the next
        lone calls here the usual way at once: 1, then 2, 4... up to ``_LONE_SKIP_MAX`` while
        replies stay late (a distant Redis stalls the loop once in 128 calls; a busy
        machine's occasional late reply costs a local one little). ``None``: not tried
        (something is in flight, no plain socket), or the connection broke before a
        reply, so the command may be sent again elsewhere, like any call on a connection
        that was idle."""
        sock = self._sock
        poll = self._poll
        if (sock is None or poll is None or self._waiting or self._out or self._reading
                or self._flushing or self.broken is not None):
            return None
        if self._lone_skip:
            self._lone_skip -= 1
            return None
        waiter = _Waiter()
        self._waiting.append(waiter)
        try:
            try:
                sent = sock.send(command)
            except BlockingIOError:
                sent = 0
            if sent < len(command):  # the kernel is short of room: the usual way
                self._out.append(command[sent:])
                self._unsent = 1
                return waiter
            if not poll.poll(_LONE_WAIT_MS):
                self._lone_backoff = min(2 * self._lone_backoff or 1, _LONE_SKIP_MAX)
                self._lone_skip = self._lone_backoff
                return waiter
            self._lone_backoff = 0
            data = sock.recv(_RECEIVE_SIZE)
        except BlockingIOError:
            return waiter  # nothing after all: the usual way
        except OSError as exc:
            self.fail(RedisConnectionError(f"Redis at {self.address}: {exc}"))
            return None
        if not data:
            self.fail(RedisConnectionError(f"Redis at {self.address} closed the connection"))
            return None
        try:
            self._take(data)
        except Exception as exc:  # hiredis's own errors too, as in :meth:`_finish`
            error = self._broken_by(exc)
            if error is None or error is exc:
                raise
            raise error from exc
        return waiter

    async def wait(self, waiter: _Waiter) -> Reply:
        """The reply of a call :meth:`lone_call` sent but could not finish."""
        await self._finish(waiter)
        return waiter.reply

    async def roundtrip_many(self, commands: list[bytes]) -> list[Reply]:
        """Send several packed commands in one write; their replies, in order."""
        if self.broken is not None:
            raise _fresh(self.broken)
        waiters = [_Waiter() for _ in commands]
        self._waiting.extend(waiters)
        self._out.append(b"".join(commands))
        self._unsent += len(commands)
        await self._finish(waiters[-1])
        return [w.reply for w in waiters]

    async def _finish(self, waiter: _Waiter) -> None:
        try:
            # A call yields at least once, as trio's own calls do: the direct socket I/O
            # below does not when the kernel has room and data, and a task looping over
            # calls would otherwise starve the others.
            waited = False
            if not self._flushing:
                waited = await self._flush()
            while not waiter.done:
                if not self._reading:
                    waited = await self._read_until(waiter) or waited
                else:
                    waiter.event = trio.Event()
                    await waiter.event.wait()
                    waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        except trio.Cancelled:
            # Only the client's deadline reaches a call (it runs shielded).
            self.fail(RedisTimeoutError(f"Redis at {self.address} did not answer in time"))
            raise
        except BaseException as exc:
            error = self._broken_by(exc)
            if error is None or error is exc:
                raise
            raise error from exc
        if waiter.error is not None:
            raise _fresh(waiter.error)

    def _broken_by(self, exc: BaseException) -> RedisError | None:
        """A call failed with ``exc`` mid-way: the connection is out of step, so it is
        failed. Returns the :class:`RedisError` to raise for ``exc`` (``exc`` itself when
        it is one), or None for what is not an I/O or protocol failure (raised as is)."""
        error = as_redis_error(exc, f"Redis at {self.address}")
        self.fail(error or RedisConnectionError(f"Redis at {self.address}: {exc!r}"))
        return error

    async def _flush(self) -> bool:
        """Send what is queued; whether it waited for trio.

        Under concurrency (another call is in flight already) the first write is
        followed by one yield, still holding the role, so that calls made meanwhile go
        out together in the next write instead of one write each. Measured
        (benches/redis_client.py, one connection): 1.5x the calls per second, half the
        p50 and 2/3 of the CPU per call at concurrency 16 and 64, where without it each
        call was a write and a read of its own. A lone call does not yield: nobody could
        join its write, and the scheduler pass would only delay its read (it then waits
        for its reply in ``wait_readable``, which is its yield).

        The flusher does not loop for others for ever (a steady stream of calls could keep
        it busy while its own deadline runs out): after two writes it leaves what is queued
        to the reader, which sends it before it blocks — but only while some command is in
        flight, whose reply is sure to wake the reader. With nothing in flight it keeps
        going, or the queued calls would wait for a reply that never comes.
        """
        self._flushing = True
        waited = False
        sock = self._sock
        out = self._out
        writes = 0
        try:
            while out and (writes < 2 or len(self._waiting) == self._unsent):
                writes += 1
                data = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                self._unsent = 0
                if sock is not None:
                    try:
                        sent = sock.send(data)
                    except BlockingIOError:
                        sent = 0
                    if sent < len(data):
                        await self._stream.send_all(data[sent:])
                        waited = True
                else:
                    await self._stream.send_all(data)
                    waited = True
                if not waited and len(self._waiting) > 1:
                    # Yield once, holding the role, as trio's send_all would: calls made
                    # meanwhile go out together in the next write, and the reply has
                    # usually arrived when this task runs again. (``_finish`` yields for
                    # a lone call whose reply was there at once.)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    waited = True
        finally:
            self._flushing = False
        return waited

    async def _read_until(self, me: _Waiter) -> bool:
        """Read and hand out replies until ``me`` has one; whether it waited for trio."""
        self._reading = True
        waited = False
        sock = self._sock
        try:
            while not me.done:
                if sock is None:
                    if self._out and not self._flushing:
                        await self._flush()  # see _flush: leftovers are sent from here
                    data: bytes | bytearray = await self._stream.receive_some(_RECEIVE_SIZE)
                    waited = True
                else:
                    try:
                        data = sock.recv(_RECEIVE_SIZE)
                    except BlockingIOError:
                        if self._out and not self._flushing:
                            waited = await self._flush() or waited
                        else:
                            await trio.lowlevel.wait_readable(sock)
                            waited = True
                        continue
                if not data:
                    raise RedisConnectionError(f"Redis at {self.address} closed the connection")
                self._take(data)
        finally:
            self._reading = False
            if (waiting := self._waiting) and (event := waiting[0].event) is not None:
                event.set()  # the next in line reads its own reply
        return waited

    def _take(self, data: bytes | bytearray) -> None:
        """Parse received bytes and hand every complete reply to its waiter, within the
        bounds the module docstring lists (``RedisProtocolError`` past them)."""
        reader = self._reader
        waiting = self._waiting
        self._fed += len(data)
        if self._huge_count.search(data) or self._huge_count.search(
            self._tail + data[:_HEADER_MAX]
        ):
            raise RedisProtocolError(
                f"Redis at {self.address} sent an aggregate header larger than a "
                f"reply may be ({self._max_reply_bytes} bytes)"
            )
        self._tail = data[-_HEADER_MAX:]
        reader.feed(data)  # type: ignore[arg-type]  # any buffer works
        try:
            while (reply := reader.gets()) is not _INCOMPLETE:
                if type(reply) is hiredis.PushNotification:
                    continue  # RESP3 out-of-band data; nothing here subscribes
                if len(waiting) == self._unsent:
                    raise RedisProtocolError(
                        f"Redis at {self.address} sent a reply nobody asked for"
                    )
                waiter = waiting.popleft()
                waiter.reply = reply
                waiter.done = True
                if waiter.event is not None:
                    waiter.event.set()
                self._fed = reader.len()  # what is left belongs to the next reply
        except (TypeError, ValueError) as exc:
            # hiredis builds RESP3 maps and sets as dicts and sets: a key that is
            # an array (``%1\r\n*0\r\n...``) cannot be one. The server's fault.
            raise RedisProtocolError(
                f"Redis at {self.address} sent a reply that cannot be read: {exc}"
            ) from exc
        if self._fed > self._max_reply_bytes:
            raise RedisProtocolError(
                f"Redis at {self.address} sent a reply over {self._max_reply_bytes} bytes"
            )

    def fail(self, error: RedisError) -> None:
        """Break the connection: fail every waiting call with ``error`` and close it."""
        if self.broken is not None:
            return
        self.broken = error
        while self._waiting:
            waiter = self._waiting.popleft()
            waiter.error = error
            waiter.done = True
            if waiter.event is not None:
                waiter.event.set()
        self._out.clear()
        self._unsent = 0
        _close_now(self._stream)
        self._on_broken(self)

    async def aclose(self) -> None:
        self.fail(RedisConnectionError(f"Redis connection to {self.address} closed"))
        await trio.aclose_forcefully(self._stream)


def _huge_count_pattern(max_reply_bytes: int) -> re.Pattern[bytes]:
    """An aggregate header (array, map, set, push, attribute) whose count has more digits
    than any count that fits in ``max_reply_bytes`` at 3 bytes an element."""
    digits = len(str(max_reply_bytes // 3)) + 1
    return re.compile(rb"[*%%~>|]\d{%d}" % digits)


def _fresh(error: RedisError) -> RedisError:
    """A new instance of ``error`` for one more caller: one exception object raised in
    several tasks would share (and keep growing) one traceback."""
    copy = type(error)(*error.args)
    copy.__cause__ = error
    return copy



def _close_now(stream: trio.abc.Stream) -> None:
    """Close the socket under ``stream`` without awaiting (a call blocked on it wakes up
    with an error)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
