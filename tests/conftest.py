"""Fixtures shared by several test modules."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from continuum.testing.redis_server import RedisServer, TLSFiles, find_redis_server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ctx.set_alpn_protocols(["h2"])
    return ctx


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)




# -- a real redis-server (issue 11: no mocked Redis) ------------------------------------


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-server processes (keyword arguments: ``RedisServer``'s); all are
    stopped at the end. Skips when the binary is missing (``.ci/run`` installs it)."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    started: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", **options)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def redis_server(redis_servers: Callable[..., RedisServer]) -> RedisServer:
    """One plain redis-server on a free port of 127.0.0.1."""
    return redis_servers()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> TLSFiles:
    """A certificate for 127.0.0.1 signed by ``ca``, for a TLS redis-server."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("cert", "key", "ca")}
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    return TLSFiles(cert_file=paths["cert"], key_file=paths["key"], ca_file=paths["ca"])
