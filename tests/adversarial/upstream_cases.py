"""What the hostile-upstream cases share (HTTP/1.1 and HTTP/2): the expected outcome of a
case, how a client's answer is checked against it, and the backend's state as the router's
``/admin/health`` reports it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from harness import (
    Response,
    RouterProcess,
    Usage,
    assert_bounded,
    assert_error_shape,
    chat_request,
    http_request,
    one_request,
    served_during,
)

#: How long each attack repeats its hostile request (at least once), so that the second
#: client's probes run during it.
ATTACK = 0.6
REQUEST_TIMEOUT = 3.0
IDLE_TIMEOUT = 1.0


@dataclass(frozen=True)
class Expect:
    """What the client sees: ``status`` (an error in the OpenAI shape, or 200 complete), or
    with ``sse_code`` a 200 stream ending with an error event of that code and [DONE]."""

    status: int
    sse_code: str | None = None
    #: Attempts that count against the backend, per request.
    failures: int = 1
    #: A fragment of the error message (why it failed), when it matters.
    says: str = ""


OK = Expect(200, failures=0)
BAD_GATEWAY = Expect(502)
TIMEOUT = Expect(504)
HEAD_TOO_LARGE = Expect(502, says="max_response_header_size")


@dataclass(frozen=True)
class Case:
    handler: Callable[..., Awaitable[None]]  # an upstream's answer (HTTP/1.1 or HTTP/2)
    plain: Expect
    stream: Expect | None
    rss_mib: float = 64.0


async def backend_state(router: RouterProcess, name: str) -> dict[str, Any]:
    response = await one_request(router.address, http_request("GET", "/admin/health"))
    assert response is not None and response.status == 200, response
    backends = response.json()["backends"]
    state: dict[str, Any] = next(b for b in backends if b["name"] == name)
    return state


async def settled_state(router: RouterProcess, name: str, failures: int,
                        bound: float = 5.0) -> dict[str, Any]:
    """Backend ``name``'s state once its failure count reaches ``failures`` and nothing is
    in flight (or after ``bound`` seconds, whatever it is then). An attempt is recorded as
    it ends, which may be just after the client has read the last byte of its answer."""
    deadline = trio.current_time() + bound
    while True:
        state = await backend_state(router, name)
        settled = (state["failures"] >= failures and state["in_flight"] == 0
                   and state["pool"]["in_use"] == 0)
        if settled or trio.current_time() >= deadline:
            return state
        await trio.sleep(0.02)


def check_answer(response: Response | None, expect: Expect) -> None:
    assert response is not None, "the router closed without an answer"
    if expect.sse_code is None:
        if expect.status == 200:
            assert response.status == 200, response
            if (response.header("content-type") or "").startswith("text/event-stream"):
                assert response.body.rstrip().endswith(b"data: [DONE]"), response
                assert b"event: error" not in response.body, response
            else:
                assert response.json()["choices"][0]["message"]["content"] == "slow"
        else:
            assert_error_shape(response, expect.status)
            assert expect.says in response.json()["error"]["message"], response
        return
    assert response.status == 200, response
    assert response.header("transfer-encoding") == "chunked"  # and it parsed: well framed
    events = response.body.decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]", events[-3:]
    kind, data = events[-2].split("\n")
    assert kind == "event: error", events[-3:]
    assert json.loads(data.removeprefix("data: "))["error"]["code"] == expect.sse_code


async def attack(router: RouterProcess, name: str, stream: bool, expect: Expect,
                 rss_mib: float = 64.0) -> int:
    """Send backend ``name``'s model hostile requests for :data:`ATTACK` seconds (at least
    one) while a second client probes the router; check every answer, the backend's failure
    accounting and the router's resources. Returns the number of requests made."""
    before = Usage.of(router)
    state = await backend_state(router, name)
    attempts = 0
    async with served_during(router.address):
        deadline = trio.current_time() + ATTACK
        while attempts == 0 or trio.current_time() < deadline:
            response = await one_request(router.address, chat_request(name, stream=stream),
                                         timeout=REQUEST_TIMEOUT + 10)
            check_answer(response, expect)
            attempts += 1
    after = await settled_state(router, name, state["failures"] + attempts * expect.failures)
    assert after["failures"] - state["failures"] == attempts * expect.failures, after
    assert after["in_flight"] == 0 and after["pool"]["in_use"] == 0, after
    if expect.failures:
        assert after["circuit_breaker"]["consecutive_failures"] >= attempts, after
    await assert_bounded(router, before, rss_mib=rss_mib)
    return attempts
