"""The WebSocket relay (``continuum.net.websocket_relay``) between real clients (the official
openai SDK's realtime client, websockets, raw sockets) and the mock Realtime upstream, through
the small relay server in ``realtime_relay_server.py``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
import trio
import trio.testing
import trio_websocket
from realtime_relay_server import RelayServer, start_relay
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from continuum.core.realtime import upstream_target
from continuum.net.websocket_relay import (
    HandshakeFailed,
    RelaySettings,
    RelayStats,
    ReplayStream,
    UpstreamConnectError,
    accept_client,
    handshake_request,
    open_upstream,
)
from continuum.testing import MockRealtime, RealtimeScript, serve_mock_realtime

T = TypeVar("T")
MODEL = "gpt-realtime"
HERE = Path(__file__).parent
FAST_PINGS = RelaySettings(ping_interval=0.2, ping_timeout=0.5, close_timeout=2)


async def in_thread(fn: Callable[[], T], timeout: float = 60, limiter: Any = None) -> T:
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)


async def start_mock(
    nursery: trio.Nursery, script: RealtimeScript | None = None, host: str = "127.0.0.1"
) -> tuple[MockRealtime, str]:
    mock = MockRealtime(script=script)
    address = await nursery.start(serve_mock_realtime, mock, host)
    return mock, f"http://{address}"


@pytest.fixture
async def mock(nursery: trio.Nursery) -> AsyncIterator[tuple[MockRealtime, str]]:
    yield await start_mock(nursery, RealtimeScript(text_chunks=4, audio_chunks=2,
                                                   audio_chunk_bytes=9600))


def sdk(relay: RelayServer, key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.base_url, api_key=key, max_retries=0,
                         websocket_base_url=relay.base_url.replace("http:", "ws:"))


def ws_url(relay: RelayServer, model: str = MODEL) -> str:
    return f"ws://{relay.address}/v1/realtime?model={model}"


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def closed_with(fn: Callable[[], Any]) -> tuple[list[Any], int | None, str | None]:
    """Run ``fn`` (which reads until the connection closes) and return what it collected
    with the close code and reason the client received."""
    seen: list[Any] = []
    try:
        fn(seen)
    except ConnectionClosed as exc:
        received = exc.rcvd
        return seen, received.code if received else None, received.reason if received else None
    raise AssertionError("the connection did not close")


# --- sessions ---------------------------------------------------------------------------------


async def test_an_sdk_session_through_the_relay(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    relay = await start_relay(nursery, url)

    def run() -> dict[str, Any]:
        seen: dict[str, Any] = {"types": [], "text": "", "audio": []}
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            created = conn.recv()
            seen["session"] = (created.session.id, created.session.model)
            conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
            conn.conversation.item.create(item=user_text("hello relay"))
            conn.response.create()
            for event in conn:
                seen["types"].append(event.type)
                if event.type == "response.output_audio_transcript.delta":
                    seen["text"] += event.delta
                if event.type == "response.output_audio.delta":
                    seen["audio"].append(base64.b64decode(event.delta))
                if event.type == "response.done":
                    seen["usage"] = event.response.usage.to_dict()
                    break
        return seen

    seen = await in_thread(run)
    assert seen["session"][1] == MODEL
    assert seen["text"] == "Mock realtime reply to: hello relay"
    assert seen["audio"] == [(bytes(range(256)) * 38)[:9600]] * 2
    assert seen["types"][:3] == ["session.updated", "conversation.item.added",
                                 "conversation.item.done"]
    await until(lambda: len(relay.outcomes) == 1)
    stats = relay.stats[0]
    assert (stats.ended_by, stats.close_code) == ("client", 1000)
    assert stats.client_messages == 3
    assert stats.upstream_messages == 1 + len(seen["types"])
    assert stats.upstream_bytes > 2 * 9600 * 4 // 3 and stats.client_bytes > 0
    assert stats.error is None and stats.duration > 0
    tally = relay.tallies[0]
    assert (tally.session_id, tally.model) == seen["session"]
    assert tally.responses == 1
    usage = seen["usage"]
    assert (tally.input_tokens, tally.output_tokens) == (usage["input_tokens"],
                                                        usage["output_tokens"])
    assert tally.usages[0].output_audio_tokens == usage["output_token_details"]["audio_tokens"]
    # The client's key stayed at the relay; the backend's went upstream, with the query.
    assert relay.client_keys == ["sk-client"]
    handshake = upstream.handshakes[-1]
    assert handshake.headers["authorization"] == "Bearer backend-key"
    assert handshake.query == {"model": MODEL}
    assert upstream.client_closes[-1][0] == 1000


async def test_a_browser_style_handshake(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    """The key travels as a subprotocol (and is not sent on), allowlisted headers go upstream,
    and permessage-deflate, offered by websockets by default, is declined on both hops, so the
    relay reads usage from plain frames."""
    upstream, url = mock
    relay = await start_relay(nursery, url)

    def run() -> tuple[str | None, str | None, int]:
        with connect(
            ws_url(relay),
            subprotocols=["realtime", "openai-insecure-api-key.sk-browser",  # type: ignore[list-item]
                          "openai-beta.realtime-v1"],
            additional_headers={"OpenAI-Beta": "realtime=v1", "OpenAI-Project": "proj_1",
                                "Cookie": "session=secret", "Origin": "https://app.example"},
        ) as ws:
            json.loads(ws.recv())
            ws.send(json.dumps({"type": "response.create"}))
            count = 0
            while json.loads(ws.recv())["type"] != "response.done":
                count += 1
            extensions = ws.response.headers.get("sec-websocket-extensions")
            return ws.subprotocol, extensions, count

    subprotocol, extensions, count = await in_thread(run)
    assert subprotocol == "realtime"
    assert extensions is None
    assert count > 5
    assert relay.client_keys == ["sk-browser"]
    handshake = upstream.handshakes[-1]
    assert handshake.subprotocols == ("realtime", "openai-beta.realtime-v1")
    assert handshake.headers["openai-beta"] == "realtime=v1"
    assert handshake.headers["openai-project"] == "proj_1"
    assert "cookie" not in handshake.headers and "origin" not in handshake.headers
    assert "sec-websocket-extensions" not in handshake.headers
    assert handshake.headers["authorization"] == "Bearer backend-key"
    await until(lambda: len(relay.tallies) == 1)
    assert relay.tallies[0].responses == 1


async def test_audio_sized_text_frames_and_binary_frames(nursery: trio.Nursery) -> None:
    pcm_size = 3 * 1024 * 1024  # 4 MiB of base64 per delta
    _, url = await start_mock(
        nursery, RealtimeScript(text_chunks=2, audio_chunks=2, audio_chunk_bytes=pcm_size)
    )
    relay = await start_relay(nursery, url)
    sent_audio = bytes(range(251)) * (5 * 1024 * 1024 // 251)  # ~6.7 MiB as base64
    binary = os.urandom(5 * 1024 * 1024)

    def run() -> tuple[list[bytes], bytes, int]:
        received: list[bytes] = []
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            conn.recv()
            conn.input_audio_buffer.append(audio=base64.b64encode(sent_audio).decode())
            conn.input_audio_buffer.commit()
            conn.send_raw(binary)
            for event in conn:
                if event.type == "conversation.item.done":
                    break
            echoed = conn.recv_bytes()
            conn.response.create()
            for event in conn:
                if event.type == "response.output_audio.delta":
                    received.append(base64.b64decode(event.delta))
                if event.type == "response.done":
                    audio_in = event.response.usage.input_token_details.audio_tokens
                    return received, echoed, audio_in
        raise AssertionError("no response.done")

    received, echoed, audio_in = await in_thread(run)
    assert received == [(bytes(range(256)) * (pcm_size // 256))] * 2
    assert echoed == binary
    assert audio_in == len(sent_audio) // 4800
    await until(lambda: len(relay.stats) == 1)
    assert relay.stats[0].upstream_bytes > 2 * pcm_size * 4 // 3 + len(binary)


async def test_close_codes_and_reasons_pass_through_both_ways(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    relay = await start_relay(nursery, url)

    def client_closes() -> None:
        conn = sdk(relay).realtime.connect(model=MODEL).enter()
        conn.recv()
        conn.close(code=4001, reason="client says bye")

    await in_thread(client_closes)
    await until(lambda: len(upstream.client_closes) == 1 and len(relay.stats) == 1)
    assert upstream.client_closes[-1] == (4001, "client says bye")
    assert (relay.stats[0].ended_by, relay.stats[0].close_code) == ("client", 4001)

    upstream.fail_next("close", code=4002, after=2)

    def upstream_closes(seen: list[Any]) -> None:
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            conn.conversation.item.create(item=user_text("x"))
            while True:
                seen.append(conn.recv().type)

    seen, code, reason = await in_thread(lambda: closed_with(upstream_closes))
    assert seen == ["session.created", "conversation.item.added"]
    assert (code, reason) == (4002, "mock: session closed on purpose")
    await until(lambda: len(relay.stats) == 2)
    stats = relay.stats[1]
    assert (stats.ended_by, stats.close_code, stats.close_reason) == (
        "upstream", 4002, "mock: session closed on purpose")


async def test_fifty_concurrent_sdk_sessions_keep_every_message_in_order(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    relay = await start_relay(nursery, url)
    sessions, messages = 50, 20

    def run(n: int) -> tuple[list[str], list[bytes], str]:
        texts: list[str] = []
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            assert conn.recv().type == "session.created"
            for i in range(messages):
                conn.conversation.item.create(item=user_text(f"s{n} m{i}"))
            for event in conn:
                if event.type == "conversation.item.added":
                    texts.append(event.item.content[0].text)
                if event.type == "conversation.item.done" and len(texts) == messages:
                    break
            for i in range(5):
                conn.send_raw(f"s{n} b{i}".encode())
            echoes = [conn.recv_bytes() for _ in range(5)]
            conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            conn.response.create()
            reply = ""
            for event in conn:
                if event.type == "response.output_text.delta":
                    reply += event.delta
                if event.type == "response.done":
                    break
        return texts, echoes, reply

    results: dict[int, tuple[list[str], list[bytes], str]] = {}
    limiter = trio.CapacityLimiter(sessions)

    async def one(n: int) -> None:
        results[n] = await in_thread(lambda: run(n), timeout=120, limiter=limiter)

    async with trio.open_nursery() as clients:
        for n in range(sessions):
            clients.start_soon(one, n)
    for n in range(sessions):
        texts, echoes, reply = results[n]
        assert texts == [f"s{n} m{i}" for i in range(messages)]
        assert echoes == [f"s{n} b{i}".encode() for i in range(5)]
        assert reply == f"Mock realtime reply to: s{n} m{messages - 1}"
    await until(lambda: len(relay.stats) == sessions)
    assert {s.ended_by for s in relay.stats} == {"client"}
    assert {s.client_messages for s in relay.stats} == {messages + 5 + 2}
    assert upstream.counters.sessions == sessions


# --- failures ---------------------------------------------------------------------------------


def _read_until_closed(relay: RelayServer) -> Callable[[list[Any]], None]:
    def run(seen: list[Any]) -> None:
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            conn.conversation.item.create(item=user_text("are you there?"))
            while True:
                seen.append(conn.recv())

    return run


async def test_an_upstream_reset_mid_session_gives_an_error_event_and_1011(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    relay = await start_relay(nursery, url)
    upstream.fail_next("reset", after=2)
    seen, code, reason = await in_thread(lambda: closed_with(_read_until_closed(relay)))
    assert [e.type for e in seen] == ["session.created", "conversation.item.added", "error"]
    assert seen[-1].error.code == "upstream_error"
    assert seen[-1].error.message == "the upstream connection was lost"
    assert (code, reason) == (1011, "the upstream connection was lost")
    await until(lambda: len(relay.stats) == 1)
    assert (relay.stats[0].ended_by, relay.stats[0].error) == (
        "upstream_error", "the upstream connection was lost")


async def test_an_upstream_process_killed_mid_session(nursery: trio.Nursery) -> None:
    code = (
        "import sys, trio\n"
        "from continuum.testing import MockRealtime, serve_mock_realtime\n"
        "async def main():\n"
        "    async with trio.open_nursery() as n:\n"
        "        print(await n.start(serve_mock_realtime, MockRealtime()), flush=True)\n"
        "trio.run(main)\n"
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", code], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(100)
        relay = await start_relay(nursery, f"http://{line.decode().strip()}")
        ready = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def run(seen: list[Any]) -> None:
            with sdk(relay).realtime.connect(model=MODEL) as conn:
                seen.append(conn.recv())
                trio.from_thread.run_sync(ready.set, trio_token=token)
                while True:
                    seen.append(conn.recv())

        async def kill_when_ready() -> None:
            await ready.wait()
            process.send_signal(signal.SIGKILL)

        nursery.start_soon(kill_when_ready)
        seen, close_code, _ = await in_thread(lambda: closed_with(run))
    finally:
        process.kill()
        with trio.move_on_after(10):
            await process.wait()
    assert [e.type for e in seen] == ["session.created", "error"]
    assert close_code == 1011


async def test_a_stalled_upstream_is_found_by_the_keepalive(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    relay = await start_relay(nursery, url, FAST_PINGS)
    upstream.fail_next("stall", after=1, duration=30)
    seen, code, reason = await in_thread(lambda: closed_with(_read_until_closed(relay)))
    assert [e.type for e in seen] == ["session.created", "error"]
    assert seen[-1].error.message == "the upstream did not answer a ping within 0.5s"
    assert code == 1011 and reason == seen[-1].error.message
    await until(lambda: len(relay.stats) == 1)
    assert relay.stats[0].ended_by == "upstream_error"


def _refusal(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with connect(url, open_timeout=30):
            pass
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"{}")
    raise AssertionError("the handshake was accepted")


async def test_an_upstream_refusal_reaches_the_client(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    upstream.models = frozenset({MODEL})
    relay = await start_relay(nursery, url)
    upstream.fail_next("refuse", status=503)
    status, body = await in_thread(lambda: _refusal(ws_url(relay)))
    assert status == 503 and body["error"]["code"] == "mock_refused"
    status, body = await in_thread(lambda: _refusal(ws_url(relay, "no-such-model")))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    await until(lambda: len(relay.outcomes) == 2)
    first, second = relay.outcomes
    assert isinstance(first, UpstreamConnectError) and first.retryable
    assert isinstance(second, UpstreamConnectError) and not second.retryable


async def test_an_unreachable_upstream_gives_502(nursery: trio.Nursery) -> None:
    from helpers import refused_url

    relay = await start_relay(nursery, refused_url(nursery))
    status, body = await in_thread(lambda: _refusal(ws_url(relay)))
    assert status == 502
    assert body["error"]["type"] == "upstream_error"
    assert "cannot connect" in body["error"]["message"]


async def _serve_raw(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Any]) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_an_upstream_that_hangs_up_during_the_handshake_fails_fast(
    nursery: trio.Nursery,
) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.aclose()

    async def say_nothing(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    # With a 60 s connect_timeout, only noticing the hang-up ends this within the fail_after.
    relay = await start_relay(nursery, await _serve_raw(nursery, hang_up),
                              RelaySettings(connect_timeout=60))
    status, body = await in_thread(lambda: _refusal(ws_url(relay)), timeout=20)
    assert status == 502
    assert "closed the connection during the WebSocket handshake" in body["error"]["message"]

    relay = await start_relay(nursery, await _serve_raw(nursery, say_nothing),
                              RelaySettings(connect_timeout=0.5))
    status, body = await in_thread(lambda: _refusal(ws_url(relay)))
    assert status == 504
    assert "did not complete the WebSocket handshake within 0.5s" in body["error"]["message"]


async def test_max_message_size_applies_to_both_sides(nursery: trio.Nursery) -> None:
    upstream, url = await start_mock(
        nursery, RealtimeScript(text_chunks=1, audio_chunks=1, audio_chunk_bytes=600_000)
    )
    relay = await start_relay(nursery, url, RelaySettings(max_message_size=512 * 1024))

    def client_too_big(seen: list[Any]) -> None:
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            conn.recv()
            conn.input_audio_buffer.append(audio="A" * 600_000)
            while True:
                seen.append(conn.recv())

    seen, code, _ = await in_thread(lambda: closed_with(client_too_big))
    assert seen == [] and code == 1009
    await until(lambda: len(upstream.client_closes) == 1)
    assert upstream.client_closes[-1][0] == 1009

    def upstream_too_big(seen: list[Any]) -> None:
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            conn.recv()
            conn.response.create()
            while True:
                seen.append(conn.recv())

    seen, code, reason = await in_thread(lambda: closed_with(upstream_too_big))
    assert seen[-1].type == "error" and code == 1011
    assert reason == "the upstream sent a message larger than 524288 bytes"
    assert "response.output_audio.delta" not in [e.type for e in seen]


async def test_a_failing_observer_does_not_break_the_session(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    _, url = mock
    relay = await start_relay(nursery, url, raise_in_observer=True)

    def run() -> str:
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            conn.recv()
            conn.response.create()
            return next(e.type for e in conn if e.type == "response.done")

    assert await in_thread(run) == "response.done"
    await until(lambda: len(relay.stats) == 1)
    assert relay.stats[0].ended_by == "client"


async def test_a_client_that_stops_answering_pings_closes_the_upstream(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    relay = await start_relay(nursery, url, FAST_PINGS)
    host, port = relay.address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        f"GET /v1/realtime?model={MODEL} HTTP/1.1\r\nHost: {relay.address}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    head = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(65536)
    assert head.startswith(b"HTTP/1.1 101 ")
    # ... and then it reads nothing more, so no ping gets its pong.
    await until(lambda: len(relay.stats) == 1)
    assert relay.stats[0].ended_by == "client_timeout"
    await until(lambda: len(upstream.client_closes) == 1)
    assert upstream.client_closes[-1] == (1001, "the client stopped answering")
    await stream.aclose()


async def test_a_client_that_stops_reading_is_the_one_blamed(nursery: trio.Nursery) -> None:
    """The upstream's pongs wait unread behind audio the client does not take: the relay must
    not blame the upstream for that."""
    upstream, url = await start_mock(
        nursery, RealtimeScript(text_chunks=1, audio_chunks=500, audio_chunk_bytes=48 * 1024)
    )
    relay = await start_relay(nursery, url, FAST_PINGS)
    async with trio_websocket.open_websocket_url(ws_url(relay), max_message_size=1 << 24) as ws:
        await ws.get_message()
        await ws.send_message('{"type": "response.create"}')
        await until(lambda: len(relay.stats) == 1)  # reading nothing more meanwhile
    assert relay.stats[0].ended_by == "client_timeout"
    await until(lambda: len(upstream.client_closes) == 1)
    assert upstream.client_closes[-1] == (1001, "the client stopped answering")


async def test_an_upstream_that_stops_reading_is_the_one_blamed(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    relay = await start_relay(nursery, url, FAST_PINGS)
    upstream.fail_next("stall", after=1, duration=30)
    chunk = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 256 * 1024})

    async def flood(ws: trio_websocket.WebSocketConnection) -> None:
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            for _ in range(400):  # 100 MiB, far more than the socket buffers hold
                await ws.send_message(chunk)

    async with trio_websocket.open_websocket_url(ws_url(relay), max_message_size=1 << 24) as ws:
        await ws.get_message()
        async with trio.open_nursery() as inner:
            inner.start_soon(flood, ws)
            await until(lambda: len(relay.stats) == 1)
            inner.cancel_scope.cancel()
    assert relay.stats[0].ended_by == "upstream_error"


async def test_a_relay_shutting_down_closes_both_sides_with_1001(
    nursery: trio.Nursery, mock: tuple[MockRealtime, str]
) -> None:
    upstream, url = mock
    scope = trio.CancelScope()
    relay_box: list[RelayServer] = []
    started = trio.Event()

    async def run_relay() -> None:
        with scope:
            async with trio.open_nursery() as inner:
                relay_box.append(await start_relay(inner, url))
                started.set()
                await trio.sleep_forever()

    nursery.start_soon(run_relay)
    await started.wait()
    connected = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def run(seen: list[Any]) -> None:
        with sdk(relay_box[0]).realtime.connect(model=MODEL) as conn:
            seen.append(conn.recv().type)
            trio.from_thread.run_sync(connected.set, trio_token=token)
            while True:
                seen.append(conn.recv().type)

    async def shut_down() -> None:
        await connected.wait()
        scope.cancel()

    nursery.start_soon(shut_down)
    seen, code, reason = await in_thread(lambda: closed_with(run))
    assert seen == ["session.created"]
    assert (code, reason) == (1001, "the router is shutting down")
    await until(lambda: len(upstream.client_closes) == 1)
    assert upstream.client_closes[-1] == (1001, "the router is shutting down")


async def test_ipv6_relay_and_upstream(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, host="::1")
    relay = await start_relay(nursery, url, host="::1")

    def run() -> str:
        with sdk(relay).realtime.connect(model=MODEL) as conn:
            return str(conn.recv().type)

    assert await in_thread(run) == "session.created"


# --- the pieces -------------------------------------------------------------------------------


async def test_replay_stream_yields_the_prefix_first_in_pieces() -> None:
    left, right = trio.testing.memory_stream_pair()
    replay = ReplayStream(right, b"0123456789")
    await left.send_all(b"after")
    assert await replay.receive_some(4) == b"0123"
    assert await replay.receive_some(100) == b"456789"
    assert await replay.receive_some(100) == b"after"
    await replay.send_all(b"back")
    assert await left.receive_some(100) == b"back"


async def test_a_handshake_wsproto_refuses_is_answered_and_reported(
    nursery: trio.Nursery,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    headers = [(b"host", b"x"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-version", b"8"), (b"sec-websocket-key", b"a" * 24)]
    head = handshake_request("GET", "/v1/realtime?model=m", headers)
    assert head.startswith(b"GET /v1/realtime?model=m HTTP/1.1\r\nhost: x\r\n")
    with pytest.raises(HandshakeFailed):
        await accept_client(nursery, server, head, RelaySettings(connect_timeout=0.5))
    answer = await client.receive_some(1000)
    assert answer.startswith(b"HTTP/1.1 426 ")


async def test_open_upstream_raises_one_error_type(nursery: trio.Nursery) -> None:
    from helpers import refused_url

    target = upstream_target(refused_url(nursery), "model=m")
    with pytest.raises(UpstreamConnectError) as caught:
        await open_upstream(nursery, target)
    assert caught.value.retryable and caught.value.status is None


def test_relay_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RelaySettings(max_message_size=0)
    with pytest.raises(ValueError):
        RelaySettings(ping_timeout=0)


# --- memory -----------------------------------------------------------------------------------

_MEMORY_PROBE = """
import json, os, sys, tracemalloc
import trio, trio_websocket
from realtime_relay_server import start_relay
from continuum.testing import MockRealtime, RealtimeScript, serve_mock_realtime
from continuum.net.websocket_relay import RelaySettings

CHUNKS, SIZE = 2000, 48 * 1024  # 2,000 deltas of 64 KiB of base64: 128 MiB in all

async def main():
    mock = MockRealtime(script=RealtimeScript(text_chunks=1, audio_chunks=CHUNKS,
                                              audio_chunk_bytes=SIZE))
    mock.audio_base64(SIZE)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_mock_realtime, mock)
        relay = await start_relay(nursery, f"http://{address}", RelaySettings(ping_interval=0))
        url = f"ws://{relay.address}/v1/realtime?model=gpt-realtime"
        async with trio_websocket.open_websocket_url(url, max_message_size=2**24) as ws:
            await ws.get_message()
            tracemalloc.start()
            await ws.send_message('{"type": "response.create"}')
            # The client reads nothing more; wait until the mock cannot send any further.
            last, still = -1, 0
            with trio.fail_after(60):
                while still < 10:
                    await trio.sleep(0.1)
                    sent = mock.counters.events_sent
                    still, last = (still + 1 if sent == last else 0), sent
            current, peak = tracemalloc.get_traced_memory()
            print(json.dumps({"sent": last, "peak": peak, "current": current}), flush=True)
            os._exit(0)

trio.run(main)
"""


async def test_a_client_that_stops_reading_does_not_grow_relay_memory() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    with trio.fail_after(120):
        result = await trio.run_process(
            [sys.executable, "-c", _MEMORY_PROBE], capture_stdout=True, env=env
        )
    probe = json.loads(result.stdout)
    # The mock stalled long before its 2,000 deltas (128 MiB): the stop travelled back to it.
    assert probe["sent"] < 1000
    # What the relay (and the mock, and the client, all in this process) held stayed small.
    assert probe["peak"] < 16 * 1024 * 1024, probe


def test_relay_stats_is_frozen() -> None:
    stats = RelayStats(1, 2, 3, 4, 0.5, "client", 1000, None, None)
    with pytest.raises(AttributeError):
        stats.client_messages = 5  # type: ignore[misc]
