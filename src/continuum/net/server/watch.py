"""Noticing clients that leave while their plain (non-streamed) request waits upstream.

A streamed answer has a disconnect watcher task beside it. A plain answer has nothing to
write until the upstream is done, so a client that gave up went unnoticed: the upstream call
ran to the end and the request was logged as a 200. A watcher task per request would cost a
nursery and a task spawn on every request; instead one task per router polls, a few times a
second, only the connections whose request is waiting upstream right now — one ``poll(2)``
for all of them. A request pays a set insert and a set removal.

A peer that shut its sending side (EOF, ``POLLRDHUP``) or reset the connection counts as
gone, as nginx and uvicorn count it: a half-closing client that still waits for its answer
is cut too.
"""

from __future__ import annotations

import math
import select
from typing import Final, final

import trio

from .connection import ProtocolError, ServerConnection

#: How often waiting connections are checked (seconds): a departure is noticed this late.
CHECK_PERIOD: Final = 0.25
#: What the request is logged and counted as; nothing is sent (``ServerConnection.abort``).
CLIENT_GONE: Final = ProtocolError(499, "Client closed the connection")
_GONE_EVENTS: Final = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def _fileno(conn: ServerConnection) -> int:
    stream = getattr(conn.stream, "transport_stream", conn.stream)  # under TLS, the TCP one
    sock = getattr(stream, "socket", None)  # a SocketStream; other streams are skipped
    return sock.fileno() if sock is not None else -1


@final
class ClientWatch:
    """The connections whose plain request is waiting upstream, checked by :meth:`run`."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting: set[ServerConnection] = set()

    def check(self) -> int:
        """End the requests whose client has left (the server's sweep is not involved: the
        connection is cancelled at once, its upstream call with it). Returns how many."""
        if not self.waiting:
            return 0
        poller = select.poll()
        by_fd: dict[int, ServerConnection] = {}
        for conn in self.waiting:
            fd = _fileno(conn)
            if fd >= 0:
                by_fd[fd] = conn
                poller.register(fd, _GONE_EVENTS)
        gone = 0
        for fd, _events in poller.poll(0):
            conn = by_fd[fd]
            self.waiting.discard(conn)
            conn.abort()  # no response: there is nobody to read it
            conn.arm_timer(-math.inf, CLIENT_GONE)
            conn.expire()
            gone += 1
        return gone

    async def run(self) -> None:
        while True:
            await trio.sleep(CHECK_PERIOD)
            self.check()
