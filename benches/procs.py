"""Child processes for the benchmarks: start, wait until ready, stop, measure RSS.

Shared by ``run.py``, ``scenarios.py`` and ``ttfb.py``. Standalone: no ``continuum`` import.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
READY_PATH: Final = "/v1/models"
READY_TIMEOUT_S: Final = 10.0


class BenchError(Exception):
    """Something failed to start or answered wrongly; the bench cannot be trusted."""


@dataclass
class Service:
    """A child process serving HTTP on ``host:port``."""

    name: str
    argv: list[str]
    host: str
    port: int
    log_path: Path
    env: dict[str, str] | None = None
    hint: str = ""
    ready_path: str = READY_PATH
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,  # its own process group: we signal it, Ctrl-C doesn't
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after 3 s."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait_s)
                # The leader is gone; make sure no child of it survives either.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``GET /v1/models`` until it answers 200, the process dies, or time is up."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready\n"
                    f"command: {shlex.join(self.argv)}\n--- log tail ---\n{self.log_tail()}"
                    f"{self.hint}"
                )
            try:
                status, _ = http_request(
                    self.host, self.port, "GET", self.ready_path, timeout_s=1.0
                )
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return
                last = f"HTTP {status}"
            time.sleep(0.05)
        raise BenchError(
            f"{self.name} did not answer GET {self.ready_path} with 200 within {timeout_s:.0f} s "
            f"(last: {last})\ncommand: {shlex.join(self.argv)}\n--- log tail ---\n"
            f"{self.log_tail()}{self.hint}"
        )


def free_port(host: str) -> int:
    """A port the kernel considers free right now (bind to 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(
    host: str, port: int, method: str, path: str, body: bytes | None = None, timeout_s: float = 5.0
) -> tuple[int, bytes]:
    """One stdlib HTTP request on a fresh connection: (status, full body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a multi-worker router's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far (``/proc/PID/stat``)."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` plus all its descendants (a multi-worker router), in MB."""
    total_kb = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def router_argv(template: str, fields: dict[str, str]) -> list[str]:
    argv = [part.format(**fields) for part in shlex.split(template)]
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv
