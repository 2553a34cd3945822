"""The stream pump (``continuum.net.stream_pump``): pass-through streams on plain HTTP/1.1
sockets are forwarded by one task, with every behaviour of the task's own loop.

Each test checks ``router.pump.pumped`` (how many streams the pump took): a test of the
pumped path fails when the stream took the plain loop instead. Upstreams are raw HTTP/1.1
servers on loopback, scripted per test; clients are httpx or raw sockets.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from continuum import RouterHandle
from helpers import router_config, start_mock, start_router

HANG_GUARD = 15
MODEL = "m"
CHAT = "/v1/chat/completions"
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
EVENTS = tuple(b'data: {"choices":[{"index":0,"delta":{"content":"t%d"}}]}\n\n' % i
               for i in range(12))
USAGE = (b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":12,'
         b'"total_tokens":19}}\n\n')
DONE = b"data: [DONE]\n\n"
WHOLE = b"".join(EVENTS) + USAGE + DONE
REQUEST = (b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}')

Script = Callable[[trio.SocketStream], Awaitable[bool]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def paced(pause: float) -> Script:
    """A complete chunked SSE answer, an event per chunk ``pause`` seconds apart; the
    connection stays open."""

    async def script(stream: trio.SocketStream) -> bool:
        await stream.send_all(HEAD)
        for event in (*EVENTS, USAGE, DONE):
            await stream.send_all(chunk(event))
            if pause:
                await trio.sleep(pause)
        await stream.send_all(b"0\r\n\r\n")
        return True

    return script


async def until_closed(stream: trio.SocketStream) -> None:
    """Send nothing more; return once the router closed the connection."""
    while await stream.receive_some(65536):
        pass


class Upstream:
    """A raw HTTP/1.1 upstream: every POST is answered by ``script`` (which returns whether
    the connection may serve another request), ``GET`` by a model list. Counts connections
    opened and closed."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.opened = 0
        self.closed = 0
        self.closed_event = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.opened += 1
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    more = await stream.receive_some(65536)
                    if not more:
                        return
                    data += more
                head, data = data.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(data) < length:
                    data += await stream.receive_some(65536)
                data = data[length:]
                if head.startswith(b"GET"):
                    body = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json"
                                          b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                if not await self.script(stream):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed += 1
            self.closed_event.set()
            await trio.aclose_forcefully(stream)

    async def wait_closed(self, count: int) -> None:
        while self.closed < count:
            self.closed_event = trio.Event()
            await self.closed_event.wait()


async def start(nursery: trio.Nursery, script: Script, **sections: dict[str, object]
                ) -> tuple[RouterHandle, Upstream]:
    upstream = Upstream(script)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, upstream.handle, listeners)
    port = listeners[0].socket.getsockname()[1]
    router = await start_router(nursery, router_config(
        [{"name": "up", "url": f"http://127.0.0.1:{port}", "models": [MODEL]}], **sections))
    return router, upstream


async def post(router: RouterHandle, path: str = CHAT, body: bytes = REQUEST) -> httpx.Response:
    async with httpx.AsyncClient(base_url=router.url, timeout=HANG_GUARD) as client:
        return await client.post(path, content=body,
                                 headers={"content-type": "application/json"})


async def pumped_answer(nursery: trio.Nursery, script: Script, **sections: dict[str, object]
                        ) -> tuple[bytes, RouterHandle]:
    """One streamed chat request through a router on ``script``'s upstream: the body it
    got, once the pump is known to have taken the stream."""
    router, _ = await start(nursery, script, **sections)
    with trio.fail_after(HANG_GUARD):
        r = await post(router)
    assert r.status_code == 200
    assert router.pump is not None and router.pump.pumped == 1
    return r.content, router


async def raw_client(router: RouterHandle) -> trio.SocketStream:
    """A raw client that has sent one streamed chat request."""
    host, port = router.addresses[0].rsplit(":", 1)
    client = await trio.open_tcp_stream(host, int(port))
    await client.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                          b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(REQUEST), REQUEST))
    return client


async def read_until(client: trio.SocketStream, mark: bytes) -> bytes:
    data = b""
    while mark not in data:
        more = await client.receive_some(65536)
        if not more:
            break
        data += more
    return data


def reset(client: trio.SocketStream) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashed."""
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.socket.close()


def dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 answer (head included in ``raw``)."""
    rest = raw.split(b"\r\n\r\n", 1)[1]
    body = b""
    while rest:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if not size:
            break
        body += rest[:size]
        rest = rest[size + 2:]
    return body


async def metric(router: RouterHandle, prefix: str) -> float:
    async with httpx.AsyncClient(base_url=router.url) as client:
        text = (await client.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


# -- the pumped path ------------------------------------------------------------------------


async def test_a_pass_through_stream_is_pumped_whole_and_its_usage_counted(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="continuum.access")
    router, upstream = await start(nursery, paced(0), logging={"access_log": True})
    with trio.fail_after(HANG_GUARD):
        first = await post(router)
        second = await post(router)  # the upstream connection was pooled again
        assert router.pump is not None and router.pump.pumped == 2
        assert first.status_code == second.status_code == 200
        assert first.content == second.content == WHOLE
        assert first.headers["x-continuum-backend"] == "up"
        assert upstream.closed == 0  # the completed exchanges went back to the pool
        await trio.sleep(0.3)  # the metrics sink drains every 100 ms
        assert await metric(router, 'continuum_tokens_total{backend="up",'
                                    'direction="completion"') == 24
    lines = [r.getMessage() for r in caplog.records if r.name == "continuum.access"]
    assert any("status=200" in line and CHAT in line for line in lines)
    assert router.backends["up"].failures == 0


async def test_a_dripped_answer_is_pumped_byte_identical(nursery: trio.Nursery) -> None:
    async def drip(stream: trio.SocketStream) -> bool:
        wire = HEAD + b"".join(chunk(e) for e in (*EVENTS, USAGE, DONE)) + b"0\r\n\r\n"
        await stream.send_all(wire[:len(HEAD) + 3])  # the head, and a bit of the first chunk
        for i in range(len(HEAD) + 3, len(wire), 7):
            await stream.send_all(wire[i:i + 7])
            await trio.sleep(0.001)
        return True

    content, _ = await pumped_answer(nursery, drip)
    assert content == WHOLE


async def test_a_close_delimited_answer_is_pumped_to_its_end(nursery: trio.Nursery) -> None:
    async def close_delimited(stream: trio.SocketStream) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"connection: close\r\n\r\n" + EVENTS[0])
        for event in (*EVENTS[1:], USAGE, DONE):
            await trio.sleep(0.005)
            await stream.send_all(event)
        return False

    content, _ = await pumped_answer(nursery, close_delimited)
    assert content == WHOLE


async def test_translated_and_hypercorn_streams_are_not_pumped(nursery: trio.Nursery) -> None:
    _mock, url = await start_mock(nursery, [MODEL])
    backends = [{"name": "a", "url": url, "models": [MODEL]}]
    native = await start_router(nursery, router_config(backends))
    asgi = await start_router(nursery, router_config(backends,
                                                     server={"frontend": "hypercorn"}))
    anthropic = (b'{"model":"m","stream":true,"max_tokens":20,'
                 b'"messages":[{"role":"user","content":"hi"}]}')
    with trio.fail_after(HANG_GUARD):
        translated = await post(native, "/v1/messages", anthropic)  # OpenAI upstream
        assert translated.status_code == 200 and b"event: message_stop" in translated.content
        assert native.pump is not None and native.pump.pumped == 0
        plain = await post(asgi)
        assert plain.status_code == 200 and plain.content.endswith(DONE)
        assert asgi.pump is not None and asgi.pump.pumped == 0
        pumped = await post(native)  # the same stream on the native front is pumped
        assert pumped.content.endswith(DONE) and native.pump.pumped == 1


async def test_streams_to_a_tls_client_are_not_pumped(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    router, _ = await start(nursery, paced(0), server={
        "tls": {"cert_file": str(cert_file), "key_file": str(key_file)}})
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(verify=context, timeout=HANG_GUARD) as client:
            r = await client.post(f"https://{router.addresses[0]}{CHAT}", content=REQUEST,
                                  headers={"content-type": "application/json"})
    assert r.content == WHOLE
    assert router.pump is not None and router.pump.pumped == 0


async def test_streams_from_an_https_backend_are_not_pumped(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: str
) -> None:
    upstream = Upstream(paced(0))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        await upstream.handle(tls)  # type: ignore[arg-type]  # the same calls

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    port = listeners[0].socket.getsockname()[1]
    router = await start_router(nursery, router_config([
        {"name": "up", "url": f"https://127.0.0.1:{port}", "models": [MODEL],
         "ca_file": ca_file, "http2": "never"}]))
    with trio.fail_after(HANG_GUARD):
        r = await post(router)
    assert r.content == WHOLE
    assert router.pump is not None and router.pump.pumped == 0


# -- endings --------------------------------------------------------------------------------


async def test_a_quiet_upstream_ends_with_the_idle_timeout_error_event(
    nursery: trio.Nursery,
) -> None:
    async def stall(stream: trio.SocketStream) -> bool:
        await stream.send_all(HEAD + chunk(EVENTS[0]) + chunk(EVENTS[1]))
        await until_closed(stream)
        return False

    router, upstream = await start(nursery, stall, request={"idle_timeout": 0.5})
    with trio.fail_after(HANG_GUARD):
        content = (await post(router)).content
        await upstream.wait_closed(1)  # the half-read exchange is closed, not pooled
    assert router.pump is not None and router.pump.pumped == 1
    assert content.startswith(EVENTS[0] + EVENTS[1])
    assert b"request.idle_timeout" in content and b"upstream_timeout" in content
    assert content.endswith(DONE)


async def test_an_endless_stream_ends_at_the_streaming_timeout(nursery: trio.Nursery) -> None:
    async def endless(stream: trio.SocketStream) -> bool:
        await stream.send_all(HEAD)
        while True:
            await stream.send_all(chunk(EVENTS[0]))
            await trio.sleep(0.05)

    content, _ = await pumped_answer(nursery, endless, request={"streaming_timeout": 1})
    assert content.startswith(EVENTS[0] * 3)
    assert b"request.streaming_timeout" in content and content.endswith(DONE)


async def test_an_upstream_reset_mid_stream_ends_with_a_502_error_event(
    nursery: trio.Nursery,
) -> None:
    async def crash(stream: trio.SocketStream) -> bool:
        await stream.send_all(HEAD + chunk(EVENTS[0]))
        await trio.sleep(0.1)
        await stream.send_all(chunk(EVENTS[1]))
        await trio.sleep(0.1)
        reset(stream)
        return False

    content, router = await pumped_answer(nursery, crash)
    assert content.startswith(EVENTS[0] + EVENTS[1])
    assert b"Upstream stream failed" in content and b"bad_gateway" in content
    assert content.endswith(DONE)
    assert router.backends["up"].failures == 1


async def test_a_stream_without_its_end_marker_is_ended_as_truncated(
    nursery: trio.Nursery,
) -> None:
    async def truncated(stream: trio.SocketStream) -> bool:
        await stream.send_all(HEAD + chunk(EVENTS[0]))
        await trio.sleep(0.05)
        await stream.send_all(chunk(EVENTS[1]) + b"0\r\n\r\n")  # no [DONE]
        return True

    content, router = await pumped_answer(nursery, truncated)
    assert content.startswith(EVENTS[0] + EVENTS[1])
    assert b"before its end marker" in content and content.endswith(DONE)
    assert router.backends["up"].failures == 1


# -- clients --------------------------------------------------------------------------------


async def test_a_client_reset_while_the_upstream_is_quiet_closes_the_upstream(
    nursery: trio.Nursery,
) -> None:
    async def quiet(stream: trio.SocketStream) -> bool:
        await stream.send_all(HEAD + chunk(EVENTS[0]))
        await until_closed(stream)
        return False

    router, upstream = await start(nursery, quiet, request={"idle_timeout": 60})
    with trio.fail_after(HANG_GUARD):
        client = await raw_client(router)
        assert EVENTS[0] in await read_until(client, EVENTS[0])
        reset(client)
        await upstream.wait_closed(1)  # at once, not at the idle timeout
        assert router.pump is not None and router.pump.pumped == 1
        while router.backends["up"].in_flight:
            await trio.sleep(0.01)
    assert router.backends["up"].failures == 0  # the client left: not the backend's fault


async def test_a_half_closed_client_still_gets_the_whole_stream(nursery: trio.Nursery) -> None:
    router, _ = await start(nursery, paced(0.01))
    with trio.fail_after(HANG_GUARD):
        client = await raw_client(router)
        await client.send_eof()
        raw = await read_until(client, b"\r\n0\r\n\r\n")
    assert dechunk(raw) == WHOLE
    assert router.pump is not None and router.pump.pumped == 1


async def test_a_client_that_does_not_read_holds_the_upstream_back_until_the_write_timeout(
    nursery: trio.Nursery,
) -> None:
    big = b"data: " + b"x" * 60_000 + b"\n\n"
    sent = 0

    async def flood(stream: trio.SocketStream) -> bool:
        nonlocal sent
        await stream.send_all(HEAD)
        while True:
            await stream.send_all(chunk(big))
            sent += len(big)

    router, upstream = await start(nursery, flood, server={"write_timeout": 1})
    with trio.fail_after(HANG_GUARD):
        client = await raw_client(router)
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        await upstream.wait_closed(1)  # the write timeout ended the stream
        # Only what the socket buffers hold (both sides' kernel buffers, one chunk in the
        # pump): the upstream was held back, not read into memory.
        assert sent < 32 * 1024 * 1024
        assert router.pump is not None and router.pump.pumped == 1
        data = b""
        with trio.move_on_after(5):
            while more := await client.receive_some(1 << 20):
                data += more
        assert data.startswith(b"HTTP/1.1 200")  # then the connection was closed
    assert router.backends["up"].failures == 0  # a slow client is not the backend's fault


async def test_many_pumped_streams_leave_a_second_client_served(nursery: trio.Nursery) -> None:
    router, _ = await start(nursery, paced(0.05))
    done: list[bytes] = []
    with trio.fail_after(HANG_GUARD * 2):
        async with trio.open_nursery() as clients:
            for _ in range(100):
                clients.start_soon(lambda: _collect(router, done))
            await trio.sleep(0.2)
            with trio.fail_after(5):  # generous: the point is no stall, not a speed
                async with httpx.AsyncClient(base_url=router.url) as probe:
                    assert (await probe.get("/health")).status_code == 200
    assert done == [WHOLE] * 100
    assert router.pump is not None and router.pump.pumped == 100


async def _collect(router: RouterHandle, done: list[bytes]) -> None:
    done.append((await post(router)).content)


async def test_a_shutdown_ends_pumped_streams_with_its_error_event(
    nursery: trio.Nursery,
) -> None:
    async def slow(stream: trio.SocketStream) -> bool:
        await stream.send_all(HEAD)
        while True:
            await stream.send_all(chunk(EVENTS[0]))
            await trio.sleep(0.1)

    router, _ = await start(nursery, slow, server={"shutdown_timeout": 3})
    with trio.fail_after(HANG_GUARD):
        client = await raw_client(router)
        raw = await read_until(client, EVENTS[0])
        assert router.pump is not None and router.pump.pumped == 1
        router.shutdown()
        raw += await read_until(client, b"\r\n0\r\n\r\n")
    body = dechunk(raw)
    assert body.startswith(EVENTS[0]) and b"shutting down" in body and body.endswith(DONE)
    assert router.backends["up"].failures == 0
