"""Hostile clients of the TLS listener (``server.tls``) of a router process: handshakes that
never finish, plain HTTP and garbage on the TLS port, clients that leave mid-handshake. A
second client, over TLS, is answered promptly throughout, and the router's descriptors and
RSS come back."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import pytest
import trio
import trustme
from harness import PROMPT, STEP, RawClient, RouterProcess, Usage, assert_bounded, router_config

#: The handshake (and request) deadline of the router under attack.
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def tls_router(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
               ) -> Iterator[tuple[RouterProcess, ssl.SSLContext]]:
    workdir = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(workdir / "server.pem"))
    config = router_config(server={
        "request_read_timeout": f"{READ_TIMEOUT}s",
        "tls": {"cert_file": str(workdir / "server.pem")},
    })
    router = RouterProcess(config, workdir)
    router._wait_ready = lambda: _wait_tls_ready(router, ca)  # type: ignore[method-assign]
    with router:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        yield router, context


def _wait_tls_ready(router: RouterProcess, ca: trustme.CA) -> bool:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and router.alive():
        try:
            if trio.run(_health, router.address, context) == 200:
                return True
        except (OSError, trio.BrokenResourceError, trio.TooSlowError):
            pass
        time.sleep(0.1)
    return False


async def _health(address: str, context: ssl.SSLContext) -> int:
    host, port = address.rsplit(":", 1)
    with trio.fail_after(PROMPT):
        tcp = await trio.open_tcp_stream(host, int(port))
        stream = trio.SSLStream(tcp, context, server_hostname=host)
        await stream.send_all(b"GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        await trio.aclose_forcefully(stream)
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


async def _probe_during(address: str, context: ssl.SSLContext, seconds: float) -> None:
    """TLS probes of /health, each answered within PROMPT, for ``seconds``."""
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        assert await _health(address, context) == 200
        await trio.sleep(0.05)


async def test_handshakes_that_never_finish(tls_router: tuple[RouterProcess, ssl.SSLContext]
                                            ) -> None:
    router, context = tls_router
    before = Usage.of(router)
    clients = []
    for i in range(100):
        client = await RawClient.tcp(router.address)
        # Nothing at all, or the first bytes of a ClientHello and then nothing.
        if i % 2:
            await client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        clients.append(client)
    await _probe_during(router.address, context, READ_TIMEOUT + 0.5)
    with trio.fail_after(STEP):
        for client in clients:  # each was closed by the router once its deadline passed
            while await client.fill():
                pass
    for client in clients:
        await client.aclose()
    await assert_bounded(router, before, rss_mib=32)


@pytest.mark.parametrize("data", [
    b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}",
    b"\x00" * 4096,
    b"\x16\x03\x01\x00\x05hello" + b"\xff" * 1000,  # a handshake record of nonsense
])
async def test_plain_http_and_garbage_on_the_tls_port(
    tls_router: tuple[RouterProcess, ssl.SSLContext], data: bytes
) -> None:
    router, context = tls_router
    before = Usage.of(router)
    with trio.fail_after(STEP):
        client = await RawClient.tcp(router.address)
        await client.try_send(data)
        while await client.fill():
            pass
        await client.aclose()
    if data.startswith((b"GET", b"POST")):  # told to use https, in OpenAI's error shape
        assert bytes(client.buffer).startswith(b"HTTP/1.1 400 ")
        assert b'"code":"tls_required"' in client.buffer
    else:
        assert not bytes(client.buffer).startswith(b"HTTP/")
    await _probe_during(router.address, context, 0.3)
    await assert_bounded(router, before, rss_mib=16)


async def test_clients_that_leave_mid_handshake(
    tls_router: tuple[RouterProcess, ssl.SSLContext]
) -> None:
    router, context = tls_router
    before = Usage.of(router)
    host, port = router.address.rsplit(":", 1)
    for _ in range(100):
        tcp = await trio.open_tcp_stream(host, int(port))
        stream = trio.SSLStream(tcp, context, server_hostname=host)
        with trio.move_on_after(0.001):
            await stream.do_handshake()
        await trio.aclose_forcefully(tcp)
    await _probe_during(router.address, context, 0.3)
    await assert_bounded(router, before, rss_mib=16)
