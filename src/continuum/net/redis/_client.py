"""The Redis client: a few pipelined connections, a deadline on every call, lazy reconnects.

Background-free: connections are opened by the calls that need them and there is no
reconnect task. After a failure (connect refused, timeout, broken connection) the client is
*down* for a back-off period that doubles on each further failure (``backoff_initial`` up to
``backoff_max``, jittered); calls made while it is down raise :class:`RedisUnavailableError`
at once, so a dead Redis costs a request one clock read. The first call after the back-off
tries again; a successful reply resets the back-off.

Every call runs in one cancel scope that is shielded from the caller's cancellation and has
its own deadline (``connect_timeout`` while connecting, then ``timeout`` for the round trip):
a call always ends within those bounds, and never leaves a connection half-used.

Scripts are registered once (:meth:`RedisClient.register_script`), loaded on every new
connection in the same write as ``AUTH``/``SELECT``, and called with ``EVALSHA``. A server that
lost them (``SCRIPT FLUSH``, a restart, a fail-over) answers ``NOSCRIPT``; the call is then
repeated once with ``EVAL``, which also puts the script back in the server's cache.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, cast, final

import hiredis
import trio

from ._connection import Connection, Reply
from ._errors import (
    RedisConnectionError,
    RedisError,
    RedisNoScriptError,
    RedisTimeoutError,
    RedisUnavailableError,
    map_io_errors,
    reply_error,
)
from ._options import RedisOptions

#: What a command argument may be (encoded by hiredis: ``str`` as UTF-8, numbers as text).
Arg = str | bytes | int | float

_NEVER: Final = -math.inf
#: Calls in flight on every open connection before another one is opened. Pipelining on
#: one connection batches writes, reads and wake-ups: measured at concurrency 16 and 64
#: (benches/redis_client.py), one pipelined connection served about twice the calls per
#: second of one connection per call (Redis executes commands one at a time anyway).
_PIPELINE_DEPTH: Final = 32


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script, identified by its SHA-1 as Redis does."""

    source: str
    sha1: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha1", digest)


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    """A snapshot of one client's counters (for metrics and ``/admin``)."""

    connections: int
    in_flight: int
    #: Seconds until calls are attempted again (0 when up).
    down_for: float
    calls: int
    failures: int
    timeouts: int
    connects: int
    script_reloads: int


@final
class RedisClient:
    """An async Redis client for trio; see the module docstring.

    Use it as an async context manager, or call :meth:`aclose` when done. It owns no task,
    so it needs no nursery and can be shared by every task of a process.
    """

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._timeout = options.timeout
        self._ssl = options.make_ssl_context()
        self._conns: list[Connection] = []
        self._connecting = 0
        self._connected = trio.Event()  # set whenever a connect attempt ends
        self._scripts: dict[str, Script] = {}
        self._down_until = _NEVER
        self._backoff = 0.0
        self._rng = random.Random()
        self._closed = False
        self.last_error: RedisError | None = None
        self._calls = 0
        self._failures = 0
        self._timeouts = 0
        self._connects = 0
        self._reloads = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisClient:
        """A client for ``url``; keyword arguments are :class:`RedisOptions` fields."""
        return cls(RedisOptions.from_url(url, **options))

    async def __aenter__(self) -> RedisClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; calls still waiting fail, later calls are refused."""
        self._closed = True
        conns, self._conns = self._conns, []
        for conn in conns:
            await conn.aclose()

    # -- state -------------------------------------------------------------------------

    def is_down(self) -> bool:
        """True while calls would be refused without I/O (a recent failure's back-off)."""
        return trio.current_time() < self._down_until

    def statistics(self) -> RedisStatistics:
        return RedisStatistics(
            connections=len(self._conns),
            in_flight=sum(c.load for c in self._conns),
            down_for=max(0.0, self._down_until - trio.current_time()),
            calls=self._calls,
            failures=self._failures,
            timeouts=self._timeouts,
            connects=self._connects,
            script_reloads=self._reloads,
        )

    def register_script(self, script: Script) -> None:
        """Have ``script`` loaded on every connection opened from now on (and on the next
        call's connection if one is open already: ``NOSCRIPT`` is handled either way)."""
        self._scripts[script.sha1] = script

    # -- calls -------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Reply:
        """Run one command, e.g. ``await client.execute("SET", "k", "v", "PX", 1000)``.
        An error reply raises :class:`RedisReplyError` (or a subclass)."""
        return await self._call(_pack(args))

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Run several commands in one write and one read (a pipeline, not a transaction).
        Their replies in order; the first error reply raises after all have arrived."""
        packed = [_pack(tuple(c)) for c in commands]
        replies = await self._call(packed)
        assert isinstance(replies, list)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise reply_error(str(reply))
        return replies

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[Arg] = (),
        args: Sequence[Arg] = (),
        *,
        shielded: bool = False,
        lone: bool = False,
    ) -> Reply:
        """Run ``script`` by its SHA-1; reloads it (``EVAL``) if the server lost it.

        ``shielded``: a caller cancelled during the call still gets its reply (and its
        ``Cancelled`` at its next checkpoint), for a script whose effects the caller must
        learn to undo them; the same as a shielded cancel scope around the call, without
        one more scope per call.

        ``lone``: the caller knows that nothing else waits on this call (no other request
        of its kind in flight): with no other call in flight either, the call waits for
        its reply in a blocking ``poll`` of at most a millisecond instead of going through
        trio (:meth:`Connection.lone_call`), which costs a loopback round trip about as
        much again. A shielded lone call whose reply came that way does not yield (the
        rate limits' admission: the request's upstream call that follows does); any other
        call is a checkpoint, as trio's calls are."""
        try:
            return await self._call(
                _pack(("EVALSHA", script.sha1, len(keys), *keys, *args)), shielded, lone)
        except RedisNoScriptError:
            self._reloads += 1
            self._scripts.setdefault(script.sha1, script)
            return await self._call(
                _pack(("EVAL", script.source, len(keys), *keys, *args)), shielded)

    async def _call(self, command: bytes | list[bytes], shielded: bool = False,
                    lone: bool = False) -> Reply:
        now = trio.current_time()
        if now < self._down_until or self._closed:
            raise self._refusal(now)
        self._calls += 1
        # A lone call sent on ``alone`` whose reply is not in yet: its waiter (else None).
        alone = self._lone() if lone and not self._connecting else None
        waiter = None
        if alone is not None:
            assert type(command) is bytes
            try:
                waiter = alone.lone_call(command)
            except RedisError as exc:
                self._fail(exc)
                raise
            if waiter is None:
                alone = None  # not sent: the usual way
            elif waiter.done:
                return await self._done(waiter.reply, shielded, lone_call=True)
        with trio.CancelScope(deadline=now + self._timeout, shield=True) as scope:
            conn = alone or self._pick()
            # A connection that sat idle may have been closed by the server (its idle
            # timeout, a restart) without us noticing: such a call gets one more try.
            retry = conn is not None and (alone is not None or not conn.load)
            try:
                if conn is None:
                    conn = await self._connection(scope)
                try:
                    reply = await (_roundtrip(conn, command) if waiter is None
                                   else conn.wait(waiter))
                except RedisConnectionError:
                    if not retry or self._closed:
                        raise
                    conn = await self._connection(scope)
                    reply = await _roundtrip(conn, command)
            except RedisError as exc:  # reply errors are raised below, not in here
                self._fail(exc)
                raise
        if scope.cancelled_caught:
            error = RedisTimeoutError(
                f"Redis at {self.options.address}: no reply within {self._timeout:g} s"
            )
            self._fail(error)
            raise error
        return await self._done(reply, shielded)

    async def _done(self, reply: Reply, shielded: bool, lone_call: bool = False) -> Reply:
        """A call's reply is in: reset the back-off, deliver a caller's cancellation
        (unless ``shielded``), raise an error reply."""
        if self._backoff:
            self._backoff = 0.0
        if not shielded:
            # A caller cancelled meanwhile gets its Cancelled now that the call is
            # complete. A lone call finished without trio yields here as trio's calls do.
            if lone_call:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
        # A shielded lone call (the admission script) does not yield: its caller goes on to
        # an upstream call, which does.
        if type(reply) is hiredis.ReplyError:
            raise reply_error(str(reply))
        return reply

    def _lone(self) -> Connection | None:
        """The connection for a lone call (:meth:`Connection.lone_call`): the first one,
        when no call is in flight on any."""
        for conn in self._conns:
            if conn.load:
                return None
        return self._conns[0] if self._conns else None

    def _refusal(self, now: float) -> RedisError:
        if self._closed:
            return RedisConnectionError("the Redis client is closed")
        return RedisUnavailableError(
            f"Redis at {self.options.address} is unavailable "
            f"(next attempt in {self._down_until - now:.2f} s): {self.last_error}"
        )

    def _pick(self) -> Connection | None:
        """The connection for the next call, or ``None`` to open (or wait for) another:
        the least busy one, unless it already pipelines ``_PIPELINE_DEPTH`` calls and the
        pool has room for one more."""
        best: Connection | None = None
        for conn in self._conns:
            if best is None or conn.load < best.load:
                best = conn
                if not conn.load:
                    return conn
        if best is not None and best.load < _PIPELINE_DEPTH:
            return best
        if len(self._conns) + self._connecting < self.options.pool_size:
            return None
        return best

    async def _connection(self, scope: trio.CancelScope) -> Connection:
        """A connection for a call that found none to use: opened by this call when the
        pool has room, else the next one another call opens. The call's ``scope`` gets a
        fresh deadline for the round trip that follows."""
        scope.deadline = math.inf  # connecting has its own timeout
        try:
            with trio.fail_after(self.options.connect_timeout):
                while True:
                    if len(self._conns) + self._connecting < self.options.pool_size:
                        conn = await self._open()
                        break
                    await self._connected.wait()
                    now = trio.current_time()
                    if now < self._down_until:  # that connect failed
                        raise self._refusal(now)
                    found = self._pick()
                    if found is not None:
                        conn = found
                        break
            scope.deadline = trio.current_time() + self._timeout
            return conn
        except trio.TooSlowError:
            error = RedisTimeoutError(
                f"connecting to Redis at {self.options.address}: no answer within "
                f"{self.options.connect_timeout:g} s"
            )
        raise error

    async def _open(self) -> Connection:
        opts = self.options
        address = opts.address
        self._connecting += 1
        stream: trio.abc.Stream | None = None
        try:
            with map_io_errors(f"connecting to Redis at {address}"):
                if opts.unix_path is not None:
                    stream = await trio.open_unix_socket(opts.unix_path)
                else:
                    stream = await trio.open_tcp_stream(opts.host, opts.port)
                if self._ssl is not None:
                    stream = trio.SSLStream(
                        stream,
                        self._ssl,
                        server_hostname=opts.server_hostname or opts.host,
                        https_compatible=True,
                    )
                    await stream.do_handshake()
            conn = Connection(stream, address, opts.max_reply_bytes, self._discard)
            setup = self._setup_commands()
            if setup:
                for reply in await conn.roundtrip_many(setup):
                    if isinstance(reply, hiredis.ReplyError):
                        raise reply_error(f"{reply} (while connecting to {address})")
            stream = None  # the connection owns it now
            self._conns.append(conn)
            self._connects += 1
            return conn
        finally:
            self._connecting -= 1
            self._connected.set()
            self._connected = trio.Event()
            if stream is not None:
                await trio.aclose_forcefully(stream)

    def _setup_commands(self) -> list[bytes]:
        opts = self.options
        out: list[bytes] = []
        if opts.password is not None:
            auth: tuple[str, ...] = ("AUTH", opts.password)
            if opts.username is not None:
                auth = ("AUTH", opts.username, opts.password)
            out.append(_pack(auth))
        if opts.db:
            out.append(_pack(("SELECT", opts.db)))
        if opts.client_name:
            out.append(_pack(("CLIENT", "SETNAME", opts.client_name)))
        out.extend(_pack(("SCRIPT", "LOAD", s.source)) for s in self._scripts.values())
        return out

    def _discard(self, conn: Connection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)

    def _fail(self, error: RedisError) -> None:
        """Record a failure; the first of an incident starts (or doubles) the back-off."""
        self._failures += 1
        if isinstance(error, RedisTimeoutError):
            self._timeouts += 1
        self.last_error = error
        now = trio.current_time()
        if now < self._down_until:
            return  # the same incident, seen by another call
        opts = self.options
        self._backoff = min(opts.backoff_max, max(opts.backoff_initial, self._backoff * 2))
        self._down_until = now + self._backoff * (0.5 + 0.5 * self._rng.random())


def _pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP (hiredis' C encoder; its stub types the tuple too narrowly)."""
    packed: bytes = hiredis.pack_command(cast(Any, args))
    return packed


def _roundtrip(conn: Connection, command: bytes | list[bytes]) -> Awaitable[Reply]:
    if type(command) is bytes:
        return conn.roundtrip(command)
    assert isinstance(command, list)
    return conn.roundtrip_many(command)
