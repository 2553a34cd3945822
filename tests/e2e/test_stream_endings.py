"""Stream endings per API, and request timeouts counted against the backend."""

from __future__ import annotations

import httpx
import trio

from helpers import router_config, start_mock, start_router

HANG_GUARD = 10

_EVENTS = (
    b'event: response.created\ndata: {"type":"response.created"}\n\n',
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"Hi"}\n\n',
    b'event: response.completed\ndata: {"type":"response.completed"}\n\n',
)


async def _responses_upstream(nursery: trio.Nursery, events: tuple[bytes, ...]) -> int:
    """A tiny upstream that streams Responses API events (and serves its model list)."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head = data.split(b"\r\n\r\n", 1)[0]
        if head.startswith(b"GET"):
            body = b'{"object":"list","data":[{"id":"r","object":"model"}]}'
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                  b"content-length: %d\r\n\r\n%s" % (len(body), body))
            return
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(data.split(b"\r\n\r\n", 1)[1]) < length:
            data += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        for event in events:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(event), event))
        await stream.send_all(b"0\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_responses_stream_ending_with_response_completed_is_complete(
    nursery: trio.Nursery,
) -> None:
    port = await _responses_upstream(nursery, _EVENTS)
    router = await start_router(nursery, router_config(
        [{"name": "r", "url": f"http://127.0.0.1:{port}", "models": ["r"]}]))
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url) as client:
            r = await client.post("/v1/responses", json={"model": "r", "input": "hi",
                                                         "stream": True})
    assert r.status_code == 200
    assert r.content == b"".join(_EVENTS)  # passed through untouched, nothing appended
    assert router.backends["r"].failures == 0


async def test_responses_stream_cut_short_gets_an_error_event(nursery: trio.Nursery) -> None:
    port = await _responses_upstream(nursery, _EVENTS[:2])
    router = await start_router(nursery, router_config(
        [{"name": "r", "url": f"http://127.0.0.1:{port}", "models": ["r"]}]))
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url) as client:
            r = await client.post("/v1/responses", json={"model": "r", "input": "hi",
                                                         "stream": True})
    assert r.content.startswith(b"".join(_EVENTS[:2]))
    assert b"event: error" in r.content


async def test_request_timeout_counts_against_the_backend(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, ["m"])
    router = await start_router(nursery, router_config(
        [{"name": "a", "url": url, "models": ["m"]}],
        request={"timeout": 0.3}, circuit_breaker={"failure_threshold": 1, "timeout": 60},
    ))
    mock.fail_next("hang")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url) as client:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 504
            health = (await client.get("/admin/health")).json()
            again = await client.post("/v1/chat/completions", json=body)
    backend = health["backends"][0]
    assert backend["circuit_breaker"]["state"] == "open"  # the hang was the backend's fault
    assert again.status_code == 503
    assert again.json()["error"]["code"] == "circuit_open"


async def test_translated_stream_cut_short_counts_against_the_backend(
    nursery: trio.Nursery,
) -> None:
    from continuum.mock import MockUpstream, serve_mock

    upstream = MockUpstream(None, ["claude"], name="claude", api="anthropic")
    address = await nursery.start(serve_mock, upstream)
    router = await start_router(nursery, router_config([
        {"name": "claude", "type": "anthropic", "url": f"http://{address}", "api_key": "k",
         "models": ["claude"]},
    ]))
    upstream.fail_next("malformed")  # the stream ends cleanly, without message_stop
    body = {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url) as client:
            r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert b"error" in r.content and r.content.rstrip().endswith(b"data: [DONE]")
    # The cut stream is the backend's failure (recorded once the ending is handed over, which
    # the client may read first).
    with trio.fail_after(HANG_GUARD):
        while router.backends["claude"].failures != 1:
            await trio.sleep(0.01)
    await trio.sleep(0.05)
    assert router.backends["claude"].failures == 1


async def test_timeout_504_carries_the_request_id(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, ["m"])
    router = await start_router(nursery, router_config(
        [{"name": "a", "url": url, "models": ["m"]}], request={"timeout": 0.3}))
    mock.fail_next("hang")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url) as client:
            r = await client.post("/v1/chat/completions", json=body,
                                  headers={"x-request-id": "req-42"})
    assert r.status_code == 504
    assert r.headers["x-request-id"] == "req-42"
    assert r.json()["error"]["code"] == "upstream_timeout"
