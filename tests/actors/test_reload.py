"""Changing a running router's config (the Reconfigurer and the Fleet), in process: each
section that applies live does, what cannot is reported and kept, an invalid file changes
nothing, and requests in flight finish on the backend they started on."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from continuum import RouterHandle, config_from_dict, load_config, serve
from continuum.actors.reload import ReloadHooks, ReloadUnavailable
from continuum.config import ConfigError, LoggingConfig
from continuum.core.circuit import BreakerState
from continuum.core.strategies import LeastLatency, RoundRobin
from continuum.mock import MockUpstream
from helpers import router_config, start_mock, start_router

MODEL = "m"
CHAT = "/v1/chat/completions"


def chat(stream: bool = False, model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=20.0)


async def mocks(nursery: trio.Nursery, names: str, **config: Any
                ) -> tuple[dict[str, MockUpstream], dict[str, dict[str, Any]]]:
    ups: dict[str, MockUpstream] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in names:
        upstream, url = await start_mock(nursery, (MODEL,), name=name)
        ups[name] = upstream
        entries[name] = {"name": name, "url": url, "models": [MODEL]}
    return ups, entries


async def propose(router: RouterHandle, data: dict[str, Any], source: str = "test") -> Any:
    return await router.reconfigurer.propose(config_from_dict(data, source="<test>"),
                                             source=source, who="tester")


async def test_strategy_aliases_and_retries_apply_live(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "ab")
    data = router_config(list(entries.values()))
    router = await start_router(nursery, data)
    assert isinstance(router.router.strategy, RoundRobin)
    data = {**data, "routing": {"strategy": "LeastLatency"}, "model_aliases": {"gpt-x": MODEL},
            "request": {"max_retries": 0, "timeout": 7}}
    outcome = await propose(router, data)
    assert (outcome.version, outcome.previous, outcome.changed) == (2, 1, True)
    assert {c.path for c in outcome.changes} == {
        "routing.strategy", "model_aliases.gpt-x", "request.timeout", "request.max_retries"}
    assert isinstance(router.router.strategy, LeastLatency)
    assert router.config.request.timeout == 7 and router.reconfigurer.version == 2
    async with http(router) as client:
        r = await client.post(CHAT, json=chat(model="gpt-x"))
        assert r.status_code == 200 and r.headers["x-continuum-model"] == MODEL
    # the same again is no change and no version
    again = await propose(router, data)
    assert (again.changed, again.version) == (False, 2)
    assert [v.version for v in router.reconfigurer.store.history()] == [1, 2]


async def test_a_dry_run_changes_nothing(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "a")
    data = router_config(list(entries.values()))
    router = await start_router(nursery, data)
    outcome = await router.reconfigurer.propose(
        config_from_dict({**data, "routing": {"strategy": "Random"}}, source="x"),
        source="t", who="t", dry_run=True)
    assert outcome.dry_run and outcome.changed and outcome.version == 2
    assert isinstance(router.router.strategy, RoundRobin) and router.reconfigurer.version == 1
    assert len(router.reconfigurer.store.history()) == 1


async def test_backends_added_removed_and_in_flight_streams_finish_where_they_started(
    nursery: trio.Nursery,
) -> None:
    ups, entries = await mocks(nursery, "abc")
    ups["a"].tokens_per_second = 20.0  # a's streams take ~0.4 s
    data = router_config([entries["a"], entries["b"]])
    router = await start_router(nursery, data)
    old_a = router.backends["a"]
    results: list[tuple[str, str]] = []

    async def stream(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", CHAT, json=chat(stream=True)) as r:
            text = "".join([part async for part in r.aiter_text()])
            results.append((r.headers["x-continuum-backend"], text))

    async with http(router) as client, trio.open_nursery() as streams:
        for _ in range(6):
            streams.start_soon(stream, client)
        with trio.fail_after(10):
            while ups["a"].active_streams == 0:
                await trio.sleep(0.01)
        # a leaves, c arrives, while a's streams are still running
        outcome = await propose(router, router_config([entries["b"], entries["c"]]))
        assert "backends.a: removed" in outcome.summary and "backends.c: added" in outcome.summary
        assert set(router.backends) == {"b", "c"}
        assert [leaving.actor for leaving in router.fleet.leaving] == [old_a]
        before = ups["a"].requests
        for _ in range(6):
            r = await client.post(CHAT, json=chat())
            assert r.status_code == 200 and r.headers["x-continuum-backend"] in {"b", "c"}
        assert ups["a"].requests == before  # none reached the removed backend
    assert len(results) == 6
    assert all(text.rstrip().endswith("data: [DONE]") for _, text in results)
    assert {backend for backend, _ in results} <= {"a", "b"}
    assert await router.fleet.wait_drained("a", 10)
    assert old_a.in_flight == 0 and not router.fleet.leaving


async def test_a_changed_url_gets_a_new_actor_that_warms_up_first(
    nursery: trio.Nursery,
) -> None:
    ups, entries = await mocks(nursery, "ab")
    data = router_config([entries["a"]], health_checks={"enabled": True, "interval": "1h"})
    router = await start_router(nursery, data)
    old = router.backends["a"]
    moved = {**entries["a"], "url": entries["b"]["url"]}
    probes_before = ups["b"].requests_by_path.get("/v1/models", 0)
    outcome = await propose(router, {**data, "backends": [moved]})
    assert [c.path for c in outcome.changes] == ["backends.a.url"]
    new = router.backends["a"]
    assert new is not old and new.healthy
    # its first probe ran before it was put in service
    assert ups["b"].requests_by_path.get("/v1/models", 0) > probes_before
    async with http(router) as client:
        await client.post(CHAT, json=chat())
    assert ups["b"].requests_by_path.get(CHAT) == 1
    assert await router.fleet.wait_drained("a", 5)


async def test_an_added_backend_that_fails_its_first_probe_gets_no_traffic(
    nursery: trio.Nursery,
) -> None:
    ups, entries = await mocks(nursery, "ab")
    data = router_config([entries["a"]], health_checks={"enabled": True, "interval": "1h"})
    router = await start_router(nursery, data)
    ups["b"].set_health_status(500)
    await propose(router, {**data, "backends": [entries["a"], entries["b"]]})
    assert not router.backends["b"].healthy
    async with http(router) as client:
        for _ in range(4):
            r = await client.post(CHAT, json=chat())
            assert r.headers["x-continuum-backend"] == "a"


async def test_tunable_fields_keep_the_actor_and_its_state(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "a")
    data = router_config([entries["a"]])
    router = await start_router(nursery, data)
    actor = router.backends["a"]
    actor.breaker.record(False)
    changed = {**entries["a"], "weight": 5, "max_queue": 3, "models": [MODEL, "m2"]}
    await propose(router, {**data, "backends": [changed],
                           "circuit_breaker": {"failure_threshold": 9}})
    assert router.backends["a"] is actor
    assert (actor.weight, actor.capacity) == (5, actor.max_in_flight + 3)
    assert router.router.candidates("m2") == (actor,)
    assert actor.breaker.settings.failure_threshold == 9
    assert actor.breaker.consecutive_failures == 1  # its history stays


async def test_disabling_a_backend_drains_it_and_keeps_its_entry(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "ab")
    data = router_config([entries["a"], entries["b"]])
    router = await start_router(nursery, data)
    outcome = await propose(router, {**data, "backends": [{**entries["a"], "enabled": False},
                                                          entries["b"]]})
    assert [c.path for c in outcome.changes] == ["backends.a.enabled"]
    assert set(router.backends) == {"b"}
    assert [b.name for b in router.config.backends] == ["a", "b"]
    await propose(router, data)
    assert set(router.backends) == {"a", "b"}


async def test_changes_that_need_a_restart_are_reported_and_kept(nursery: trio.Nursery,
                                                                 caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    _, entries = await mocks(nursery, "a")
    data = router_config([entries["a"]])
    router = await start_router(nursery, data)
    caplog.set_level(logging.INFO)
    server = {**data["server"], "bind_address": "127.0.0.1:1", "workers": 3}
    outcome = await propose(router, {**data, "server": server, "tracing": {"enabled": True},
                                     "routing": {"strategy": "Random"}})
    assert outcome.changed and outcome.needs_restart == (
        "server.bind_address", "server.workers", "tracing.enabled")
    assert [c.path for c in outcome.changes] == ["routing.strategy"]
    assert router.config.server.bind_address == ("127.0.0.1:0",)  # what is in force
    assert router.config.server.workers == 1 and not router.config.tracing.enabled
    assert router.config.routing.strategy == "Random"
    assert router.reconfigurer.pending_restart == outcome.needs_restart
    assert any("server.bind_address, server.workers, tracing.enabled changed but take(s) "
               "effect only after a restart" in r.getMessage() for r in caplog.records)
    # a change that only needs a restart makes no version
    only = await propose(router, {**data, "server": server, "routing": {"strategy": "Random"}})
    assert not only.changed and only.version == 2 and only.needs_restart


async def test_cors_applies_live(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "a")
    data = router_config([entries["a"]])
    router = await start_router(nursery, data)
    origin = {"origin": "https://app.example.com"}
    async with http(router) as client:
        plain = await client.post(CHAT, json=chat(), headers=origin)
        assert "access-control-allow-origin" not in plain.headers
        outcome = await propose(router, {**data, "cors": {
            "enabled": True, "allowed_origins": ["https://*.example.com"]}})
        assert not outcome.needs_restart
        allowed = await client.post(CHAT, json=chat(), headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        preflight = await client.options(CHAT, headers={
            **origin, "access-control-request-method": "POST"})
        assert preflight.status_code == 204
        await propose(router, data)
        after = await client.post(CHAT, json=chat(), headers=origin)
        assert "access-control-allow-origin" not in after.headers


async def test_metrics_auth_logging_and_dedup_apply_live(nursery: trio.Nursery) -> None:
    ups, entries = await mocks(nursery, "a")
    data = router_config([entries["a"]])
    levels: list[str] = []
    config = config_from_dict(data, source="<test>")
    router: RouterHandle = await nursery.start(
        lambda task_status: serve(config, hooks=ReloadHooks(logging=lambda c: levels.append(
            c.level)), task_status=task_status))
    async with http(router) as client:
        assert (await client.get("/metrics")).status_code == 200
        await propose(router, {**data, "metrics": {"auth": {"enabled": True, "username": "u",
                                                            "password": "p"}},
                               "logging": {"level": "warn"},
                               "cache": {"deduplication": {"enabled": True}}})
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", auth=("u", "p"))).status_code == 200
        assert levels == ["warn"]
        body = {**chat(), "temperature": 0}
        ups["a"].set_latency(0.3)
        before = ups["a"].requests
        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(partial(client.post, CHAT, json=body))
        assert ups["a"].requests - before == 1  # identical requests shared one call


async def test_turning_probes_off_brings_an_unhealthy_backend_back(
    nursery: trio.Nursery,
) -> None:
    ups, entries = await mocks(nursery, "a")
    ups["a"].set_health_status(500)
    data = router_config([entries["a"]], health_checks={"enabled": True, "interval": "1h"})
    router = await start_router(nursery, data)
    assert not router.backends["a"].healthy
    await propose(router, {**data, "health_checks": {"enabled": False}})
    assert router.backends["a"].healthy


async def test_a_breaker_switched_off_closes(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "a")
    data = router_config([entries["a"]], circuit_breaker={"failure_threshold": 1})
    router = await start_router(nursery, data)
    breaker = router.backends["a"].breaker
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    await propose(router, {**data, "circuit_breaker": {"enabled": False}})
    assert breaker.state is BreakerState.CLOSED


async def test_rollback_restores_a_version(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "ab")
    data = router_config([entries["a"]])
    router = await start_router(nursery, data)
    original = router.config
    await propose(router, {**data, "backends": [entries["b"]],
                           "routing": {"strategy": "Random"}})
    outcome = await router.reconfigurer.rollback(1, who="tester")
    assert outcome.version == 3 and outcome.source == "rollback to v1"
    assert router.config == original and set(router.backends) == {"a"}
    with pytest.raises(LookupError):
        await router.reconfigurer.rollback(42, who="tester")


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace the file whole, as editors that save by renaming do."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


async def test_reload_reads_the_file_and_rejects_an_invalid_one_whole(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    _, entries = await mocks(nursery, "ab")
    path = tmp_path / "router.yaml"
    data = router_config([entries["a"]])
    write(path, data)
    router: RouterHandle = await nursery.start(serve, load_config(path))
    assert router.reconfigurer.config_file == str(path)
    write(path, {**data, "backends": [entries["a"], entries["b"]]})
    outcome = await router.reload()
    assert outcome.version == 2 and set(router.backends) == {"a", "b"}
    caplog.set_level(logging.INFO)
    write(path, {**data, "backends": [entries["a"], {**entries["b"], "weight": 0}]})
    with pytest.raises(ConfigError) as err:
        await router.reload()
    assert err.value.path == "backends[1].weight"
    assert router.reconfigurer.version == 2 and set(router.backends) == {"a", "b"}
    assert any("rejected, still on v2" in r.getMessage() and "backends[1].weight" in
               r.getMessage() for r in caplog.records)


async def test_reload_keeps_the_command_line_overrides(nursery: trio.Nursery,
                                                       tmp_path: Path) -> None:
    _, entries = await mocks(nursery, "a")
    path = tmp_path / "router.yaml"
    data = router_config([entries["a"]], logging={"level": "info"})
    write(path, data)

    def adjust(config: Any) -> Any:
        import msgspec
        return msgspec.structs.replace(config, logging=LoggingConfig(level="debug"))

    config = adjust(load_config(path))
    router: RouterHandle = await nursery.start(
        lambda task_status: serve(config, hooks=ReloadHooks(adjust=adjust),
                                  task_status=task_status))
    outcome = await router.reload()
    assert not outcome.changed and router.config.logging.level == "debug"


async def test_a_flood_of_reloads_reads_the_file_a_few_times(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, entries = await mocks(nursery, "a")
    path = tmp_path / "router.yaml"
    write(path, router_config([entries["a"]]))
    router: RouterHandle = await nursery.start(serve, load_config(path))
    reads: list[int] = []
    real = router.reconfigurer._read_file  # counting the reads

    def counting() -> Any:
        reads.append(1)
        return real()

    monkeypatch.setattr(router.reconfigurer, "_read_file", counting)
    async with trio.open_nursery() as flood:
        for _ in range(100):
            flood.start_soon(router.reload)
    assert 1 <= len(reads) <= 3


async def test_a_router_without_a_file_has_nothing_to_reload(nursery: trio.Nursery) -> None:
    _, entries = await mocks(nursery, "a")
    router = await start_router(nursery, router_config([entries["a"]]))
    with pytest.raises(ReloadUnavailable):
        await router.reload()


async def test_the_reload_hook_runs_on_every_reload(nursery: trio.Nursery,
                                                    tmp_path: Path) -> None:
    _, entries = await mocks(nursery, "a")
    path = tmp_path / "router.yaml"
    write(path, router_config([entries["a"]]))
    router: RouterHandle = await nursery.start(serve, load_config(path))
    calls: list[str] = []
    router.reconfigurer.add_reload_hook(lambda: calls.append("tls"))
    await router.reload()
    await router.reload()
    assert calls == ["tls", "tls"]


async def test_audit_lines_name_who_and_versions_but_no_secret(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    _, entries = await mocks(nursery, "a")
    data = router_config([{**entries["a"], "api_key": "sk-very-secret-1"}])
    router = await start_router(nursery, data)
    caplog.set_level(logging.INFO, logger="continuum.audit")
    await propose(router, {**data, "backends": [{**entries["a"], "api_key": "sk-very-secret-2"}],
                           "metrics": {"auth": {"enabled": True, "username": "u",
                                                "password": "pw-very-secret"}}},
                  source="PUT /admin/config")
    lines = [r.getMessage() for r in caplog.records if r.name == "continuum.audit"]
    assert lines == [
        'PUT /admin/config by tester: v1 -> v2 (metrics.auth.enabled: false -> true; '
        'metrics.auth.username: "" -> "u"; metrics.auth.password: "" -> "***"; '
        "backends.a.api_key: changed (secret))"]
    text = caplog.text
    assert "very-secret" not in text


# -- hot_reload: the file watched ------------------------------------------------------------


async def wait_for_version(router: RouterHandle, version: int, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while router.reconfigurer.version < version:
            await trio.sleep(0.02)


async def test_hot_reload_follows_the_file_however_it_is_written(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    _, entries = await mocks(nursery, "ab")
    path = tmp_path / "router.yaml"
    data = router_config([entries["a"]], hot_reload={"enabled": True, "debounce": "100ms"})
    write(path, data)
    router: RouterHandle = await nursery.start(serve, load_config(path))
    await trio.sleep(0.3)  # the watcher is up
    # an editor that writes a new file and renames it over the old one
    write(path, {**data, "backends": [entries["a"], entries["b"]]})
    await wait_for_version(router, 2)
    assert set(router.backends) == {"a", "b"}
    # written in place, in two steps: the half file is invalid, and rejected whole
    caplog.set_level(logging.INFO)
    text = json.dumps({**data, "routing": {"strategy": "Random"}})
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        await trio.sleep(0.5)
        f.write(text[len(text) // 2:])
    await wait_for_version(router, 3)
    assert router.config.routing.strategy == "Random" and set(router.backends) == {"a"}
    assert any("rejected, still on v2" in r.getMessage() for r in caplog.records)
    # switched off by the file itself: later changes are not followed
    write(path, {**data, "hot_reload": {"enabled": False}})
    await wait_for_version(router, 4)
    write(path, {**data, "hot_reload": {"enabled": False}, "routing": {"strategy": "Random"}})
    await trio.sleep(1.0)
    assert router.reconfigurer.version == 4


async def test_the_applied_hook_runs_after_each_version_is_in_force(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, entries = await mocks(nursery, "a")
    path = tmp_path / "router.yaml"
    data = router_config([entries["a"]])
    write(path, data)
    seen: list[int] = []
    router: RouterHandle = await nursery.start(
        lambda task_status: serve(load_config(path), task_status=task_status,
                                  hooks=ReloadHooks(applied=lambda: seen.append(
                                      router.reconfigurer.version))))
    await router.reload()  # nothing changed: nothing applied
    assert seen == []
    write(path, {**data, "routing": {"strategy": "LeastLatency"}})
    await router.reload()
    await propose(router, {**data, "request": {"timeout": 9}})
    await router.reconfigurer.rollback(1, who="tester")
    assert seen == [2, 3, 4]  # the version in force when it ran
