"""What a request waiting on its backend holds for the garbage collector.

With 1,000 slow requests in flight, every object an attempt keeps alive across the upstream
wait is one more for each young collection to walk and, once promoted, for the older ones:
counted at c=1000 with a 500 ms upstream, the router's collections were a sixth of its CPU.
An attempt therefore keeps its outcome bookkeeping in plain locals, not in closures (two
functions and their cells per attempt)."""

from __future__ import annotations

import gc
import types

import httpx
import trio
import trio.testing

from helpers import router_config, start_mock, start_router

MODEL = "mock-model"


def proxy_closures() -> list[types.FunctionType]:
    return [o for o in gc.get_objects()
            if type(o) is types.FunctionType and o.__closure__
            and o.__module__ == "continuum.actors.proxy"]


async def test_a_waiting_attempt_holds_no_closures(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,))
    mock.set_latency(0.5)  # the requests wait on the backend while they are counted
    router = await start_router(nursery, router_config([{"name": "m", "url": url,
                                                          "models": [MODEL]}]))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(15):
        async with httpx.AsyncClient(base_url=router.url, timeout=10.0) as client:
            before = len(proxy_closures())
            statuses: list[int] = []

            async def ask() -> None:
                statuses.append((await client.post("/v1/chat/completions", json=body))
                                .status_code)

            async with trio.open_nursery() as requests:
                for _ in range(4):
                    requests.start_soon(ask)
                while mock.requests < 4:  # all four are at the backend now
                    await trio.sleep(0.01)
                waiting = len(proxy_closures()) - before
            assert statuses == [200] * 4
    assert waiting == 0
