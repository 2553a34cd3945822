"""TLS on the native ingress (``server.tls``): the openai SDK and httpx over ``https://`` and
``wss://`` with a test CA (trustme), mutual TLS, a plain-HTTP client on the TLS port, the
minimum version, and re-reading the certificate (``RouterHandle.reload_tls``, and on every
config reload)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio
import trustme

from continuum import RouterHandle, config_from_dict, load_config, serve
from continuum.config import ConfigError
from helpers import FRONT, router_config, start_router

T = TypeVar("T")
MODEL = "mock-model"


async def in_thread(fn: Callable[[], T], timeout: float = 30) -> T:
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def write_cert(ca: trustme.CA, directory: Path, name: str = "server") -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(cert_file), str(key_file)


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


async def tls_router(nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA,
                     **tls: Any) -> RouterHandle:
    cert_file, key_file = write_cert(ca, tmp_path)
    return await start_router(nursery, router_config(
        [{"name": "m", "type": "mock", "models": [MODEL, "gpt-realtime"]}],
        server={"tls": {"cert_file": cert_file, "key_file": key_file, **tls}}))


async def test_httpx_and_the_openai_sdk_over_https(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    router = await tls_router(nursery, tmp_path, ca)
    assert router.url.startswith("https://127.0.0.1:")
    context = client_context(ca)

    def run() -> tuple[str, str, str, str]:
        with httpx.Client(verify=context) as http:
            health = http.get(f"{router.url}/health")
            client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="k", max_retries=0,
                                   http_client=http)
            answer = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}])
            streamed = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True)
                if chunk.choices
            )
            return (health.http_version, health.json()["status"],
                    answer.choices[0].message.content or "", streamed)

    version, status, answer, streamed = await in_thread(run)
    assert (version, status) == ("HTTP/1.1", "ok")
    assert answer and streamed == answer


async def test_a_realtime_session_over_wss(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    router = await tls_router(nursery, tmp_path, ca)
    context = client_context(ca)
    base = f"{router.url}/v1"

    def run() -> str:
        client = openai.OpenAI(base_url=base, api_key="k", max_retries=0,
                               websocket_base_url=base.replace("https:", "wss:"))
        with client.realtime.connect(model="gpt-realtime",
                                     websocket_connection_options={"ssl": context}) as conn:
            conn.recv()
            conn.response.create()
            return next(e.type for e in conn if e.type == "response.done")

    assert await in_thread(run) == "response.done"


@pytest.mark.native_only  # hypercorn answers h2 (test_hypercorn_front.py)
async def test_the_alpn_answer_is_http_1_1(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    router = await tls_router(nursery, tmp_path, ca)
    host, port = router.addresses[0].rsplit(":", 1)
    context = client_context(ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    tcp = await trio.open_tcp_stream(host, int(port))
    tls = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    with trio.fail_after(10):
        await tls.do_handshake()
    assert tls.selected_alpn_protocol() == "http/1.1"
    await tls.aclose()


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    router = await tls_router(nursery, tmp_path, ca, client_ca_file=_ca_file(ca, tmp_path))

    def without() -> None:
        with httpx.Client(verify=client_context(ca)) as http:
            http.get(f"{router.url}/health")

    with pytest.raises(httpx.TransportError):
        await in_thread(without)

    stranger = trustme.CA()  # a certificate the router's client CA never signed

    def with_cert(cert: trustme.LeafCert) -> int:
        with httpx.Client(verify=client_context(ca, cert)) as http:
            return http.get(f"{router.url}/health").status_code

    with pytest.raises(httpx.TransportError):
        await in_thread(lambda: with_cert(stranger.issue_cert("client@example.com")))
    assert await in_thread(lambda: with_cert(ca.issue_cert("client@example.com"))) == 200


def _ca_file(ca: trustme.CA, directory: Path) -> str:
    path = directory / "client-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.native_only  # hypercorn closes the connection
async def test_plain_http_on_the_tls_port_is_told_so(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    router = await tls_router(nursery, tmp_path, ca)
    plain = router.url.replace("https:", "http:")
    response = await in_thread(lambda: httpx.get(f"{plain}/health"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "tls_required"
    # ... and the TLS clients are served as before.
    assert await in_thread(lambda: httpx.get(f"{router.url}/health",
                                             verify=client_context(ca)).status_code) == 200


async def test_min_version_refuses_older_clients(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    router = await tls_router(nursery, tmp_path, ca, min_version="1.3")
    old = client_context(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.TransportError):
        await in_thread(lambda: httpx.get(f"{router.url}/health", verify=old))
    assert await in_thread(lambda: httpx.get(f"{router.url}/health",
                                             verify=client_context(ca)).status_code) == 200


async def test_reload_tls_rereads_the_certificate(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    router = await tls_router(nursery, tmp_path, ca)
    tls = router.config.server.tls
    assert tls.cert_file is not None and tls.key_file is not None
    new_ca = trustme.CA()

    def status(context: ssl.SSLContext) -> int:
        with httpx.Client(verify=context) as http:
            return http.get(f"{router.url}/health").status_code

    assert await in_thread(lambda: status(client_context(ca))) == 200
    # A file that does not load changes nothing.
    Path(tls.key_file).write_text("not a key")
    with pytest.raises(ConfigError, match=r"server\.tls"):
        router.reload_tls()
    assert await in_thread(lambda: status(client_context(ca))) == 200
    # New files: new connections get the new certificate.
    write_cert(new_ca, tmp_path)
    assert router.reload_tls() is True
    assert await in_thread(lambda: status(client_context(new_ca))) == 200
    with pytest.raises(httpx.TransportError):
        await in_thread(lambda: status(client_context(ca)))


async def test_a_reload_rereads_the_certificate(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    """A config reload (SIGHUP, the file watcher and POST /admin/config/reload all take this
    path) reads the ``server.tls`` files again; a file that does not load is logged and the
    certificate in use stays."""
    cert_file, key_file = write_cert(ca, tmp_path)
    server: dict[str, Any] = {"tls": {"cert_file": cert_file, "key_file": key_file}}
    if FRONT.get() != "native":
        server["frontend"] = FRONT.get()
    path = tmp_path / "router.yaml"  # YAML is a superset of JSON
    path.write_text(json.dumps(router_config(
        [{"name": "m", "type": "mock", "models": [MODEL]}], server=server)))
    router: RouterHandle = await nursery.start(serve, load_config(path))

    def status(context: ssl.SSLContext) -> int:
        with httpx.Client(verify=context) as http:
            return http.get(f"{router.url}/health").status_code

    assert await in_thread(lambda: status(client_context(ca))) == 200
    Path(key_file).write_text("not a key")
    outcome = await router.reload()
    assert not outcome.changed
    assert "server.tls not reloaded (the certificate in use stays)" in caplog.text
    assert await in_thread(lambda: status(client_context(ca))) == 200
    new_ca = trustme.CA()
    write_cert(new_ca, tmp_path)
    await router.reload()
    assert await in_thread(lambda: status(client_context(new_ca))) == 200
    with pytest.raises(httpx.TransportError):
        await in_thread(lambda: status(client_context(ca)))


@pytest.mark.native_only  # hypercorn's own handshake timeout
async def test_a_tls_handshake_that_never_finishes_is_dropped(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA
) -> None:
    cert_file, key_file = write_cert(ca, tmp_path)
    router = await start_router(nursery, router_config(
        [{"name": "m", "type": "mock"}],
        server={"request_read_timeout": "300ms",
                "tls": {"cert_file": cert_file, "key_file": key_file}}))
    host, port = router.addresses[0].rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)))
    stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
    stalled.settimeout(10)
    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(lambda: stalled.recv(100)) == b""
    stalled.close()


def test_tls_config_is_checked(tmp_path: Path) -> None:
    backends = [{"name": "m", "type": "mock"}]
    with pytest.raises(ConfigError, match=r"server\.tls\.cert_file: file not found"):
        config_from_dict({"backends": backends,
                          "server": {"tls": {"cert_file": str(tmp_path / "none.pem")}}})
    (tmp_path / "a.key").write_text("x")
    with pytest.raises(ConfigError, match="need a cert_file"):
        config_from_dict({"backends": backends,
                          "server": {"tls": {"key_file": str(tmp_path / "a.key")}}})
    with pytest.raises(ConfigError, match="min_version"):
        config_from_dict({"backends": backends, "server": {"tls": {"min_version": "1.0"}}})
    with pytest.raises(ConfigError, match=r"server\.http3"):
        config_from_dict({"backends": backends, "server": {"http3": True}})


async def test_a_certificate_that_does_not_load_stops_the_start(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"server\.tls: cannot load"):
        await start_router(nursery, router_config(
            [{"name": "m", "type": "mock"}], server={"tls": {"cert_file": str(bad)}}))
