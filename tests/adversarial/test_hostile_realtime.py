"""Hostile WebSocket clients of the Realtime route (``GET /v1/realtime``), against a router
process whose Realtime backend is a mock upstream in a thread of the test process (so its
memory is not the router's):

* a client that stops reading while the upstream sends 128 MiB of audio: the router's RSS
  stays within 48 MiB of its start (backpressure: each hop queues one message), and the
  session ends as the client's timeout;
* a frame that declares an enormous length, fragments that never end a message, and frames
  past ``realtime.max_message_size`` (1 MiB here): closed with 1009 once the limit is
  reached, nothing buffered past it;
* a ping flood from a client that reads nothing: pongs back up into TCP, not into memory;
* malformed upgrade requests: every one answered at once with a 4xx in OpenAI's shape;
* many sessions abandoned without a close frame: every descriptor comes back;
* at a ``per_backend`` limit: sessions dropped again and again give their slots back, and a
  handshake flood while both backends are full is answered 429 without asking an upstream.

A second client is served promptly throughout (``served_during`` / ``case_guard``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from harness import (
    STEP,
    RawClient,
    RouterProcess,
    ThreadedUpstream,
    Usage,
    assert_bounded,
    one_request,
    router_config,
    served_during,
    settle_fds,
)

from continuum.testing import MockUpstream, RealtimeScript, serve_mock

MODEL = "gpt-realtime"
#: Audio the upstream sends to a client that reads nothing: 2,000 deltas of 64 KiB of base64.
FLOOD_CHUNKS, FLOOD_PCM = 2000, 48 * 1024
MAX_MESSAGE = 1 << 20


class MockServer:
    """A :class:`MockUpstream` (its Realtime mode on the same port) for ``ThreadedUpstream``."""

    def __init__(self) -> None:
        self.mock = MockUpstream(models=[MODEL, "flood"], name="rt")
        self.mock.realtime.audio_base64(FLOOD_PCM)
        self.address = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with trio.open_nursery() as nursery:
            self.address = await nursery.start(serve_mock, self.mock)
            task_status.started(self.address)


def threaded_mock() -> Iterator[MockServer]:
    with ThreadedUpstream(MockServer()) as server:  # type: ignore[arg-type]
        yield server  # type: ignore[misc]


#: The admission cases count the sessions their upstream opened, so each router has a mock of
#: its own: a session another case's router is still opening cannot change the count.
upstream = pytest.fixture(scope="module")(threaded_mock)
limited_upstream = pytest.fixture(scope="module")(threaded_mock)
per_backend_upstream = pytest.fixture(scope="module")(threaded_mock)


@pytest.fixture(scope="module")
def router(upstream: MockServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProcess]:
    config = router_config(
        [{"name": "rt", "url": upstream.url, "models": [MODEL, "flood"]}],
        realtime={"max_message_size": MAX_MESSAGE, "ping_interval": "500ms",
                  "ping_timeout": "1s", "close_timeout": "1s", "connect_timeout": "3s"},
        server={"request_read_timeout": "2s"},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("realtime")) as process:
        yield process


# -- a raw WebSocket client --------------------------------------------------------------------

_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(model: str = MODEL, *, extra: bytes = b"", path: str = "/v1/realtime") -> bytes:
    return (f"GET {path}?model={model} HTTP/1.1\r\nHost: r\r\n".encode()
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            + b"Sec-WebSocket-Key: " + _KEY + b"\r\n" + extra + b"\r\n")


def frame(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None) -> bytes:
    """A client frame, masked with a zero key (the payload goes as it is)."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    return head + b"\x00\x00\x00\x00" + payload


async def open_session(router: RouterProcess, model: str = MODEL, *,
                       receive_buffer: int | None = None) -> RawClient:
    client = await RawClient.tcp(router.address, receive_buffer=receive_buffer)
    await client.send(upgrade(model))
    head = await client.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head[:200]
    return client


async def close_code(client: RawClient) -> int | None:
    """Read frames until a close frame (its code) or the end of the connection (None)."""
    with trio.fail_after(STEP):
        while True:
            try:
                head = await client.read_exactly(2)
            except AssertionError:  # the connection ended without a close frame
                return None
            opcode, size = head[0] & 0x0F, head[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", await client.read_exactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await client.read_exactly(8))[0]
            payload = await client.read_exactly(size) if size else b""
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


# -- cases ---------------------------------------------------------------------------------------


async def test_a_client_that_stops_reading_does_not_grow_the_router(
    router: RouterProcess, upstream: MockServer
) -> None:
    upstream.mock.realtime.script = RealtimeScript(
        text_chunks=1, audio_chunks=FLOOD_CHUNKS, audio_chunk_bytes=FLOOD_PCM)
    before = Usage.of(router)
    sent_before = upstream.mock.realtime.counters.events_sent
    peak = before.rss_kib
    async with served_during(router.address):
        client = await open_session(router, receive_buffer=4096)
        await client.send(frame(0x1, b'{"type": "response.create"}'))
        # The client reads nothing more; the upstream sends until backpressure holds it.
        with trio.fail_after(30):
            last, still = -1, 0
            while still < 10:
                await trio.sleep(0.1)
                peak = max(peak, router.rss_kib())
                sent = upstream.mock.realtime.counters.events_sent
                still, last = (still + 1 if sent == last else 0), sent
        held = upstream.mock.realtime.counters.events_sent - sent_before
        await client.aclose()
    assert held < FLOOD_CHUNKS // 4, f"{held} of {FLOOD_CHUNKS} events got past backpressure"
    grown = (peak - before.rss_kib) / 1024
    assert grown < 48, f"the router's RSS grew by {grown:.1f} MiB for one stuck client"
    await assert_bounded(router, before, rss_mib=48)


@pytest.mark.parametrize("attack", ["huge_declared", "oversized", "endless_fragments"])
async def test_messages_past_max_message_size_are_closed_with_1009(
    router: RouterProcess, attack: str
) -> None:
    before = Usage.of(router)
    chunk = os.urandom(64 * 1024)
    if attack == "huge_declared":
        data = frame(0x2, b"", length=1 << 62)
        pieces = [chunk] * 40  # 2.5 MiB of a frame that would never end
    elif attack == "oversized":
        data = frame(0x2, chunk * 24)  # one 1.5 MiB binary message
        pieces = []
    else:
        data = frame(0x2, chunk, fin=False)
        pieces = [frame(0x0, chunk, fin=False)] * 40
    async with served_during(router.address):
        deadline = trio.current_time() + 1.0  # attack again and again for a second
        rounds = 0
        while rounds < 3 or trio.current_time() < deadline:
            rounds += 1
            client = await open_session(router)
            await client.try_send(data)
            for piece in pieces:
                if not await client.try_send(piece):
                    break
            assert await close_code(client) == 1009
            await client.aclose()
    await assert_bounded(router, before, rss_mib=32)


async def test_a_ping_flood_from_a_client_that_reads_nothing(router: RouterProcess) -> None:
    before = Usage.of(router)
    async with served_during(router.address):
        client = await open_session(router, receive_buffer=4096)
        ping = frame(0x9, b"p" * 125)
        sent = 0
        with trio.move_on_after(3):
            while sent < 20 << 20 and await client.try_send(ping * 64):
                sent += len(ping) * 64
        await client.aclose()
    await assert_bounded(router, before, rss_mib=32)


@pytest.mark.parametrize(("extra", "status"), [
    (b"Sec-WebSocket-Version: 8\r\n", 426),
    (b"Content-Length: 5\r\n", 400),
    (b"Sec-WebSocket-Protocol: " + b"x," * 40_000 + b"\r\n", 431),
])
async def test_malformed_upgrades_are_answered_at_once(
    router: RouterProcess, extra: bytes, status: int
) -> None:
    data = upgrade(extra=extra).replace(b"Sec-WebSocket-Version: 13\r\n", b"", 1 if b"Version"
                                        in extra else 0)
    if b"Content-Length" in extra:
        data += b"hello"
    response = await one_request(router.address, data)
    assert response is not None and response.status == status
    assert "error" in response.json()


@pytest.mark.parametrize("request_bytes", [
    b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"POST /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    + _KEY + b"\r\ncontent-length: 0\r\n\r\n",
    b"GET /v1/realtime HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + _KEY + b"\r\n\r\n",
])
async def test_handshakes_the_router_refuses(router: RouterProcess,
                                             request_bytes: bytes) -> None:
    response = await one_request(router.address, request_bytes)
    assert response is not None and 400 <= response.status < 500
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_abandoned_sessions_give_every_descriptor_back(router: RouterProcess) -> None:
    before = Usage.of(router)
    async with served_during(router.address):
        deadline = trio.current_time() + 1.0
        rounds = 0
        while rounds < 5 or trio.current_time() < deadline:
            rounds += 1
            clients = [await open_session(router) for _ in range(20)]
            for client in clients:
                await client.aclose()  # no close frame: the TCP connection just ends
    assert await settle_fds(router, before.fds + 8) <= before.fds + 8
    await assert_bounded(router, before, rss_mib=32)


async def test_a_handshake_that_never_completes(router: RouterProcess) -> None:
    """The head in pieces, never finished: the slow-client timer (2 s here) ends it."""
    before = Usage.of(router)
    clients: list[Any] = []
    async with served_during(router.address):
        for _ in range(50):
            client = await RawClient.tcp(router.address)
            await client.send(upgrade()[:60])
            clients.append(client)
        with trio.fail_after(STEP):
            for client in clients:
                assert (await client.read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 408 ")
    for client in clients:
        await client.aclose()
    await assert_bounded(router, before, rss_mib=32)


# -- admission (keys and limits at the handshake) -----------------------------------------------

HELD = "sk-realtime-held-0123456789"
NARROW = "sk-realtime-narrow-0123456789"


@pytest.fixture(scope="module")
def limited_router(limited_upstream: MockServer, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RouterProcess]:
    """Blocking keys: one allowed two sessions at once, one allowed another model only."""
    config = router_config(
        [{"name": "rt", "url": limited_upstream.url, "models": [MODEL]}],
        api_keys={"mode": "blocking", "api_keys": [
            {"key": HELD, "id": "held", "max_concurrent": 2},
            {"key": NARROW, "id": "narrow", "models": ["gpt-4o"]}]},
        realtime={"close_timeout": "1s"},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("realtime-limited")) as process:
        yield process
        process.assert_alive()


async def test_handshakes_refused_by_admission_are_answered_at_once(
    limited_router: RouterProcess, limited_upstream: MockServer
) -> None:
    """While a key holds both its sessions, a flood of its handshakes (and of hostile keys:
    huge, garbage, in the subprotocol, a key refused the model) is each answered at once
    with 401/403/429 before any upstream is asked; memory and descriptors stay bounded, a
    second client is served, and the key's slots come back when its sessions end."""
    router = limited_router
    held = [await open_session_with(router, HELD) for _ in range(2)]
    before = Usage.of(router)
    sessions = await upstream_sessions(limited_upstream, 2)
    hostile = [
        (f"Authorization: Bearer {HELD}\r\n".encode(), 429),
        (f"Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.{HELD}\r\n".encode(), 429),
        (f"Authorization: Bearer {NARROW}\r\n".encode(), 403),
        (b"Authorization: Bearer " + b"k" * 30_000 + b"\r\n", 401),
        (b"Sec-WebSocket-Protocol: openai-insecure-api-key.\xff\xfe, x\r\n", 401),
        (b"x-api-key: \tsk-\xfe weird\t\r\n", 401),
    ]
    sent = 0
    async with served_during(router.address, chat=False):
        deadline = trio.current_time() + 2.0
        while sent < 60 or trio.current_time() < deadline:
            extra, status = hostile[sent % len(hostile)]
            response = await one_request(router.address, upgrade(extra=extra))
            assert response is not None and response.status == status, (extra[:60], response)
            assert "error" in response.json()
            sent += 1
    assert limited_upstream.mock.realtime.counters.sessions == sessions  # no upstream was asked
    await assert_bounded(router, before, rss_mib=16)
    for client in held:
        await client.aclose()
    with trio.fail_after(STEP):  # the leases come back once the sessions have ended
        while True:
            status, client = await handshake(router, HELD)
            await client.aclose()
            if status == 101:
                break
            assert status == 429
            await trio.sleep(0.05)


async def upstream_sessions(upstream: MockServer, opened: int) -> int:
    """The upstream's session count once it counts the ``opened`` sessions the router
    answered 101 for: the mock counts one just after its handshake, which may be after the
    router's 101 reached the client."""
    with trio.fail_after(STEP):
        while upstream.mock.realtime.counters.sessions < opened:
            await trio.sleep(0.01)
    return upstream.mock.realtime.counters.sessions


async def handshake(router: RouterProcess, key: str) -> tuple[int, RawClient]:
    """The status of a session's handshake with ``key`` ("": none), and its connection."""
    client = await RawClient.tcp(router.address)
    await client.send(upgrade(extra=f"Authorization: Bearer {key}\r\n".encode() if key else b""))
    with trio.fail_after(STEP):
        head = await client.read_until(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), client


async def open_session_with(router: RouterProcess, key: str) -> RawClient:
    status, client = await handshake(router, key)
    assert status == 101, status
    return client


@pytest.fixture(scope="module")
def per_backend_router(per_backend_upstream: MockServer,
                       tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[RouterProcess]:
    """Two Realtime backends (the same mock under two names), one session each at most."""
    config = router_config(
        [{"name": name, "url": per_backend_upstream.url, "models": [MODEL]}
         for name in ("rt1", "rt2")],
        rate_limiting={"limits": {"per_backend": {"max_concurrent": 1}}},
        realtime={"close_timeout": "1s"},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("realtime-per-backend")) as process:
        yield process
        process.assert_alive()


async def test_per_backend_limits_hold_under_a_handshake_flood_and_abandoned_sessions(
    per_backend_router: RouterProcess, per_backend_upstream: MockServer
) -> None:
    """Sessions opened and dropped without a close frame, again and again, never leak a
    ``per_backend`` slot; while both backends hold their one session, a flood of handshakes
    is answered 429 at once without asking any upstream; memory and descriptors stay bounded
    and a second client is served throughout."""
    router = per_backend_router
    before = Usage.of(router)
    opened = [0]  # sessions answered 101
    async with served_during(router.address, chat=False):
        deadline = trio.current_time() + 1.0
        rounds = 0
        while rounds < 5 or trio.current_time() < deadline:
            rounds += 1
            for client in await both_slots(router, opened):
                await client.aclose()  # no close frame: the TCP connection just ends
        held = await both_slots(router, opened)
        sessions = await upstream_sessions(per_backend_upstream, opened[0])
        refused = 0
        deadline = trio.current_time() + 1.0
        while refused < 40 or trio.current_time() < deadline:
            response = await one_request(router.address, upgrade())
            assert response is not None and response.status == 429, response
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            refused += 1
        # No upstream was asked.
        assert per_backend_upstream.mock.realtime.counters.sessions == sessions
        for client in held:
            await client.aclose()
        for client in await both_slots(router, opened):
            await client.aclose()
    assert await settle_fds(router, before.fds + 8) <= before.fds + 8
    await assert_bounded(router, before, rss_mib=32)


async def both_slots(router: RouterProcess, opened: list[int]) -> list[RawClient]:
    """Two sessions open at once, one per backend: waits (429 meanwhile) while the slots of
    sessions that just ended are being given back; a leaked slot never comes back. Every
    101 is counted in ``opened[0]``."""
    with trio.fail_after(STEP):
        while True:
            pair: list[RawClient] = []
            status = 101
            while status == 101 and len(pair) < 2:
                status, client = await handshake(router, "")
                pair.append(client)
                opened[0] += status == 101
            if status == 101:
                return pair
            assert status == 429, status
            for client in pair:
                await client.aclose()
            await trio.sleep(0.05)
