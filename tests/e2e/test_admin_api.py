"""The admin API through a real router and httpx: credentials, the config endpoints, the
backend endpoints, a separate admin listener, and no secret in any answer."""

from __future__ import annotations

import base64
import json
import logging
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
import yaml

from continuum import RouterHandle, load_config, serve
from continuum.actors.admin import label, peer_of
from helpers import router_config, start_mock, start_router

MODEL = "m"
CHAT = "/v1/chat/completions"
TOKEN = "admin-token-0123456789"
SECRETS = ("sk-backend-secret-a", TOKEN, "metrics-pw-secret", "client-key-secret")


async def two_mocks(nursery: trio.Nursery) -> dict[str, dict[str, Any]]:
    entries = {}
    for name in "abc":
        _, url = await start_mock(nursery, (MODEL,), name=name)
        entries[name] = {"name": name, "url": url, "models": [MODEL]}
    return entries


def config(entries: dict[str, dict[str, Any]], **sections: Any) -> dict[str, Any]:
    data = router_config(
        [{**entries["a"], "api_key": "sk-backend-secret-a"}, entries["b"]],
        admin={"auth": {"method": "bearer_token", "token": TOKEN}},
        metrics={"auth": {"enabled": True, "username": "prom", "password": "metrics-pw-secret"}},
        api_keys={"api_keys": [{"key": "client-key-secret", "id": "k1"}]},
    )
    data.update(sections)
    return data


def admin(router: RouterHandle, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=router.url, headers=headers, timeout=20.0)


def no_secret(response: httpx.Response) -> httpx.Response:
    for secret in SECRETS:
        assert secret not in response.text, (secret, response.request.url)
        assert all(secret not in v for v in response.headers.values())
    return response


@pytest.fixture
async def router(nursery: trio.Nursery) -> RouterHandle:
    entries = await two_mocks(nursery)
    handle = await start_router(nursery, config(entries))
    handle.entries = entries  # type: ignore[attr-defined]
    return handle


# -- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/config", "/admin/backends", "/admin/nope",
                                  "/admin/config/rollback/1"])
async def test_without_valid_credentials_every_admin_path_is_401(
    router: RouterHandle, path: str
) -> None:
    for token in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
        async with admin(router, token) as client:
            for method in ("GET", "POST", "PUT"):
                r = no_secret(await client.request(method, path, json={}))
                assert r.status_code == 401, (token, method, path)
                assert r.headers["www-authenticate"] == 'Bearer realm="admin"'
                assert r.json()["error"]["code"] == "invalid_credentials"
    async with admin(router) as client:
        assert (await client.get("/admin/config")).status_code == 200
        assert (await client.get("/admin/nope")).status_code == 404
    # /admin/health stays open
    async with admin(router, None) as client:
        assert (await client.get("/admin/health")).status_code == 200


async def test_basic_and_api_key_methods(nursery: trio.Nursery) -> None:
    entries = await two_mocks(nursery)
    router = await start_router(nursery, config(entries, admin={"auth": {
        "method": "basic", "username": "ops", "password": "pw-basic-secret"}}))
    async with httpx.AsyncClient(base_url=router.url) as client:
        assert (await client.get("/admin/status", auth=("ops", "pw-basic-secret"))
                ).status_code == 200
        r = await client.get("/admin/status", auth=("ops", "nope"))
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="admin"'
        # switch to api_key through the API itself: credentials change live
        r = await client.patch("/admin/config", auth=("ops", "pw-basic-secret"), json={
            "admin": {"auth": {"method": "api_key", "token": "key-secret-77"}}})
        assert r.status_code == 200 and "key-secret-77" not in r.text
        assert (await client.get("/admin/status", auth=("ops", "pw-basic-secret"))
                ).status_code == 401
        assert (await client.get("/admin/status", headers={"x-api-key": "key-secret-77"})
                ).status_code == 200
        # the key store's seam: a client key with the admin scope
        router.admin.set_key_check(lambda key: "k-admin" if key == b"sk-scoped" else None)
        assert (await client.get("/admin/status", headers={"x-api-key": "sk-scoped"})
                ).status_code == 200


async def test_no_auth_admits_loopback_clients_only(nursery: trio.Nursery) -> None:
    entries = await two_mocks(nursery)
    router = await start_router(nursery, router_config([entries["a"]]))
    async with httpx.AsyncClient(base_url=router.url) as client:
        assert (await client.get("/admin/config")).status_code == 200
    api = router.admin

    def conn(peer: Any) -> Any:
        return SimpleNamespace(peer_address=lambda: peer)

    assert peer_of(conn(("10.1.2.3", 5000))) == ("10.1.2.3:5000", False)
    assert peer_of(conn(("::1", 5000, 0, 0))) == ("[::1]:5000", True)
    assert peer_of(conn("")) == ("unix socket", True)
    with pytest.raises(Exception, match="answers only local clients") as err:
        api._authenticate(SimpleNamespace(header=lambda name: None),  # type: ignore[arg-type]
                          conn(("10.1.2.3", 5000)))
    assert getattr(err.value, "status", None) == 403


def test_metrics_labels_of_admin_paths_stay_bounded() -> None:
    assert label("/admin/backends/x") == "/admin/backends/{name}"
    assert label("/admin/backends/x/drain") == "/admin/backends/{name}/drain"
    assert label("/admin/config/rollback/17") == "/admin/config/rollback/{version}"
    assert label("/admin/config") == "/admin/config"
    assert label("/admin/" + "x" * 1000) == "other"
    assert label("/admin/backends/x/y/z") == "other"


# -- the config endpoints -------------------------------------------------------------------


async def test_get_config_is_masked_and_sections_can_be_asked_for(router: RouterHandle) -> None:
    async with admin(router) as client:
        r = no_secret(await client.get("/admin/config"))
        body = r.json()
        assert body["version"] == 1 and body["source"] == "start"
        assert body["config"]["backends"][0]["api_key"] == "***"
        assert body["config"]["admin"]["auth"]["token"] == "***"
        assert (await client.get("/admin/config/full")).json()["config"] == body["config"]
        r = await client.get("/admin/config", params={"section": "routing"})
        assert list(r.json()["config"]) == ["routing"]
        r = await client.get("/admin/config", params={"section": "rooting"})
        assert r.status_code == 404 and "routing" in r.json()["error"]["message"]
        r = await client.delete("/admin/config")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, PUT, PATCH"


async def test_put_validates_like_a_file_and_keeps_masked_secrets(router: RouterHandle) -> None:
    async with admin(router) as client:
        document = (await client.get("/admin/config")).json()["config"]
        document["routing"]["strategy"] = "LeastLatency"
        r = no_secret(await client.put("/admin/config", params={"dry_run": "true"},
                                       json=document))
        assert r.status_code == 200 and r.json()["dry_run"] and r.json()["changed"]
        assert [c["path"] for c in r.json()["changes"]] == ["routing.strategy"]
        assert router.config.routing.strategy == "RoundRobin"
        r = no_secret(await client.put("/admin/config", json=document))
        assert r.json()["version"] == 2 and router.config.routing.strategy == "LeastLatency"
        # the secrets sent back as *** kept their values
        assert router.config.backends[0].api_key == "sk-backend-secret-a"
        assert router.config.admin.auth.token == TOKEN
        # invalid: the message a file would get, with its key path; nothing applied
        document["backends"][1]["weight"] = 0
        r = no_secret(await client.put("/admin/config", json=document))
        error = r.json()["error"]
        assert r.status_code == 422 and error["code"] == "invalid_config"
        assert error["param"] == "backends[1].weight"
        assert error["message"] == ("PUT /admin/config: backends[1].weight: expected an "
                                    "integer >= 1, got 0")
        assert router.reconfigurer.version == 2
        # YAML works too
        document["backends"][1]["weight"] = 2
        r = await client.put("/admin/config", content=yaml.safe_dump(document),
                             headers={"content-type": "application/yaml"})
        assert r.status_code == 200 and router.backends["b"].weight == 2


async def test_patch_merges_sections(router: RouterHandle) -> None:
    async with admin(router) as client:
        r = no_secret(await client.patch("/admin/config", json={
            "selection_strategy": "Random", "retry": {"max_attempts": 4},
            "model_aliases": {"gpt-x": MODEL}}))
        assert r.status_code == 200, r.text
        assert router.config.routing.strategy == "Random"
        assert router.config.max_retries == 3
        r = await client.post(CHAT, json={"model": "gpt-x",
                                          "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        assert r.headers["x-continuum-model"] == MODEL
        # null removes a key: its default applies again
        r = await client.patch("/admin/config", json={"retry": {"max_attempts": None}})
        assert router.config.retry.max_attempts is None and r.json()["version"] == 3
        r = await client.patch("/admin/config", json={"request": {"timeout": "soon"}})
        assert r.status_code == 422 and r.json()["error"]["param"] == "request.timeout"
        r = await client.patch("/admin/config", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_document"


async def test_history_rollback_and_export(router: RouterHandle) -> None:
    async with admin(router) as client:
        await client.patch("/admin/config", json={"routing": {"strategy": "Random"}})
        await client.delete("/admin/backends/b")
        history = no_secret(await client.get("/admin/config/history")).json()
        assert history["version"] == 3
        assert [(v["version"], v["source"]) for v in history["versions"]] == [
            (3, "DELETE /admin/backends/b"), (2, "PATCH /admin/config"), (1, "start")]
        assert history["versions"][1]["summary"] == 'routing.strategy: "RoundRobin" -> "Random"'
        assert history["versions"][0]["who"].startswith("bearer token from 127.0.0.1:")
        r = no_secret(await client.post("/admin/config/rollback/1", params={"dry_run": "1"}))
        assert r.json()["dry_run"] and router.reconfigurer.version == 3
        r = no_secret(await client.post("/admin/config/rollback/v1"))
        assert r.json()["version"] == 4 and r.json()["source"] == "rollback to v1"
        assert set(router.backends) == {"a", "b"}
        assert router.config.routing.strategy == "RoundRobin"
        assert (await client.post("/admin/config/rollback/99")).status_code == 404
        assert (await client.post("/admin/config/rollback/x")).status_code == 400
        exported = no_secret(await client.get("/admin/config/export"))
        assert exported.headers["content-type"].startswith("application/yaml")
        assert yaml.safe_load(exported.text)["backends"][0]["api_key"] == "***"
        old = no_secret(await client.get("/admin/config/export",
                                         params={"format": "json", "version": "2"}))
        assert old.json()["routing"]["strategy"] == "Random"
        # an export sent back as it is changes nothing
        r = await client.put("/admin/config", content=exported.content,
                             headers={"content-type": "application/yaml"})
        assert r.status_code == 200 and not r.json()["changed"]


async def test_reload_endpoint(nursery: trio.Nursery, tmp_path: Path) -> None:
    entries = await two_mocks(nursery)
    path = tmp_path / "router.yaml"
    data = config(entries)
    path.write_text(json.dumps(data))
    router: RouterHandle = await nursery.start(serve, load_config(path))
    async with admin(router) as client:
        path.write_text(json.dumps({**data, "routing": {"strategy": "Random"}}))
        r = no_secret(await client.post("/admin/config/reload"))
        assert r.json()["version"] == 2 and r.json()["source"] == "POST /admin/config/reload"
        path.write_text(json.dumps({**data, "routing": {"strategy": "Fastest"}}))
        r = no_secret(await client.post("/admin/config/reload"))
        assert r.status_code == 422 and r.json()["error"]["param"] == "routing.strategy"
        assert router.config.routing.strategy == "Random"
    other = await start_router(nursery, data)
    async with admin(other) as client:
        r = await client.post("/admin/config/reload")
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_config_file"


# -- the backend endpoints ------------------------------------------------------------------


async def test_backends_list_add_patch_drain_delete(router: RouterHandle,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="continuum.audit")
    caplog.set_level(logging.INFO, logger="continuum.access")
    entries = router.entries  # type: ignore[attr-defined]
    async with admin(router) as client:
        listed = no_secret(await client.get("/admin/backends")).json()["backends"]
        assert [(b["name"], b["state"]) for b in listed] == [("a", "active"), ("b", "active")]
        first = listed[0]
        assert {"health", "circuit_breaker", "in_flight", "latency_ms", "pool", "models"} <= (
            set(first) | {"health"})
        assert first["status"] == "healthy" and first["models"] == [MODEL]
        r = no_secret(await client.post("/admin/backends", json=entries["c"]))
        assert r.status_code == 201 and r.json()["summary"] == "backends.c: added"
        assert set(router.backends) == {"a", "b", "c"}
        assert (await client.post("/admin/backends", json=entries["c"])).status_code == 409
        r = await client.post("/admin/backends", json={"name": "d", "url": "ftp://x"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "backends[3].url"
        r = no_secret(await client.patch("/admin/backends/c", json={"weight": 4,
                                                                     "models": [MODEL, "m2"]}))
        assert r.status_code == 200 and router.backends["c"].weight == 4
        assert router.router.candidates("m2") == (router.backends["c"],)
        r = await client.patch("/admin/backends/c", json={"name": "e"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "backends[2].name"
        assert (await client.patch("/admin/backends/zz", json={})).status_code == 404
        r = no_secret(await client.post("/admin/backends/c/drain", params={"wait": "5"}))
        assert r.status_code == 200 and r.json()["state"] == "disabled", r.text
        assert set(router.backends) == {"a", "b"}
        one = (await client.get("/admin/backends/c")).json()
        assert one["state"] == "disabled" and not one["enabled"]
        r = await client.patch("/admin/backends/c", json={"enabled": True})
        assert "c" in router.backends
        r = no_secret(await client.delete("/admin/backends/c", params={"wait": "5"}))
        assert r.status_code == 200 and r.json()["state"] == "removed"
        assert [b.name for b in router.config.backends] == ["a", "b"]
        await client.delete("/admin/backends/b")
        r = await client.delete("/admin/backends/a")
        assert r.status_code == 422 and r.json()["error"]["param"] == "backends"
        assert (await client.post("/admin/backends/a/drain", params={"wait": "-1"})
                ).status_code == 400
    audit = [r.getMessage() for r in caplog.records if r.name == "continuum.audit"]
    assert audit[0].startswith("POST /admin/backends by bearer token from 127.0.0.1:")
    assert audit[0].endswith(": v1 -> v2 (backends.c: added)")
    assert any("POST /admin/backends/c/drain by bearer token" in line and
               "backends.c.enabled: true -> false" in line for line in audit)
    assert not any(s in caplog.text for s in SECRETS)
    access = [r.getMessage() for r in caplog.records if r.name == "continuum.access"]
    assert any(" POST /admin/backends status=201 " in line for line in access), access
    assert any(" DELETE /admin/backends/a status=422 " in line for line in access)


async def test_a_drained_backend_finishes_its_streams(nursery: trio.Nursery) -> None:
    upstream, url = await start_mock(nursery, (MODEL,), name="slow")
    upstream.tokens_per_second = 10.0
    entries = await two_mocks(nursery)
    router = await start_router(nursery, config(
        entries, backends=[{"name": "slow", "url": url, "models": [MODEL]}, entries["b"]],
        routing={"strategy": "WeightedRoundRobin", "weights": {"slow": 100}}))
    texts: list[str] = []
    async with admin(router) as client:

        async def stream() -> None:
            body = {"model": MODEL, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}
            async with client.stream("POST", CHAT, json=body) as r:
                assert r.headers["x-continuum-backend"] == "slow"
                texts.append("".join([t async for t in r.aiter_text()]))

        async with trio.open_nursery() as n:
            n.start_soon(stream)
            with trio.fail_after(10):
                while upstream.active_streams == 0:
                    await trio.sleep(0.01)
            r = await client.post("/admin/backends/slow/drain")
            assert r.status_code == 202 and r.json()["state"] == "draining"
            assert r.json()["in_flight"] == 1
            listed = (await client.get("/admin/backends")).json()["backends"]
            assert [(b["name"], b["state"]) for b in listed] == [
                ("slow", "disabled"), ("slow", "draining"), ("b", "active")]
            r = await client.post("/admin/backends/slow/drain", params={"wait": "20"})
            assert r.status_code == 200 and r.json()["state"] == "disabled"
    assert texts and texts[0].rstrip().endswith("data: [DONE]")


# -- a separate admin listener ----------------------------------------------------------------


async def test_admin_bind_address_moves_the_api_off_the_main_port(nursery: trio.Nursery
                                                                   ) -> None:
    entries = await two_mocks(nursery)
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    router = await start_router(nursery, config(entries, admin={
        "bind_address": f"127.0.0.1:{port}", "auth": {"method": "bearer_token",
                                                       "token": TOKEN}}))
    async with admin(router) as client:
        assert (await client.get("/admin/config")).status_code == 404
        assert (await client.get("/admin/health")).status_code == 200
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
        assert (await client.get("/admin/config")).json()["version"] == 1
        assert (await client.get("/admin/health")).status_code == 200
        assert (await client.post(CHAT, json={})).status_code == 404
        r = await client.get("/admin/config", headers={"authorization": "Bearer no"})
        assert r.status_code == 401


async def test_status(router: RouterHandle) -> None:
    async with admin(router) as client:
        await client.patch("/admin/config", json={"server": {"workers": 4}})
        body = no_secret(await client.get("/admin/status")).json()
        assert body["version"] == 1 and body["status"] == "healthy"
        assert body["pending_restart"] == ["server.workers"]
        assert body["backends"] == {"in_service": 2, "healthy": 2, "draining": 0,
                                    "disabled": 0}
        assert body["last_change"]["needs_restart"] == ["server.workers"]


def test_basic_header_helper_is_what_httpx_sends() -> None:
    token = base64.b64encode(b"ops:pw").decode()
    assert httpx.BasicAuth("ops", "pw")._auth_header == f"Basic {token}"


async def test_toml_export_and_documents(router: RouterHandle) -> None:
    async with admin(router) as client:
        exported = no_secret(await client.get("/admin/config/export",
                                              params={"format": "toml"}))
        assert exported.headers["content-type"].startswith("application/toml")
        document = tomllib.loads(exported.text)
        assert document["backends"][0]["api_key"] == "***"
        # sent back as TOML, it changes nothing (its *** restored, its absent nulls defaults)
        r = await client.put("/admin/config", content=exported.content,
                             headers={"content-type": "application/toml"})
        assert r.status_code == 200 and not r.json()["changed"], r.text
        r = await client.patch("/admin/config", content=b'[routing]\nstrategy = "Random"\n',
                               headers={"content-type": "application/toml"})
        assert r.status_code == 200 and router.config.routing.strategy == "Random"
        r = await client.patch("/admin/config", content=b"[routing\n",
                               headers={"content-type": "application/toml"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_document"
        assert "invalid TOML" in r.json()["error"]["message"]
        r = await client.get("/admin/config/export", params={"format": "xml"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "format"
