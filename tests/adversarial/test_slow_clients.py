"""Clients that do not read, read slowly, leave, or flood bytes while their answer runs.

Against a router process with ``server.write_timeout: 1s`` and ``request.idle_timeout:
0.5s`` in front of a scripted upstream that streams without end or answers 8 MiB at once:

* a client that stops reading is disconnected after the write timeout, its stream never
  carries a broken chunk, and the backend is not blamed (no failure, still healthy);
* a slow but steady reader gets all of a large answer (the deadline moves with progress);
* bytes a client floods during its stream are not buffered (RSS stays bounded);
* other clients are served throughout.

Bounds, against RSS and descriptors at each case's start: RSS within 32 MiB once the attack
is over (64 MiB after the 8 MiB answers, 128 MiB after the uploads: the allocator keeps part
of what large bodies used; 104 MiB while six clients hold 8 MiB answers unread: one copy
each, not two), and every descriptor back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio
from harness import (
    SSE_HEAD,
    RawClient,
    RouterProcess,
    ScriptedUpstream,
    ThreadedUpstream,
    UpstreamConn,
    UpstreamRequest,
    Usage,
    assert_bounded,
    chat_body,
    chunk,
    http_request,
    json_answer,
    one_request,
    router_config,
    served_during,
    settle_fds,
    sse_chunk_event,
)

BIG = 8 * 1024 * 1024
STEP = 15


async def endless_stream(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """SSE events of ~30 KB, forever (until the router closes the connection)."""
    await conn.send(SSE_HEAD)
    event = chunk(sse_chunk_event(request.model, "x" * 30_000))
    while True:
        await conn.send(event)
        await trio.sleep(0.002)


_BIG_ANSWER = json_answer({"id": "big", "object": "chat.completion", "model": "big-plain",
                           "choices": [{"index": 0, "finish_reason": "stop", "message": {
                               "role": "assistant", "content": "y" * BIG}}]})


async def big_plain(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(_BIG_ANSWER)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    handlers = {"endless-stream": endless_stream, "big-plain": big_plain}
    with ThreadedUpstream(ScriptedUpstream(handlers)) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def router(upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProcess]:
    config = router_config(
        [{"name": "scripted", "url": upstream.url,
          "models": ["endless-stream", "big-plain", "scripted"]}],
        server={"write_timeout": "1s", "keepalive_timeout": "3s"},
        request={"idle_timeout": "0.5s", "max_retries": 0},
        circuit_breaker={"enabled": True, "failure_threshold": 2},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("slow-clients")) as process:
        yield process
        process.assert_alive()


async def scripted_backend(router: RouterProcess) -> dict[str, object]:
    response = await one_request(router.address, http_request("GET", "/admin/health"))
    assert response is not None and response.status == 200
    [backend] = [b for b in response.json()["backends"] if b["name"] == "scripted"]
    assert isinstance(backend, dict)
    return backend


async def assert_backend_not_blamed(router: RouterProcess) -> None:
    backend = await scripted_backend(router)
    assert backend["failures"] == 0, backend
    assert backend["healthy"] is True, backend
    assert backend["circuit_breaker"]["state"] == "closed", backend  # type: ignore[index]


def check_chunk_framing(data: bytes) -> int:
    """Every chunk in ``data`` is well formed; only the last may be cut short (the
    connection closed mid-chunk). Returns the number of whole chunks."""
    pos = whole = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return whole  # cut inside a size line
        size = int(data[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            assert data[start:] in (b"\r\n", b"\r", b""), data[start:start + 100]
            return whole
        if len(data) < start + size + 2:
            return whole  # the last chunk, cut short by the close
        assert data[start + size:start + size + 2] == b"\r\n", (
            f"chunk {whole} declared {size} bytes but is not followed by CRLF")
        whole += 1
        pos = start + size + 2


async def open_stream_unread(router: RouterProcess) -> RawClient:
    """A streaming request whose client reads the head and then nothing."""
    client = await RawClient.tcp(router.address, receive_buffer=16384)
    await client.send(http_request("POST", "/v1/chat/completions",
                                   chat_body("endless-stream", stream=True)))
    head = await client.read_head()
    assert head.status == 200 and head.header("transfer-encoding") == "chunked", head
    return client


async def test_a_stream_nobody_reads_is_cut_cleanly_and_blames_no_backend(
    router: RouterProcess,
) -> None:
    before = Usage.of(router)
    async with served_during(router.address):
        clients = [await open_stream_unread(router) for _ in range(3)]
        await trio.sleep(2.5)  # > idle_timeout + write_timeout, reading nothing
    for client in clients:
        with trio.fail_after(STEP):
            rest = bytes(client.buffer) + b"".join([await _read_all(client)])
        check_chunk_framing(rest)
        assert client.eof
        await client.aclose()
    await assert_backend_not_blamed(router)
    await assert_bounded(router, before, rss_mib=32)


async def _read_all(client: RawClient) -> bytes:
    parts = []
    while True:
        try:
            data = await client.stream.receive_some(1 << 20)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            client.eof = True
            return b"".join(parts)
        parts.append(data)


async def test_large_plain_answers_nobody_reads_are_dropped_after_the_write_timeout(
    router: RouterProcess,
) -> None:
    before = Usage.of(router)
    async with served_during(router.address):
        clients = []
        for _ in range(6):
            # A small receive buffer: the kernel must not hold the whole answer for it.
            client = await RawClient.tcp(router.address, receive_buffer=16384)
            await client.send(http_request("POST", "/v1/chat/completions",
                                           chat_body("big-plain")))
            clients.append(client)
        await trio.sleep(0.6)  # answers read from upstream, now stuck on the clients
        held = (router.rss_kib() - before.rss_kib) / 1024
        # One copy each (48 MiB) and the allocator's slack for the upstream reads (~76 MiB
        # measured); a copy of each body into its head buffer would add another 48.
        assert held < 104, f"{held:.0f} MiB held for six unread 8 MiB answers"
        await trio.sleep(1.5)  # past write_timeout without a byte taken
    for client in clients:
        with trio.fail_after(STEP):
            received = await client.drain_until_eof()
        assert received < BIG, "a client that read nothing got the whole answer"
        await client.aclose()
    await assert_backend_not_blamed(router)
    # The answers are gone; the allocator may keep part of what they used.
    await assert_bounded(router, before, rss_mib=64)


async def test_a_slow_steady_reader_gets_the_whole_large_answer(router: RouterProcess) -> None:
    """64 KiB every 20 ms: far longer than write_timeout in all, never idle that long."""
    with trio.fail_after(60):
        client = await RawClient.tcp(router.address)
        await client.send(http_request("POST", "/v1/chat/completions", chat_body("big-plain")))
        received = bytearray()
        while True:
            await trio.sleep(0.02)
            try:
                data = await client.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                break
            received += data
            head, sep, body = bytes(received).partition(b"\r\n\r\n")
            if sep and b"content-length: %d" % len(body) in head:
                break
        await client.aclose()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert json.loads(body)["choices"][0]["message"]["content"] == "y" * BIG


async def test_flooding_bytes_during_a_stream_is_not_buffered(router: RouterProcess) -> None:
    before = Usage.of(router)
    flooded = 0
    async with served_during(router.address):
        client = await RawClient.tcp(router.address)
        await client.send(http_request("POST", "/v1/chat/completions",
                                       chat_body("endless-stream", stream=True)))
        assert (await client.read_head()).status == 200
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                nonlocal flooded
                junk = b"j" * 65536
                while await client.try_send(junk):
                    flooded += len(junk)

            async def read() -> None:
                while await client.fill(1 << 20):
                    client.buffer.clear()

            nursery.start_soon(flood)
            nursery.start_soon(read)
            await trio.sleep(2.0)
            grown = (router.rss_kib() - before.rss_kib) / 1024
            nursery.cancel_scope.cancel()
        await client.aclose()
    # The router stopped reading after its cap: what went out sits in kernel buffers.
    assert flooded < 64 * 1024 * 1024, f"{flooded >> 20} MiB taken from the flooding client"
    assert grown < 32, f"RSS grew {grown:.0f} MiB while a client flooded its stream"
    await assert_backend_not_blamed(router)
    await assert_bounded(router, before, rss_mib=32)


async def test_a_client_that_resets_mid_stream_frees_everything(router: RouterProcess) -> None:
    before = Usage.of(router)
    for _ in range(5):
        client = await open_stream_unread(router)
        await client.fill()
        await client.aclose()  # unread data in its buffer: the close is a reset
    await settle_fds(router, before.fds + 2)
    await assert_backend_not_blamed(router)
    await assert_bounded(router, before, rss_mib=32)


async def test_uploads_at_full_speed_leave_others_served(router: RouterProcess) -> None:
    """Large bodies sent as fast as the router reads them, by three clients at once, again
    and again: the read loops yield, others are served. (Last in the module: the
    allocator keeps some of what large bodies used, so RSS is compared with just before.)"""
    before = Usage.of(router)
    body = b'{"model": "scripted", "x": "' + b"u" * (2 * 1024 * 1024) + b'"}'
    request = http_request("POST", "/v1/chat/completions", body)
    deadline = trio.current_time() + 2.0
    answered = 0

    async def upload() -> None:
        nonlocal answered
        while trio.current_time() < deadline:
            response = await one_request(router.address, request)
            assert response is not None and response.status == 200, response
            answered += 1

    async with served_during(router.address), trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(upload)
    assert answered >= 3
    await assert_bounded(router, before, rss_mib=128)
