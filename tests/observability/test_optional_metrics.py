"""``metrics.optional_metrics`` (request and answer body sizes) and the ``METRICS_*``
environment variables, as a scrape shows them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import yaml
from test_observability import CHAT, MODEL, Labels, chat_body, http, labels, scrape

from continuum import ConfigError, config_from_dict, load_config, serve
from helpers import router_config, start_mock, start_router

POST_CHAT = labels(method="POST", endpoint=CHAT)


def sizes(metrics: dict[str, dict[Labels, float]], name: str) -> tuple[float, float]:
    """(count, sum) of one size histogram's chat series; (0, 0) when it has none."""
    return (metrics.get(f"{name}_count", {}).get(POST_CHAT, 0.0),
            metrics.get(f"{name}_sum", {}).get(POST_CHAT, 0.0))


async def test_body_sizes_are_observed_only_when_asked(
    nursery: trio.Nursery, tmp_path: Path,
) -> None:
    _, url = await start_mock(nursery, (MODEL,))
    backend = {"name": "m", "url": url, "models": [MODEL]}
    path = tmp_path / "router.yaml"
    data = router_config([backend])
    path.write_text(json.dumps(data))
    router = await nursery.start(serve, load_config(path))
    with trio.fail_after(20):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body())
            assert response.status_code == 200
            off = await scrape(client)
            assert sizes(off, "http_request_size_bytes") == (0.0, 0.0)
            assert sizes(off, "http_response_size_bytes") == (0.0, 0.0)
            # Switched on live, request sizes only: exact sizes of what went each way.
            data["metrics"] = {"optional_metrics": {"enable_request_body_size": True}}
            path.write_text(json.dumps(data))
            await router.reload()
            sent = [json.dumps(chat_body("x" * n)).encode() for n in (10, 5000)]
            for body in sent:
                response = await client.post(CHAT, content=body,
                                             headers={"content-type": "application/json"})
                assert response.status_code == 200
            on = await scrape(client)
            assert sizes(on, "http_request_size_bytes") == (2.0, float(sum(map(len, sent))))
            assert on["http_request_size_bytes_bucket"][
                POST_CHAT | {("le", "1000.0")}] == 1.0
            assert sizes(on, "http_response_size_bytes") == (0.0, 0.0)
            # Both: the answer's size is the body the client read.
            data["metrics"] = {"optional_metrics": {"enable_request_body_size": True,
                                                    "enable_response_body_size": True}}
            path.write_text(json.dumps(data))
            await router.reload()
            response = await client.post(CHAT, json=chat_body())
            both = await scrape(client)
            assert sizes(both, "http_response_size_bytes") == (1.0, float(len(response.content)))
            assert sizes(both, "http_request_size_bytes")[0] == 3.0


async def test_streamed_answer_size_counts_every_byte_sent(nursery: trio.Nursery) -> None:
    _, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config(
        [{"name": "m", "url": url, "models": [MODEL]}],
        metrics={"optional_metrics": {"enable_response_body_size": True}},
    ))
    with trio.fail_after(20):
        async with http(router) as client:
            async with client.stream("POST", CHAT, json=chat_body(stream=True)) as response:
                assert response.status_code == 200
                received = b"".join([chunk async for chunk in response.aiter_raw()])
            metrics = await scrape(client)
    count, total = sizes(metrics, "http_response_size_bytes")
    assert count == 1.0 and total == float(len(received)) > 0


BASE = {"backends": [{"name": "m", "type": "mock"}]}


def test_environment_overrides_the_metrics_section() -> None:
    data = {**BASE, "metrics": {"enabled": True, "endpoint": "/m",
                                "optional_metrics": {"enable_response_body_size": False}}}
    config = config_from_dict(data, env={"METRICS_ENABLED": "off",
                                         "METRICS_ENDPOINT": "/prometheus",
                                         "METRICS_ENABLE_BODY_SIZE": "TRUE"})
    assert not config.metrics.enabled and config.metrics.endpoint == "/prometheus"
    optional = config.metrics.optional_metrics
    assert optional.enable_request_body_size and optional.enable_response_body_size
    assert data["metrics"]["endpoint"] == "/m"  # the document itself is left alone
    assert config_from_dict(BASE, env={}).metrics.optional_metrics.enable_request_body_size \
        is False


@pytest.mark.parametrize(("name", "value", "says"), [
    ("METRICS_ENABLED", "maybe", "environment variable METRICS_ENABLED: expected true or false"),
    ("METRICS_ENABLE_BODY_SIZE", "", "METRICS_ENABLE_BODY_SIZE: expected true or false"),
    ("METRICS_ENDPOINT", "prom", "metrics.endpoint: expected a path starting with '/', got a "
                                 "string from ${METRICS_ENDPOINT} (value hidden)"),
])
def test_bad_environment_values_name_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(BASE, source="c.yaml", env={name: value})
    assert says in str(err.value) and (not value or value not in str(err.value).split(": ")[-1])


def test_check_shows_what_the_environment_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    env = {"METRICS_ENDPOINT": "/prom", "METRICS_ENABLE_BODY_SIZE": "1", "PATH": "/usr/bin"}
    done = subprocess.run([sys.executable, "-m", "continuum", "check", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})
    assert done.returncode == 0, done.stderr
    metrics = yaml.safe_load(done.stdout)["metrics"]
    assert metrics["endpoint"] == "/prom"
    assert metrics["optional_metrics"] == {"enable_request_body_size": True,
                                           "enable_response_body_size": True}


async def test_a_router_serves_metrics_where_the_environment_says(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METRICS_ENDPOINT", "/prom")
    _, url = await start_mock(nursery, (MODEL,))
    router = await start_router(nursery, router_config([{"name": "m", "url": url,
                                                         "models": [MODEL]}]))
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/prom")).status_code == 200
