"""Log lines: client-given values cut and escaped; JSON lines that do not repeat themselves,
and which worker spoke."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio

from continuum.config import LoggingConfig
from continuum.observability.logs import (
    LOGGED_VALUE_MAX,
    JSONFormatter,
    configure_logging,
    loggable,
)
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


def access_record() -> logging.LogRecord:
    fields = {"request_id": "abc-1", "method": "POST", "path": "/v1/chat/completions",
              "status": 200, "model": "m", "backend": "b", "duration_ms": 1.5,
              "upstream_ms": 1.0, "attempts": 1, "stream": False, "bytes_out": 42}
    record = logging.LogRecord("continuum.access", logging.INFO, __file__, 1,
                               "%s %s %s status=%d model=%s backend=%s bytes_out=%d",
                               ("abc-1", "POST", "/v1/chat/completions", 200, "m", "b", 42),
                               None)
    record.access = fields
    return record


def test_json_access_line_keeps_fields_as_keys_not_in_msg() -> None:
    entry = json.loads(JSONFormatter().format(access_record()))
    assert entry["msg"] == "POST /v1/chat/completions 200"
    assert entry["request_id"] == "abc-1" and entry["bytes_out"] == 42
    assert "status=" not in entry["msg"] and "abc-1" not in entry["msg"]
    assert "worker" not in entry


def test_json_lines_of_a_worker_say_which() -> None:
    plain = logging.LogRecord("continuum.ingress", logging.WARNING, __file__, 1, "hello %s",
                              ("there",), None)
    entry = json.loads(JSONFormatter(worker=3).format(plain))
    assert entry["worker"] == 3 and entry["msg"] == "hello there"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging_names_the_worker(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        monkeypatch.setenv("CONTINUUM_WORKER", "1")
        configure_logging(LoggingConfig(format=fmt))
        line = root.handlers[0].format(access_record())
        assert ("worker 1 " in line) if fmt == "text" else json.loads(line)["worker"] == 1
        monkeypatch.delenv("CONTINUUM_WORKER")
        configure_logging(LoggingConfig(format=fmt))
        assert "worker" not in root.handlers[0].format(access_record())
    finally:
        root.handlers[:], root.level = saved, level
