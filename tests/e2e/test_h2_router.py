"""The router in front of an HTTP/2 (TLS, ALPN) upstream: requests multiplexed on one
connection, bodies forwarded untouched, GOAWAY without client-visible errors."""

from __future__ import annotations

import json
import ssl

import httpx
import trio

from h2_server import H2Server
from helpers import router_config, start_router

HANG_GUARD = 15


def _backend(port: int, ca_file: str, http2: str = "auto") -> dict[str, object]:
    return {
        "name": "h2", "url": f"https://localhost:{port}", "ca_file": ca_file,
        "http2": http2, "models": ["m"],
    }


async def test_router_speaks_http2_to_an_alpn_upstream(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    server = H2Server(server_tls, max_streams=100)
    port = await server.start(nursery)
    router = await start_router(nursery, router_config([_backend(port, ca_file)]))
    body = b'{"model": "m",  "messages": [{"role": "user", "content": "hi"}]}'
    answers: list[dict[str, object]] = []

    async def one(client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        answers.append(r.json())

    limits = httpx.Limits(max_connections=50)
    with trio.fail_after(HANG_GUARD):
        async with (
            httpx.AsyncClient(base_url=router.url, limits=limits) as client,
            trio.open_nursery() as inner,
        ):
            for _ in range(50):
                inner.start_soon(one, client)
    assert len(answers) == 50
    assert all(a["path"] == "/v1/chat/completions" for a in answers)
    assert all(a["body"] == body.decode() for a in answers)  # forwarded byte for byte
    assert len(server.conns) == 1  # fifty requests, one multiplexed connection
    assert server.max_open > 1


async def test_goaway_under_load_is_invisible_to_clients(
    nursery: trio.Nursery, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    # After 20 streams on the first connection the server sends GOAWAY and answers only the
    # first 5; the router must fail the rest over (they were never processed) on a new one.
    server = H2Server(server_tls, goaway_after=20, goaway_last_index=4)
    port = await server.start(nursery)
    router = await start_router(
        nursery,
        router_config([_backend(port, ca_file)], request={"max_retries": 2},
                      circuit_breaker={"enabled": False}),
    )
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        payload = {"model": "m", "messages": [{"role": "user", "content": str(i)}]}
        r = await client.post("/v1/chat/completions", json=payload)
        statuses.append(r.status_code)
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["body"])["messages"][0]["content"] == str(i)

    limits = httpx.Limits(max_connections=20)
    with trio.fail_after(HANG_GUARD):
        async with (
            httpx.AsyncClient(base_url=router.url, limits=limits) as client,
            trio.open_nursery() as inner,
        ):
            for i in range(20):
                inner.start_soon(one, client, i)
    assert statuses == [200] * 20
    assert len(server.conns) >= 2  # the refused streams went to a new connection
