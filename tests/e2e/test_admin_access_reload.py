"""Client keys and limits change live (``PATCH /admin/config``; a file reload does the same):
a key's ``max_concurrent`` raised and lowered while requests it admitted are in flight,
keys switched on and off, and client keys with the ``admin`` scope on the admin API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml

from continuum import RouterHandle, load_config, serve
from continuum.config import MockConfig
from helpers import router_config, start_mock, start_router

CHAT = "/v1/chat/completions"
KEY = "sk-reload-key-0123456789"
OTHER = "sk-reload-other-0123456789"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {KEY}"}


async def router_with(nursery: trio.Nursery, latency: float = 0.0, **sections: Any
                      ) -> RouterHandle:
    _, url = await start_mock(nursery, ("m",), MockConfig(latency=latency), name="b0")
    return await start_router(nursery, router_config(
        [{"name": "b0", "url": url, "models": ["m"]}], **sections))


async def in_flight(router: RouterHandle, count: int) -> None:
    with trio.fail_after(10):
        while router.backends["b0"].in_flight != count:
            await trio.sleep(0.01)


def keys(*entries: dict[str, Any], **section: Any) -> dict[str, Any]:
    return {"api_keys": {"api_keys": list(entries), **section}}


async def test_a_keys_concurrency_limit_changes_under_load(nursery: trio.Nursery) -> None:
    router = await router_with(nursery, latency=3.0,
                               api_keys={"api_keys": [{"key": KEY, "id": "k",
                                                       "max_concurrent": 1}]})
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=router.url, timeout=30.0) as client, \
            trio.open_nursery() as load:

        async def one() -> None:
            statuses.append((await client.post(CHAT, json=BODY, headers=AUTH)).status_code)

        load.start_soon(one)
        await in_flight(router, 1)
        assert (await client.post(CHAT, json=BODY, headers=AUTH)).status_code == 429
        r = await client.patch("/admin/config", json=keys(
            {"key": KEY, "id": "k", "max_concurrent": 3}))
        assert r.status_code == 200 and r.json()["changed"], r.text
        assert "api_keys.api_keys" in [c["path"] for c in r.json()["changes"]]
        assert not r.json()["needs_restart"]
        load.start_soon(one)
        load.start_soon(one)
        await in_flight(router, 3)  # the request admitted before counts against the new limit
        refused = await client.post(CHAT, json=BODY, headers=AUTH)
        assert refused.status_code == 429 and "at most 3 in flight" in refused.text
        r = await client.patch("/admin/config", json=keys(
            {"key": KEY, "id": "k", "max_concurrent": 1}))
        assert r.status_code == 200, r.text
        refused = await client.post(CHAT, json=BODY, headers=AUTH)
        assert refused.status_code == 429 and "at most 1 in flight" in refused.text
    assert statuses == [200, 200, 200]  # every request admitted before a reload finished
    async with httpx.AsyncClient(base_url=router.url, timeout=30.0) as client:
        # their leases went back: the lowered limit admits one again
        assert (await client.post(CHAT, json=BODY, headers=AUTH)).status_code == 200


async def test_keys_and_limits_switched_on_and_off_live(nursery: trio.Nursery) -> None:
    router = await router_with(nursery)  # no keys, no limits: nothing checked
    async with httpx.AsyncClient(base_url=router.url, timeout=30.0) as client:
        plain = await client.post(CHAT, json=BODY)
        assert plain.status_code == 200 and "x-ratelimit-limit-requests" not in plain.headers
        r = await client.patch("/admin/config", json={
            **keys({"key": KEY, "id": "k", "rate_limit": 2}, mode="blocking"),
            "rate_limiting": {"limits": {"global": {"requests_per_second": 1000}}}})
        assert r.status_code == 200 and not r.json()["needs_restart"], r.text
        assert (await client.post(CHAT, json=BODY)).status_code == 401
        ok = await client.post(CHAT, json=BODY, headers=AUTH)
        assert ok.status_code == 200 and "x-ratelimit-limit-requests" in ok.headers
        # storage is not changed live: reported, and the counts stay in memory
        r = await client.patch("/admin/config", json={"rate_limiting": {"storage": "redis"}})
        assert r.json()["needs_restart"] == ["rate_limiting.storage"], r.text
        assert router.config.rate_limiting.storage == "memory"
        r = await client.patch("/admin/config", json={"api_keys": None,
                                                      "rate_limiting": None})
        assert r.status_code == 200, r.text
        assert not router.config.api_keys.api_keys
        plain = await client.post(CHAT, json=BODY)
        assert plain.status_code == 200 and "x-ratelimit-limit-requests" not in plain.headers


async def test_client_keys_with_the_admin_scope_on_the_admin_api(nursery: trio.Nursery) -> None:
    router = await router_with(
        nursery, admin={"auth": {"method": "api_key", "token": "admin-token-4242"}},
        api_keys={"api_keys": [{"key": KEY, "id": "ops", "scopes": ["admin"]},
                               {"key": OTHER, "id": "reader", "scopes": ["read"]}]})
    async with httpx.AsyncClient(base_url=router.url, timeout=30.0) as client:
        for key, status in ((KEY, 200), (OTHER, 401), ("sk-unknown-0123456789", 401),
                            ("admin-token-4242", 200)):
            r = await client.get("/admin/status", headers={"x-api-key": key})
            assert r.status_code == status, (key, r.text)
        # the key's scope is read live: the reader becomes an admin, the ops key is disabled
        r = await client.patch("/admin/config", headers={"x-api-key": KEY}, json=keys(
            {"key": KEY, "id": "ops", "scopes": ["admin"], "enabled": False},
            {"key": OTHER, "id": "reader", "scopes": ["read", "admin"]}))
        assert r.status_code == 200, r.text
        history = (await client.get("/admin/config/history",
                                    headers={"x-api-key": OTHER})).json()
        assert history["versions"][0]["who"].startswith("api key ops from ")
        assert (await client.get("/admin/status", headers={"x-api-key": KEY})
                ).status_code == 401
        # admin scope is not needed for the admin token itself, and never on a bearer header
        r = await client.get("/admin/status", headers={"authorization": f"Bearer {OTHER}"})
        assert r.status_code == 401


async def test_a_relative_keys_file_is_read_again_with_every_change(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, url = await start_mock(nursery, ("m",), name="b0")
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([{"key": KEY, "id": "k"}]))
    path = tmp_path / "router.yaml"  # the keys file is named relative to it
    path.write_text(json.dumps(router_config(
        [{"name": "b0", "url": url, "models": ["m"]}],
        api_keys={"mode": "blocking", "api_keys_file": "keys.yaml"})))
    router: RouterHandle = await nursery.start(serve, load_config(path))
    other = {"authorization": f"Bearer {OTHER}"}
    async with httpx.AsyncClient(base_url=router.url, timeout=30.0) as client:
        assert (await client.post(CHAT, json=BODY, headers=AUTH)).status_code == 200
        keys_file.write_text(yaml.safe_dump([{"key": OTHER, "id": "other"}]))
        # an admin change makes a whole config: the keys file is read again, from the
        # config file's directory
        r = await client.patch("/admin/config", json={"routing": {"strategy": "Random"}})
        assert r.status_code == 200, r.text
        assert "api_keys.api_keys_file" in [c["path"] for c in r.json()["changes"]]
        assert (await client.post(CHAT, json=BODY, headers=AUTH)).status_code == 401
        assert (await client.post(CHAT, json=BODY, headers=other)).status_code == 200
        keys_file.write_text(yaml.safe_dump([{"key": KEY, "id": "k"}]))
        r = await client.post("/admin/config/reload")
        assert r.status_code == 200 and r.json()["changed"], r.text
        assert (await client.post(CHAT, json=BODY, headers=AUTH)).status_code == 200
        assert (await client.post(CHAT, json=BODY, headers=other)).status_code == 401
