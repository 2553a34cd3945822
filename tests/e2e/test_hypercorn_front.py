"""The hypercorn front (``server.frontend: hypercorn``) and ``continuum.asgi``: HTTP/2 over TLS
and h2c with httpx (``http2=True``), HTTP/3 with an aioquic client, the ASGI app under
hypercorn's command line and mounted under a prefix in Starlette (the example in docs/),
lifespan start and failure, and ``trio-continuum run`` serving it. The same routes, errors,
streaming, auth and metrics are checked by the other end-to-end suites, which run against
both fronts (``conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio
import trustme

from continuum import RouterHandle, config_from_dict
from continuum.asgi import create_app
from helpers import router_config, start_router

pytestmark = pytest.mark.front_given  # each router here names its front

T = TypeVar("T")
MODEL = "mock-model"
ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}


async def in_thread(fn: Callable[[], T], timeout: float = 30) -> T:
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def write_cert(ca: trustme.CA, directory: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(cert_file), str(key_file)


def backends() -> list[dict[str, Any]]:
    return [{"name": "m", "type": "mock", "models": [MODEL]}]


def h2_session(router: RouterHandle, verify: ssl.SSLContext | bool = True,
               **kwargs: Any) -> dict[str, Any]:
    """A plain request, a stream and an error over one httpx HTTP/2 client."""
    with httpx.Client(http2=True, verify=verify, **kwargs) as client:
        health = client.get(f"{router.url}/health")
        answer = client.post(f"{router.url}/v1/chat/completions", json=CHAT)
        with client.stream("POST", f"{router.url}/v1/chat/completions",
                           json={**CHAT, "stream": True}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
            stream_version = stream.http_version
        missing = client.post(f"{router.url}/v1/chat/completions", json={**CHAT, "model": "x"})
    return {
        "versions": {health.http_version, answer.http_version, stream_version,
                     missing.http_version},
        "health": health.json(),
        "answer": answer.json()["choices"][0]["message"]["content"],
        "events": events,
        "missing": (missing.status_code, missing.json()["error"]["code"]),
        "headers": answer.headers,
    }


async def test_http2_over_tls_by_alpn(nursery: trio.Nursery, tmp_path: Path,
                                      ca: trustme.CA) -> None:
    cert_file, key_file = write_cert(ca, tmp_path)
    router = await start_router(nursery, router_config(backends(), server={
        "frontend": "hypercorn", "tls": {"cert_file": cert_file, "key_file": key_file}}))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    seen = await in_thread(lambda: h2_session(router, context))
    assert seen["versions"] == {"HTTP/2"}
    assert seen["health"] == {"status": "ok"}
    assert seen["events"][-1] == "data: [DONE]" and len(seen["events"]) > 3
    assert seen["missing"] == (404, "model_not_found")
    assert seen["headers"]["x-continuum-backend"] == "m"
    assert seen["headers"]["x-request-id"]
    # The HTTP/1.1 clients of the same port are served too.
    plain = await in_thread(lambda: httpx.get(f"{router.url}/health", verify=context))
    assert plain.http_version == "HTTP/1.1" and plain.status_code == 200


async def test_h2c_with_prior_knowledge(nursery: trio.Nursery) -> None:
    router = await start_router(nursery, router_config(
        backends(), server={"frontend": "hypercorn"}))
    seen = await in_thread(lambda: h2_session(router, http1=False))
    assert seen["versions"] == {"HTTP/2"}
    assert seen["answer"] and seen["missing"] == (404, "model_not_found")
    text = await in_thread(lambda: httpx.get(f"{router.url}/metrics").text)
    assert 'http_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"} 2.0' \
        in text


async def test_http3_over_quic(nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA) -> None:
    if importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed (the http3 extra)")
    cert_file, key_file = write_cert(ca, tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    router = await start_router(nursery, router_config(backends(), server={
        "frontend": "hypercorn", "http3": True,
        "tls": {"cert_file": cert_file, "key_file": key_file}}))
    host, port = router.addresses[0].rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    over_h2 = await in_thread(lambda: httpx.get(f"{router.url}/health", verify=context))
    assert f'h3=":{port}"' in over_h2.headers["alt-svc"]  # how clients find HTTP/3
    status, body = await in_thread(
        lambda: asyncio.run(_h3_request(host, int(port), "/v1/models", str(ca_file))))
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [MODEL]


async def _h3_request(host: str, port: int, path: str, ca_file: str) -> tuple[int, bytes]:
    """One HTTP/3 GET with aioquic (asyncio, in a thread of its own)."""
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent

    class Client(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.http = H3Connection(self._quic)
            self.events: list[H3Event] = []
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def quic_event_received(self, event: QuicEvent) -> None:
            for h3_event in self.http.handle_event(event):
                if isinstance(h3_event, HeadersReceived | DataReceived):
                    self.events.append(h3_event)
                    if h3_event.stream_ended and not self.done.done():
                        self.done.set_result(None)

    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                      server_name="127.0.0.1")
    configuration.load_verify_locations(ca_file)
    async with connect(host, port, configuration=configuration,
                       create_protocol=Client) as client:
        assert isinstance(client, Client)
        stream_id = client._quic.get_next_available_stream_id()
        client.http.send_headers(stream_id, [
            (b":method", b"GET"), (b":scheme", b"https"),
            (b":authority", f"{host}:{port}".encode()), (b":path", path.encode()),
        ], end_stream=True)
        client.transmit()
        await asyncio.wait_for(client.done, 10)
    status = 0
    body = b""
    for event in client.events:
        if isinstance(event, HeadersReceived):
            status = int(dict(event.headers)[b":status"])
        elif isinstance(event, DataReceived):
            body += event.data
    return status, body


# --- continuum.asgi --------------------------------------------------------------------------


async def _serve_with_hypercorn(nursery: trio.Nursery, app: Any) -> str:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds: list[str] = await nursery.start(partial(serve, app, config))
    return binds[0]


async def test_the_asgi_app_under_hypercorn_with_its_lifespan(nursery: trio.Nursery) -> None:
    app = create_app(config_from_dict({
        "backends": backends(), "health_checks": {"enabled": False},
        "api_keys": {"mode": "blocking", "api_keys": [{"key": "sk-1"}]}}))
    url = await _serve_with_hypercorn(nursery, app)
    assert app.handle is not None and sorted(app.handle.backends) == ["m"]

    def run() -> tuple[int, int, str]:
        with httpx.Client(base_url=url) as client:
            denied = client.post("/v1/chat/completions", json=CHAT)
            allowed = client.post("/v1/chat/completions", json=CHAT,
                                  headers={"authorization": "Bearer sk-1"})
            return denied.status_code, allowed.status_code, allowed.headers["x-continuum-model"]

    assert await in_thread(run) == (401, 200, MODEL)


async def test_requests_before_the_router_runs_get_503() -> None:
    app = create_app(config_from_dict({"backends": backends()}))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/health", "headers": []},
              receive, send)
    assert sent[0]["status"] == 503
    assert b"not running" in sent[1]["body"]


async def test_a_lifespan_that_cannot_start_says_why() -> None:
    app = create_app(str(ROOT / "no-such-config.yaml"))
    inbox = [{"type": "lifespan.startup"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    with trio.fail_after(10):
        await app({"type": "lifespan"}, receive, send)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "no-such-config.yaml" in sent[0]["message"]


async def test_the_mounted_starlette_example(nursery: trio.Nursery, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/examples/starlette_mount.py as it is: the router under /llm, the app's own route
    beside it, a stream through the mount, the prefix gone before routing."""
    config = tmp_path / "router.yaml"
    config.write_text("backends:\n  - {name: m, type: mock, models: [mock-model]}\n"
                      "health_checks: {enabled: false}\n")
    monkeypatch.setenv("CONTINUUM_CONFIG", str(config))
    spec = importlib.util.spec_from_file_location(
        "starlette_mount", ROOT / "docs" / "examples" / "starlette_mount.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    url = await _serve_with_hypercorn(nursery, example.app)

    def run() -> dict[str, Any]:
        with httpx.Client(base_url=url) as client:
            home = client.get("/").json()
            models = client.get("/llm/v1/models").json()
            with client.stream("POST", "/llm/v1/chat/completions",
                               json={**CHAT, "stream": True}) as stream:
                events = [line for line in stream.iter_lines() if line]
            missing = client.get("/llm/v1/nope").json()
            return {"home": home, "models": models, "events": events, "missing": missing}

    seen = await in_thread(run)
    assert seen["home"] == {"service": "my app", "llm_backends": ["m"]}
    assert [m["id"] for m in seen["models"]["data"]] == [MODEL]
    assert seen["events"][-1] == "data: [DONE]"
    assert seen["missing"]["error"]["message"] == "Unknown path: GET '/v1/nope'"


async def test_hypercorns_command_line_serves_continuum_asgi(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("backends:\n  - {name: m, type: mock, models: [mock-model]}\n")
    port_file = tmp_path / "port"
    env = {**os.environ, "CONTINUUM_CONFIG": str(config)}
    async with _process([sys.executable, "-m", "hypercorn", "--worker-class", "trio",
                         "--bind", "127.0.0.1:0", "continuum.asgi:app"], env) as output:
        url = await _wait_for(output, b"Running on ", port_file)
        answer = await in_thread(lambda: httpx.post(f"{url}/v1/chat/completions", json=CHAT))
    assert answer.status_code == 200 and answer.headers["x-continuum-backend"] == "m"


async def test_trio_continuum_run_with_the_hypercorn_front(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("server: {bind_address: '127.0.0.1:0', frontend: hypercorn}\n"
                      "backends:\n  - {name: m, type: mock, models: [mock-model]}\n")
    async with _process([sys.executable, "-m", "continuum", "run", str(config)],
                        dict(os.environ)) as output:
        address = await _wait_for(output, b"listening on ", tmp_path / "x")
        seen = await in_thread(lambda: httpx.Client(http2=True, http1=False).get(
            f"http://{address}/v1/models"))
    assert seen.http_version == "HTTP/2" and seen.status_code == 200


@contextlib.asynccontextmanager
async def _process(argv: list[str], env: dict[str, str]) -> Any:
    process = await trio.lowlevel.open_process(argv, env=env, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT)
    output = bytearray()
    try:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                assert process.stdout is not None
                while chunk := await process.stdout.receive_some(65536):
                    output.extend(chunk)

            nursery.start_soon(read)
            yield output
            process.terminate()
            with trio.fail_after(30):
                await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        process.kill()


async def _wait_for(output: bytearray, mark: bytes, _: Path) -> str:
    with trio.fail_after(30):
        while mark not in output or not output.split(mark, 1)[1].split(b"\n", 1)[1:]:
            await trio.sleep(0.05)
    return output.split(mark, 1)[1].split()[0].decode()
