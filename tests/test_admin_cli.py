"""``trio-continuum admin`` against a real router: every command, as a table and as JSON,
each credential method, the failures (no credentials, wrong ones, nobody listening), and no
secret in any output. (Rollback, history and config under load: tests/e2e/test_reload_process.)
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from continuum import RouterHandle, serve
from continuum.admin_cli import ENV_AUTH, ENV_TOKEN, ENV_URL
from continuum.cli import build_parser
from continuum.config import load_config
from helpers import refused_url, start_mock

MODEL = "m"
TOKEN = "cli-admin-token-4c1d"
PASSWORD = "cli-basic-password-9e"
BACKEND_KEY = "sk-cli-backend-secret"
SECRETS = (TOKEN, PASSWORD, BACKEND_KEY)


async def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``trio-continuum admin ARGV`` in a thread (it is sync httpx) and capture it."""
    out, err = io.StringIO(), io.StringIO()

    def main() -> int:
        args = build_parser().parse_args(["admin", *argv])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code: int = args.func(args)
        return code

    code = await trio.to_thread.run_sync(main)
    for secret in SECRETS:
        assert secret not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


async def start(nursery: trio.Nursery, tmp_path: Path, auth: dict[str, Any]) -> RouterHandle:
    entries = []
    for name in "ab":
        _, url = await start_mock(nursery, (MODEL,), name=name)
        entries.append({"name": name, "url": url, "models": [MODEL]})
    entries[0]["api_key"] = BACKEND_KEY
    path = tmp_path / "router.yaml"
    path.write_text(json.dumps({
        "server": {"bind_address": "127.0.0.1:0", "shutdown_timeout": 5},
        "health_checks": {"enabled": False}, "admin": {"auth": auth}, "backends": entries,
    }))
    handle: RouterHandle = await nursery.start(serve, load_config(path))
    return handle


@pytest.fixture(autouse=True)
def _no_admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_URL, ENV_TOKEN, ENV_AUTH):
        monkeypatch.delenv(name, raising=False)


async def test_every_command_with_a_bearer_token(nursery: trio.Nursery, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    router = await start(nursery, tmp_path, {"method": "bearer_token", "token": TOKEN})
    monkeypatch.setenv(ENV_URL, router.url)
    code, out, err = await run_cli("status")
    assert code == 1 and out == ""
    assert "GET /admin/status: 401: Admin API: missing or invalid credentials" in err
    monkeypatch.setenv(ENV_TOKEN, TOKEN)

    code, out, _ = await run_cli("status")
    assert code == 0 and "status: healthy" in out and "config: v1 (start," in out
    code, out, _ = await run_cli("backends")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "config v1" and lines[1].split()[:3] == [
        "NAME", "STATE", "HEALTH"]
    assert [line.split()[:3] for line in lines[2:]] == [["a", "active", "healthy"],
                                                        ["b", "active", "healthy"]]
    code, out, _ = await run_cli("--json", "backends")
    assert code == 0 and [b["name"] for b in json.loads(out)["backends"]] == ["a", "b"]

    code, out, _ = await run_cli("drain", "b", "--wait", "5")
    assert code == 0 and out.strip() == "backend b: drained (v2)"
    assert set(router.backends) == {"a"}
    code, out, _ = await run_cli("config", "--section", "backends")
    assert code == 0 and "enabled: false" in out and "api_key: '***'" in out
    code, out, _ = await run_cli("config")
    assert code == 0 and out.startswith("server:\n") and "token: '***'" in out

    # the file still has b enabled: a reload brings it back
    code, out, _ = await run_cli("reload")
    assert code == 0 and out.strip() == "v2 -> v3: backends.b.enabled: false -> true"
    assert set(router.backends) == {"a", "b"}
    code, out, _ = await run_cli("reload", "--json")
    assert code == 0 and json.loads(out)["changed"] is False
    code, out, _ = await run_cli("rollback", "v2", "--dry-run")
    assert code == 0 and out.strip() == (
        "dry run: would make v4: backends.b.enabled: true -> false")
    code, out, _ = await run_cli("history")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == [
        "v3*", "v2", "v1"]

    code, _, err = await run_cli("rollback", "99")
    assert code == 1 and "404" in err and "not in the history" in err
    code, _, err = await run_cli("drain", "nope")
    assert code == 1 and "No backend named 'nope'" in err
    code, _, err = await run_cli("--url", refused_url(nursery), "status")
    assert code == 1 and "cannot reach" in err
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["admin", "rollback"])
    assert usage.value.code == 2


@pytest.mark.parametrize("method", ["basic", "api_key"])
async def test_the_other_credential_methods(nursery: trio.Nursery, tmp_path: Path,
                                            method: str) -> None:
    auth = ({"method": "basic", "username": "ops", "password": PASSWORD} if method == "basic"
            else {"method": "api_key", "token": TOKEN})
    credential = f"ops:{PASSWORD}" if method == "basic" else TOKEN
    router = await start(nursery, tmp_path, auth)
    code, out, _ = await run_cli("--url", router.url, "--auth", method, "--token", credential,
                                 "status")
    assert code == 0 and "status: healthy" in out
    code, _, err = await run_cli("--url", router.url, "--token", credential, "status")
    assert code == 1 and "401" in err  # sent as a bearer token: refused
