"""Hostile model lists: a Gemini backend whose ``models.list`` says another page follows
forever. Discovery reads a bounded number of pages each round (and says so in the log), the
router keeps serving meanwhile, and its memory stays bounded however often it asks again."""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from harness import (
    RouterProcess,
    ScriptedUpstream,
    ThreadedUpstream,
    UpstreamConn,
    UpstreamRequest,
    Usage,
    assert_bounded,
    default_answer,
    json_answer,
    router_config,
    served_during,
)

#: Pages discovery reads at most per round (``actors.catalog._MAX_PAGES``).
MAX_PAGES = 20
PER_PAGE = 50


def endless_pages() -> tuple[ScriptedUpstream, list[str]]:
    """An upstream whose model list never ends; the targets it was asked for."""
    counter = itertools.count()
    asked: list[str] = []

    async def answer(request: UpstreamRequest, conn: UpstreamConn) -> None:
        if not request.target.startswith("/v1beta/models"):
            await default_answer(request, conn)
            return
        asked.append(request.target)
        page = next(counter)
        await conn.send(json_answer({
            "models": [{"name": f"models/endless-{page}-{n}",
                        "supportedGenerationMethods": ["generateContent"]}
                       for n in range(PER_PAGE)],
            "nextPageToken": f"page-{page + 1}",
        }))

    return ScriptedUpstream({}, default=answer), asked


@pytest.fixture(scope="module")
def endless() -> Iterator[tuple[ScriptedUpstream, list[str]]]:
    upstream, asked = endless_pages()
    with ThreadedUpstream(upstream):
        yield upstream, asked


def listed(router: RouterProcess) -> list[str]:
    with urllib.request.urlopen(f"{router.url}/v1/models", timeout=10) as reply:
        return [m["id"] for m in json.load(reply)["data"]]


async def test_a_model_list_that_never_ends(
    endless: tuple[ScriptedUpstream, list[str]], tmp_path: Path
) -> None:
    upstream, asked = endless
    config = router_config(
        [{"name": "gem", "type": "gemini", "url": upstream.url, "api_key": "k"}],
        cache={"model_cache_ttl": "1s"})
    with RouterProcess(config, tmp_path) as router:
        before = Usage.of(router)
        first = listed(router)
        # Each round reads MAX_PAGES pages and stops, keeping what it read.
        assert len([m for m in first if m.startswith("endless-")]) <= MAX_PAGES * PER_PAGE
        assert "goes on past 20 pages" in router.log()
        # Discovery asks again every second; the router serves all along.
        async with served_during(router.address):
            await trio.sleep(3)
        assert len(asked) >= 2 * MAX_PAGES
        assert all("pageSize=1000" in target for target in asked)
        assert "pageToken=page-" in asked[1]
        current = [m for m in listed(router) if m.startswith("endless-")]
        assert len(current) <= MAX_PAGES * PER_PAGE
        await assert_bounded(router, before)
