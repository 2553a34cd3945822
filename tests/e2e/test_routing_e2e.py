"""Routing as clients see it: every strategy, aliases, model fallbacks and connection
pre-warming, through a real router in front of real mock upstreams on loopback ports.

Which backend answered is read from the ``x-continuum-backend`` response header and
cross-checked against the mocks' own request counters.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
import trio

from continuum import RouterHandle
from continuum.mock import MockUpstream
from helpers import refused_url, router_config, start_mock, start_router

MODEL = "gpt-test"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}


def http(router: RouterHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=router.url, timeout=10.0)


def sdk(router: RouterHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=10.0
    )


def chat_body(content: str = "hi", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def chat_count(mock: MockUpstream) -> int:
    return mock.requests_by_path.get(CHAT, 0)


async def start_mocks(
    nursery: trio.Nursery, names: str, models: tuple[str, ...] = (MODEL,)
) -> tuple[dict[str, MockUpstream], list[dict[str, Any]]]:
    """One mock per letter of ``names``; returns them and their ``backends`` entries."""
    mocks: dict[str, MockUpstream] = {}
    entries: list[dict[str, Any]] = []
    for name in names:
        mock, url = await start_mock(nursery, models, name=name)
        mocks[name] = mock
        entries.append({"name": name, "url": url, "models": list(models)})
    return mocks, entries


async def served_by(client: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> str:
    response = await client.post(CHAT, json=body, **kw)
    assert response.status_code == 200, response.text
    return response.headers["x-continuum-backend"]


# -- WeightedRoundRobin --------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["routing.weights", "backends[].weight"])
async def test_weighted_round_robin_splits_exactly_by_weight(
    nursery: trio.Nursery, source: str
) -> None:
    mocks, entries = await start_mocks(nursery, "ab")
    routing: dict[str, Any] = {"strategy": "WeightedRoundRobin"}
    if source == "routing.weights":
        routing["weights"] = {"a": 3, "b": 1}
    else:
        entries[0]["weight"] = 3
        entries[1]["weight"] = 1
    router = await start_router(nursery, router_config(entries, routing=routing))
    order: list[str] = []
    with trio.fail_after(15):
        async with http(router) as client:
            for _ in range(40):
                order.append(await served_by(client, chat_body()))
    assert Counter(order) == {"a": 30, "b": 10}
    assert chat_count(mocks["a"]) == 30
    assert chat_count(mocks["b"]) == 10
    # Smooth interleaving: b is never starved for a whole round of 4.
    for start in range(0, 40, 4):
        assert order[start : start + 4].count("b") == 1, order


# -- Random --------------------------------------------------------------------------------------


async def test_random_spreads_over_all_backends(nursery: trio.Nursery) -> None:
    mocks, entries = await start_mocks(nursery, "abc")
    router = await start_router(nursery, router_config(entries, routing={"strategy": "Random"}))
    with trio.fail_after(15):
        async with http(router) as client:
            seen = Counter([await served_by(client, chat_body()) for _ in range(45)])
    # P(some backend gets nothing in 45 uniform draws) = 3 * (2/3)**45 ~ 4e-8.
    assert set(seen) == {"a", "b", "c"}
    assert sum(chat_count(m) for m in mocks.values()) == 45


# -- LeastConnections ----------------------------------------------------------------------------


async def test_least_connections_favours_the_backend_that_frees_up(
    nursery: trio.Nursery,
) -> None:
    mocks, entries = await start_mocks(nursery, "ab")
    mocks["a"].set_latency(0.3)  # a holds its requests; b answers at once
    router = await start_router(
        nursery, router_config(entries, routing={"strategy": "LeastConnections"})
    )
    seen: Counter[str] = Counter()

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(5):
            seen[await served_by(client, chat_body())] += 1

    with trio.fail_after(15):
        async with http(router) as client, trio.open_nursery() as workers:
            for _ in range(6):
                workers.start_soon(worker, client)
    assert sum(seen.values()) == 30
    # RoundRobin would give 15/15; fewest-in-flight sends most to the fast one.
    assert seen["b"] >= 20, seen
    assert chat_count(mocks["b"]) == seen["b"]


# -- LeastLatency --------------------------------------------------------------------------------


async def test_least_latency_prefers_the_fast_backend_and_still_explores(
    nursery: trio.Nursery,
) -> None:
    mocks, entries = await start_mocks(nursery, "ab")
    mocks["a"].set_latency(0.1)
    router = await start_router(
        nursery,
        router_config(
            entries,
            # A slow EWMA: on a loaded machine one of b's answers can stall for longer than
            # a's latency; with alpha 0.3 a single such sample would hand a the traffic.
            routing={"strategy": "LeastLatency",
                     "least_latency": {"exploration": 0.1, "alpha": 0.05}},
        ),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            # Warm-up until both are measured: the first answer measures one backend, and
            # the other is then only reached by exploration (10 % of requests).
            warm: set[str] = set()
            for _ in range(200):
                warm.add(await served_by(client, chat_body()))
                if len(warm) == 2:
                    break
            assert warm == {"a", "b"}, warm
            seen = Counter([await served_by(client, chat_body()) for _ in range(100)])
    assert seen["b"] >= 70, seen  # expected ~90
    # exploration keeps the slow one measured: P(no exploration in 100) = 0.9**100 ~ 3e-5
    assert seen["a"] >= 1, seen


# -- ConsistentHash ------------------------------------------------------------------------------


async def test_consistent_hash_on_session_header_is_sticky(nursery: trio.Nursery) -> None:
    _mocks, entries = await start_mocks(nursery, "abc")
    router = await start_router(
        nursery, router_config(entries, routing={"strategy": "ConsistentHash"})
    )
    with trio.fail_after(15):
        async with http(router) as client:
            sticky = {
                await served_by(client, chat_body(), headers={"x-session-id": "session-42"})
                for _ in range(20)
            }
            assert len(sticky) == 1, sticky
            owners: dict[str, str] = {}
            for i in range(30):
                sid = f"user-session-{i}"
                owners[sid] = await served_by(client, chat_body(),
                                              headers={"x-session-id": sid})
            # and each of those is sticky too
            for sid, owner in list(owners.items())[:10]:
                again = await served_by(client, chat_body(), headers={"x-session-id": sid})
                assert again == owner, sid
    assert len(set(owners.values())) >= 2, owners  # different sessions spread out


async def test_consistent_hash_moves_only_the_keys_of_a_backend_that_leaves(
    nursery: trio.Nursery,
) -> None:
    mocks, entries = await start_mocks(nursery, "abc")
    router = await start_router(
        nursery,
        router_config(
            entries,
            routing={"strategy": "ConsistentHash"},
            health_checks={"enabled": True, "interval": 0.1, "timeout": 0.5,
                           "unhealthy_threshold": 1, "healthy_threshold": 1},
        ),
    )
    sessions = [f"s-{i}" for i in range(40)]
    with trio.fail_after(15):
        async with http(router) as client:
            before = {
                sid: await served_by(client, chat_body(), headers={"x-session-id": sid})
                for sid in sessions
            }
            leaving = Counter(before.values()).most_common(1)[0][0]
            mocks[leaving].set_health_status(500)
            while router.backends[leaving].healthy:
                await trio.sleep(0.02)
            after = {
                sid: await served_by(client, chat_body(), headers={"x-session-id": sid})
                for sid in sessions
            }
    moved = {sid for sid in sessions if before[sid] != after[sid]}
    # exactly the sessions of the backend that left moved, and none went to it
    assert moved == {sid for sid in sessions if before[sid] == leaving}
    assert leaving not in after.values()


async def test_consistent_hash_on_user_field(nursery: trio.Nursery) -> None:
    _mocks, entries = await start_mocks(nursery, "abc")
    router = await start_router(
        nursery,
        router_config(
            entries, routing={"strategy": "ConsistentHash", "consistent_hash": {"key": "user"}}
        ),
    )
    with trio.fail_after(15):
        async with sdk(router) as client:

            async def backend_for(user: str, session: str) -> str:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    user=user,
                    extra_headers={"x-session-id": session},
                )
                assert raw.parse().choices[0].message.content == "Mock reply to: hi"
                return raw.headers["x-continuum-backend"]

            # The body's user decides; the session header (not the key here) does not.
            alice = {await backend_for("alice", f"s{i}") for i in range(15)}
            assert len(alice) == 1, alice
            users = {await backend_for(f"user-{i}", "same") for i in range(30)}
    assert len(users) >= 2, users


# -- aliases and fallbacks -----------------------------------------------------------------------


async def test_model_alias_reaches_upstream_as_the_served_name(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(
        nursery,
        router_config([{"name": "a", "url": url, "models": [MODEL]}],
                      model_aliases={"friendly": MODEL}),
    )
    with trio.fail_after(15):
        async with sdk(router) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="friendly", messages=[{"role": "user", "content": "alias me"}]
            )
    assert raw.headers["x-continuum-model"] == MODEL
    completion = raw.parse()
    assert completion.model == MODEL
    assert completion.choices[0].message.content == "Mock reply to: alias me"
    assert mock.last_request_body is not None
    sent = json.loads(mock.last_request_body)
    assert sent["model"] == MODEL
    assert sent["messages"] == [{"role": "user", "content": "alias me"}]


async def test_fallback_model_answers_when_the_first_models_backend_is_down(
    nursery: trio.Nursery,
) -> None:
    mock_b, url_b = await start_mock(nursery, ("model-b",), name="b")
    router = await start_router(
        nursery,
        router_config(
            [
                {"name": "a", "url": refused_url(nursery), "models": ["model-a"]},
                {"name": "b", "url": url_b, "models": ["model-b"]},
            ],
            fallbacks={"model-a": ["model-b"]},
        ),
    )
    with trio.fail_after(15):
        async with sdk(router) as client:
            for _ in range(3):
                raw = await client.chat.completions.with_raw_response.create(
                    model="model-a", messages=[{"role": "user", "content": "hi"}]
                )
                assert raw.headers["x-continuum-model"] == "model-b"
                assert raw.headers["x-continuum-backend"] == "b"
                assert raw.parse().model == "model-b"
    assert chat_count(mock_b) == 3
    assert mock_b.last_request_body is not None
    assert json.loads(mock_b.last_request_body)["model"] == "model-b"


async def test_fallback_model_answers_when_the_first_model_keeps_failing(
    nursery: trio.Nursery,
) -> None:
    mock_a, url_a = await start_mock(nursery, ("model-a",), name="a")
    mock_b, url_b = await start_mock(nursery, ("model-b",), name="b")
    mock_a.fail_next("status", count=50, status=503)
    router = await start_router(
        nursery,
        router_config(
            [
                {"name": "a", "url": url_a, "models": ["model-a"]},
                {"name": "b", "url": url_b, "models": ["model-b"]},
            ],
            fallbacks={"model-a": ["model-b"]},
        ),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body(model="model-a"))
    assert response.status_code == 200, response.text
    assert response.headers["x-continuum-model"] == "model-b"
    assert response.json()["model"] == "model-b"
    assert chat_count(mock_a) >= 1
    assert chat_count(mock_b) == 1


async def test_unknown_model_with_unknown_fallbacks_is_404(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(
        nursery,
        router_config([{"name": "a", "url": url, "models": [MODEL]}],
                      fallbacks={"nope": ["also-nope"]}),
    )
    with trio.fail_after(15):
        async with http(router) as client:
            response = await client.post(CHAT, json=chat_body(model="nope"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == "model_not_found"
    assert chat_count(mock) == 0


# -- pre-warming ---------------------------------------------------------------------------------


async def test_prewarmed_connections_are_open_before_the_first_request(
    nursery: trio.Nursery,
) -> None:
    mock, url = await start_mock(nursery, (MODEL,), name="a")
    router = await start_router(
        nursery,
        router_config([{"name": "a", "url": url, "models": [MODEL]}],
                      http_client={"prewarm_connections": 3}),
    )
    stats = router.backends["a"].pool.stats
    assert stats.idle == 3
    assert stats.opened_total == 3
    assert stats.in_use == 0
    assert mock.requests == 0  # connections only, no request was needed to open them
    with trio.fail_after(15):
        async with http(router) as client:
            await served_by(client, chat_body())
    # the first request rode a pre-opened connection
    assert router.backends["a"].pool.stats.opened_total == 3
