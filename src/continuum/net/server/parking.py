"""Idle keep-alive connections parked without a task: one epoll set, one watcher.

Why: a client connection waiting between requests held a trio task, its coroutine frames,
a cancel scope, a ``SocketStream``, an httptools parser and the connection's own state —
about 7.7 KB of Python heap each (tracemalloc, issue 15), 9.5 KB of RSS. Ten thousand idle
clients cost ~95 MB for doing nothing. Parked, a connection is its stdlib socket and its
keep-alive deadline (~0.3 KB); everything else is dropped and built again when it sends.

How: the server's sweeper parks a plain-TCP connection that has waited between requests
for ``HTTPLimits.park_after`` (``server.idle_park_after``, 0.25 s): a connection that talks
more often never pays the round trip (a park and a wake, ~0.1 ms of CPU). The default is
short because what a burst of new clients' waiting tasks took stays with the process: what
counts is how many wait in a task at once. The wait in the connection's task is ended with
``notify_closing`` (no cancel) and its socket goes into a private level-triggered epoll set;
one task per server waits on that set's fd with ``trio.lowlevel.wait_readable`` and hands
every socket that becomes readable (a request, an EOF, an error) back to the server, which
serves it in a new task. The keep-alive deadline set when the connection fell idle travels
with it: parking neither extends nor shortens it. Linux only (epoll); elsewhere nothing is
parked.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
from collections.abc import Callable, Collection, Iterator
from typing import Final, final

import trio

#: Sockets handed back per wake-up at most (then other tasks get a turn).
_WAKE_BATCH: Final = 256

#: Called with a socket that became readable and its keep-alive deadline.
Resume = Callable[[socket.socket, float], None]


def can_park() -> bool:
    """Whether this platform has epoll (Linux)."""
    return hasattr(select, "epoll")


@final
class IdleParking:
    """Parked sockets by fd, with their keep-alive deadlines. One per server."""

    __slots__ = ("_closed", "_epoll", "_next_deadline", "_parked")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._parked: dict[int, tuple[socket.socket, float]] = {}
        #: No parked deadline is earlier than this (the sweep skips the scan until then).
        self._next_deadline = math.inf
        self._closed = False

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, sock: socket.socket, deadline: float) -> None:
        """Watch ``sock`` until it is readable or ``deadline`` passes (then it is closed).
        After :meth:`close` the socket is closed at once."""
        if self._closed:
            sock.close()
            return
        fd = sock.fileno()
        try:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        except (OSError, ValueError):  # gone meanwhile (-1 is a ValueError)
            sock.close()
            return
        self._parked[fd] = (sock, deadline)
        if deadline < self._next_deadline:
            self._next_deadline = deadline

    def _drop(self, fd: int) -> socket.socket:
        sock, _ = self._parked.pop(fd)
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        return sock

    def expire(self, now: float) -> int:
        """Close the parked connections whose keep-alive deadline has passed; how many."""
        if now < self._next_deadline:
            return 0
        expired = [fd for fd, (_, deadline) in self._parked.items() if deadline <= now]
        for fd in expired:
            self._drop(fd).close()
        self._next_deadline = min((d for _, d in self._parked.values()), default=math.inf)
        return len(expired)

    def close(self) -> None:
        """Graceful shutdown: close every parked connection (they are between requests,
        like the idle ones drain closes) and every one parked from now on."""
        if self._closed:
            return
        self._closed = True
        for fd in list(self._parked):
            self._drop(fd).close()
        trio.lowlevel.notify_closing(self._epoll.fileno())  # wakes run() if it waits
        self._epoll.close()

    def sockets(self) -> Iterator[socket.socket]:
        return (sock for sock, _ in self._parked.values())

    async def run(self, resume: Resume) -> None:
        """Hand each socket that becomes readable to ``resume`` until cancelled."""
        epoll = self._epoll
        try:
            while not self._closed:
                try:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                except trio.ClosedResourceError:
                    return
                if self._closed:
                    return
                for fd, _ in epoll.poll(0, _WAKE_BATCH):
                    if fd in self._parked:
                        sock, deadline = self._parked[fd]
                        self._drop(fd)
                        resume(sock, deadline)
                await trio.lowlevel.checkpoint()
        finally:
            if not self._closed:
                self.close()


@final
class OpenConnections(Collection[object]):
    """The connections a server has open: those served by a task and the parked ones (what
    ``active_connections`` counts)."""

    __slots__ = ("_parking", "_served")

    def __init__(self, served: Collection[object], parking: IdleParking | None) -> None:
        self._served = served
        self._parking = parking

    def __len__(self) -> int:
        parked = len(self._parking) if self._parking is not None else 0
        return len(self._served) + parked

    def __iter__(self) -> Iterator[object]:
        yield from self._served
        if self._parking is not None:
            yield from self._parking.sockets()

    def __contains__(self, item: object) -> bool:
        return any(item is conn or item == conn for conn in self)
