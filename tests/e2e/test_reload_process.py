"""Hot reload of a router process (``trio-continuum run``) under load, through every trigger:
the file watcher, SIGHUP, the admin API and the admin CLI; and with ``server.workers: 2``.

The reload test of issue 12: 20 streams and a stream of plain requests stay in flight while
the config file is rewritten (a backend added, another removed, the strategy changed), then
changed again and SIGHUP sent, then made invalid, then rolled back. Every request completes
(streams end with ``[DONE]``), new requests reach the added backend and none reaches the
removed one once it is out, the invalid file is rejected with its key path, and the rollback
restores the original.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from continuum.mock import MockUpstream
from helpers import start_mock

MODEL = "m"
CHAT = "/v1/chat/completions"
TOKEN = "admin-token-for-the-reload-test"
BACKEND_KEY = "sk-backend-key-never-shown"
SECRETS = (TOKEN, BACKEND_KEY)
#: Bound on waiting for one step of a case (a start, a version to appear).
STEP = 30.0


class RouterRun:
    """``python -m continuum run CONFIG`` with its log in a file; the port is read from the
    log (the config binds port 0)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.url = ""
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "continuum", "run", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def started(self, pattern: str = r"listening on 127\.0\.0\.1:(\d+)") -> str:
        with trio.fail_after(STEP):
            while (match := re.search(pattern, self.log())) is None:
                assert self.process.poll() is None, self.log()
                await trio.sleep(0.05)
        self.url = f"http://127.0.0.1:{match.group(1)}"
        with trio.fail_after(STEP):
            while True:
                try:
                    async with httpx.AsyncClient() as client:
                        if (await client.get(self.url + "/health")).status_code == 200:
                            return self.url
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


@pytest.fixture
def runs() -> Iterator[list[RouterRun]]:
    started: list[RouterRun] = []
    yield started
    for run in started:
        run.stop()


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace the file whole (write a new one, rename it over): what editors do."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


def admin_client(url: str, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=STEP)


async def wait_version(url: str, version: int) -> dict[str, Any]:
    async with admin_client(url) as client:
        with trio.fail_after(STEP):
            while True:
                status: dict[str, Any] = (await client.get("/admin/status")).json()
                if status["version"] >= version:
                    return status
                await trio.sleep(0.05)


def admin_cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_ADMIN")}
    if token is not None:
        env["CONTINUUM_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "continuum", "admin", *args],
                          capture_output=True, text=True, timeout=STEP, env=env, check=False)


@dataclass
class Load:
    """Streams and plain requests kept in flight; every outcome is kept."""

    url: str
    streams: int = 20
    outcomes: list[tuple[float, str, bool, str]] = field(default_factory=list)
    running: bool = True

    def errors(self) -> list[tuple[float, str, bool, str]]:
        return [o for o in self.outcomes if o[3]]

    def served_by(self, since: float) -> set[str]:
        return {backend for started, backend, _, _ in self.outcomes if started >= since}

    async def stream_loop(self, client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        while self.running:
            started = trio.current_time()
            backend, error = "", ""
            try:
                async with client.stream("POST", CHAT, json=body) as r:
                    backend = r.headers.get("x-continuum-backend", "")
                    text = "".join([t async for t in r.aiter_text()])
                if r.status_code != 200 or not text.rstrip().endswith("data: [DONE]"):
                    error = f"stream {r.status_code}: {text[-200:]!r}"
                elif "error" in text.split("data: [DONE]")[0].rsplit("data:", 1)[-1]:
                    error = f"stream ended with an error event: {text[-300:]!r}"
            except httpx.HTTPError as exc:
                error = f"stream: {exc!r}"
            self.outcomes.append((started, backend, True, error))

    async def plain_loop(self, client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        while self.running:
            started = trio.current_time()
            backend, error = "", ""
            try:
                r = await client.post(CHAT, json=body)
                backend = r.headers.get("x-continuum-backend", "")
                if r.status_code != 200:
                    error = f"plain {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"plain: {exc!r}"
            self.outcomes.append((started, backend, False, error))

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with (httpx.AsyncClient(base_url=self.url, timeout=STEP, limits=limits) as client,
                    trio.open_nursery() as nursery):
            for _ in range(self.streams):
                nursery.start_soon(self.stream_loop, client)
            for _ in range(2):
                nursery.start_soon(self.plain_loop, client)
            task_status.started()


async def slow_mocks(nursery: trio.Nursery, names: str
                     ) -> tuple[dict[str, MockUpstream], dict[str, dict[str, Any]]]:
    """Mocks whose streams take about a second (20 chunks at 20 tokens/s)."""
    mocks: dict[str, MockUpstream] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in names:
        mock, url = await start_mock(nursery, (MODEL,), name=name)
        mock.tokens_per_second = 20.0
        mock.stream_chunks = 20
        mocks[name] = mock
        entries[name] = {"name": name, "url": url, "models": [MODEL]}
    return mocks, entries


def base_config(backends: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"bind_address": "127.0.0.1:0", "shutdown_timeout": "5s"},
        "health_checks": {"enabled": False},
        "logging": {"level": "info", "access_log": False},
        "admin": {"auth": {"method": "bearer_token", "token": TOKEN}},
        "hot_reload": {"enabled": True, "debounce": "200ms"},
        "backends": backends,
    }
    data.update(sections)
    return data


async def test_reload_under_load_through_every_trigger(
    nursery: trio.Nursery, tmp_path: Path, runs: list[RouterRun]
) -> None:
    mocks, entries = await slow_mocks(nursery, "abc")
    path = tmp_path / "router.yaml"
    original = base_config([{**entries["a"], "api_key": BACKEND_KEY}, entries["b"]])
    write(path, original)
    run = RouterRun(path, tmp_path / "router.log")
    runs.append(run)
    url = await run.started()
    load = Load(url)
    await nursery.start(load.run)
    with trio.fail_after(STEP):
        while mocks["a"].active_streams < 3 or mocks["b"].active_streams < 3:
            await trio.sleep(0.02)

    # 1. The file, rewritten: a removed, c added, another strategy. The watcher applies it
    #    while a's streams run; they finish there.
    write(path, base_config([entries["b"], entries["c"]],
                            routing={"strategy": "LeastConnections"}))
    await wait_version(url, 2)
    out = trio.current_time()
    assert mocks["a"].active_streams > 0  # still draining: nothing was cut
    async with admin_client(url) as client:
        with trio.fail_after(STEP):  # a drains, then leaves for good
            while any(b["name"] == "a" for b in (await client.get("/admin/backends")).json()
                      ["backends"]):
                await trio.sleep(0.05)
    a_total = mocks["a"].requests
    await trio.sleep(1.5)
    assert "c" in load.served_by(out) and "a" not in load.served_by(out)

    # 2. hot_reload switched off by the file, then a change and SIGHUP
    write(path, base_config([entries["b"], entries["c"]], routing={"strategy": "Random"},
                            hot_reload={"enabled": False}))
    await wait_version(url, 3)
    write(path, base_config([entries["b"], {**entries["c"], "weight": 3}],
                            routing={"strategy": "WeightedRoundRobin"},
                            hot_reload={"enabled": False}))
    await trio.sleep(0.6)
    async with admin_client(url) as client:
        assert (await client.get("/admin/status")).json()["version"] == 3  # not followed
    run.process.send_signal(signal.SIGHUP)
    status = await wait_version(url, 4)
    assert status["source"] == "SIGHUP"

    # 3. An invalid file: SIGHUP and the API both reject it whole, naming its key path
    write(path, base_config([entries["b"], {**entries["c"], "url": "ftp://nowhere"}],
                            hot_reload={"enabled": False}))
    run.process.send_signal(signal.SIGHUP)
    with trio.fail_after(STEP):
        while "rejected, still on v4" not in run.log():
            await trio.sleep(0.05)
    assert f"{path}: backends[1].url: expected an http:// or https:// URL" in run.log()
    async with admin_client(url) as client:
        r = await client.post("/admin/config/reload")
        assert r.status_code == 422 and r.json()["error"]["param"] == "backends[1].url"
        assert (await client.get("/admin/status")).json()["version"] == 4

    # 4. Roll back to the original, through the CLI, first without credentials
    refused = admin_cli("--url", url, "rollback", "1", token=None)
    assert refused.returncode == 1 and "401" in refused.stderr
    refused = admin_cli("rollback", "1", "--url", url, token="not-the-token")
    assert refused.returncode == 1 and "401" in refused.stderr
    rolling = trio.current_time()
    done = await trio.to_thread.run_sync(lambda: admin_cli("--url", url, "rollback", "1"))
    assert done.returncode == 0, done.stderr
    assert "v4 -> v5: " in done.stdout
    back = await trio.to_thread.run_sync(lambda: admin_cli("--url", url, "--json", "config"))
    config = json.loads(back.stdout)["config"]
    assert [b["name"] for b in config["backends"]] == ["a", "b"]
    assert config["routing"]["strategy"] == "RoundRobin" and config["hot_reload"]["enabled"]
    restored = trio.current_time()
    await trio.sleep(1.5)
    assert load.served_by(restored) == {"a", "b"}
    assert mocks["a"].requests > a_total

    load.running = False
    with trio.fail_after(STEP):
        while mocks["a"].active_streams + mocks["b"].active_streams + mocks["c"].active_streams:
            await trio.sleep(0.05)
    await trio.sleep(0.3)
    assert not load.errors(), load.errors()[:5]
    streams = [o for o in load.outcomes if o[2]]
    assert len(streams) >= 60 and len(load.outcomes) - len(streams) >= 20
    # after a left and before it came back, not one request reached it
    assert not any(b == "a" for t, b, _, _ in load.outcomes if out <= t < rolling)
    history = await trio.to_thread.run_sync(lambda: admin_cli("--url", url, "history"))
    assert [line.split()[0] for line in history.stdout.splitlines()[1:]] == [
        "v5*", "v4", "v3", "v2", "v1"]
    assert "rollback to v1" in history.stdout and "SIGHUP" in history.stdout
    assert "file change" in history.stdout
    everything = run.log() + history.stdout + back.stdout + done.stdout + refused.stderr
    for secret in SECRETS:
        assert secret not in everything
    assert run.stop() == 0
    assert "Traceback" not in run.log()


async def test_workers_apply_the_same_versions(
    nursery: trio.Nursery, tmp_path: Path, runs: list[RouterRun]
) -> None:
    _, entries = await slow_mocks(nursery, "ab")
    path = tmp_path / "router.yaml"
    data = base_config([entries["a"]], hot_reload={"enabled": False})
    data["server"]["workers"] = 2
    write(path, data)
    run = RouterRun(path, tmp_path / "router.log")
    runs.append(run)
    url = await run.started(r"2 workers on 127\.0\.0\.1:(\d+)")

    async def versions_seen(version: int) -> set[int]:
        """Ask fresh connections until both workers have answered with ``version``."""
        seen: set[int] = set()
        with trio.fail_after(STEP):
            while seen != {0, 1}:
                async with admin_client(url) as client:
                    status = (await client.get("/admin/status")).json()
                if status["version"] == version:
                    seen.add(status["worker"])
                await trio.sleep(0.01)
        return seen

    # wait for both workers, then change through the API of one of them
    await versions_seen(1)
    async with admin_client(url) as client:
        r = await client.post("/admin/backends", json=entries["b"])
        assert r.status_code == 201 and r.json()["version"] == 2
    await versions_seen(2)
    async with admin_client(url) as client:
        for _ in range(8):  # any worker: the same config
            config = (await client.get("/admin/config")).json()
            assert config["version"] == 2
            assert [b["name"] for b in config["config"]["backends"]] == ["a", "b"]
    # SIGHUP to the parent: each worker reloads, and it is one version
    write(path, {**data, "routing": {"strategy": "Random"}})
    run.process.send_signal(signal.SIGHUP)
    await versions_seen(3)
    async with admin_client(url) as client:
        history = (await client.get("/admin/config/history")).json()
    assert [(v["version"], v["source"]) for v in history["versions"]] == [
        (3, "SIGHUP"), (2, "POST /admin/backends"), (1, "start")]
    async with admin_client(url) as client:  # the file has no b: the reload removed it
        config = (await client.get("/admin/config")).json()
        assert [b["name"] for b in config["config"]["backends"]] == ["a"]
        r = await client.post("/admin/backends", json=entries["b"])
        assert r.status_code == 201 and r.json()["version"] == 4
    await versions_seen(4)
    # a worker that dies comes back with the latest version (4), not the file's
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(run.process.pid)],
                              capture_output=True, text=True, check=False).stdout.split()
    os.kill(int(children[0]), signal.SIGKILL)
    with trio.fail_after(STEP):
        while "restarting in" not in run.log():
            await trio.sleep(0.05)
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline:
        await trio.sleep(0.2)
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(run.process.pid)],
                             capture_output=True, text=True, check=False).stdout.split()
        if len(out) == 2 and children[0] not in out:
            break
    await versions_seen(4)
    async with admin_client(url) as client:
        for _ in range(8):
            config = (await client.get("/admin/config")).json()
            assert config["config"]["routing"]["strategy"] == "Random"
            assert [b["name"] for b in config["config"]["backends"]] == ["a", "b"]
    assert run.stop() == 0
    assert "Traceback" not in run.log()


async def test_the_process_freezes_its_heap_after_start_up_and_each_change(
    nursery: trio.Nursery, tmp_path: Path, runs: list[RouterRun]
) -> None:
    """The CLI owns its process: what start-up built is frozen out of the collector's walks
    (core.heap), and again after a change is applied (old cycles collected first)."""
    _, url = await start_mock(nursery, (MODEL,), name="a")
    path = tmp_path / "router.yaml"
    data = base_config([{"name": "a", "url": url, "models": [MODEL]}],
                       logging={"level": "debug", "access_log": False})
    write(path, data)
    run = RouterRun(path, tmp_path / "router.log")
    runs.append(run)
    await run.started()
    settled = re.compile(r"heap settled: (\d+) objects frozen")
    with trio.fail_after(STEP):
        while (found := settled.search(run.log())) is None:
            await trio.sleep(0.05)
    assert int(found.group(1)) > 1000  # modules, the config, the tables: not a handful
    write(path, {**data, "routing": {"strategy": "LeastLatency"}})
    run.process.send_signal(signal.SIGHUP)
    resettled = re.compile(r"heap resettled after a config change: (\d+) objects frozen")
    with trio.fail_after(STEP):
        while (found := resettled.search(run.log())) is None:
            await trio.sleep(0.05)
    assert int(found.group(1)) > 1000
    assert run.stop() == 0
