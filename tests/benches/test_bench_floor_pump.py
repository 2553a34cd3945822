"""``floor_proxy.py --pump`` on real loopback sockets: bytes go through both ways in order; a
client that does not read pauses its source (interest 0) and a reset on either side while
paused still ends the pair, without the pump reading the reset source any further."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

import floor_proxy

HANG_GUARD = 20
#: A pattern whose every offset can be told apart: the bytes of 0, 1, 2... as 4-byte ints.
PATTERN = b"".join(struct.pack(">I", i) for i in range(1 << 20))  # 4 MiB


@dataclass
class Piped:
    """client <-> (client_inner | pump | upstream_inner) <-> upstream."""

    client: trio.SocketStream
    upstream: trio.SocketStream
    client_inner: trio.SocketStream
    upstream_inner: trio.SocketStream
    pump: floor_proxy.Pump
    done: trio.Event


async def _connected_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        outer = await trio.open_tcp_stream("127.0.0.1", port)
        inner = await listeners[0].accept()
    finally:
        await listeners[0].aclose()
    return outer, inner


def small_buffers(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)


def reset(stream: trio.SocketStream) -> None:
    """Close with a RST (SO_LINGER 0), not a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@asynccontextmanager
async def piped(nursery: trio.Nursery) -> AsyncIterator[Piped]:
    client, client_inner = await _connected_pair()
    upstream_inner, upstream = await _connected_pair()
    small_buffers(client)
    small_buffers(client_inner)
    pump = floor_proxy.Pump()
    nursery.start_soon(pump.run)
    done = pump.add(client_inner, upstream_inner)
    try:
        yield Piped(client, upstream, client_inner, upstream_inner, pump, done)
    finally:
        for stream in (client, upstream, client_inner, upstream_inner):
            stream.socket.close()


async def receive_until_eof(stream: trio.SocketStream) -> bytes:
    got = bytearray()
    try:
        while data := await stream.receive_some(65536):
            got += data
    except trio.BrokenResourceError:
        pass  # reset: what came before it is what we check
    return bytes(got)


async def wait_paused(pump: floor_proxy.Pump) -> None:
    while not pump._pending:
        await trio.sleep(0.01)


async def test_bytes_go_through_both_ways_and_a_clean_close_ends_the_pair(
        nursery: trio.Nursery) -> None:
    with trio.fail_after(HANG_GUARD):
        async with piped(nursery) as p:
            await p.client.send_all(b"GET / HTTP/1.1\r\n\r\n")
            assert await p.upstream.receive_some(100) == b"GET / HTTP/1.1\r\n\r\n"
            async with trio.open_nursery() as inner:
                inner.start_soon(p.upstream.send_all, PATTERN)
                got = bytearray()
                while len(got) < len(PATTERN):  # slowly at first: the pump pauses and resumes
                    got += await p.client.receive_some(65536)
                    if len(got) < 1 << 20:
                        await trio.sleep(0.001)
            assert got == PATTERN
            await p.upstream.aclose()
            await p.done.wait()
            assert not p.pump._pairs and not p.pump._pending


async def test_a_paused_source_that_resets_ends_the_pair(nursery: trio.Nursery) -> None:
    """The client reads nothing: the upstream's side is paused (interest 0) with a write
    waiting. The upstream resets: epoll still reports it (EPOLLERR/EPOLLHUP), the pair ends,
    and the reset side's unread bytes are left unread (reading them would have replaced the
    write still waiting for the client)."""
    with trio.fail_after(HANG_GUARD):
        async with piped(nursery) as p:
            async with trio.open_nursery() as inner:
                inner.start_soon(p.upstream.send_all, PATTERN)
                await wait_paused(p.pump)
                await trio.sleep(0.05)  # let the upstream fill what it can
                inner.cancel_scope.cancel()
            reset(p.upstream)
            await p.done.wait()
            assert not p.pump._pairs and not p.pump._pending
            unread = floor_proxy._raw(p.upstream_inner).recv(
                65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            assert unread
            # What the client did get is the stream's beginning, in order.
            await p.client_inner.aclose()  # as the proxy's handler does once the pair ends
            got = await receive_until_eof(p.client)
            assert got == PATTERN[:len(got)]


async def test_a_client_that_resets_while_a_write_waits_ends_the_pair(
        nursery: trio.Nursery) -> None:
    with trio.fail_after(HANG_GUARD):
        async with piped(nursery) as p:
            async with trio.open_nursery() as inner:
                inner.start_soon(p.upstream.send_all, PATTERN)
                await wait_paused(p.pump)
                reset(p.client)
                await p.done.wait()
                inner.cancel_scope.cancel()
            assert not p.pump._pairs and not p.pump._pending
