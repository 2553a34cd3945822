"""Multi-process mode (``server.workers: N``): N worker processes share the listening
addresses under one parent that restarts a worker that dies.

TCP addresses are shared with ``SO_REUSEPORT``: each worker binds its own socket and the
kernel spreads new connections over them. An address with port 0 is first bound (not
listened on) by the parent, so every worker joins the same, now fixed, port; the parent keeps
that socket to hold the port across worker restarts. Unix sockets have no ``SO_REUSEPORT``:
the parent listens and the workers inherit the socket. Each worker also serves its own
metrics on a private Unix socket, so ``/metrics`` on any worker reports the sum over all.

The parent is a plain process (no trio): it only spawns, waits, restarts and forwards
signals, and it must stay up when a worker misbehaves.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Final

import msgspec

from ..net.server.listeners import format_address, split_bind_address
from ..observability.logs import ENV_WORKER

log = logging.getLogger("continuum.workers")

#: Environment of a worker process (set by the parent; its index is ``ENV_WORKER``).
ENV_BIND: Final = "CONTINUUM_WORKER_BIND"  # the resolved addresses, one per line
ENV_FDS: Final = "CONTINUUM_WORKER_FDS"  # "unix:/path=FD" lines: inherited listeners
ENV_METRICS_DIR: Final = "CONTINUUM_WORKER_METRICS_DIR"

_RESTART_MIN: Final = 0.5
_RESTART_MAX: Final = 30.0
_STABLE_AFTER: Final = 30.0


class WorkerEnvironment(msgspec.Struct, frozen=True):
    """What a worker learns from its parent."""

    index: int
    bind: tuple[str, ...]
    inherited: dict[str, int]  # unix address → listening fd
    metrics_dir: str

    @classmethod
    def from_environ(cls) -> WorkerEnvironment | None:
        index = os.environ.get(ENV_WORKER)
        if index is None:
            return None
        inherited: dict[str, int] = {}
        for line in os.environ.get(ENV_FDS, "").splitlines():
            address, _, fd = line.rpartition("=")
            inherited[address] = int(fd)
        return cls(
            index=int(index),
            bind=tuple(os.environ[ENV_BIND].splitlines()),
            inherited=inherited,
            metrics_dir=os.environ[ENV_METRICS_DIR],
        )

    def metrics_socket(self) -> str:
        """Where this worker serves its own metrics to its siblings."""
        return os.path.join(self.metrics_dir, f"worker-{self.index}.sock")


class _Worker(msgspec.Struct):
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = _RESTART_MIN
    restart_at: float = 0.0


class _Listeners(msgspec.Struct):
    bind: list[str] = msgspec.field(default_factory=list)
    inherited: dict[str, int] = msgspec.field(default_factory=dict)
    held: list[socket.socket] = msgspec.field(default_factory=list)


def _prepare_listeners(addresses: Sequence[str], socket_mode: int | None) -> _Listeners:
    """Resolve port-0 TCP addresses (holding the port) and open Unix sockets to inherit."""
    out = _Listeners()
    for address in addresses:
        target = split_bind_address(address)
        if isinstance(target, str):
            if os.path.exists(target):
                os.unlink(target)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(target)
            if socket_mode is not None:
                os.chmod(target, socket_mode)
            sock.listen(socket.SOMAXCONN)
            sock.set_inheritable(True)
            out.held.append(sock)
            out.bind.append(address)
            out.inherited[address] = sock.fileno()
            continue
        host, port = target
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))  # bound, never listened on: holds the port, gets no traffic
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind {address}: {exc.strerror}") from None
        out.held.append(sock)
        out.bind.append(format_address(sock.getsockname(), family))
    return out


def _ignore_hangup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_workers(config_path: str, count: int, socket_mode: int | None,
                addresses: Sequence[str], run_options: Sequence[str] = ()) -> int:
    """Run ``count`` workers until SIGINT/SIGTERM (SIGHUP is passed on to each: a
    reload); returns the exit code. ``run_options`` are passed on to each worker's ``run``
    (e.g. ``--log-level debug``)."""
    listeners = _prepare_listeners(addresses, socket_mode)
    metrics_dir = tempfile.mkdtemp(prefix="continuum-workers-")
    env = dict(os.environ)
    env[ENV_BIND] = "\n".join(listeners.bind)
    env[ENV_FDS] = "\n".join(f"{a}={fd}" for a, fd in listeners.inherited.items())
    env[ENV_METRICS_DIR] = metrics_dir
    workers = [_Worker(i) for i in range(count)]
    stopping = False
    signals_seen = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping, signals_seen
        signals_seen += 1
        stopping = True
        for w in workers:
            if w.process is not None and w.process.poll() is None:
                w.process.send_signal(signal.SIGKILL if signals_seen > 1 else signal.SIGTERM)

    def on_hangup(signum: int, frame: object) -> None:
        # A reload: each worker reads the file; the shared store makes it one version.
        for w in workers:
            if w.process is not None and w.process.poll() is None:
                w.process.send_signal(signal.SIGHUP)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)

    def spawn(w: _Worker) -> None:
        worker_env = dict(env)
        worker_env[ENV_WORKER] = str(w.index)
        w.process = subprocess.Popen(
            [sys.executable, "-m", "continuum", "run", *run_options, config_path],
            env=worker_env, pass_fds=tuple(listeners.inherited.values()),
            # A SIGHUP before the worker listens for it must not end it: ignored signals
            # stay ignored across exec, until its trio loop takes SIGHUP over.
            preexec_fn=_ignore_hangup,
        )
        w.started = time.monotonic()

    log.info("starting %d workers on %s", count, ", ".join(listeners.bind))
    print(f"trio-continuum: {count} workers on {', '.join(listeners.bind)}", file=sys.stderr,
          flush=True)
    try:
        for w in workers:
            spawn(w)
        while True:
            alive = 0
            now = time.monotonic()
            for w in workers:
                proc = w.process
                if proc is not None and proc.poll() is None:
                    alive += 1
                    continue
                if stopping:
                    continue
                if proc is not None:
                    code = proc.returncode
                    w.process = None
                    if now - w.started > _STABLE_AFTER:
                        w.backoff = _RESTART_MIN
                    w.restart_at = now + w.backoff
                    log.error("worker %d exited with %s; restarting in %.1fs", w.index, code,
                              w.backoff)
                    print(f"trio-continuum: worker {w.index} exited with {code}; restarting "
                          f"in {w.backoff:.1f}s", file=sys.stderr, flush=True)
                    w.backoff = min(w.backoff * 2, _RESTART_MAX)
                elif now >= w.restart_at:
                    spawn(w)
                    alive += 1
            if stopping and alive == 0:
                return 0
            time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for w in workers:
            if w.process is not None and w.process.poll() is None:
                w.process.kill()
                w.process.wait()
        for sock in listeners.held:
            sock.close()
        for address in listeners.inherited:
            path = split_bind_address(address)
            if isinstance(path, str) and os.path.exists(path):
                os.unlink(path)
        for name in os.listdir(metrics_dir):
            os.unlink(os.path.join(metrics_dir, name))
        os.rmdir(metrics_dir)


async def ask_worker(path: str, request: bytes, timeout: float = 1.0) -> bytes | None:
    """Send ``request`` (HTTP/1.0) to a sibling worker's private socket; the body of a 200
    answer, or None if it does not answer so (restarting, or gone)."""
    import trio  # the parent process never needs trio

    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_unix_socket(path)
        except OSError:
            return None
        async with stream:
            await stream.send_all(request)
            chunks = []
            while data := await stream.receive_some(65536):
                chunks.append(data)
        raw = b"".join(chunks)
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            return None
        return body
    return None


async def fetch_worker_metrics(path: str, timeout: float = 1.0) -> str | None:
    """A sibling worker's own metrics, from its private socket; None if it does not answer
    (restarting, or gone)."""
    body = await ask_worker(path, b"GET /metrics HTTP/1.0\r\nhost: worker\r\n\r\n", timeout)
    return None if body is None else body.decode("utf-8", "replace")


def sibling_sockets(env: WorkerEnvironment) -> list[str]:
    """The private sockets of the other workers (of those that are up)."""
    own = env.metrics_socket()
    return sorted(
        os.path.join(env.metrics_dir, name) for name in os.listdir(env.metrics_dir)
        if name.endswith(".sock") and os.path.join(env.metrics_dir, name) != own
    )


#: The private path a worker answers ``POST`` on by applying the shared store's latest version.
SYNC_PATH: Final = "/config/sync"


async def notify_siblings(env: WorkerEnvironment, timeout: float = 5.0) -> None:
    """Tell every other worker that the shared store has a new config version, and wait
    (at most ``timeout``) until each has applied it. One that does not answer (starting,
    restarting) reads the store at start, or on its next look (``Reconfigurer.follow``)."""
    import trio

    request = (f"POST {SYNC_PATH} HTTP/1.0\r\nhost: worker\r\ncontent-length: 0\r\n\r\n"
               .encode())
    async with trio.open_nursery() as nursery:
        for path in sibling_sockets(env):
            nursery.start_soon(ask_worker, path, request, timeout)


async def gather_metrics(env: WorkerEnvironment, local: bytes) -> bytes:
    """``local`` merged with every other worker's metrics (summed, see _metrics_merge)."""
    import trio

    from ..observability.merge import merge_expositions

    paths = sibling_sockets(env)
    texts: list[str] = [local.decode("utf-8", "replace")]

    async def one(path: str) -> None:
        text = await fetch_worker_metrics(path)
        if text is not None:
            texts.append(text)

    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(one, path)
    return merge_expositions(texts).encode()
