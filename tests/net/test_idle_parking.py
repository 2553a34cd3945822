"""Idle keep-alive connections are parked without a task (``net.server.parking``).

A real ``HTTPServer`` on an ephemeral loopback port, raw TCP clients. What is asserted is
behaviour: the task count, what a client sees on the wire, what the server counts.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
import trio

from adversarial.harness import RawClient
from continuum.net.server.connection import HTTPLimits, Request, ServerConnection
from continuum.net.server.listeners import HTTPServer, listener_address, open_listeners
from continuum.net.server.parking import can_park
from helpers import router_config, start_mock, start_router

pytestmark = pytest.mark.skipif(not can_park(), reason="parking needs epoll (Linux)")

HANG_GUARD = 15
#: ``park_after`` / ``server.idle_park_after`` in these tests.
PARK_AFTER = 0.3


def tasks() -> int:
    """Every task of this trio run."""
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)
    return walk(trio.lowlevel.current_root_task())


async def echo_path(request: Request, conn: ServerConnection) -> None:
    await conn.send_response(200, [(b"content-type", b"text/plain")], request.path.encode())


async def start_server(nursery: trio.Nursery, **limits: Any) -> tuple[HTTPServer, str]:
    listeners = await open_listeners(["127.0.0.1:0"])
    limits.setdefault("park_after", PARK_AFTER)
    server = HTTPServer(listeners, echo_path, HTTPLimits(**limits), shutdown_timeout=2.0,
                        timer_resolution=0.02)
    nursery.start_soon(server.run)
    return server, listener_address(listeners[0])


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode()


async def ask(client: RawClient, path: str) -> None:
    await client.send(get(path))
    response = await client.read_response()
    assert response.status == 200, response
    assert response.body == path.encode()


async def all_parked(server: HTTPServer, count: int) -> None:
    """Wait until ``count`` connections are open and none has a task."""
    while server.served or len(server.connections) != count:
        await trio.sleep(0.02)


async def test_idle_connections_hold_no_task_and_are_served_again(
    nursery: trio.Nursery,
) -> None:
    server, address = await start_server(nursery)
    with trio.fail_after(HANG_GUARD):
        await trio.sleep(0.05)
        before = tasks()
        clients = [await RawClient.tcp(address) for _ in range(40)]
        for i, client in enumerate(clients):
            await ask(client, f"/first/{i}")
        await all_parked(server, 40)
        assert tasks() <= before + 5  # not one task per idle connection (40 of them)
        # Each parked connection serves its next request, and is parked again after it.
        for i, client in enumerate(clients):
            await ask(client, f"/second/{i}")
        await all_parked(server, 40)
        for client in clients:
            await client.aclose()
        while len(server.connections):  # a client's close wakes its socket, which closes
            await trio.sleep(0.02)


async def test_pipelined_requests_reach_a_parked_connection_whole(
    nursery: trio.Nursery,
) -> None:
    server, address = await start_server(nursery)
    with trio.fail_after(HANG_GUARD):
        client = await RawClient.tcp(address)
        await ask(client, "/a")
        await all_parked(server, 1)
        # Two requests, the second split across writes: both answered, in order.
        await client.send(get("/b") + get("/c")[:10])
        await trio.sleep(0.05)
        await client.send(get("/c")[10:])
        for path in ("/b", "/c"):
            response = await client.read_response()
            assert response.body == path.encode()
        await client.aclose()


async def test_a_parked_connection_still_closes_at_its_keepalive_deadline(
    nursery: trio.Nursery,
) -> None:
    keepalive = PARK_AFTER + 0.5
    server, address = await start_server(nursery, keepalive_timeout=keepalive)
    with trio.fail_after(HANG_GUARD):
        client = await RawClient.tcp(address)
        await ask(client, "/x")
        started = trio.current_time()
        await all_parked(server, 1)
        assert await client.at_eof()
        assert trio.current_time() - started >= keepalive - 0.1
        while len(server.connections):
            await trio.sleep(0.02)
        await client.aclose()


async def test_bytes_that_begin_no_request_do_not_extend_a_parked_deadline(
    nursery: trio.Nursery,
) -> None:
    """Bare CRLFs wake a parked connection, but its deadline is the one it fell idle with:
    a client sending them forever is still closed."""
    server, address = await start_server(nursery, keepalive_timeout=PARK_AFTER + 0.5)
    with trio.fail_after(HANG_GUARD):
        client = await RawClient.tcp(address)
        await ask(client, "/x")
        await all_parked(server, 1)

        async def nudge() -> None:
            while await client.try_send(b"\r\n"):
                await trio.sleep(PARK_AFTER / 2)

        async with trio.open_nursery() as inner:
            inner.start_soon(nudge)
            assert await client.at_eof()
            inner.cancel_scope.cancel()
        await client.aclose()


async def test_shutdown_closes_parked_connections(nursery: trio.Nursery) -> None:
    server, address = await start_server(nursery)
    with trio.fail_after(HANG_GUARD):
        clients = [await RawClient.tcp(address) for _ in range(5)]
        for client in clients:
            await ask(client, "/x")
        await all_parked(server, 5)
        server.drain()
        for client in clients:
            assert await client.at_eof()
            await client.aclose()
        assert len(server.connections) == 0


async def test_a_connection_that_never_sends_is_parked_and_timed_out(
    nursery: trio.Nursery,
) -> None:
    server, address = await start_server(nursery, keepalive_timeout=PARK_AFTER + 0.3)
    with trio.fail_after(HANG_GUARD):
        client = await RawClient.tcp(address)
        await all_parked(server, 1)
        assert await client.at_eof()
        await client.aclose()


async def test_active_connections_metric_counts_parked_connections(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_mock(nursery, ["m"])
    config = router_config([{"name": "mock", "url": url, "models": ["m"]}],
                           server={"frontend": "native", "idle_park_after": PARK_AFTER})
    handle = await start_router(nursery, config)
    address = handle.url.removeprefix("http://")
    with trio.fail_after(HANG_GUARD):
        idle = [await RawClient.tcp(address) for _ in range(3)]
        for client in idle:
            await client.send(get("/health"))
            assert (await client.read_response()).status == 200
        await trio.sleep(PARK_AFTER + 0.6)  # the router's sweeper runs every 0.5 s at most
        probe = await RawClient.tcp(address)
        await probe.send(get("/metrics"))
        text = (await probe.read_response()).body.decode()
        line = next(x for x in text.splitlines() if x.startswith("active_connections "))
        assert float(line.split()[-1]) == 4.0  # three idle (parked) + the probe
        for client in (*idle, probe):
            await client.aclose()


async def test_park_after_zero_keeps_every_connection_on_its_task(
    nursery: trio.Nursery,
) -> None:
    server, address = await start_server(nursery, park_after=0)
    with trio.fail_after(HANG_GUARD):
        client = await RawClient.tcp(address)
        await ask(client, "/x")
        await trio.sleep(PARK_AFTER + 0.3)
        assert len(server.served) == 1 and len(server.connections) == 1
        await ask(client, "/y")
        await client.aclose()


async def test_idle_park_after_zero_in_the_config_switches_parking_off(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_mock(nursery, ["m"])
    handles = []
    for park_after in (0, PARK_AFTER):
        config = router_config([{"name": "mock", "url": url, "models": ["m"]}],
                               server={"frontend": "native", "idle_park_after": park_after})
        handles.append(await start_router(nursery, config))
    with trio.fail_after(HANG_GUARD):
        await trio.sleep(0.2)
        counts = []
        for handle in handles:
            before = tasks()
            clients = [await RawClient.tcp(handle.url.removeprefix("http://"))
                       for _ in range(20)]
            for client in clients:
                await client.send(get("/health"))
                assert (await client.read_response()).status == 200
            await trio.sleep(PARK_AFTER + 0.6)  # a sweep (every 0.5 s at most) after it
            counts.append(tasks() - before)
            for client in clients:
                await client.aclose()
            await trio.sleep(0.3)  # their connections' tasks end
        # Other tasks of the process come and go: the 20 connections' tasks are the gap.
        kept, parked = counts
        assert parked < 10 <= kept, counts


async def test_tls_connections_are_not_parked(nursery: trio.Nursery) -> None:
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    listeners = await open_listeners(["127.0.0.1:0"])
    server = HTTPServer(listeners, echo_path, HTTPLimits(), timer_resolution=0.02,
                        ssl_context=server_ctx)
    nursery.start_soon(server.run)
    host, port = listener_address(listeners[0]).split(":")
    with trio.fail_after(HANG_GUARD):
        tcp = await trio.open_tcp_stream(host, int(port))
        client = RawClient(trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1"))
        await ask(client, "/tls")
        await trio.sleep(PARK_AFTER + 0.2)
        assert len(server.served) == 1  # still served by its task: TLS state lives there
        await ask(client, "/tls-again")
        await client.aclose()


async def test_parking_does_not_wait_for_a_coarse_timer_sweep(nursery: trio.Nursery) -> None:
    """Asked for a 30 s timer resolution, the server still sweeps at half of
    ``park_after``: a burst of idle clients must not keep their tasks for a whole sweep."""
    listeners = await open_listeners(["127.0.0.1:0"])
    server = HTTPServer(listeners, echo_path, HTTPLimits(park_after=PARK_AFTER),
                        shutdown_timeout=2.0, timer_resolution=30.0)
    assert server.timer_resolution <= PARK_AFTER / 2
    nursery.start_soon(server.run)
    address = listener_address(listeners[0])
    with trio.fail_after(HANG_GUARD):
        clients = [await RawClient.tcp(address) for _ in range(3)]
        for client in clients:
            await ask(client, "/x")
        await all_parked(server, 3)
        for client in clients:
            await ask(client, "/y")  # woken, served
            await client.aclose()


async def test_a_request_racing_the_park_is_answered(nursery: trio.Nursery) -> None:
    """Clients that send their next request right around ``park_after``: whichever way
    each race goes (parked first, or bytes first), every request is answered once, in
    order, and the connection stays usable."""
    server, address = await start_server(nursery)
    with trio.fail_after(HANG_GUARD):
        clients = [await RawClient.tcp(address) for _ in range(20)]
        for i, client in enumerate(clients):
            await ask(client, f"/a/{i}")
        # Spread over the sweep that parks them: some land before, some after it.
        for step in range(6):
            await trio.sleep(PARK_AFTER / 3)
            for i, client in enumerate(clients):
                if i % 6 == step:
                    await client.send(get(f"/b/{i}") + get(f"/c/{i}"))
        for i, client in enumerate(clients):
            for path in (f"/b/{i}", f"/c/{i}"):
                response = await client.read_response()
                assert response.body == path.encode()
            await ask(client, f"/d/{i}")
        assert len(server.connections) == 20  # none was lost on the way
        for client in clients:
            await client.aclose()


async def test_a_connection_waiting_for_its_next_request_holds_no_request_body(
    nursery: trio.Nursery,
) -> None:
    """The last request (its body may be megabytes) is let go once answered, not kept
    until the next one arrives: a connection that is never parked waits holding nothing
    of it."""
    _server, address = await start_server(nursery, park_after=0)
    body = b"x" * (4 << 20)
    head = (f"POST /big HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n\r\n"
            .encode())
    with trio.fail_after(HANG_GUARD):
        client = await RawClient.tcp(address)
        await ask(client, "/warm")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await client.send(head + body)
            response = await client.read_response()
            assert response.body == b"/big"
            await trio.sleep(0.1)  # the server is back waiting for the next request
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < len(body) // 4, held
        await ask(client, "/after")
        await client.aclose()
