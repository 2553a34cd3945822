"""The client-facing HTTP/1.1 server, driven byte by byte over raw trio sockets.

Every test runs a real router on an ephemeral loopback port in front of the mock upstream,
so what is asserted is what a client of the router sees on the wire.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
from typing import Any

import httpx
import pytest
import trio

from adversarial.harness import RawClient, Response
from continuum import RouterHandle
from continuum.core.errors import render_error
from continuum.mock import MockUpstream
from continuum.net.server.connection import HTTPLimits, Request, ServerConnection
from continuum.net.server.listeners import HTTPServer, open_listeners
from helpers import router_config, start_mock, start_router

MODEL = "mock-model"
HANG_GUARD = 10


def chat_body(content: str) -> bytes:
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    ).encode()


def chat_request(content: str, *, extra: bytes = b"") -> bytes:
    body = chat_body(content)
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
        b"content-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def reply_text(response: Response) -> str:
    assert response.status == 200, response
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def assert_openai_error(response: Response, status: int) -> None:
    assert response.status == status, response
    assert (response.header("content-type") or "").startswith("application/json"), response
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) >= {"message", "type", "param", "code"}


HEALTH = b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n"


async def router_with_mock(
    nursery: trio.Nursery, **server: Any
) -> tuple[RouterHandle, MockUpstream]:
    upstream, url = await start_mock(nursery, [MODEL])
    config = router_config(
        [{"name": "mock", "url": url, "models": [MODEL]}],
        **({"server": server} if server else {}),
    )
    return await start_router(nursery, config), upstream


def first_address(handle: RouterHandle) -> str:
    return handle.url.removeprefix("http://")


async def connect(handle: RouterHandle) -> RawClient:
    return await RawClient.tcp(first_address(handle))


# -- keep-alive and pipelining --------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection(
    nursery: trio.Nursery,
) -> None:
    handle, upstream = await router_with_mock(nursery)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        for word in ("alpha", "beta", "gamma"):
            await client.send(chat_request(word))
            response = await client.read_response()
            assert reply_text(response).endswith(word)
            assert response.header("connection") != "close"
        await client.send(HEALTH)
        assert (await client.read_response()).status == 200
    assert upstream.requests_by_path["/v1/chat/completions"] == 3
    await client.aclose()


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    handle, upstream = await router_with_mock(nursery)
    # The first answer is slow, so a server answering out of order would show it.
    upstream.set_latency(0.05)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(chat_request("first") + HEALTH + chat_request("third"))
        first = await client.read_response()
        second = await client.read_response()
        third = await client.read_response()
    assert reply_text(first).endswith("first")
    assert second.status == 200 and second.json() == {"status": "ok"}
    assert reply_text(third).endswith("third")
    await client.aclose()


async def test_chunked_request_body_reaches_upstream_intact(nursery: trio.Nursery) -> None:
    handle, upstream = await router_with_mock(nursery)
    body = chat_body("chunked " + "x" * 300)
    pieces = [body[:7], body[7:100], body[100:]]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for index in range(0, len(chunked), 50):  # framing split at arbitrary points
            await client.send(chunked[index : index + 50])
            await trio.sleep(0.001)
        response = await client.read_response()
    assert reply_text(response).startswith("Mock reply to: chunked xxx")
    assert upstream.last_request_body == body
    await client.aclose()


# -- Expect: 100-continue -------------------------------------------------------------------------


async def test_expect_100_continue_gets_interim_response_before_body(
    nursery: trio.Nursery,
) -> None:
    handle, upstream = await router_with_mock(nursery)
    body = chat_body("after continue")
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\nexpect: 100-continue\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        interim = await client.read_response()
        assert interim.status == 100
        assert upstream.requests == 0  # nothing was forwarded without the body
        await client.send(body)
        response = await client.read_response()
    assert reply_text(response).endswith("after continue")
    assert upstream.last_request_body == body
    await client.aclose()


async def test_expect_100_continue_over_limit_gets_413_without_sending_body(
    nursery: trio.Nursery,
) -> None:
    handle, upstream = await router_with_mock(nursery, max_request_body_size=1024)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\nexpect: 100-continue\r\n"
            b"content-length: 1000000\r\n\r\n"
        )
        response = await client.read_response()
        assert_openai_error(response, 413)
        assert response.header("connection") == "close"
        assert await client.at_eof()
    assert upstream.requests == 0
    await client.aclose()


# -- limits ---------------------------------------------------------------------------------------


async def test_body_over_limit_by_content_length_is_413(nursery: trio.Nursery) -> None:
    handle, upstream = await router_with_mock(nursery, max_request_body_size=1024)
    client = await connect(handle)
    body = chat_body("y" * 2000)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        response = await client.read_response()
        assert_openai_error(response, 413)
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert await client.at_eof()
    assert upstream.requests == 0
    await client.aclose()


async def test_body_just_under_limit_is_accepted(nursery: trio.Nursery) -> None:
    handle, upstream = await router_with_mock(nursery, max_request_body_size=1024)
    body = chat_body("z" * (1024 - len(chat_body(""))))
    assert len(body) == 1024
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(body), body)
        )
        response = await client.read_response()
    assert response.status == 200, response
    assert upstream.last_request_body == body
    await client.aclose()


async def test_chunked_body_over_limit_is_413(nursery: trio.Nursery) -> None:
    handle, upstream = await router_with_mock(nursery, max_request_body_size=1024)
    client = await connect(handle)
    chunk = b"a" * 600
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            + (b"%x\r\n%b\r\n" % (len(chunk), chunk)) * 2
        )
        response = await client.read_response()
        assert_openai_error(response, 413)
        assert await client.at_eof()
    assert upstream.requests == 0
    await client.aclose()


async def refused_431_and_closed(client: RawClient) -> None:
    assert_openai_error(await client.read_response(), 431)
    assert await client.at_eof()
    await client.aclose()


async def test_headers_over_limit_are_431(nursery: trio.Nursery) -> None:
    handle, _ = await router_with_mock(nursery, max_header_size=1024)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"GET /health HTTP/1.1\r\nhost: test\r\nx-big: " + b"h" * 2048 + b"\r\n\r\n"
        )
        await refused_431_and_closed(client)
    # Headers within the limit still work.
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(b"GET /health HTTP/1.1\r\nhost: test\r\nx-small: 1\r\n\r\n")
        assert (await client.read_response()).status == 200
    await client.aclose()


async def test_head_over_limit_across_pieces_is_431(nursery: trio.Nursery) -> None:
    # Each piece is within the limit (its fields are counted only once the head goes on
    # past the piece it began in); together they are not.
    handle, _ = await router_with_mock(nursery, max_header_size=1024)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        # The first piece ends inside the second field: the first is complete in it.
        await client.send(
            b"GET /health HTTP/1.1\r\nhost: test\r\nx-one: " + b"a" * 700 + b"\r\nx-tw")
        await trio.sleep(0.05)  # usually a read of its own (either way: too large)
        await client.send(b"o: " + b"b" * 400 + b"\r\n\r\n")
        await refused_431_and_closed(client)
    # A pipelined pair in one piece: the second head counted from its own first byte.
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        small = b"GET /health HTTP/1.1\r\nhost: test\r\nx-fill: " + b"c" * 400 + b"\r\n\r\n"
        await client.send(small * 2)
        assert (await client.read_response()).status == 200
        assert (await client.read_response()).status == 200
    await client.aclose()


# -- timeouts -------------------------------------------------------------------------------------


async def test_stalled_request_body_gets_408_and_close(nursery: trio.Nursery) -> None:
    handle, upstream = await router_with_mock(nursery, request_read_timeout=0.3)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-length: 100\r\n\r\n{\"model\": "
        )
        started = trio.current_time()
        response = await client.read_response()
        waited = trio.current_time() - started
        assert_openai_error(response, 408)
        assert response.header("connection") == "close"
        assert await client.at_eof()
    assert waited >= 0.2  # not before the configured timeout
    assert upstream.requests == 0
    await client.aclose()


async def test_stalled_request_head_gets_408(nursery: trio.Nursery) -> None:
    handle, _ = await router_with_mock(nursery, request_read_timeout=0.3)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(b"GET /health HTTP/1.1\r\nhost: te")
        response = await client.read_response()
        assert_openai_error(response, 408)
        assert await client.at_eof()
    await client.aclose()


async def test_trickled_request_still_times_out(nursery: trio.Nursery) -> None:
    """A slow-loris client sending a byte at a time cannot hold the request open forever."""
    handle, _ = await router_with_mock(nursery, request_read_timeout=0.3)
    client = await connect(handle)
    head = b"GET /health HTTP/1.1\r\nhost: test\r\nx-padding: " + b"p" * 2000

    async def trickle() -> None:
        for byte in head:
            try:
                await client.send(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(0.01)

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            response = await client.read_response()
            inner.cancel_scope.cancel()
    assert_openai_error(response, 408)
    await client.aclose()


async def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
    nursery: trio.Nursery,
) -> None:
    handle, _ = await router_with_mock(nursery, keepalive_timeout=0.3)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(HEALTH)
        assert (await client.read_response()).status == 200
        started = trio.current_time()
        assert await client.at_eof()
    assert trio.current_time() - started >= 0.2  # kept open for about keepalive_timeout
    await client.aclose()


# -- malformed and connection semantics -----------------------------------------------------------


async def test_malformed_request_line_gets_400_and_close(nursery: trio.Nursery) -> None:
    handle, upstream = await router_with_mock(nursery)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(b"THIS IS NOT HTTP\r\n\r\n")
        response = await client.read_response()
        assert_openai_error(response, 400)
        assert response.header("connection") == "close"
        assert await client.at_eof()
    assert upstream.requests == 0
    await client.aclose()


async def test_content_length_with_chunked_is_rejected(nursery: trio.Nursery) -> None:
    """Both framings at once is the request-smuggling shape: refuse it, never guess."""
    handle, upstream = await router_with_mock(nursery)
    body = chat_body("smuggled")
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        )
        response = await client.read_response()
        assert_openai_error(response, 400)
        assert await client.at_eof()
    assert upstream.requests == 0
    await client.aclose()


async def test_connection_close_from_client_is_honoured(nursery: trio.Nursery) -> None:
    handle, _ = await router_with_mock(nursery)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(chat_request("bye", extra=b"connection: close\r\n"))
        response = await client.read_response()
        assert reply_text(response).endswith("bye")
        assert response.header("connection") == "close"
        assert await client.at_eof()
    await client.aclose()


async def test_http_1_0_request_is_answered_and_closed(nursery: trio.Nursery) -> None:
    handle, _ = await router_with_mock(nursery)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(b"GET /health HTTP/1.0\r\n\r\n")
        response = await client.read_response()
        assert response.status == 200
        assert response.json() == {"status": "ok"}
        assert await client.at_eof()  # HTTP/1.0 without keep-alive: one request only
    await client.aclose()


# -- listeners ------------------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
async def test_several_bind_addresses_all_answer(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, [MODEL])
    config = router_config(
        [{"name": "mock", "url": url, "models": [MODEL]}],
        server={"bind_address": ["127.0.0.1:0", "[::1]:0"]},
    )
    handle = await start_router(nursery, config)
    assert len(handle.addresses) == 2
    v4 = [a for a in handle.addresses if a.startswith("127.0.0.1:")]
    v6 = [a for a in handle.addresses if a.startswith("[::1]:")]
    assert v4 and v6, handle.addresses
    for address in (v4[0], v6[0]):
        client = await RawClient.tcp(address)
        with trio.fail_after(HANG_GUARD):
            await client.send(chat_request(f"via {address}"))
            assert reply_text(await client.read_response()).endswith(f"via {address}")
        await client.aclose()


async def test_unix_socket_answers_and_is_removed_after_shutdown(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    path = str(tmp_path / "router.sock")
    _, url = await start_mock(nursery, [MODEL])
    config = router_config(
        [{"name": "mock", "url": url, "models": [MODEL]}],
        server={"bind_address": [f"unix:{path}"]},
    )
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            handle = await start_router(inner, config)
            assert handle.addresses == [f"unix:{path}"]
            assert os.path.exists(path)
            client = RawClient(await trio.open_unix_socket(path))
            await client.send(chat_request("over unix"))
            assert reply_text(await client.read_response()).endswith("over unix")
            await client.aclose()
            handle.shutdown()
    assert not os.path.exists(path)


# -- graceful drain -------------------------------------------------------------------------------


async def test_shutdown_closes_idle_connections_and_finishes_in_flight_ones(
    nursery: trio.Nursery,
) -> None:
    upstream, url = await start_mock(nursery, [MODEL])
    config = router_config([{"name": "mock", "url": url, "models": [MODEL]}])
    in_flight_response: list[Response] = []
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as inner:
            handle = await start_router(inner, config)
            address = first_address(handle)
            idle = await RawClient.tcp(address)
            await idle.send(HEALTH)
            assert (await idle.read_response()).status == 200
            busy = await RawClient.tcp(address)

            async def slow_request() -> None:
                await busy.send(chat_request("in flight"))
                in_flight_response.append(await busy.read_response())

            upstream.set_latency(0.3)
            inner.start_soon(slow_request)
            while upstream.requests == 0:  # the slow request has reached the upstream
                await trio.sleep(0.01)
            handle.shutdown()
            # The idle keep-alive connection is closed by the server.
            assert await idle.at_eof()
        # serve() returned only after the in-flight request was answered.
        assert in_flight_response, "the in-flight request got no answer"
        response = in_flight_response[0]
        assert reply_text(response).endswith("in flight")
        assert response.header("connection") == "close"
        assert await busy.at_eof()
        await idle.aclose()
        await busy.aclose()
    # The listener is gone: new connections are refused.
    with pytest.raises(OSError):
        await RawClient.tcp(address)


# -- HEAD and request ids on a reused connection (httpx) ----------------------------------------


async def test_head_keeps_an_httpx_connection_usable(nursery: trio.Nursery) -> None:
    handle, _ = await router_with_mock(nursery)
    async with httpx.AsyncClient(base_url=handle.url, timeout=HANG_GUARD,
                                 limits=httpx.Limits(max_connections=1)) as client:
        for path in ("/health", "/v1/models", "/admin/health"):
            head = await client.head(path)
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) > 0
            get = await client.get(path)  # same connection: nothing stray was left on it
            assert get.status_code == 200
        refused = await client.head("/v1/chat/completions")
        assert refused.status_code == 405 and refused.content == b""
        assert refused.headers["allow"] == "POST"
        assert (await client.get("/health")).json() == {"status": "ok"}


async def test_every_answer_on_a_reused_httpx_connection_has_its_own_id(
    nursery: trio.Nursery,
) -> None:
    handle, _ = await router_with_mock(nursery, max_header_size=4096)
    async with httpx.AsyncClient(base_url=handle.url, timeout=HANG_GUARD,
                                 limits=httpx.Limits(max_connections=1)) as client:
        ids = []
        for _ in range(3):
            response = await client.get("/health")
            ids.append(response.headers["x-request-id"])
        chat = await client.post("/v1/chat/completions", content=chat_body("hi"))
        ids.append(chat.headers["x-request-id"])
        too_large = await client.get("/health", headers={"x-big": "b" * 8000})
        assert too_large.status_code == 431
        ids.append(too_large.headers["x-request-id"])
        mine = await client.get("/health", headers={"x-request-id": "client-chosen-1"})
        assert mine.headers["x-request-id"] == "client-chosen-1"
    assert len(set(ids)) == len(ids), ids
    raw = await RawClient.tcp(first_address(handle))
    with trio.fail_after(HANG_GUARD):
        await raw.send(HEALTH)
        response = await raw.read_response()
    await raw.aclose()
    assert len([v for k, v in response.headers if k == "x-request-id"]) == 1


# -- the connection guard -------------------------------------------------------------------------


async def test_an_exception_in_a_handler_is_logged_once_and_answered_500(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing a request raises ends the server: the guard in ServerConnection.serve logs it
    once, with the request id, answers 500, and the next connection is served."""

    async def broken(request: Request, conn: ServerConnection) -> None:
        conn.request_id = b"req-guard-1"
        raise ValueError("a bug in a handler")

    listeners = await open_listeners(["127.0.0.1:0"])
    server = HTTPServer(listeners, broken, HTTPLimits(), render_error=render_error)
    nursery.start_soon(server.run)
    address = server.addresses[0]
    for _ in range(2):
        client = await RawClient.tcp(address)
        with trio.fail_after(HANG_GUARD):
            await client.send(HEALTH)
            response = await client.read_response()
            assert await client.at_eof()
        await client.aclose()
        assert_openai_error(response, 500)
        assert response.header("x-request-id") == "req-guard-1"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, [r.getMessage() for r in errors]  # once per failed request
    assert all("req-guard-1" in r.getMessage() and r.exc_info for r in errors)
    server.drain()


async def test_an_exception_in_the_ingress_access_log_does_not_end_the_router(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The original crash path: an exception raised after the answer (the access log) once
    escaped the server's nursery. Now one connection ends, logged once; the router goes on."""
    from continuum.actors.ingress import Ingress

    calls = 0

    def exploding(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(Ingress, "_log_access", exploding)
    caplog.set_level(logging.INFO, logger="continuum.access")  # else the line is not built
    handle, _ = await router_with_mock(nursery)
    client = await connect(handle)
    with trio.fail_after(HANG_GUARD):
        await client.send(HEALTH)
        assert (await client.read_response()).status == 200
        assert await client.at_eof()  # the guard closed that connection
    await client.aclose()
    async with httpx.AsyncClient(base_url=handle.url, timeout=HANG_GUARD) as http_client:
        assert (await http_client.get("/health")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


async def test_a_finished_connection_is_freed_without_the_collector(
    nursery: trio.Nursery,
) -> None:
    """A connection that ends (closed by the client, or parked while idle, which ends its
    ServerConnection too) leaves no reference cycle: with the collector off, no
    ServerConnection outlives its task. A cycle would be freed only by a collection, which
    lets closed connections pile up between collections (RSS) and makes each collection
    walk them."""

    async def answer(request: Request, conn: ServerConnection) -> None:
        await conn.send_response(200, [(b"content-type", b"text/plain")], b"ok")

    listeners = await open_listeners(["127.0.0.1:0"])
    limits = HTTPLimits(stream_paths=frozenset({b"/upload"}), park_after=0.05)
    server = HTTPServer(listeners, answer, limits, render_error=render_error)
    nursery.start_soon(server.run)
    address = server.addresses[0]
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(HANG_GUARD):
            for i in range(10):
                client = await RawClient.tcp(address)
                await client.send(HEALTH)
                assert (await client.read_response()).status == 200
                if i % 2:
                    await trio.sleep(0.2)  # idle past idle_park_after: parked, then served
                    await client.send(HEALTH)
                    assert (await client.read_response()).status == 200
                await client.aclose()
            while server.served:  # every connection task has ended
                await trio.sleep(0.01)
            await trio.sleep(0.05)
        alive = [o for o in gc.get_objects() if isinstance(o, ServerConnection)]
        assert alive == []
    finally:
        gc.enable()
    server.drain()


async def test_header_lookups_and_edits_agree_with_the_fields_on_the_wire(
    nursery: trio.Nursery,
) -> None:
    """``Request.header`` answers from an index when each name occurs once and by a scan
    when one repeats (the first value counts either way); ``set_header`` and
    ``drop_headers`` keep the index and the forwarded field list in step."""
    seen: list[tuple[object, ...]] = []

    async def answer(request: Request, conn: ServerConnection) -> None:
        before = (request.header(b"x-a"), request.header(b"x-b"), request.header(b"x-none"))
        request.set_header(b"x-a", b"set")
        request.set_header(b"x-new", b"added")
        request.drop_headers((b"x-b",))
        after = (request.header(b"x-a"), request.header(b"x-b"), request.header(b"x-new"))
        seen.append((before, after, [f for f in request.headers if f[0].startswith(b"x-")]))
        await conn.send_response(200, [(b"content-type", b"text/plain")], b"ok")

    listeners = await open_listeners(["127.0.0.1:0"])
    server = HTTPServer(listeners, answer, HTTPLimits(), render_error=render_error)
    nursery.start_soon(server.run)
    client = await RawClient.tcp(server.addresses[0])
    unique = b"GET /h HTTP/1.1\r\nhost: t\r\nX-A: one\r\nx-b: two\r\n\r\n"
    repeated = b"GET /h HTTP/1.1\r\nhost: t\r\nx-a: first\r\nx-b: two\r\nX-A: second\r\n\r\n"
    with trio.fail_after(HANG_GUARD):
        for head in (unique, repeated):
            await client.send(head)
            assert (await client.read_response()).status == 200
    await client.aclose()
    assert seen == [
        ((b"one", b"two", None), (b"set", None, b"added"),
         [(b"x-a", b"set"), (b"x-new", b"added")]),
        ((b"first", b"two", None), (b"set", None, b"added"),
         [(b"x-a", b"set"), (b"x-new", b"added")]),
    ]
    server.drain()
