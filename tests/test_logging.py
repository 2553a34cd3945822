"""Client-given values in log lines: cut to a bounded length and escaped."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio

from continuum._logging import LOGGED_VALUE_MAX, JSONFormatter, loggable
from helpers import router_config, start_mock, start_router


def test_loggable_cuts_and_escapes() -> None:
    assert loggable("gpt-4o") == "gpt-4o"
    long = "m" * (LOGGED_VALUE_MAX + 1000)
    cut = loggable(long)
    assert cut.startswith("m" * LOGGED_VALUE_MAX)
    assert cut.endswith("...(+1000 chars)") and len(cut) < LOGGED_VALUE_MAX + 32
    assert loggable("a\r\nb") == repr("a\r\nb")
    assert len(loggable("\n" * 10**6)) < 4 * LOGGED_VALUE_MAX + 64


async def test_a_huge_model_name_does_not_make_a_huge_access_line(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="continuum.access")
    _mock, url = await start_mock(nursery, ("m",))
    router = await start_router(nursery, router_config([{"name": "a", "url": url,
                                                         "models": ["m"]}]))
    model = "x" * 1_000_000
    path = "/v1/" + "p" * 20_000
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        unknown = await client.post("/v1/chat/completions", json={"model": model, "messages": []})
        assert unknown.status_code == 404
        assert (await client.post(path, json={"model": "m"})).status_code == 404
    records = [r for r in caplog.records if r.name == "continuum.access"]
    assert len(records) == 2
    for record in records:
        for line in (record.getMessage(), JSONFormatter().format(record)):
            assert len(line) < 2000, line[:300]
    assert "(+999744 chars)" in records[0].getMessage()
    assert json.loads(JSONFormatter().format(records[1]))["path"].endswith("chars)")
