"""The adversarial suite's shared harness: a router in its own process, scripted upstreams,
raw clients, and the checks every case makes.

Why a subprocess: the defects this suite guards against end or freeze the *process* (an
exception that escapes the server, a read loop that never yields, memory that grows per
client byte). Only a router in its own process shows that honestly: its exit status, its
RSS (``/proc/PID/status``), its open descriptors (``/proc/PID/fd``), and whether a second
client is still served while one connection misbehaves.

The pieces:

* :class:`RouterProcess` runs ``python -m continuum run CONFIG`` on a free loopback port and
  waits until ``GET /health`` answers. Sync, so a module-scoped fixture can share one router
  across the cases of a module (starting one costs about a second).
* :class:`ScriptedUpstream` is a raw HTTP/1.1 upstream whose answer per model is any async
  function writing any bytes (garbage, resets, endless heads, drips). :class:`ThreadedUpstream`
  runs one in a thread with its own trio loop, so it outlives a single test.
* :class:`RawClient` writes exact bytes and reads answers one at a time.
* :func:`served_during` probes the router with a *second* client (``GET /health`` and a small
  chat completion on fresh connections) while an attack runs, and fails the case when a probe
  is not answered within :data:`PROMPT` seconds or none ran during the attack.
* :func:`assert_bounded` checks RSS growth and open descriptors against stated bounds, and
  that the process is still alive; :func:`case_guard` does it around every case of a module
  (as an autouse fixture), with a second client probing ``/health`` throughout.

Bounds are generous on purpose: the machine running the suite may have two cores shared with
other test runs. A bound that fails one run in ten is a defect of the test.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

#: A second client must be answered within this many seconds while an attack runs.
PROMPT = 3.0
#: Upper bound on any single step of a case (connect, read an answer, wait for a close).
STEP = 15.0
#: How long a router process may take to answer its first /health.
START_TIMEOUT = 30.0
#: The model a ``type: mock`` backend of :func:`router_config` serves (for probes).
PROBE_MODEL = "probe-model"

Headers = list[tuple[str, str]]


# -- config -----------------------------------------------------------------------------------


def router_config(
    backends: Sequence[Mapping[str, Any]] = (), **sections: Mapping[str, Any]
) -> dict[str, Any]:
    """A config for a :class:`RouterProcess`: a fast ``type: mock`` backend serving
    :data:`PROBE_MODEL` (what :func:`served_during` asks for), ``backends`` after it, health
    checks off, text logs at info with the access log on. ``sections`` are merged one level
    deep (``server={"max_header_size": 4096}``). The bind address is set by the process."""
    data: dict[str, Any] = {
        "server": {"shutdown_timeout": "2s"},
        "health_checks": {"enabled": False},
        "logging": {"level": "info", "format": "text", "access_log": True},
        "backends": [
            {"name": "probe", "type": "mock", "models": [PROBE_MODEL]},
            *backends,
        ],
    }
    for key, value in sections.items():
        base = data.get(key)
        data[key] = {**base, **value} if isinstance(base, dict) else value
    return data


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# -- the router process -----------------------------------------------------------------------


class RouterProcess:
    """``python -m continuum run CONFIG`` on 127.0.0.1:<free port>, logs in ``workdir``.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`)."""

    def __init__(self, config: Mapping[str, Any], workdir: Path) -> None:
        self.config = dict(config)
        self.workdir = workdir
        self.log_path = workdir / "router.log"
        self.config_path = workdir / "router.yaml"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # lifecycle

    def start(self) -> RouterProcess:
        for _ in range(5):  # the free port can be taken by someone else before we bind it
            self.port = free_port()
            server = {**self.config.get("server", {}), "bind_address": f"127.0.0.1:{self.port}"}
            # YAML is a superset of JSON: no YAML writer needed.
            self.config_path.write_text(json.dumps({**self.config, "server": server}))
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "continuum", "run", str(self.config_path)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            if self._wait_ready():
                return self
            if "address already in use" not in self.log():
                break
        raise AssertionError(f"the router did not start; its log:\n{self.log()[-4000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            with contextlib.suppress(OSError):
                status, _ = blocking_request(self.address, b"GET /health HTTP/1.1\r\n"
                                             b"host: t\r\nconnection: close\r\n\r\n", 2.0)
                if status == 200:
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> int | None:
        """SIGTERM (drain), then SIGKILL after 10 s; returns the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # facts

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_alive(self) -> None:
        assert self.alive(), (
            f"the router exited with {self.process and self.process.returncode}; its log:\n"
            f"{self.log()[-4000:]}"
        )

    def rss_kib(self) -> int:
        """Resident set size (VmRSS) in KiB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """The log's current length: pass it to :meth:`log_since` to see what a case wrote."""
        return len(self.log())

    def log_since(self, mark: int) -> str:
        return self.log()[mark:]

    async def log_lines(self, mark: int, needle: str, count: int = 1,
                        timeout: float = STEP) -> list[str]:
        """The log lines since ``mark`` that contain ``needle``, once there are ``count`` of
        them (the router writes a request's access line after its answer has gone out)."""
        lines: list[str] = []
        with trio.move_on_after(timeout):
            while True:
                lines = [line for line in self.log_since(mark).splitlines() if needle in line]
                if len(lines) >= count:
                    break
                await trio.sleep(0.02)
        return lines


@dataclass
class Usage:
    """A snapshot of a router process's resources, to compare after an attack."""

    rss_kib: int
    fds: int

    @classmethod
    def of(cls, router: RouterProcess) -> Usage:
        return cls(router.rss_kib(), router.fd_count())


async def settle_fds(router: RouterProcess, limit: int, timeout: float = STEP) -> int:
    """Wait until the router holds at most ``limit`` descriptors (closed connections take a
    scheduler round or a timer tick to go); returns the last count."""
    with trio.move_on_after(timeout):
        while (count := router.fd_count()) > limit:
            await trio.sleep(0.05)
        return count
    return router.fd_count()


async def assert_bounded(
    router: RouterProcess, before: Usage, *, rss_mib: float = 64.0, fds: int = 8
) -> None:
    """The router is alive, its RSS grew by at most ``rss_mib`` MiB over ``before``, and
    (once connections have closed) it holds at most ``fds`` more descriptors than before."""
    router.assert_alive()
    grown = (router.rss_kib() - before.rss_kib) / 1024
    assert grown <= rss_mib, f"RSS grew by {grown:.1f} MiB (bound {rss_mib} MiB)"
    count = await settle_fds(router, before.fds + fds)
    assert count <= before.fds + fds, f"{count} fds open, {before.fds} before (bound +{fds})"


# -- clients ------------------------------------------------------------------------------------


def blocking_request(address: str, data: bytes, timeout: float, *, half_close: bool = False
                     ) -> tuple[int, bytes]:
    """Send ``data`` on a new blocking socket (then shut down writing, with
    ``half_close``), read until the peer closes, one whole answer is in, or ``timeout``;
    returns (status of the first answer or 0, everything read). For sync code (fixtures,
    hypothesis)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                raw = b"".join(chunks)
                if _complete(raw):
                    break
    raw = b"".join(chunks)
    return parse_status(raw), raw


def _complete(raw: bytes) -> bool:
    """One whole answer with a content-length body is in ``raw`` (enough for probes)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse_status(raw: bytes) -> int:
    """The status code of the answer starting ``raw`` (0 when there is none)."""
    if not raw.startswith(b"HTTP/1."):
        return 0
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


class Response:
    def __init__(self, status: int, reason: str, headers: Headers, body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers!r} {self.body[:300]!r}>"


class RawClient:
    """Writes exact bytes; reads answers one at a time (buffering what follows)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    @classmethod
    async def tcp(cls, address: str, *, receive_buffer: int | None = None) -> RawClient:
        """Connect; ``receive_buffer`` caps the socket's receive buffer (set before the
        connect, so the advertised window stays small): a client that does not read then
        holds at most that much, and the router's writes block soon."""
        host, _, port = address.rpartition(":")
        if receive_buffer is None:
            return cls(await trio.open_tcp_stream(host.strip("[]"), int(port)))
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            await sock.connect((host, int(port)))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def try_send(self, data: bytes) -> bool:
        """Send; False when the peer has closed or reset (an attack being cut off)."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def fill(self, max_bytes: int = 65536) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def read_until(self, marker: bytes) -> bytes:
        while (index := self.buffer.find(marker)) < 0:
            if not await self.fill():
                raise AssertionError(
                    f"connection closed before {marker!r}; got {bytes(self.buffer[:500])!r}"
                )
        out = bytes(self.buffer[:index])
        del self.buffer[: index + len(marker)]
        return out

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self.fill():
                raise AssertionError(f"connection closed with {len(self.buffer)}/{n} bytes")
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def read_head(self) -> Response:
        head = (await self.read_until(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        version, status, reason = [*status_line.split(" ", 2), ""][:3]
        assert version.startswith("HTTP/1."), status_line
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return Response(int(status), reason, headers, b"")

    async def read_response(self, *, head_only: bool = False) -> Response:
        """The next answer; ``head_only`` for answers to HEAD (never a body)."""
        response = await self.read_head()
        code = response.status
        if head_only or 100 <= code < 200 or code in (204, 304):
            return response
        length = response.header("content-length")
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.read_until(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.read_until(b"\r\n")
                    break
                parts.append(await self.read_exactly(size))
                assert await self.read_exactly(2) == b"\r\n", "chunk not followed by CRLF"
            response.body = b"".join(parts)
        elif length is not None:
            response.body = await self.read_exactly(int(length))
        else:
            while await self.fill():
                pass
            response.body = bytes(self.buffer)
            self.buffer.clear()
        return response

    async def status_or_close(self) -> int:
        """The next answer's status, or 0 when the router closed without one."""
        try:
            return (await self.read_response()).status
        except AssertionError:
            if self.eof and not self.buffer:
                return 0
            raise

    async def at_eof(self) -> bool:
        """True once the peer has closed (waits for it); False if more bytes arrive."""
        if self.buffer:
            return False
        return not await self.fill()

    async def drain_until_eof(self, limit: int = 1 << 30) -> int:
        """Read and drop until the peer closes; returns the bytes read."""
        total = len(self.buffer)
        self.buffer.clear()
        while total < limit:
            try:
                data = await self.stream.receive_some(1 << 20)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not data:
                break
            total += len(data)
        self.eof = True
        return total

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def status_while_flooding(address: str, opening: bytes, repeat: bytes,
                                timeout: float = STEP) -> int:
    """Send ``opening``, then ``repeat`` over and over (as fast as the router takes it)
    until the router answers or closes: that status, or 0 for a close without one."""
    with trio.fail_after(timeout):
        async with raw_client(address) as client, trio.open_nursery() as nursery:
            async def flood() -> None:
                if await client.try_send(opening):
                    while await client.try_send(repeat):
                        pass
            nursery.start_soon(flood)
            status = await client.status_or_close()
            nursery.cancel_scope.cancel()
            return status


@contextlib.asynccontextmanager
async def raw_client(address: str) -> AsyncIterator[RawClient]:
    client = await RawClient.tcp(address)
    try:
        yield client
    finally:
        await client.aclose()


def http_request(
    method: str, path: str, body: bytes = b"", *, headers: Sequence[tuple[str, str]] = (),
    host: bool = True,
) -> bytes:
    """A well-formed HTTP/1.1 request (content-length framing)."""
    lines = [f"{method} {path} HTTP/1.1"]
    if host:
        lines.append("host: router")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body or method in ("POST", "PUT"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chat_body(model: str = PROBE_MODEL, content: str = "hello", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


def chat_request(model: str = PROBE_MODEL, content: str = "hello", **extra: Any) -> bytes:
    return http_request("POST", "/v1/chat/completions", chat_body(model, content, **extra),
                        headers=[("content-type", "application/json")])


HEALTH = http_request("GET", "/health")


async def one_request(address: str, data: bytes, timeout: float = STEP) -> Response | None:
    """Send ``data`` on a new connection; the first answer, or None if the router closed
    without one."""
    with trio.fail_after(timeout):
        async with raw_client(address) as client, trio.open_nursery() as nursery:
            # Sent beside the read: the router may answer (413) before taking it all.
            nursery.start_soon(client.try_send, data)
            try:
                return await client.read_response(head_only=data.startswith(b"HEAD "))
            except AssertionError:
                if client.eof and not client.buffer:
                    return None
                raise
            finally:
                nursery.cancel_scope.cancel()


def assert_error_shape(response: Response, status: int, *, anthropic: bool = False) -> None:
    """``status`` with a JSON error body in the client's API shape."""
    assert response.status == status, response
    assert (response.header("content-type") or "").startswith("application/json"), response
    body = response.json()
    if anthropic:
        assert body.get("type") == "error", body
        assert isinstance(body["error"]["message"], str) and body["error"]["type"], body
    else:
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"], body
        assert set(error) >= {"message", "type", "param", "code"}, body


# -- a second client, served during the attack --------------------------------------------------


@dataclass
class Probe:
    kind: str  # "health" or "chat"
    started: float
    elapsed: float | None  # None: not answered within the bound
    status: int


@dataclass
class ProbeReport:
    probes: list[Probe] = field(default_factory=list)
    attack_ended: float = float("inf")

    def during(self) -> list[Probe]:
        """Probes that started before the attack ended."""
        return [p for p in self.probes if p.started < self.attack_ended]

    def slowest(self) -> float:
        return max((p.elapsed or float("inf") for p in self.probes), default=0.0)


async def _probe(address: str, kind: str, bound: float) -> Probe:
    data = HEALTH if kind == "health" else chat_request(PROBE_MODEL, "probe")
    started = trio.current_time()
    status = 0
    with trio.move_on_after(bound):
        with contextlib.suppress(OSError, trio.BrokenResourceError, AssertionError):
            response = await one_request(address, data, bound)
            status = response.status if response is not None else 0
        return Probe(kind, started, trio.current_time() - started, status)
    return Probe(kind, started, None, status)


def attack_rounds(seconds: float = 1.5, least: int = 2) -> Iterator[int]:
    """Round numbers of an attack repeated for ``seconds`` (at least ``least`` rounds): a
    body of :func:`served_during` that lasts however fast the machine is, so the second
    client's probes run while it does."""
    deadline = trio.current_time() + seconds
    n = 0
    while n < least or trio.current_time() < deadline:
        yield n
        n += 1


@contextlib.asynccontextmanager
async def served_during(
    address: str, *, bound: float = PROMPT, interval: float = 0.05, min_rounds: int = 2,
    chat: bool = True,
) -> AsyncIterator[ProbeReport]:
    """While the ``async with`` body (the attack) runs, a second client asks ``GET /health``
    and, with ``chat``, a small chat completion of :data:`PROBE_MODEL`, each on a new
    connection, one after the other. On exit, every probe must have been answered 200 within
    ``bound`` seconds, and at least ``min_rounds`` rounds must have started before the attack
    ended (the body should therefore last a while: attack until a deadline, not once)."""
    report = ProbeReport()
    kinds = ("health", "chat") if chat else ("health",)
    rounds_started = trio.Event()
    rounds = 0

    async def prober() -> None:
        nonlocal rounds
        while True:
            for kind in kinds:
                report.probes.append(await _probe(address, kind, bound))
            rounds += 1
            if rounds >= min_rounds:
                rounds_started.set()
            await trio.sleep(interval)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(prober)
        yield report
        report.attack_ended = trio.current_time()
        # A body shorter than min_rounds: the case is wrong, but finish the rounds first
        # so the message says so rather than a bare count.
        with trio.move_on_after(bound * (min_rounds + 1) * len(kinds)):
            await rounds_started.wait()
        nursery.cancel_scope.cancel()
    bad = [p for p in report.probes if p.elapsed is None or p.status != 200]
    assert not bad, f"second client not served promptly during the attack: {bad}"
    during = report.during()
    assert len(during) >= min_rounds * len(kinds), (
        f"only {len(during)} probes ran during the attack (it ended too soon): {report.probes}"
    )


class BackgroundProber:
    """:func:`served_during` for sync code (hypothesis): a thread asks ``GET /health`` on a
    new connection every ``interval`` seconds while the ``with`` block runs; on exit every
    probe must have been answered 200 within ``bound`` seconds, and at least ``min_probes``
    must have run."""

    def __init__(self, address: str, *, bound: float = PROMPT, interval: float = 0.1,
                 min_probes: int = 3) -> None:
        self.address = address
        self.bound = bound
        self.interval = interval
        self.min_probes = min_probes
        self.probes: list[tuple[float, int]] = []  # (seconds, status)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        request = b"GET /health HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            try:
                status, _ = blocking_request(self.address, request, self.bound)
            except OSError:
                status = 0
            self.probes.append((time.monotonic() - started, status))

    def __enter__(self) -> BackgroundProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + self.bound * (self.min_probes + 1)
        while len(self.probes) < self.min_probes and time.monotonic() < deadline:
            time.sleep(self.interval)
        self._stop.set()
        self._thread.join(self.bound + 1)
        if exc[0] is not None:
            return
        bad = [p for p in self.probes if p[1] != 200 or p[0] > self.bound]
        assert not bad, f"second client not served promptly: {bad}"
        assert len(self.probes) >= self.min_probes, self.probes


@contextlib.contextmanager
def case_guard(router: RouterProcess, *, rss_mib: float = 160.0, fds: int = 8
               ) -> Iterator[BackgroundProber]:
    """Around one case (an autouse fixture in each module): a second client probes
    ``/health`` throughout (:class:`BackgroundProber`); afterwards the router is alive, holds
    at most ``fds`` more descriptors than before (once connections have closed) and its RSS
    grew by at most ``rss_mib`` (a loose bound: cases state tighter ones of their own)."""
    router.assert_alive()
    before = Usage.of(router)
    with BackgroundProber(router.address, min_probes=1) as prober:
        yield prober
    router.assert_alive()
    deadline = time.monotonic() + STEP
    while router.fd_count() > before.fds + fds and time.monotonic() < deadline:
        time.sleep(0.05)
    count = router.fd_count()
    assert count <= before.fds + fds, f"{count} fds open after the case, {before.fds} before"
    grown = (router.rss_kib() - before.rss_kib) / 1024
    assert grown <= rss_mib, f"RSS grew by {grown:.1f} MiB in one case (bound {rss_mib})"


# -- scripted upstreams ------------------------------------------------------------------------


@dataclass
class UpstreamRequest:
    method: str
    target: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def model(self) -> str:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            model = self.json().get("model")
            if isinstance(model, str):
                return model
        return ""


class UpstreamConn:
    """One connection to a :class:`ScriptedUpstream`, as its handlers see it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.closed = False
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)

    async def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                                   b"\x00\x00\x00\x00")
        await trio.aclose_forcefully(self.stream)

    async def read_request(self) -> UpstreamRequest | None:
        """The next request (content-length or chunked body); None at EOF."""
        while b"\r\n\r\n" not in self.buffer:
            data = await self._receive()
            if not data:
                return None
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        request = UpstreamRequest(method, target, headers, b"")
        if (request.header("transfer-encoding") or "").lower() == "chunked":
            request.body = await self._read_chunked()
        else:
            length = int(request.header("content-length") or 0)
            while len(self.buffer) < length:
                if not await self._receive():
                    return None
            request.body = bytes(self.buffer[:length])
            del self.buffer[:length]
        return request

    async def _receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self.buffer += data
        return data

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            while b"\r\n" not in self.buffer:
                if not await self._receive():
                    return bytes(body)
            line, _, rest = bytes(self.buffer).partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(rest) < size + 2:
                if not await self._receive():
                    return bytes(body)
                rest = bytes(self.buffer).partition(b"\r\n")[2]
            body += rest[:size]
            self.buffer = bytearray(rest[size + 2:])
            if size == 0:
                return bytes(body)


UpstreamHandler = Callable[[UpstreamRequest, UpstreamConn], Awaitable[None]]


def json_answer(obj: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    body = json.dumps(obj).encode()
    lines = [f"HTTP/1.1 {status} X", "content-type: application/json",
             f"content-length: {len(body)}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat_completion(model: str, text: str = "ok") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def sse_chunk_event(model: str, text: str) -> bytes:
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
             "model": model, "choices": [{"index": 0, "delta": {"content": text},
                                          "finish_reason": None}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def default_answer(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """A well-behaved OpenAI-compatible answer: the model list, or a chat completion
    (streamed when the body asks for it)."""
    if request.target.startswith("/v1/models"):
        await conn.send(json_answer({"object": "list", "data": []}))
        return
    body = request.json() or {}
    model = request.model
    if body.get("stream"):
        await conn.send(SSE_HEAD + chunk(sse_chunk_event(model, "ok")) +
                        chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    else:
        await conn.send(json_answer(chat_completion(model)))


class ScriptedUpstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1:<ephemeral>: each request is answered by
    ``handlers[model]`` (the request body's ``model``), else by ``default``. A handler writes
    whatever bytes it likes on the :class:`UpstreamConn`; if it leaves the connection open the
    next request on it is read (keep-alive). ``requests`` keeps the last 64 requests read."""

    def __init__(self, handlers: Mapping[str, UpstreamHandler] | None = None,
                 default: UpstreamHandler = default_answer) -> None:
        self.handlers: dict[str, UpstreamHandler] = dict(handlers or {})
        self.default = default
        #: The last requests read (bounded: bodies may be large), and how many there were.
        self.requests: collections.deque[UpstreamRequest] = collections.deque(maxlen=64)
        self.count = 0
        self.address = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = f"{host}:{port}"
        task_status.started(self.address)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = UpstreamConn(stream)
        try:
            while not conn.closed:
                request = await conn.read_request()
                if request is None:
                    return
                self.requests.append(request)
                self.count += 1
                handler = self.handlers.get(request.model, self.default)
                await handler(request, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


class ThreadedUpstream:
    """A :class:`ScriptedUpstream` on its own trio loop in a daemon thread, so it can outlive
    one test (for a module-scoped :class:`RouterProcess`). Handlers run in that thread."""

    def __init__(self, upstream: ScriptedUpstream) -> None:
        self.upstream = upstream
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(self.upstream.serve)
                self._ready.set()

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        if not self._ready.wait(STEP):
            raise AssertionError("the scripted upstream did not start")
        return self.upstream

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._scope.cancel)  # from any thread
        self._thread.join(STEP)


@contextlib.contextmanager
def running_router(config: Mapping[str, Any], workdir: Path) -> Iterator[RouterProcess]:
    """A :class:`RouterProcess` for the ``with`` block; on exit it must still be alive
    (an attack that killed it fails the case even if every assertion passed)."""
    router = RouterProcess(config, workdir).start()
    try:
        yield router
        router.assert_alive()
    finally:
        router.stop()
