"""The harness itself: a router process, a scripted upstream behind it, and the probes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from harness import (
    PROBE_MODEL,
    RouterProcess,
    ScriptedUpstream,
    ThreadedUpstream,
    UpstreamConn,
    UpstreamRequest,
    Usage,
    assert_bounded,
    chat_request,
    json_answer,
    one_request,
    router_config,
    served_during,
)


async def _teapot(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(json_answer({"error": {"message": "teapot"}}, 418))


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ThreadedUpstream(ScriptedUpstream({"teapot": _teapot})) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def router(upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProcess]:
    config = router_config([{"name": "scripted", "url": upstream.url,
                             "models": ["scripted", "teapot"]}])
    with RouterProcess(config, tmp_path_factory.mktemp("harness")) as process:
        yield process


async def test_router_process_answers_and_reports_its_resources(router: RouterProcess) -> None:
    before = Usage.of(router)
    assert before.rss_kib > 1024 and before.fds > 3
    response = await one_request(router.address, chat_request(PROBE_MODEL))
    assert response is not None and response.status == 200, response
    await assert_bounded(router, before)


async def test_scripted_upstream_answers_through_the_router(
    router: RouterProcess, upstream: ScriptedUpstream
) -> None:
    response = await one_request(router.address, chat_request("scripted"))
    assert response is not None and response.status == 200, response
    assert response.json()["model"] == "scripted"
    response = await one_request(router.address, chat_request("teapot"))
    assert response is not None and response.status == 418, response
    assert upstream.requests[-1].model == "teapot"


async def test_served_during_probes_while_the_body_runs(router: RouterProcess) -> None:
    async with served_during(router.address) as report:
        await trio.sleep(0.5)
    assert len(report.during()) >= 4
    assert report.slowest() < 3.0


async def test_served_during_fails_when_nothing_answers(tmp_path: Path) -> None:
    """A probe against a port nobody serves is reported, not passed."""
    dead = RouterProcess(router_config(), tmp_path)
    dead.port = 1  # nothing listens there
    with pytest.raises(AssertionError, match="not served promptly"):
        async with served_during(dead.address, bound=0.5, min_rounds=1):
            await trio.sleep(0.1)
