"""The ``trio-continuum`` command line, run as a real subprocess (``python -m continuum``)."""

from __future__ import annotations

import contextlib
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


def cli(*args: str, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        cwd=cwd,
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


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A loopback port with a listener of ours on it, for as long as the block runs."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port: int = holder.getsockname()[1]
        yield port


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
    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "continuum", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
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


def test_no_subcommand_and_no_config_is_a_clear_error(tmp_path: Path) -> None:
    """Without a command the router runs (the reference router's way); with no config to
    find, that is exit 2 naming where it looked, as ``run`` says it."""
    result = cli(env=isolated_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "none found" in result.stderr and "generate-config" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("--no-such-option")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"trio-continuum {continuum.__version__}"


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


def test_check_reports_every_missing_environment_variable_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "env.yaml",
        "backends:\n"
        "  - name: a\n    url: ${CONTINUUM_TEST_UNSET_URL}\n"
        "    api_key: ${CONTINUUM_TEST_UNSET_A}\n"
        "  - name: b\n    url: http://127.0.0.1:9\n    api_key: ${CONTINUUM_TEST_UNSET_B}\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_TEST_UNSET")}
    result = cli("check", str(path), env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "3 environment variables are not set" in result.stderr
    for key, name in (("backends[0].url", "CONTINUUM_TEST_UNSET_URL"),
                      ("backends[0].api_key", "CONTINUUM_TEST_UNSET_A"),
                      ("backends[1].api_key", "CONTINUUM_TEST_UNSET_B")):
        assert f"{key}: {name}" in result.stderr, result.stderr


def test_check_warns_about_aliases_and_fallbacks_nobody_serves(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "aliases.yaml",
        "model_aliases:\n  friendly: gpt-4o\n  typo: gpt-4oo\n"
        "fallbacks:\n  gpt-4o: [gpt-4o-mini, clause-3]\n"
        "backends:\n  - name: a\n    url: http://127.0.0.1:9\n    models: [gpt-4o, gpt-4o-mini]\n",
    )
    result = cli("check", str(path))
    assert result.returncode == 0, result.stderr  # valid, but probably a mistake
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"trio-continuum: warning: {path}: model_aliases.typo: 'gpt-4oo' is not in any "
        "backend's configured models",
        f"trio-continuum: warning: {path}: fallbacks.gpt-4o[1]: 'clause-3' is not in any "
        "backend's configured models",
    ], result.stderr


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


def test_the_reference_routers_spelling_without_a_subcommand(
    tmp_path: Path, running: list[Running]
) -> None:
    """``--generate-config`` and ``--config FILE`` as the reference router spells them; no
    command at all runs the router on the config discovery finds."""
    flag, sub = cli("--generate-config"), cli("generate-config")
    assert flag.returncode == 0 and flag.stdout == sub.stdout, flag.stderr
    named = Running(["--config", str(demo_copy(tmp_path, "127.0.0.1:0"))])
    running.append(named)
    workdir = tmp_path / "work"
    workdir.mkdir()
    demo_copy(workdir, "127.0.0.1:0").rename(workdir / "config.yaml")
    found = Running([], env=isolated_env(tmp_path), cwd=workdir)
    running.append(found)
    for proc in (named, found):
        port = listening_port(proc.stderr)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as client:
            assert client.get("/health").status_code == 200
    # Options of run still need their values; --version stays the program's own.
    assert cli("--config").returncode == 2
    assert cli("--version").stdout.startswith("trio-continuum ")


# -- run ------------------------------------------------------------------------------------------


def test_run_with_invalid_config_exits_before_binding(tmp_path: Path) -> None:
    # The port is taken: a router that bound before validating would fail with "in use".
    with port_in_use() as port:
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
    with port_in_use() as port:
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


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """The environment with a home of its own (no user config dir found by accident), and
    the source tree importable from another working directory."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    return {**env, "HOME": str(home), "PYTHONPATH": str(ROOT / "src")}


def test_run_finds_a_toml_config_and_reloads_it(tmp_path: Path, running: list[Running]) -> None:
    """No config named: ``run`` takes ./config.toml (before the user's directory), serves
    it, and a SIGHUP reads the TOML file again."""
    config = continuum.load_config(demo_copy(tmp_path, "127.0.0.1:0"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    toml_text = continuum.dump_effective_config(config, "toml")
    (workdir / "config.toml").write_text(toml_text)
    env = isolated_env(tmp_path)
    user_dir = Path(env["HOME"]) / ".config" / "continuum-router"
    user_dir.mkdir(parents=True)
    (user_dir / "config.yaml").write_text("not: [a, valid, config")
    proc = Running(["run"], env=env, cwd=workdir)
    running.append(proc)
    port = listening_port(proc.stderr)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "demo-chat", "messages": [{"role": "user", "content": "hi toml"}]})
        assert reply.status_code == 200, reply.text
        assert "demo-toml-added" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
        (workdir / "config.toml").write_text(toml_text.replace(
            '"demo-chat",', '"demo-chat",\n    "demo-toml-added",', 1))
        proc.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            models = {m["id"] for m in client.get("/v1/models").json()["data"]}
            if "demo-toml-added" in models:
                break
            time.sleep(0.05)
        assert "demo-toml-added" in models
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(timeout=HANG_GUARD) == 0
    assert "Traceback" not in proc.stderr.rest()


def test_config_discovery_order_and_clear_errors(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    # Nothing anywhere: exit 2, every place named, no traceback.
    result = cli("check", env=env, cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "none found" in result.stderr
    assert f"{env['HOME']}/.config/continuum-router/config.toml" in result.stderr
    assert "/etc/continuum-router/config.yaml" in result.stderr
    # The user's directory: YAML before TOML; $XDG_CONFIG_HOME moves it.
    demo = demo_copy(tmp_path, "127.0.0.1:0").read_text()
    xdg = tmp_path / "xdg" / "continuum-router"
    xdg.mkdir(parents=True)
    (xdg / "config.toml").write_text("this is not toml")
    (xdg / "config.yaml").write_text(demo)
    result = cli("check", env={**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert f"{xdg / 'config.yaml'}: OK" in result.stderr
    # The working directory comes first.
    (workdir / "config.yml").write_text(demo)
    result = cli("check", env={**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd=workdir)
    assert result.returncode == 0 and "# config.yml: OK" in result.stderr, result.stderr
    # --config is the argument's other spelling; both at once is an error.
    result = cli("check", "--config", str(xdg / "config.yaml"), env=env, cwd=workdir)
    assert result.returncode == 0 and f"{xdg / 'config.yaml'}: OK" in result.stderr
    result = cli("check", "a.yaml", "--config", "b.yaml", env=env, cwd=workdir)
    assert result.returncode == 2 and "name the config once" in result.stderr


def test_check_prints_toml_that_loads_back(tmp_path: Path) -> None:
    as_toml = cli("check", str(DEMO), "--format", "toml")
    assert as_toml.returncode == 0, as_toml.stderr
    path = write(tmp_path, "effective.toml", as_toml.stdout)
    again = cli("check", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == cli("check", str(DEMO)).stdout.splitlines()[1:]


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


def test_run_bind_overrides_the_config_and_logs_a_startup_summary(
    tmp_path: Path, running: list[Running]
) -> None:
    socket_path = tmp_path / "router.sock"
    # demo.yaml binds 127.0.0.1:8080; --bind replaces that (a list, comma-separated).
    proc = Running(["run", str(DEMO), "--bind", f"127.0.0.1:0,unix:{socket_path}"])
    running.append(proc)
    block = proc.stderr.wait_for(r"listening on 127\.0\.0\.1:(\d+), unix:")
    port = int(block.group(1))
    summary = [proc.stderr.wait_for(r"^  backend mock-a ").string,
               proc.stderr.wait_for(r"^  backend mock-b ").string,
               proc.stderr.wait_for(r"^  routing: ").string,
               proc.stderr.wait_for(r"^  features: ").string]
    assert re.search(r"backend mock-a \(mock, openai API\) http://127\.0\.0\.1:\d+: models "
                     r"demo-chat, demo-embed \[healthy\]", summary[0]), summary
    assert "models demo-chat [healthy]" in summary[1]
    assert "routing: RoundRobin; 2 retries; request timeout 60s" in summary[2]
    assert "health checks every 10s" in summary[3] and "metrics at /metrics" in summary[3]
    with httpx.Client(timeout=HANG_GUARD) as client:
        assert client.get(f"http://127.0.0.1:{port}/health").status_code == 200
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, timeout=HANG_GUARD) as client:
        assert client.get("http://router/ready").status_code == 200
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(timeout=HANG_GUARD) == 0


def test_startup_summary_hides_credentials_and_says_discovering(
    tmp_path: Path, running: list[Running]
) -> None:
    secret = "sk-live-summary-SECRET-0123456789"
    path = write(
        tmp_path,
        "secrets.yaml",
        "server:\n  bind_address: 127.0.0.1:0\n"
        "health_checks:\n  enabled: false\n"
        "backends:\n"
        "  - name: listed\n    type: mock\n    models: [m]\n"
        "  - name: lister\n"
        f"    url: http://user:{secret}@127.0.0.1:9/v1?key={secret}\n"
        "    api_key: ${CONTINUUM_TEST_SUMMARY_KEY}\n",
    )
    proc = Running(["run", str(path)], env={**os.environ, "CONTINUUM_TEST_SUMMARY_KEY": secret})
    running.append(proc)
    line = proc.stderr.wait_for(r"^  backend lister ").string
    assert "(openai) http://127.0.0.1:9/v1: models discovering" in line, line
    proc.stderr.wait_for(r"^  features: ")
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(timeout=HANG_GUARD) == 0
    output = proc.stderr.rest()
    assert secret not in output and "user:" not in output


def test_run_log_level_overrides_the_config(tmp_path: Path, running: list[Running]) -> None:
    # demo.yaml says info. debug shows the pre-warming line; warning hides the summary.
    debug = Running(["run", str(DEMO), "--bind", "127.0.0.1:0", "--log-level", "debug"])
    running.append(debug)
    debug.stderr.wait_for(r"DEBUG +continuum\.backend: backend mock-a: pre-warmed")
    path = write(tmp_path, "alias.yaml", DEMO.read_text() + "model_aliases:\n  x: nowhere\n")
    quiet = Running(["run", str(path), "--bind", "127.0.0.1:0", "--log-level", "warning"])
    running.append(quiet)
    quiet.stderr.wait_for(r"WARNING .*model_aliases\.x: 'nowhere' is not in any backend's models")
    quiet.process.send_signal(signal.SIGTERM)
    assert quiet.process.wait(timeout=HANG_GUARD) == 0
    assert " INFO " not in "".join(quiet.stderr.seen) + quiet.stderr.rest()


@pytest.mark.parametrize(("args", "message"), [
    (["--bind", "nonsense"], "--bind: 'nonsense'"),
    (["--bind", "127.0.0.1:0,127.0.0.1:0"], "given twice"),
    (["--log-level", "loud"], "invalid choice"),
])
def test_run_rejects_bad_overrides(args: list[str], message: str) -> None:
    result = cli("run", str(DEMO), *args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stderr


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


def test_commands_that_do_not_serve_leave_the_router_unimported() -> None:
    """``--help``, ``check``, ``generate-config`` and ``admin`` import the CLI, the config and
    the admin client; trio and the router's graph load only for ``run`` (continuum.runner)."""
    probe = (
        "import sys, continuum, continuum.cli\n"
        "assert continuum.__version__\n"
        "heavy = sorted(m for m in sys.modules if m == 'trio' or m.startswith("
        "('continuum.actors', 'continuum.net', 'continuum.runner', 'prometheus_client')))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


#: Modules a router loads only when its config asks for what they do: HTTP/2 upstreams,
#: the hypercorn front, tracing export, WebSocket relaying, the in-process mock.
LOADED_ON_DEMAND = ("h2", "hypercorn", "opentelemetry", "trio_websocket", "wsproto",
                    "continuum.testing", "continuum.net.client.h2",
                    "continuum.net.server.hypercorn_front", "continuum.net.server.asgi",
                    "continuum.net.websocket_relay")


def test_a_plain_router_starts_without_the_modules_of_features_it_does_not_use(
    tmp_path: Path,
) -> None:
    """Start-up imports what the config uses: a router with one OpenAI-compatible HTTP/1.1
    backend and the defaults serves without any of :data:`LOADED_ON_DEMAND`."""
    config = write(tmp_path, "plain.yaml", (
        "server:\n  bind_address: 127.0.0.1:0\n"
        "health_checks:\n  enabled: false\n"
        "backends:\n  - name: a\n    url: http://127.0.0.1:9\n    models: [m]\n"))
    probe = (
        "import sys, trio, continuum, continuum.runner\n"
        "async def main():\n"
        "    async with trio.open_nursery() as nursery:\n"
        f"        config = continuum.load_config({str(config)!r})\n"
        "        router = await nursery.start(continuum.serve, config)\n"
        f"        names = {LOADED_ON_DEMAND!r}\n"
        "        print(sorted(m for m in sys.modules\n"
        "                     if any(m == n or m.startswith(n + '.') for n in names)))\n"
        "        router.abort()\n"
        "trio.run(main)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=HANG_GUARD, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
