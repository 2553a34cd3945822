"""Floods of idle connections against a router: connect-and-idle, one byte and stall.

An idle keep-alive connection is parked without a task (``net.server.parking``); these
cases check that floods of them cost no task each, still time out, and never keep the
router from serving everyone else. A connection that has begun a request (one byte) is not
idle: it keeps its task and gets 408 at ``request_read_timeout``, as before.
"""

from __future__ import annotations

import socket

import pytest
import trio

from continuum import RouterHandle
from continuum.net.server.parking import can_park
from helpers import router_config, start_mock, start_router

pytestmark = pytest.mark.skipif(not can_park(), reason="parking needs epoll (Linux)")

FLOOD = 1000
PARK_AFTER = 0.3  # server.idle_park_after here
HANG_GUARD = 30
HEALTH = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n"


def tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)
    return walk(trio.lowlevel.current_root_task())


async def router(nursery: trio.Nursery, keepalive: float, read_timeout: float) -> RouterHandle:
    _, url = await start_mock(nursery, ["m"])
    config = router_config(
        [{"name": "mock", "url": url, "models": ["m"]}],
        server={"frontend": "native", "keepalive_timeout": keepalive,
                "idle_park_after": PARK_AFTER,
                "request_read_timeout": read_timeout},
    )
    return await start_router(nursery, config)


async def connect_many(handle: RouterHandle, count: int) -> list[trio.socket.SocketType]:
    host, _, port = handle.url.removeprefix("http://").rpartition(":")
    socks = []
    for _ in range(count):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await sock.connect((host, int(port)))
        socks.append(sock)
    return socks


async def health(handle: RouterHandle) -> int:
    """One fresh client's /health status (0 if it got no answer)."""
    host, _, port = handle.url.removeprefix("http://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(HEALTH)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return 0
            data += chunk
    return int(data.split(b" ", 2)[1])


async def read_answer(sock: trio.socket.SocketType) -> bytes:
    """One answer with a content-length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = await sock.recv(65536)
        assert chunk, data
        body += chunk
    assert len(body) == length  # nothing follows: the connection is idle now
    return head


async def closed_by_peer(sock: trio.socket.SocketType) -> bytes:
    """Everything the router sends until it closes."""
    data = b""
    while True:
        try:
            chunk = await sock.recv(65536)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


async def test_connect_and_idle_flood_holds_no_tasks_and_times_out(
    nursery: trio.Nursery,
) -> None:
    handle = await router(nursery, keepalive=PARK_AFTER + 2.5, read_timeout=5.0)
    with trio.fail_after(HANG_GUARD):
        assert await health(handle) == 200
        await trio.sleep(0.1)
        before = tasks()
        socks = await connect_many(handle, FLOOD)
        assert await health(handle) == 200  # served while the flood sits there
        # Parked by the sweeper (every 0.5 s at most here): no task left per connection.
        while tasks() > before + 10:
            await trio.sleep(0.1)
        assert await health(handle) == 200
        # The keep-alive deadline still closes every one of them, without an answer.
        async with trio.open_nursery() as waiters:
            answers: list[bytes] = []

            async def wait(sock: trio.socket.SocketType) -> None:
                answers.append(await closed_by_peer(sock))

            for sock in socks:
                waiters.start_soon(wait, sock)
        assert answers == [b""] * FLOOD
        for sock in socks:
            sock.close()
        assert await health(handle) == 200


async def test_one_byte_and_stall_flood_gets_408_and_others_are_served(
    nursery: trio.Nursery,
) -> None:
    """Half the flood begins a request at once, half after being parked: both halves hold
    a begun request, which the request read timeout ends with a 408."""
    handle = await router(nursery, keepalive=30.0, read_timeout=PARK_AFTER + 1.5)
    count = FLOOD // 2
    with trio.fail_after(HANG_GUARD):
        early = await connect_many(handle, count)
        for sock in early:
            await sock.send(b"G")
        late = await connect_many(handle, count)
        for sock in late:
            await sock.send(HEALTH)
        for sock in late:  # each answered, then idle
            assert (await read_answer(sock)).startswith(b"HTTP/1.1 200 ")
        await trio.sleep(PARK_AFTER + 0.6)  # parked by now
        for sock in late:
            await sock.send(b"P")  # wakes it: a request begun, then nothing
        assert await health(handle) == 200
        statuses: list[bytes] = []

        async def wait(sock: trio.socket.SocketType) -> None:
            statuses.append(await closed_by_peer(sock))

        async with trio.open_nursery() as waiters:
            for sock in (*early, *late):
                waiters.start_soon(wait, sock)
        assert len(statuses) == FLOOD
        assert all(b"HTTP/1.1 408" in answer for answer in statuses), {
            answer[:40] for answer in statuses if b"HTTP/1.1 408" not in answer}
        for sock in (*early, *late):
            sock.close()
        assert await health(handle) == 200
