"""A throwaway ``redis-server`` child process, for tests and benchmarks.

Listens on a free port of 127.0.0.1 only, keeps nothing on disk (``--save ''
--appendonly no``, in its own directory), and is stopped (SIGTERM, then SIGKILL) within a
few seconds. Synchronous on purpose: it is started from pytest fixtures and scripts, not
from inside a trio run::

    with RedisServer(tmp_path, password="s3cret") as server:
        client = RedisClient.from_url(server.url)

:meth:`kill` and :meth:`start` again on the same port simulate a crash and a restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, final
from urllib.parse import quote

_READY: Final = b"Ready to accept connections"
_PORT_TAKEN: Final = b"Address already in use"


class RedisServerError(Exception):
    """redis-server is missing, or did not start; the message has its log's tail."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files for a TLS-only server (``--tls-port``)."""

    cert_file: str
    key_file: str
    ca_file: str


def find_redis_server() -> str | None:
    """The ``redis-server`` binary on PATH (or in /usr/bin, /usr/local/bin), if any."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (:meth:`start` retries if taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@final
class RedisServer:
    """One redis-server process; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        tls: TLSFiles | None = None,
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
    ) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        self.binary = found
        self.directory = directory
        self.password = password
        self.tls = tls
        self.extra_args = extra_args
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = directory / "redis-server.log"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        """Start it (on :attr:`port` again if it ran before) and wait until it is ready."""
        keep_port = self.port != 0
        for _ in range(5):
            port = self.port if keep_port else free_port()
            if self._start_on(port, timeout):
                self.port = port
                return
            if not keep_port:
                continue
            time.sleep(0.2)  # the old process's socket may linger a moment
        raise RedisServerError(f"redis-server did not start:\n{self._log_tail()}")

    def _start_on(self, port: int, timeout: float) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(port)]
        else:
            args += [
                "--port", "0",
                "--tls-port", str(port),
                "--tls-cert-file", self.tls.cert_file,
                "--tls-key-file", self.tls.key_file,
                "--tls-ca-cert-file", self.tls.ca_file,
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += list(self.extra_args)
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log.read_bytes() if self._log.exists() else b""
            if _READY in text:
                return True
            if self._proc.poll() is not None:
                if _PORT_TAKEN in text:
                    self._proc = None
                    return False
                raise RedisServerError(f"redis-server exited:\n{self._log_tail()}")
            time.sleep(0.01)
        self.stop()
        raise RedisServerError(f"redis-server not ready after {timeout} s:\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would (the port can be reused by :meth:`start`)."""
        self._signal(signal.SIGKILL, 5.0)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s; returns once the process is gone."""
        if not self._signal(signal.SIGTERM, 3.0):
            self._signal(signal.SIGKILL, 5.0)

    def _signal(self, sig: signal.Signals, wait: float) -> bool:
        proc = self._proc
        if proc is None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            return False
        self._proc = None
        return True

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
