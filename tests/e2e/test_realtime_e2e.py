"""The Realtime API through the router: ``GET /v1/realtime?model=M`` upgrades on the native
ingress, relayed to mock upstreams that serve the Realtime API on their HTTP port. Clients are
the official openai SDK's realtime client (``client.realtime.connect``, on ``websockets``),
``websockets`` itself and raw sockets."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from continuum import RouterHandle, config_from_dict
from continuum.actors.realtime import relay_settings
from continuum.testing import MockUpstream, RealtimeScript
from helpers import refused_url, router_config, start_mock, start_router

T = TypeVar("T")
MODEL = "gpt-realtime"


async def in_thread(fn: Callable[[], T], timeout: float = 60, limiter: Any = None) -> T:
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)


def sdk(router: RouterHandle, key: str = "sk-client") -> openai.OpenAI:
    base = f"{router.url}/v1"
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0,
                         websocket_base_url=base.replace("http:", "ws:"))


def ws_url(router: RouterHandle, model: str = MODEL) -> str:
    return f"{router.url.replace('http:', 'ws:')}/v1/realtime?model={model}"


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def closed_with(fn: Callable[[list[Any]], None]) -> tuple[list[Any], int | None, str | None]:
    seen: list[Any] = []
    try:
        fn(seen)
    except ConnectionClosed as exc:
        received = exc.rcvd
        return seen, received.code if received else None, received.reason if received else None
    raise AssertionError("the connection did not close")


def refusal(url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    try:
        with connect(url, open_timeout=30, **kwargs):
            pass
    except InvalidStatus as exc:
        body = exc.response.body or b"{}"
        return (exc.response.status_code, dict(exc.response.headers),
                json.loads(body) if body.startswith(b"{") else body)
    raise AssertionError("the handshake was accepted")


async def mock_router(
    nursery: trio.Nursery, script: RealtimeScript | None = None, **sections: Any
) -> tuple[RouterHandle, MockUpstream]:
    """A router with one in-process ``type: mock`` backend serving MODEL."""
    router = await start_router(nursery, router_config(
        [{"name": "rt", "type": "mock", "models": [MODEL]}], **sections))
    upstream = router.mocks["rt"]
    if script is not None:
        upstream.realtime.script = script
    return router, upstream


async def metrics(router: RouterHandle) -> str:
    response = await in_thread(lambda: httpx.get(f"{router.url}/metrics"))
    return response.text


# --- sessions --------------------------------------------------------------------------------


async def test_an_sdk_session_through_the_router(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, front: str
) -> None:
    router, upstream = await mock_router(
        nursery, RealtimeScript(text_chunks=4, audio_chunks=2, audio_chunk_bytes=9600))
    caplog.set_level(logging.INFO, logger="continuum.access")

    def run() -> dict[str, Any]:
        seen: dict[str, Any] = {"text": "", "audio": []}
        with sdk(router).realtime.connect(model=MODEL) as conn:
            created = conn.recv()
            seen["session"] = created.session.model
            conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
            conn.conversation.item.create(item=user_text("hello router"))
            conn.response.create()
            for event in conn:
                if event.type == "response.output_audio_transcript.delta":
                    seen["text"] += event.delta
                if event.type == "response.output_audio.delta":
                    seen["audio"].append(base64.b64decode(event.delta))
                if event.type == "response.done":
                    seen["usage"] = event.response.usage.to_dict()
                    break
        return seen

    seen = await in_thread(run)
    assert seen["session"] == MODEL
    assert seen["text"] == "Mock realtime reply to: hello router"
    assert seen["audio"] == [(bytes(range(256)) * 38)[:9600]] * 2
    # The client's key stayed at the router; the backend's own went upstream.
    handshake = upstream.realtime.handshakes[-1]
    assert handshake.headers["authorization"] == "Bearer mock"
    assert handshake.query == {"model": MODEL}
    assert handshake.headers["x-request-id"]
    await until(lambda: bool(upstream.realtime.client_closes))
    # hypercorn does not tell the app the client's close code: the upstream gets 1001.
    assert upstream.realtime.client_closes[-1][0] == (1000 if front == "native" else 1001)
    usage = seen["usage"]
    text = ""
    with trio.fail_after(10):
        while "continuum_realtime_sessions_total" not in text:
            text = await metrics(router)
    assert 'continuum_realtime_sessions_total{backend="rt",ended_by="client"} 1.0' in text
    assert "continuum_realtime_sessions_active 0.0" in text
    assert ('continuum_realtime_messages_total{backend="rt",direction="client_to_upstream"} '
            "3.0") in text
    assert (f'continuum_tokens_total{{backend="rt",direction="completion",model="{MODEL}"}} '
            f"{float(usage['output_tokens'])}") in text
    assert 'http_requests_total{endpoint="/v1/realtime",method="GET",status="101"} 1.0' in text
    [line] = [r.getMessage() for r in caplog.records if "/v1/realtime" in r.getMessage()]
    assert "status=101" in line and "backend=rt" in line and "ended_by=client" in line
    assert f"output_tokens={usage['output_tokens']}" in line and "messages_in=3" in line
    assert "sk-client" not in line


async def test_audio_sized_base64_and_binary_frames(nursery: trio.Nursery) -> None:
    pcm = 3 * 1024 * 1024  # each audio delta is 4 MiB of base64
    router, _ = await mock_router(
        nursery, RealtimeScript(text_chunks=2, audio_chunks=2, audio_chunk_bytes=pcm))
    sent_audio = bytes(range(251)) * (5 * 1024 * 1024 // 251)
    binary = os.urandom(5 * 1024 * 1024)

    def run() -> tuple[list[bytes], bytes, int]:
        received: list[bytes] = []
        with sdk(router).realtime.connect(model=MODEL) as conn:
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
                    return received, echoed, event.response.usage.input_token_details.audio_tokens
        raise AssertionError("no response.done")

    received, echoed, audio_in = await in_thread(run)
    assert received == [bytes(range(256)) * (pcm // 256)] * 2
    assert echoed == binary
    assert audio_in == len(sent_audio) // 4800


async def test_fifty_concurrent_sessions_in_order(nursery: trio.Nursery) -> None:
    router, upstream = await mock_router(nursery)
    sessions, messages = 50, 20

    def run(n: int) -> tuple[list[str], list[bytes]]:
        texts: list[str] = []
        with sdk(router).realtime.connect(model=MODEL) as conn:
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
            return texts, [conn.recv_bytes() for _ in range(5)]

    results: dict[int, tuple[list[str], list[bytes]]] = {}
    limiter = trio.CapacityLimiter(sessions)

    async def one(n: int) -> None:
        results[n] = await in_thread(lambda: run(n), timeout=120, limiter=limiter)

    async with trio.open_nursery() as clients:
        for n in range(sessions):
            clients.start_soon(one, n)
    for n in range(sessions):
        texts, echoes = results[n]
        assert texts == [f"s{n} m{i}" for i in range(messages)]
        assert echoes == [f"s{n} b{i}".encode() for i in range(5)]
    assert upstream.realtime.counters.sessions == sessions


async def test_close_codes_pass_through_both_ways(nursery: trio.Nursery, front: str) -> None:
    router, upstream = await mock_router(nursery)

    def client_closes() -> None:
        conn = sdk(router).realtime.connect(model=MODEL).enter()
        conn.recv()
        conn.close(code=4001, reason="client says bye")

    await in_thread(client_closes)
    await until(lambda: len(upstream.realtime.client_closes) == 1)
    if front == "native":  # hypercorn does not tell the app the client's close code
        assert upstream.realtime.client_closes[-1] == (4001, "client says bye")
    else:
        assert upstream.realtime.client_closes[-1] == (1001, "the client went away")

    upstream.realtime.fail_next("close", code=4002, after=1)

    def upstream_closes(seen: list[Any]) -> None:
        with sdk(router).realtime.connect(model=MODEL) as conn:
            while True:
                seen.append(conn.recv().type)

    seen, code, reason = await in_thread(lambda: closed_with(upstream_closes))
    assert seen == ["session.created"]
    assert (code, reason) == (4002, "mock: session closed on purpose")


# --- failures ----------------------------------------------------------------------------------


def _read_until_closed(router: RouterHandle) -> Callable[[list[Any]], None]:
    def run(seen: list[Any]) -> None:
        with sdk(router).realtime.connect(model=MODEL) as conn:
            conn.conversation.item.create(item=user_text("are you there?"))
            while True:
                seen.append(conn.recv())

    return run


async def test_an_upstream_reset_mid_session_is_an_error_event_and_1011(
    nursery: trio.Nursery,
) -> None:
    router, upstream = await mock_router(nursery)
    upstream.realtime.fail_next("reset", after=2)
    seen, code, reason = await in_thread(lambda: closed_with(_read_until_closed(router)))
    assert [e.type for e in seen] == ["session.created", "conversation.item.added", "error"]
    assert seen[-1].error.code == "upstream_error"
    assert (code, reason) == (1011, "the upstream connection was lost")
    text = await metrics(router)
    assert 'continuum_realtime_sessions_total{backend="rt",ended_by="upstream_error"} 1.0' in text


async def test_an_upstream_process_killed_mid_session(nursery: trio.Nursery) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "continuum", "mock", "--bind", "127.0.0.1:0",
         "--models", MODEL], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        out = b""
        with trio.fail_after(30):
            while b"listening on" not in out or not out.endswith(b"\n"):
                out += await process.stdout.receive_some(1000)
        address = out.split(b"listening on http://")[1].split()[0].decode()
        router = await start_router(nursery, router_config(
            [{"name": "ext", "url": f"http://{address}", "models": [MODEL]}]))
        ready = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def run(seen: list[Any]) -> None:
            with sdk(router).realtime.connect(model=MODEL) as conn:
                seen.append(conn.recv())
                trio.from_thread.run_sync(ready.set, trio_token=token)
                while True:
                    seen.append(conn.recv())

        async def kill_when_ready() -> None:
            await ready.wait()
            process.send_signal(signal.SIGKILL)

        nursery.start_soon(kill_when_ready)
        seen, code, _ = await in_thread(lambda: closed_with(run))
    finally:
        process.kill()
        with trio.move_on_after(10):
            await process.wait()
    assert [e.type for e in seen] == ["session.created", "error"]
    assert code == 1011


async def test_a_failed_connect_is_retried_on_another_backend(nursery: trio.Nursery) -> None:
    """Before the client's handshake is answered: an unreachable backend and one that refuses
    with 503 are skipped; the client only ever sees the session that worked."""
    refusing, refusing_url = await start_mock(nursery, [MODEL], name="refusing")
    working, working_url = await start_mock(nursery, [MODEL], name="working")
    router = await start_router(nursery, router_config(
        [{"name": "down", "url": refused_url(nursery), "models": [MODEL]},
         {"name": "refusing", "url": refusing_url, "models": [MODEL]},
         {"name": "working", "url": working_url, "models": [MODEL]}],
        retry={"base_delay": "1ms"}))
    for _ in range(3):
        refusing.realtime.fail_next("refuse", status=503)

    def run() -> str:
        with sdk(router).realtime.connect(model=MODEL) as conn:
            return str(conn.recv().type)

    for _ in range(3):  # whichever backend round-robin starts with
        assert await in_thread(run) == "session.created"
    assert working.realtime.counters.sessions == 3
    text = await metrics(router)
    assert 'continuum_retries_total{backend="down"}' in text


async def test_when_every_backend_fails_the_handshake_is_refused(nursery: trio.Nursery) -> None:
    upstream, url = await start_mock(nursery, [MODEL])
    router = await start_router(nursery, router_config(
        [{"name": "one", "url": url, "models": [MODEL]}], request={"max_retries": 0}))
    upstream.realtime.fail_next("refuse", status=503)
    status, headers, body = await in_thread(lambda: refusal(ws_url(router)))
    assert status == 503  # the upstream's own refusal, as the HTTP path passes it on
    assert headers["x-request-id"] and headers["x-continuum-backend"] == "one"
    assert body["error"]["code"] == "mock_refused"
    # A refusal of the client's own doing is passed on as it is, and not retried.
    upstream.set_models(["other"])
    status, headers, body = await in_thread(lambda: refusal(ws_url(router)))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert headers["x-continuum-backend"] == "one"


async def test_requests_the_router_refuses_itself(nursery: trio.Nursery) -> None:
    router, upstream = await mock_router(nursery)
    status, _, body = await in_thread(lambda: refusal(ws_url(router, "no-such-model")))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, _, body = await in_thread(
        lambda: refusal(f"{router.url.replace('http', 'ws')}/v1/realtime"))
    assert status == 400 and body["error"]["param"] == "model"
    plain = await in_thread(lambda: httpx.get(f"{router.url}/v1/realtime?model={MODEL}"))
    assert plain.status_code == 426 and plain.headers["upgrade"] == "websocket"
    assert plain.json()["error"]["message"].startswith("This endpoint needs a WebSocket")
    post = await in_thread(lambda: httpx.post(f"{router.url}/v1/realtime?model={MODEL}"))
    assert post.status_code == 405
    assert upstream.realtime.counters.sessions == 0


async def test_keys_from_headers_and_from_the_browser_subprotocol(nursery: trio.Nursery) -> None:
    router, upstream = await mock_router(
        nursery, api_keys={"mode": "blocking", "api_keys": [{"key": "sk-good"}]})
    status, _, body = await in_thread(lambda: refusal(ws_url(router)))
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, _, _ = await in_thread(lambda: refusal(
        ws_url(router), additional_headers={"Authorization": "Bearer sk-bad"}))
    assert status == 401

    def with_subprotocol() -> str | None:
        with connect(ws_url(router), open_timeout=30, subprotocols=[  # type: ignore[list-item]
                "realtime", "openai-insecure-api-key.sk-good"]) as ws:
            json.loads(ws.recv())
            return ws.subprotocol

    assert await in_thread(with_subprotocol) == "realtime"
    handshake = upstream.realtime.handshakes[-1]
    assert handshake.subprotocols == ("realtime",)  # the key stayed at the router
    assert "sk-good" not in json.dumps(handshake.headers)

    def with_header() -> str:
        with sdk(router, key="sk-good").realtime.connect(model=MODEL) as conn:
            return str(conn.recv().type)

    assert await in_thread(with_header) == "session.created"


@asynccontextmanager
async def sessions_held(router: RouterHandle, count: int = 1, **kwargs: Any
                        ) -> AsyncIterator[list[Any]]:
    """``count`` sessions opened one after another (each past its ``session.created``) and
    held until the block ends; yields their handshake answers' headers."""
    release = trio.Event()
    token = trio.lowlevel.current_trio_token()
    headers: list[Any] = []

    def hold(opened: trio.Event) -> None:
        with connect(ws_url(router), open_timeout=30, **kwargs) as ws:
            ws.recv(timeout=30)
            headers.append(ws.response.headers)
            trio.from_thread.run_sync(opened.set, trio_token=token)
            trio.from_thread.run(release.wait, trio_token=token)

    async with trio.open_nursery() as holding:
        for _ in range(count):
            opened = trio.Event()
            holding.start_soon(in_thread, partial(hold, opened))
            await opened.wait()
        try:
            yield headers
        finally:
            release.set()


def exchange(router: RouterHandle, key: str, responses: int = 1) -> int:
    """A session with ``responses`` scripted responses; the tokens they reported."""
    used = 0
    with sdk(router, key=key).realtime.connect(model=MODEL) as conn:
        conn.recv()
        for _ in range(responses):
            conn.conversation.item.create(item=user_text("hello router"))
            conn.response.create()
            for event in conn:
                if event.type == "response.done":
                    assert event.response.usage is not None
                    used += event.response.usage.total_tokens or 0
                    break
    return used


async def test_access_control_at_the_handshake(nursery: trio.Nursery) -> None:
    """The key's models and scopes, and its request, concurrency and token limits, are
    checked before any backend is asked; a refusal is the handshake's HTTP answer."""
    keys = [
        {"key": "sk-narrow", "id": "narrow", "models": ["gpt-4o*"]},
        {"key": "sk-reader", "id": "reader", "scopes": ["read"]},
        {"key": "sk-once", "id": "once", "rate_limit": 1},
        {"key": "sk-conc", "id": "conc", "max_concurrent": 1},
        {"key": "sk-tokens", "id": "tokens", "tokens_per_minute": 10},
    ]
    router, upstream = await mock_router(
        nursery, api_keys={"mode": "blocking", "api_keys": keys},
        rate_limiting={"default_token_reservation": 1})

    def bearer(key: str) -> dict[str, Any]:
        return {"additional_headers": {"Authorization": f"Bearer {key}"}}

    status, _, body = await in_thread(lambda: refusal(ws_url(router), **bearer("sk-narrow")))
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    # Realtime is inference, although a GET: a read-only key may not open a session.
    status, _, body = await in_thread(lambda: refusal(ws_url(router), **bearer("sk-reader")))
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    assert upstream.realtime.counters.sessions == 0  # no backend was asked
    # One request a minute: one session, then 429 (the browser's subprotocol key counts too).
    await in_thread(lambda: exchange(router, "sk-once"))
    status, headers, body = await in_thread(lambda: refusal(
        ws_url(router), subprotocols=["realtime", "openai-insecure-api-key.sk-once"]))
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["retry-after"]) >= 1
    # One session at a time: a second is refused while the first lasts, and admitted once
    # it has ended (its lease went back).
    async with sessions_held(router, **bearer("sk-conc")):
        status, _, body = await in_thread(lambda: refusal(ws_url(router), **bearer("sk-conc")))
        assert status == 429 and "in flight" in body["error"]["message"]
    with trio.fail_after(10):
        while True:
            try:
                await in_thread(lambda: exchange(router, "sk-conc"))
                break
            except InvalidStatus as exc:  # the first session's end is still being settled
                assert exc.response.status_code == 429
                await trio.sleep(0.05)
    # Tokens: each response's usage counts as it ends (the reservation is 1 token), so a
    # session whose responses used more than the minute's 10 leaves none for the next.
    assert await in_thread(lambda: exchange(router, "sk-tokens", responses=2)) > 10
    status, _, body = await in_thread(lambda: refusal(ws_url(router), **bearer("sk-tokens")))
    assert status == 429 and "tokens" in body["error"]["message"]


async def test_max_sessions_refuses_past_the_cap(nursery: trio.Nursery) -> None:
    router, _ = await mock_router(nursery, realtime={"max_sessions": 1})
    async with sessions_held(router):
        status, headers, body = await in_thread(lambda: refusal(ws_url(router)))
        assert status == 503 and headers["retry-after"] == "1"
        assert "realtime.max_sessions" in body["error"]["message"]


async def test_realtime_disabled_is_not_routed(nursery: trio.Nursery, front: str) -> None:
    router, _ = await mock_router(nursery, realtime={"enabled": False})
    plain = await in_thread(lambda: httpx.get(f"{router.url}/v1/realtime?model={MODEL}"))
    assert plain.status_code == 404
    status, _, _ = await in_thread(lambda: refusal(ws_url(router)))
    # The native server refuses an upgrade no route takes; hypercorn passes it on: 404.
    assert status == (400 if front == "native" else 404)


async def test_the_realtime_keys_reach_the_relay(nursery: trio.Nursery) -> None:
    """max_message_size, ping_interval/ping_timeout and connect_timeout act; every key of the
    section becomes the relay's setting."""
    settings = relay_settings(config_from_dict({
        "backends": [{"name": "m", "type": "mock"}],
        "realtime": {"max_message_size": "1MiB", "message_queue_size": 3, "ping_interval": "2s",
                     "ping_timeout": "3s", "connect_timeout": "4s", "close_timeout": "5s"},
    }))
    assert (settings.max_message_size, settings.message_queue_size, settings.ping_interval,
            settings.ping_timeout, settings.connect_timeout, settings.close_timeout) == (
        1024 * 1024, 3, 2.0, 3.0, 4.0, 5.0)

    router, upstream = await mock_router(nursery, realtime={
        # A ping timeout loose enough that a loaded machine's client thread still answers
        # the router's pings in time: only the stalled upstream may miss them.
        "max_message_size": "512KiB", "ping_interval": "200ms", "ping_timeout": "2s"})

    def too_big(seen: list[Any]) -> None:
        with sdk(router).realtime.connect(model=MODEL) as conn:
            conn.recv()
            conn.input_audio_buffer.append(audio="A" * 600_000)
            while True:
                seen.append(conn.recv())

    _, code, _ = await in_thread(lambda: closed_with(too_big))
    assert code == 1009
    upstream.realtime.fail_next("stall", after=1, duration=30)
    seen, code, reason = await in_thread(lambda: closed_with(_read_until_closed(router)))
    assert [e.type for e in seen] == ["session.created", "error"]
    assert (code, reason) == (1011, "the upstream did not answer a ping within 2s")


async def test_connect_timeout_gives_504(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(partial(trio.serve_tcp, _say_nothing, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    router = await start_router(nursery, router_config(
        [{"name": "silent", "url": f"http://127.0.0.1:{port}", "models": [MODEL]}],
        realtime={"connect_timeout": "300ms"}, request={"max_retries": 0}))
    status, _, body = await in_thread(lambda: refusal(ws_url(router)))
    assert status == 504 and "within 0.3s" in body["error"]["message"]


async def _say_nothing(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_shutdown_closes_sessions_with_1001(nursery: trio.Nursery) -> None:
    router, _ = await mock_router(nursery, server={"shutdown_timeout": "1s"})
    connected = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def run(seen: list[Any]) -> None:
        with sdk(router).realtime.connect(model=MODEL) as conn:
            seen.append(conn.recv().type)
            trio.from_thread.run_sync(connected.set, trio_token=token)
            while True:
                seen.append(conn.recv().type)

    async def shut_down() -> None:
        await connected.wait()
        router.shutdown()

    nursery.start_soon(shut_down)
    seen, code, reason = await in_thread(lambda: closed_with(run))
    assert seen == ["session.created"]
    assert (code, reason) == (1001, "the router is shutting down")


async def test_per_backend_limits_and_ratelimit_headers_on_the_handshake(
    nursery: trio.Nursery, front: str
) -> None:
    """``per_backend`` limits admit a session on the backend it opens on: a backend at its
    limit is skipped for another, and 429 comes when none has room; the 101 carries the
    ``x-ratelimit-*`` headers any other answer would."""
    router = await start_router(nursery, router_config(
        [{"name": f"rt{n}", "type": "mock", "models": [MODEL]} for n in (1, 2)],
        rate_limiting={"limits": {"per_backend": {"max_concurrent": 1},
                                  "per_client": {"requests_per_second": 100,
                                                 "burst_capacity": 1000}}}))
    async with sessions_held(router, 2) as held:
        for headers in held:
            assert headers["x-ratelimit-limit-requests"] == "1000"
            assert int(headers["x-ratelimit-remaining-requests"]) < 1000
        # Both backends hold one session each: the first went to one, the second was
        # moved to the other, and a third has nowhere to go.
        assert sorted(h["x-continuum-backend"] for h in held) == ["rt1", "rt2"]
        status, headers, body = await in_thread(lambda: refusal(ws_url(router)))
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert "in flight" in body["error"]["message"]
        assert int(headers["retry-after"]) >= 1
    # The slots went back when the sessions ended.
    with trio.fail_after(10):
        while True:
            try:
                await in_thread(lambda: connect(ws_url(router), open_timeout=30).close())
                break
            except InvalidStatus as exc:  # the sessions' ends are still being settled
                assert exc.response.status_code == 429
                await trio.sleep(0.05)


async def test_per_backend_slot_of_a_failed_connect_goes_back(nursery: trio.Nursery) -> None:
    """A backend the session could not open on gives its per_backend slot back at once."""
    router = await start_router(nursery, router_config(
        [{"name": "dead", "url": refused_url(nursery), "models": [MODEL]},
         {"name": "rt", "type": "mock", "models": [MODEL]}],
        routing={"strategy": "RoundRobin"},
        rate_limiting={"limits": {"per_backend": {"max_concurrent": 1}}}))
    async with sessions_held(router) as held:
        assert held[0]["x-continuum-backend"] == "rt"
        # "rt" is held; "dead" refuses connections. Had the failed attempt kept its slot on
        # "dead", this session would be refused by the limit (429) rather than by the
        # upstream (502), which is what tells them apart.
        status, _, body = await in_thread(lambda: refusal(ws_url(router)))
        assert status == 502, (status, body)


async def test_realtime_settings_apply_live(nursery: trio.Nursery) -> None:
    """``realtime.max_sessions`` (and the relay's timings) change for the next session; the
    settings fixed at start are reported as needing a restart."""
    data = router_config([{"name": "rt", "type": "mock", "models": [MODEL]}])
    router = await start_router(nursery, data)
    outcome = await router.reconfigurer.propose(config_from_dict(
        {**data, "realtime": {"max_sessions": 1, "ping_interval": 5, "max_message_size": 4096}},
        source="<test>"), source="test", who="tester")
    assert sorted(c.path for c in outcome.changes) == ["realtime.max_sessions",
                                                       "realtime.ping_interval"]
    assert "realtime.max_message_size" in outcome.needs_restart
    async with sessions_held(router):
        status, _, body = await in_thread(lambda: refusal(ws_url(router)))
        assert status == 503 and "realtime.max_sessions" in body["error"]["message"]
