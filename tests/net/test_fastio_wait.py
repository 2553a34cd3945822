"""``FastStream.receive_some`` on a plain socket when the bytes are not there yet: it waits,
a second reader is refused, and ``notify_closing`` (how idle parking ends the wait of a
connection's task) ends the wait with ``ClosedResourceError`` and leaves the socket usable."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from continuum.net.fastio import FastStream

HANG_GUARD = 10


async def pair() -> tuple[FastStream, trio.SocketStream]:
    a, b = socket.socketpair()
    ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    return FastStream(ours, 5.0), trio.SocketStream(trio.socket.from_stdlib_socket(b))


async def test_a_receive_that_would_block_waits_for_the_bytes() -> None:
    fast, peer = await pair()
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            got: list[bytes | bytearray] = []

            async def receive() -> None:
                got.append(await fast.receive_some(100))

            nursery.start_soon(receive)
            await trio.sleep(0.05)  # it waits: nothing was sent
            assert got == []
            await peer.send_all(b"hello")
        assert got == [b"hello"]
        await peer.aclose()
        assert await fast.receive_some(100) == b""  # EOF after a wait too
    await fast.stream.aclose()


async def test_a_second_reader_is_refused_and_a_closing_notice_ends_the_wait() -> None:
    fast, peer = await pair()
    sock = fast.stream.socket
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            ended: list[type[BaseException]] = []

            async def receive() -> None:
                try:
                    await fast.receive_some(100)
                except trio.ClosedResourceError as exc:
                    ended.append(type(exc))

            nursery.start_soon(receive)
            await trio.sleep(0.05)
            with pytest.raises(trio.BusyResourceError):
                await fast.receive_some(100)
            trio.lowlevel.notify_closing(sock)  # what parking an idle connection does
        assert ended == [trio.ClosedResourceError]
        # The socket itself is untouched: the next receive works.
        await peer.send_all(b"more")
        assert await fast.receive_some(100) == b"more"
    await fast.stream.aclose()
    await peer.aclose()


async def test_a_waiting_receive_holds_no_would_block_error() -> None:
    """The wait happens outside the ``BlockingIOError`` handler: the error does not live as
    long as the wait (an object more per waiting connection for the collector) and is not
    the ``__context__`` of what ends the wait."""
    fast, peer = await pair()
    sock = fast.stream.socket
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            ended: list[BaseException] = []

            async def receive() -> None:
                try:
                    await fast.receive_some(100)
                except trio.ClosedResourceError as exc:
                    ended.append(exc)

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.notify_closing(sock)
        assert len(ended) == 1
        assert ended[0].__context__ is None, repr(ended[0].__context__)
    await fast.stream.aclose()
    await peer.aclose()
