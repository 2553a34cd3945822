"""The ``trio-continuum`` command line, run as a real subprocess (``python -m continuum``)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

import continuum

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
HANG_GUARD = 20.0
SUBCOMMANDS = ("run", "check", "generate-config", "mock")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        cwd=ROOT,
        env=env,
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Lines:
    """Lines of a subprocess pipe, read on a thread so waiting for one can time out."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = HANG_GUARD) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {self.seen!r}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process output ended without {pattern!r}: {self.seen!r}")
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def rest(self, timeout: float = HANG_GUARD) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
        return "".join(self.seen)


class Running:
    def __init__(self, args: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "continuum", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.stdout = Lines(self.process.stdout)
        self.stderr = Lines(self.process.stderr)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=HANG_GUARD)


def listening_port(stderr: Lines) -> int:
    """The port a ``run`` bound (configs here bind port 0: a port picked in advance could
    be taken by another process before the router binds it)."""
    return int(stderr.wait_for(r"listening on .*127\.0\.0\.1:(\d+)").group(1))


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for proc in started:
        proc.stop()


def assert_clean_config_error(
    result: subprocess.CompletedProcess[str], path: Path, key: str
) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr, result.stderr
    assert key in result.stderr, result.stderr
    assert result.stdout == ""


# -- help -----------------------------------------------------------------------------------------


def test_top_level_help_names_every_subcommand() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"trio-continuum {command}" in result.stdout
    assert "Traceback" not in result.stderr


def test_no_subcommand_is_a_usage_error() -> None:
    result = cli()
    assert result.returncode != 0
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


# -- check ----------------------------------------------------------------------------------------


def test_check_demo_config_prints_effective_yaml() -> None:
    result = cli("check", str(DEMO))
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert [b["name"] for b in effective["backends"]] == ["mock-a", "mock-b"]
    assert effective["server"]["bind_address"] in ("127.0.0.1:8080", ["127.0.0.1:8080"])
    assert effective["server"]["keepalive_timeout"] == 75
    # Defaults that demo.yaml does not set are shown too: it is the *effective* config.
    assert effective["server"]["max_request_body_size"] == 10485760
    assert effective["backends"][0]["mock"]["latency"] == pytest.approx(0.05)


def test_check_masks_secrets_from_the_environment(tmp_path: Path) -> None:
    secret = "sk-live-0123456789abcdefSECRET"
    path = write(
        tmp_path,
        "keys.yaml",
        "backends:\n"
        "  - name: openai\n"
        "    url: https://api.openai.com\n"
        "    api_key: ${CONTINUUM_TEST_API_KEY}\n"
        "    models: [gpt-4o]\n",
    )
    env = {**os.environ, "CONTINUUM_TEST_API_KEY": secret}
    result = cli("check", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and secret not in result.stderr
    assert secret[-8:] not in result.stdout + result.stderr
    effective = yaml.safe_load(result.stdout)
    shown = effective["backends"][0]["api_key"]
    assert shown and shown != secret and "***" in shown


INVALID_CONFIGS = {
    "unknown_key": (
        "server:\n  bind_addres: 127.0.0.1:0\nbackends:\n  - name: a\n    url: http://127.0.0.1:9\n",
        "server.bind_addres",
    ),
    "wrong_type": (
        "server:\n  max_header_size: lots\n"
        "backends:\n  - name: a\n    url: http://127.0.0.1:9\n",
        "server.max_header_size",
    ),
    "bad_url": ("backends:\n  - name: a\n    url: not a url\n", "backends[0].url"),
    "missing_env": (
        "backends:\n  - name: a\n    url: http://127.0.0.1:9\n"
        "    api_key: ${CONTINUUM_TEST_SURELY_UNSET}\n",
        "backends[0].api_key",
    ),
    "yaml_syntax": ("backends:\n  - name: a\n    url: [unclosed\n", "line "),
}


@pytest.mark.parametrize("case", sorted(INVALID_CONFIGS))
def test_check_rejects_invalid_config_naming_file_and_key(tmp_path: Path, case: str) -> None:
    text, key = INVALID_CONFIGS[case]
    path = write(tmp_path, f"{case}.yaml", text)
    env = {k: v for k, v in os.environ.items() if k != "CONTINUUM_TEST_SURELY_UNSET"}
    assert_clean_config_error(cli("check", str(path), env=env), path, key)


def test_check_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    result = cli("check", str(path))
    assert result.returncode != 0
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


# -- generate-config ------------------------------------------------------------------------------


def test_generate_config_output_loads() -> None:
    result = cli("generate-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    config = continuum.parse_config(result.stdout, source="<generated>")
    assert isinstance(config, continuum.Config)
    assert "#" in result.stdout  # it is commented


# -- run ------------------------------------------------------------------------------------------


def test_run_with_invalid_config_exits_before_binding(tmp_path: Path) -> None:
    # The port is taken: a router that bound before validating would fail with "in use".
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = write(
            tmp_path,
            "bad.yaml",
            f"server:\n  bind_address: 127.0.0.1:{port}\n"
            "backends:\n  - name: a\n    url: http://127.0.0.1:9\n    wieght: 2\n",
        )
        result = cli("run", str(path))
    assert_clean_config_error(result, path, "backends[0].wieght")
    assert result.returncode == 2
    assert "in use" not in result.stderr
    assert "listening" not in result.stderr + result.stdout


def test_run_on_a_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = write(
            tmp_path,
            "busy.yaml",
            f"server:\n  bind_address: 127.0.0.1:{port}\n"
            "health_checks:\n  enabled: false\n"
            "backends:\n  - name: a\n    type: mock\n    models: [m]\n",
        )
        result = cli("run", str(path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr.lower()


def demo_copy(tmp_path: Path, bind: str) -> Path:
    data: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    data["server"]["bind_address"] = bind
    return write(tmp_path, "demo-copy.yaml", yaml.safe_dump(data))


def test_run_serves_and_drains_on_sigterm(tmp_path: Path, running: list[Running]) -> None:
    proc = Running(["run", str(demo_copy(tmp_path, "127.0.0.1:0"))])
    running.append(proc)
    port = listening_port(proc.stderr)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=HANG_GUARD) as client:
        health = client.get("/health")
        assert health.status_code == 200
        reply = client.post(
            "/v1/chat/completions",
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi cli"}]},
        )
        assert reply.status_code == 200, reply.text
        assert "hi cli" in reply.json()["choices"][0]["message"]["content"]
        assert reply.headers["x-continuum-backend"] in ("mock-a", "mock-b")
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert {"demo-chat", "demo-embed"} <= models
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(timeout=HANG_GUARD) == 0
    stderr = proc.stderr.rest()
    assert "Traceback" not in stderr
    assert port_is_free(port)


def test_run_finishes_in_flight_request_after_sigterm(
    tmp_path: Path, running: list[Running]
) -> None:
    data: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    data["server"]["bind_address"] = "127.0.0.1:0"
    for backend in data["backends"]:
        backend["mock"]["latency"] = "600ms"
    path = write(tmp_path, "slow.yaml", yaml.safe_dump(data))
    proc = Running(["run", str(path)])
    running.append(proc)
    port = listening_port(proc.stderr)
    result: dict[str, Any] = {}

    def request() -> None:
        with httpx.Client(timeout=HANG_GUARD) as client:
            response = client.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "demo-chat", "messages": [{"role": "user", "content": "late"}]},
            )
            result["status"] = response.status_code
            result["body"] = response.json()

    thread = threading.Thread(target=request)
    thread.start()
    with httpx.Client(timeout=HANG_GUARD) as client:  # wait until it is in flight
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            admin = client.get(f"http://127.0.0.1:{port}/admin/health").json()
            if sum(b["in_flight"] for b in admin["backends"]) >= 1:
                break
            time.sleep(0.01)
    proc.process.send_signal(signal.SIGTERM)
    thread.join(HANG_GUARD)
    assert result.get("status") == 200, result
    assert "late" in json.dumps(result["body"])
    assert proc.process.wait(timeout=HANG_GUARD) == 0


# -- mock -----------------------------------------------------------------------------------------


def test_mock_subcommand_serves_models(running: list[Running]) -> None:
    proc = Running(["mock", "--bind", "127.0.0.1:0", "--models", "alpha,beta"])
    running.append(proc)
    port = int(proc.stdout.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
    with httpx.Client(timeout=HANG_GUARD) as client:
        listing = client.get(f"http://127.0.0.1:{port}/v1/models")
    assert listing.status_code == 200
    assert [m["id"] for m in listing.json()["data"]] == ["alpha", "beta"]
    proc.process.send_signal(signal.SIGINT)
    assert proc.process.wait(timeout=HANG_GUARD) == 0
    assert "Traceback" not in proc.stderr.rest()


# -- justfile -------------------------------------------------------------------------------------


def test_just_list_describes_every_recipe_for_a_user() -> None:
    just = Path(sys.executable).parent / "just"  # rust-just, from the dev extra
    result = subprocess.run([str(just), "--list"], capture_output=True, text=True,
                            timeout=HANG_GUARD, cwd=ROOT, check=True)
    recipes = [line.strip() for line in result.stdout.splitlines()[1:] if line.strip()]
    assert {r.split()[0] for r in recipes} >= {"test", "lint", "run", "bench", "bench-quick"}
    for recipe in recipes:
        _, sep, description = recipe.partition("# ")
        assert sep and len(description) >= 20, f"no description: {recipe!r}"
        # Written for users: no issue numbers or internal names.
        assert not re.search(r"\bissue\b|\bfloor\b|httptools", description, re.I), recipe
