"""The Redis client against a real redis-server, and against hostile "servers" on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuum.net.redis import (
    RedisAuthError,
    RedisClient,
    RedisConfigError,
    RedisConnectionError,
    RedisError,
    RedisOptions,
    RedisProtocolError,
    RedisReplyError,
    RedisTimeoutError,
    RedisUnavailableError,
    Script,
)
from continuum.testing.redis_server import RedisServer, RedisServerError, TLSFiles

INCR = Script("return redis.call('INCR', KEYS[1])")
ECHO_ARGS = Script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")


# -- URLs and options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", {"host": "localhost", "port": 6379, "db": 0, "tls": False}),
        ("redis://10.0.0.5:6380/3", {"host": "10.0.0.5", "port": 6380, "db": 3}),
        ("redis://[::1]:7000/1", {"host": "::1", "port": 7000, "db": 1}),
        ("rediss://cache.example:6390", {"host": "cache.example", "tls": True}),
        ("redis://:s3cr%40t@h/2", {"username": None, "password": "s3cr@t", "db": 2}),
        ("redis://alice:pw@h", {"username": "alice", "password": "pw"}),
        ("unix:///run/redis.sock?db=4", {"unix_path": "/run/redis.sock", "db": 4}),
        ("unix://:pw@/tmp/r.sock", {"unix_path": "/tmp/r.sock", "password": "pw"}),
    ],
)
def test_urls(url: str, expected: dict[str, Any]) -> None:
    options = RedisOptions.from_url(url)
    for name, value in expected.items():
        assert getattr(options, name) == value, name


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379/mymaster", "Sentinel are not supported"),
        ("redis-cluster://h:7000", "Cluster and Sentinel are not supported"),
        ("redis://h1:7000,h2:7001", "not supported"),
        ("http://h", "scheme must be redis://"),
        ("redis://:pw@/0", "needs a host"),
        ("redis://h/x", "database must be a number"),
        ("redis://h:99999", "invalid Redis URL"),
        ("redis://h/0?ssl_cert_reqs=none", "unknown Redis URL parameter"),
        ("unix://", "needs a socket path"),
        ("redis://user@h", "username needs a password"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(RedisConfigError, match=message):
        RedisOptions.from_url(url)


def test_options_are_checked_and_keep_the_password_out() -> None:
    options = RedisOptions.from_url("redis://bob:hunter2@h:1/1", timeout=0.5, pool_size=2)
    assert "hunter2" not in repr(options)
    assert options.address == "redis://h:1/1"
    with pytest.raises(RedisConfigError, match="already set by the URL"):
        RedisOptions.from_url("redis://h/1", db=2)
    with pytest.raises(RedisConfigError, match="invalid Redis option"):
        RedisOptions.from_url("redis://h", no_such_option=1)
    for bad in ({"timeout": 0}, {"pool_size": 0}, {"backoff_max": 0.01}, {"db": -1}):
        with pytest.raises(RedisConfigError):
            RedisOptions(**bad)


# -- against a real server --------------------------------------------------------------


async def test_commands(redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url) as client:
        assert await client.execute("SET", "k", b"\x00\xffbinary") == b"OK"
        assert await client.execute("GET", "k") == b"\x00\xffbinary"
        assert await client.execute("GET", "missing") is None
        assert await client.execute("INCRBY", "n", 41) == 41
        assert await client.execute("RPUSH", "l", "a", "b") == 2
        assert await client.execute("LRANGE", "l", 0, -1) == [b"a", b"b"]
        assert await client.execute_many([["INCR", "n"], ["PING"], ["ECHO", "x"]]) == [
            42,
            b"PONG",
            b"x",
        ]
        with pytest.raises(RedisReplyError) as info:
            await client.execute("INCR", "l")
        assert info.value.code == "WRONGTYPE"
        with pytest.raises(RedisReplyError, match="unknown command"):
            await client.execute_many([["PING"], ["NO-SUCH-COMMAND"]])
        # An error reply does not break anything.
        assert await client.execute("PING") == b"PONG"
        stats = client.statistics()
        assert stats.connections == 1
        assert stats.connects == 1
        assert stats.failures == 0
        assert not client.is_down()


async def test_select_db(redis_servers: Callable[..., RedisServer]) -> None:
    server = redis_servers()
    db3 = RedisClient.from_url(f"redis://127.0.0.1:{server.port}/3")
    db0 = RedisClient.from_url(f"redis://127.0.0.1:{server.port}/0")
    async with db3, db0:
        await db3.execute("SET", "where", "three")
        assert await db3.execute("GET", "where") == b"three"
        assert await db0.execute("GET", "where") is None


async def test_unix_socket(redis_servers: Callable[..., RedisServer], tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    redis_servers(extra_args=("--unixsocket", str(path), "--unixsocketperm", "700"))
    async with RedisClient.from_url(f"unix://{path}?db=1") as client:
        assert await client.execute("SET", "u", "1") == b"OK"
        assert await client.execute("GET", "u") == b"1"


async def test_scripts_are_loaded_once_and_reloaded_after_noscript(
    redis_server: RedisServer,
) -> None:
    async with RedisClient.from_url(redis_server.url) as client:
        client.register_script(INCR)
        assert await client.evalsha(INCR, ["n"]) == 1  # loaded with the connection
        assert client.statistics().script_reloads == 0
        assert await client.evalsha(ECHO_ARGS, ["k"], ["v", 41]) == [b"k", b"v", 42]
        assert client.statistics().script_reloads == 1  # not registered: EVAL once
        assert await client.evalsha(ECHO_ARGS, ["k"], ["v", 1]) == [b"k", b"v", 2]
        assert client.statistics().script_reloads == 1

        await client.execute("SCRIPT", "FLUSH")
        assert await client.evalsha(INCR, ["n"]) == 2
        assert client.statistics().script_reloads == 2
        assert await client.evalsha(INCR, ["n"]) == 3
        assert client.statistics().script_reloads == 2
        with pytest.raises(RedisReplyError, match="ERR"):
            await client.evalsha(Script("return redis.call('NOPE')"))


async def test_password(redis_servers: Callable[..., RedisServer]) -> None:
    server = redis_servers(password="p@ss word")
    async with RedisClient.from_url(server.url) as client:  # percent-encoded in the URL
        assert await client.execute("PING") == b"PONG"

    async with RedisClient.from_url(f"redis://127.0.0.1:{server.port}") as anonymous:
        with pytest.raises(RedisAuthError, match="NOAUTH"):
            await anonymous.execute("PING")


async def test_wrong_password_is_a_clear_error(redis_servers: Callable[..., RedisServer]) -> None:
    server = redis_servers(password="right")
    url = f"redis://:not-the-password@127.0.0.1:{server.port}/0"
    async with RedisClient.from_url(url) as client:
        with pytest.raises(RedisAuthError) as info:
            await client.execute("PING")
        message = str(info.value)
        assert "WRONGPASS" in message or "invalid password" in message
        assert "not-the-password" not in message
        assert str(server.port) in message  # says which server
        # The failure starts the back-off: the next call is refused without I/O.
        with pytest.raises(RedisUnavailableError, match="unavailable") as again:
            await client.execute("PING")
        assert "not-the-password" not in str(again.value)
        assert client.is_down()


async def test_acl_user(redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url) as admin:
        await admin.execute("ACL", "SETUSER", "alice", "on", ">alice-pw", "~app:*", "+@all")
    url = f"redis://alice:alice-pw@127.0.0.1:{redis_server.port}/0"
    async with RedisClient.from_url(url) as alice:
        assert await alice.execute("SET", "app:x", "1") == b"OK"
        with pytest.raises(RedisAuthError, match="NOPERM"):
            await alice.execute("SET", "other", "1")
    bad = f"redis://alice:wrong@127.0.0.1:{redis_server.port}/0"
    async with RedisClient.from_url(bad) as client:
        with pytest.raises(RedisAuthError):
            await client.execute("PING")


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture
def tls_server(redis_servers: Callable[..., RedisServer], tls_files: TLSFiles) -> RedisServer:
    try:
        return redis_servers(tls=tls_files, password="tls-pw")
    except RedisServerError as exc:
        if "TLS" in str(exc) or "tls" in str(exc):
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        raise


async def test_tls(tls_server: RedisServer, tls_files: TLSFiles) -> None:
    assert tls_server.url.startswith("rediss://")
    async with RedisClient.from_url(tls_server.url, ca_file=tls_files.ca_file) as client:
        assert await client.execute("SET", "t", "1") == b"OK"
        client.register_script(INCR)
        # Concurrent calls over TLS take trio's stream path, pipelined.
        replies: list[int] = []

        async def incr() -> None:
            replies.append(await client.evalsha(INCR, ["tls-n"]))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(incr)
        assert sorted(replies) == list(range(1, 51))

    async with RedisClient.from_url(tls_server.url, verify=False) as unverified:
        assert await unverified.execute("PING") == b"PONG"


async def test_tls_refuses_an_unknown_certificate(tls_server: RedisServer) -> None:
    other_ca = trustme.CA()
    ctx = ssl.create_default_context()
    other_ca.configure_trust(ctx)
    async with RedisClient.from_url(tls_server.url, ssl_context=ctx) as client:
        with pytest.raises(RedisConnectionError, match="certificate verification failed"):
            await client.execute("PING")


async def test_tls_against_a_plain_server(redis_server: RedisServer) -> None:
    url = f"rediss://127.0.0.1:{redis_server.port}/0"
    async with RedisClient.from_url(url, verify=False, connect_timeout=0.5) as client:
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await client.execute("PING")


# -- concurrency: pipelining and cancellation -------------------------------------------


async def test_concurrent_calls_share_one_connection(redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url, pool_size=1) as client:
        client.register_script(INCR)
        replies: list[int] = []

        async def worker() -> None:
            for _ in range(20):
                replies.append(await client.evalsha(INCR, ["shared"]))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(worker)
        assert sorted(replies) == list(range(1, 1001))
        assert client.statistics().connects == 1


async def test_pool_grows_only_when_connections_are_deep(redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url, pool_size=3) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(client.execute, "INCR", "deep")
        assert await client.execute("GET", "deep") == b"200"
        assert 1 <= client.statistics().connections <= 3


async def test_a_cancelled_caller_leaves_the_connection_usable(redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url, pool_size=1, timeout=5.0) as client:
        await client.execute("PING")
        # BLPOP holds the reply back for 0.3 s; the caller gives up after 0.05 s. The call
        # finishes (it is shielded, bounded by its own timeout), then the caller's
        # cancellation takes effect; the connection stays in step.
        with trio.move_on_after(0.05) as scope:
            await client.execute("BLPOP", "nothing", "0.3")
        assert scope.cancelled_caught
        assert await client.execute("ECHO", "next") == b"next"
        assert client.statistics().connects == 1


async def test_a_shielded_script_call_returns_its_reply_to_a_cancelled_caller(
        redis_server: RedisServer) -> None:
    async with RedisClient.from_url(redis_server.url, pool_size=1, timeout=5.0) as client:
        client.register_script(INCR)
        # The other call holds the connection's reply back for 0.3 s; the caller is
        # cancelled after 0.05 s. Shielded, it still gets what its script did, and its
        # Cancelled at its next checkpoint.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.execute, "BLPOP", "nothing", "0.3")
            await trio.sleep(0.01)
            got: list[object] = []
            with trio.move_on_after(0.05) as scope:
                got.append(await client.evalsha(INCR, ["shielded"], shielded=True))
                await trio.lowlevel.checkpoint()
                got.append("not cancelled")
        assert scope.cancelled_caught
        assert got == [1]
        # Unshielded (the default), the same call's reply is lost to the cancellation.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.execute, "BLPOP", "nothing", "0.3")
            await trio.sleep(0.01)
            with trio.move_on_after(0.05) as scope:
                got.append(await client.evalsha(INCR, ["shielded"]))
        assert scope.cancelled_caught
        assert got == [1]
        assert await client.execute("GET", "shielded") == b"2"


class _Steps(trio.abc.Instrument):
    """Counts the steps of one task: a call that never yields runs within one."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_lone_shielded_call_can_finish_without_a_scheduler_pass(
        redis_server: RedisServer) -> None:
    """With nothing else in flight, a call waits for a fast reply in a short blocking poll
    instead of trio's wait (a scheduler pass and a wake-up each): a shielded call (the
    admission script) then completes without yielding at all."""
    async with RedisClient.from_url(redis_server.url, pool_size=1) as client:
        client.register_script(INCR)
        await client.execute("PING")  # connected
        counter = _Steps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(counter)
        try:
            without_yield = 0
            # A reply later than the poll's bound (a busy machine) sends the next calls
            # the usual way for a while: enough calls that some are lone ones.
            for n in range(1, 2000):
                before = counter.steps
                assert await client.evalsha(INCR, ["lone"], shielded=True, lone=True) == n
                if counter.steps == before:
                    without_yield += 1
                    if without_yield == 3:
                        break
            assert without_yield == 3
            # Unshielded, a lone call still yields (a checkpoint, as trio's calls are);
            # without ``lone`` (the caller does not know it is alone) calls go through trio.
            before = counter.steps
            assert await client.evalsha(INCR, ["lone"], lone=True) == n + 1
            assert counter.steps > before
            for _ in range(20):
                before = counter.steps
                await client.evalsha(INCR, ["lone"], shielded=True)
                assert counter.steps > before
        finally:
            trio.lowlevel.remove_instrument(counter)


async def test_a_late_reply_to_a_lone_call_is_waited_for_through_trio(
        nursery: trio.Nursery) -> None:
    """A reply that is not there within the lone call's short poll is waited for the usual
    way (other tasks run meanwhile); the calls after it too."""
    async def handler(stream: trio.SocketStream) -> None:
        while True:
            data = await stream.receive_some(1024)
            if not data:
                return
            await trio.sleep(0.05)
            await stream.send_all(b"+PONG\r\n" * data.count(b"EVALSHA"))

    url = await _hostile(nursery, handler)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.005)

    async with RedisClient.from_url(url, timeout=5, client_name=None) as client:
        nursery.start_soon(ticker)
        for _ in range(3):
            before = ticks
            assert await client.evalsha(INCR, shielded=True, lone=True) == b"PONG"
            assert ticks > before  # the loop ran while the call waited
        assert client.statistics().connects == 1


# -- failures ---------------------------------------------------------------------------


async def _silent_server(nursery: trio.Nursery) -> int:
    """A listener that accepts and never answers."""

    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_timeout(nursery: trio.Nursery) -> None:
    port = await _silent_server(nursery)
    url = f"redis://127.0.0.1:{port}/0"
    # No AUTH/SELECT/CLIENT SETNAME: the connection is up at once, the command times out.
    options = {"timeout": 0.2, "backoff_initial": 0.5, "client_name": None}
    async with RedisClient.from_url(url, **options) as client:
        start = trio.current_time()
        with pytest.raises(RedisTimeoutError, match=r"no reply within 0\.2 s"):
            await client.execute("PING")
        assert trio.current_time() - start < 3.0
        # Down: refused at once, without I/O, until the back-off has passed.
        start = trio.current_time()
        with pytest.raises(RedisUnavailableError):
            await client.execute("PING")
        assert trio.current_time() - start < 0.1
        assert client.statistics().timeouts == 1


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_connect_timeout(nursery: trio.Nursery, scheme: str) -> None:
    # A TLS handshake, or CLIENT SETNAME, that a server never answers: connecting times out.
    port = await _silent_server(nursery)
    url = f"{scheme}://127.0.0.1:{port}/0"
    async with RedisClient.from_url(url, connect_timeout=0.2, verify=False) as client:
        with pytest.raises(RedisTimeoutError, match="connecting"):
            await client.execute("PING")


async def test_refused() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with RedisClient.from_url(f"redis://127.0.0.1:{port}/0") as client:
        with pytest.raises(RedisConnectionError, match="connecting to Redis"):
            await client.execute("PING")
        assert client.is_down()


async def test_recovers_after_redis_is_killed_and_restarted(
    redis_servers: Callable[..., RedisServer],
) -> None:
    server = redis_servers()
    url = f"redis://127.0.0.1:{server.port}/0"
    async with RedisClient.from_url(url, timeout=0.5, backoff_max=0.2) as client:
        client.register_script(INCR)
        assert await client.evalsha(INCR, ["n"]) == 1
        server.kill()
        with trio.fail_after(10):
            # Every call fails cleanly (no hang) while Redis is gone.
            for _ in range(3):
                with pytest.raises(RedisConnectionError):
                    await client.evalsha(INCR, ["n"])
                await trio.sleep(0.05)
            await trio.to_thread.run_sync(server.start)  # same port, empty, no scripts
            while True:
                try:
                    assert await client.evalsha(INCR, ["n"]) == 1
                    break
                except RedisConnectionError:
                    await trio.sleep(0.02)
        assert client.statistics().connects >= 2
        assert not client.is_down()


async def test_closed_client_refuses_calls(redis_server: RedisServer) -> None:
    client = RedisClient.from_url(redis_server.url)
    assert await client.execute("PING") == b"PONG"
    await client.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.execute("PING")


# -- hostile servers --------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _hostile(nursery: trio.Nursery, handler: Handler) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}/0"


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_garbage_is_a_protocol_error(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await trio.sleep_forever()

    url = await _hostile(nursery, handler)
    async with RedisClient.from_url(url, timeout=2, client_name=None) as client:
        with pytest.raises(RedisProtocolError, match="protocol error"):
            await client.execute("PING")


async def test_endless_bulk_string_is_cut_off_with_bounded_memory(nursery: trio.Nursery) -> None:
    chunk = b"x" * 65536
    sent = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal sent
        await stream.receive_some(1024)
        await stream.send_all(b"$1000000000\r\n")  # 1 GB announced, and sent as fast as TCP goes
        try:
            while sent < 1 << 30:
                await stream.send_all(chunk)
                sent += len(chunk)
        except trio.BrokenResourceError:
            pass

    url = await _hostile(nursery, handler)
    before = _rss()
    options = {"timeout": 10, "max_reply_bytes": 1 << 20, "client_name": None}
    async with RedisClient.from_url(url, **options) as client:
        with pytest.raises(RedisProtocolError, match="over 1048576 bytes"):
            await client.execute("GET", "k")
    assert _rss() - before < 64 << 20
    assert sent < 64 << 20  # the client stopped reading and closed early


@pytest.mark.parametrize("count", [2**31 - 1, 2**32 - 1, 300_000])
async def test_huge_and_endless_arrays_are_cut_off(nursery: trio.Nursery, count: int) -> None:
    # hiredis would allocate the declared count up front, and freeing it touches every
    # slot (seconds of CPU for 2**31): such headers are refused before hiredis sees them.
    # A count that fits in the limit but whose elements never end is cut off by size.
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        try:
            await stream.send_all(b"*%d\r\n" % count)
            while True:
                await stream.send_all(b":1\r\n" * 16384)
        except trio.BrokenResourceError:
            pass

    url = await _hostile(nursery, handler)
    before = _rss()
    start = trio.current_time()
    options = {"timeout": 10, "max_reply_bytes": 1 << 20, "client_name": None}
    async with RedisClient.from_url(url, **options) as client:
        with pytest.raises(RedisProtocolError, match=r"larger than a reply may be|over 1048576"):
            await client.execute("LRANGE", "k", 0, -1)
    assert _rss() - before < 64 << 20
    assert trio.current_time() - start < 5


async def test_dripping_server_times_out(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        try:
            for byte in b"$10\r\n0123456789\r\n":
                await stream.send_all(bytes([byte]))
                await trio.sleep(1.0)
        except trio.BrokenResourceError:
            pass

    url = await _hostile(nursery, handler)
    async with RedisClient.from_url(url, timeout=0.3, client_name=None) as client:
        with trio.fail_after(5), pytest.raises(RedisTimeoutError, match="no reply within"):
            await client.execute("GET", "k")


async def test_a_call_on_an_open_connection_is_bounded_and_shielded(
        nursery: trio.Nursery) -> None:
    # Calls on a connection already open: one whose reply comes late still gets it when its
    # caller is cancelled meanwhile; one whose reply never comes ends at its own timeout.
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(b"+PONG\r\n")
        await stream.receive_some(1024)
        await trio.sleep(0.2)
        await stream.send_all(b"+LATE\r\n")
        await stream.receive_some(1024)
        await trio.sleep_forever()  # the third call is never answered

    url = await _hostile(nursery, handler)
    async with RedisClient.from_url(url, timeout=0.5, client_name=None) as client:
        assert await client.execute("PING") == b"PONG"
        got: list[object] = []
        with trio.move_on_after(0.05) as scope:
            got.append(await client.evalsha(Script("return 1"), shielded=True))
            await trio.lowlevel.checkpoint()
        assert scope.cancelled_caught and got == [b"LATE"]
        with trio.fail_after(5), pytest.raises(RedisTimeoutError, match="no reply within"):
            await client.execute("PING")
        assert client.statistics().connects == 1 and client.statistics().timeouts == 1


async def test_server_closing_mid_reply(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(b"$10\r\n01234")
        await stream.aclose()

    url = await _hostile(nursery, handler)
    async with RedisClient.from_url(url, client_name=None) as client:
        with pytest.raises(RedisConnectionError, match="closed the connection"):
            await client.execute("GET", "k")


_RESP_TYPES = st.sampled_from([*b"+-:$*%~>_,#!=(|", ord("x"), 0])
_NUMBERS = st.one_of(
    st.integers(-3, 20),
    st.sampled_from([2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63)]),
)


@st.composite
def _replies(draw: st.DrawFn) -> bytes:
    """Byte strings that look like RESP, with hostile lengths, types and truncation."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["header", "line", "raw"]))
        if kind == "header":
            number = str(draw(_NUMBERS)).encode()
            parts.append(bytes([draw(_RESP_TYPES)]) + number + b"\r\n")
        elif kind == "line":
            parts.append(draw(st.binary(max_size=20)) + b"\r\n")
        else:
            parts.append(draw(st.binary(max_size=40)))
    return b"".join(parts)


def _hostile_replies(test: Callable[[bytes, bool], None]) -> Callable[[], None]:
    """A hostile-replies property test: ``test(payload, close)`` over 120 generated replies."""
    generated = given(payload=_replies(), close=st.booleans())(test)
    return settings(max_examples=120, deadline=None, suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.function_scoped_fixture])(generated)


#: The client of a hostile-replies case: a short timeout, a small reply bound.
_HOSTILE_OPTIONS: dict[str, Any] = {"timeout": 0.05, "max_reply_bytes": 4096,
                                    "client_name": None}


@_hostile_replies
def test_hostile_replies_never_hang_nor_escape_the_error_family(
    payload: bytes, close: bool
) -> None:
    async def main() -> None:
        async def handler(stream: trio.SocketStream) -> None:
            await stream.receive_some(1024)
            await stream.send_all(payload)
            if close:
                await stream.aclose()
            else:
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            url = await _hostile(nursery, handler)
            async with RedisClient.from_url(url, **_HOSTILE_OPTIONS) as client:
                with trio.fail_after(5), contextlib.suppress(RedisError):
                    await client.execute("GET", "k")
            nursery.cancel_scope.cancel()

    trio.run(main)


def _threaded_redis(payload: bytes, close: bool) -> tuple[str, threading.Thread]:
    """A one-connection server on its own thread, so that it answers while the client's
    event loop is blocked in a lone call's poll (an in-loop server could not): ``+PONG``
    to the first command, ``payload`` to the second; then it closes, or waits for the
    client to. Every socket operation is bounded by a timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with listener, contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                conn.recv(1024)
                conn.sendall(b"+PONG\r\n")
                conn.recv(1024)
                conn.sendall(payload)
                if not close:
                    while conn.recv(1024):
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"redis://127.0.0.1:{listener.getsockname()[1]}/0", thread


@_hostile_replies
def test_hostile_replies_to_a_lone_call_never_hang_nor_escape_the_error_family(
    payload: bytes, close: bool
) -> None:
    """The same replies answering a lone call, which reads its reply in a blocking poll
    outside trio (Connection.lone_call) and falls back to trio's wait for a reply not
    complete at once."""
    url, thread = _threaded_redis(payload, close)

    async def main() -> None:
        async with RedisClient.from_url(url, **_HOSTILE_OPTIONS) as client:
            with trio.fail_after(5):
                assert await client.execute("PING") == b"PONG"  # a connection to be alone on
                with contextlib.suppress(RedisError):
                    await client.evalsha(INCR, shielded=True, lone=True)

    trio.run(main)
    thread.join(5)
    assert not thread.is_alive()


async def test_a_map_keyed_by_an_array_is_a_protocol_error(nursery: trio.Nursery) -> None:
    payload = b"%1\r\n*0\r\n+v\r\n"  # hiredis cannot make a dict key of a list

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(payload)
        await trio.sleep_forever()

    url = await _hostile(nursery, handler)
    async with RedisClient.from_url(url, timeout=1.0, client_name=None) as client:
        with trio.fail_after(5), pytest.raises(RedisProtocolError):
            await client.execute("GET", "k")
