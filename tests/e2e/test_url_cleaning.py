"""A backend URL with credentials and a query, through a real router: the startup summary
in the log shows only scheme, host, port and path; ``/admin/health`` shows it without user
info and with the query's key masked; ``/admin/config`` shows it with both secrets masked,
and that masked document sent back keeps them."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio

from helpers import router_config, start_mock, start_router

TOKEN = "admin-token-url-cleaning"
PASSWORD = "url-pass-0123456789"
QUERY_KEY = "query-key-0123456789"


async def test_each_audience_sees_its_cleaned_url(nursery: trio.Nursery,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    _, url = await start_mock(nursery, ("m",), name="a")
    host = url.removeprefix("http://")
    dirty = f"http://user:{PASSWORD}@{host}/v1?key={QUERY_KEY}"
    with caplog.at_level(logging.INFO, logger="continuum"), trio.fail_after(20):
        router = await start_router(nursery, router_config(
            [{"name": "a", "url": dirty, "models": ["m"]}],
            admin={"auth": {"method": "bearer_token", "token": TOKEN}}))
        async with httpx.AsyncClient(base_url=router.url, timeout=10,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as admin:
            health = (await admin.get("/admin/health")).json()
            config = (await admin.get("/admin/config")).json()
            put = await admin.put("/admin/config", json=config["config"])
            assert put.status_code == 200 and not put.json()["changed"], put.text
            assert router.config.backends[0].url == dirty  # the masks stood for the secrets
    summary = "\n".join(r.getMessage() for r in caplog.records if "backend a" in r.getMessage())
    assert f"http://{host}/v1:" in summary
    assert PASSWORD not in caplog.text and QUERY_KEY not in summary
    shown = [b["url"] for b in health["backends"] if b["name"] == "a"]
    assert shown == [f"http://{host}/v1?key=***"]
    assert PASSWORD not in str(health) and QUERY_KEY not in str(health)
    backends = config["config"]["backends"] if "config" in config else config["backends"]
    assert [b["url"] for b in backends] == [f"http://user:***@{host}/v1?key=***"]
    assert QUERY_KEY not in str(config)
