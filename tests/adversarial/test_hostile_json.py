"""Hostile JSON on every POST endpoint, in both API shapes, against a router process.

Depth, size, wrong types, invalid UTF-8, huge strings and huge model names: each gets a
4xx in the client's error shape (Anthropic's on /v1/messages*), never a 500, never the
process's end; other clients are served while the bodies arrive. Bounds: the router's RSS
grows by at most 96 MiB over the module (it reads 1 MiB bodies by the hundred) and it
holds no connection afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio
from harness import (
    PROBE_MODEL,
    RouterProcess,
    Usage,
    assert_bounded,
    assert_error_shape,
    http_request,
    one_request,
    raw_client,
    router_config,
    served_during,
)

MAX_BODY = 1024 * 1024
DEPTH = 128  # continuum.core.jsondepth.MAX_JSON_DEPTH, the documented rule

ENDPOINTS = [
    ("/v1/chat/completions", False),
    ("/v1/completions", False),
    ("/v1/embeddings", False),
    ("/v1/responses", False),
    ("/v1/messages", True),
    ("/v1/messages/count_tokens", True),
]
PATHS = [path for path, _ in ENDPOINTS]


def anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config = router_config(
        [{"name": "claude", "type": "mock", "models": ["claude-mock"],
          "mock": {"api": "anthropic"}}],
        server={"max_request_body_size": MAX_BODY},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-json")) as process:
        process.baseline = Usage.of(process)  # type: ignore[attr-defined]
        yield process
        process.assert_alive()


@pytest.fixture(scope="module")
def blocking_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config = router_config(api_keys={"mode": "blocking", "api_keys": [{"key": "sk-good"}]})
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-json-blocking")) as process:
        yield process
        process.assert_alive()


def nested(depth: int, model: str = PROBE_MODEL) -> bytes:
    """A body whose deepest point is ``depth`` (the body's own object is level 1)."""
    inner = depth - 1
    return b'{"model": "%s", "x": %s%s}' % (model.encode(), b"[" * inner, b"]" * inner)


async def post(router: RouterProcess, path: str, body: bytes,
               headers: list[tuple[str, str]] | None = None) -> tuple[int, object]:
    request = http_request("POST", path, body,
                           headers=[("content-type", "application/json"), *(headers or [])])
    response = await one_request(router.address, request)
    assert response is not None, "closed without an answer"
    assert response.status != 500, response
    if response.status >= 400:
        assert_error_shape(response, response.status, anthropic=anthropic(path))
    return response.status, response.json() if response.body else None


def message(body: object, path: str) -> str:
    assert isinstance(body, dict)
    text = body["error"]["message"]
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize("path", PATHS)
async def test_deep_nesting_is_400_in_the_clients_shape(router: RouterProcess, path: str
                                                        ) -> None:
    for depth in (DEPTH + 1, 2_000, 200_000):
        status, body = await post(router, path, nested(depth))
        assert status == 400, (depth, body)
        assert "nesting too deep" in message(body, path)
    # Unclosed, and with the brackets hidden between valid parts.
    status, body = await post(router, path, b'{"model": "m", "x": ' + b"[" * 50_000)
    assert status == 400 and "nesting too deep" in message(body, path)
    wide = b'{"model": "m", "x": [' + b"[1, " * 300 + b"2" + b"]" * 300 + b"]}"
    status, body = await post(router, path, wide)
    assert status == 400 and "nesting too deep" in message(body, path)
    router.assert_alive()


@pytest.mark.parametrize("path", PATHS)
async def test_nesting_at_the_limit_is_not_refused_for_depth(router: RouterProcess, path: str
                                                             ) -> None:
    """Exactly the documented depth passes the check (what the backend says is its own
    business), and brackets inside strings do not count."""
    model = "claude-mock" if anthropic(path) else PROBE_MODEL
    status, body = await post(router, path, nested(DEPTH, model))
    assert status != 400 or "nesting too deep" not in message(body, path), body
    strings = json.dumps({"model": model, "x": ["[" * 5000, "\\\"{" * 500]}).encode()
    status, body = await post(router, path, strings)
    assert status != 400 or "nesting too deep" not in message(body, path), body


@pytest.mark.parametrize("path", PATHS)
async def test_wrong_types_and_broken_json_are_400(router: RouterProcess, path: str) -> None:
    for body in (b'{"model": 5}', b'{"model": "m", "stream": "yes"}', b"[]", b"null",
                 b'"model"', b"{", b"", b'{"model": "\xff\xfe"}', b"\xef\xbb\xbf{}",
                 b'{"model": null}', b'{"model": ""}', b'{"model": ["a"]}'):
        status, _ = await post(router, path, body)
        assert status == 400, body


@pytest.mark.parametrize("path", PATHS)
async def test_invalid_utf8_inside_the_body_is_never_a_500(router: RouterProcess, path: str
                                                          ) -> None:
    model = "claude-mock" if anthropic(path) else PROBE_MODEL
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}], ' \
           b'"input": "\xc3(", "prompt": "\xed\xa0\x80"}' % model.encode()
    status, _ = await post(router, path, body)  # asserts no 500 and the error shape
    assert status < 500


@pytest.mark.parametrize("path", PATHS)
async def test_huge_bodies_and_strings(router: RouterProcess, path: str) -> None:
    model = "claude-mock" if anthropic(path) else PROBE_MODEL
    # Over the limit: 413 (by content-length, before reading it).
    status, _ = await post(router, path, b"{" + b" " * MAX_BODY + b"}")
    assert status == 413
    # Just under it, one huge string: whatever the backend says, not a router failure.
    text = "a" * (MAX_BODY - 200)
    status, _ = await post(router, path, json.dumps(
        {"model": model, "messages": [{"role": "user", "content": text}],
         "input": "x", "prompt": "x", "max_tokens": 5}).encode())
    assert status < 500


@pytest.mark.parametrize("path", PATHS)
async def test_huge_model_name_is_404_and_logged_cut(router: RouterProcess, path: str) -> None:
    mark = router.log_mark()
    model = "m" * 500_000
    status, body = await post(router, path, json.dumps({"model": model}).encode())
    assert status == 404, body
    # The access log line stays short: client-given values are cut.
    lines = await router.log_lines(mark, "continuum.access")
    assert lines and all(len(line) < 2_000 for line in lines), [len(x) for x in lines]


async def test_deep_body_without_a_key_in_blocking_mode(blocking_router: RouterProcess) -> None:
    """The original crash: a keyless client's deep body, in blocking mode, once ended the
    process through the access log's second parse."""
    for path in PATHS:
        status, body = await post(blocking_router, path, nested(100_000))
        assert status == 401, body
    status, body = await post(blocking_router, "/v1/chat/completions", nested(100_000),
                              [("authorization", "Bearer sk-good")])
    assert status == 400 and "nesting too deep" in message(body, "")
    blocking_router.assert_alive()


async def test_a_barrage_of_hostile_bodies_leaves_others_served(router: RouterProcess) -> None:
    """Several connections send deep, wide-and-deep and broken bodies back to back; the second
    client is served throughout and the process stays within its bounds."""
    before = router.baseline  # type: ignore[attr-defined]
    chains = b'{"model": "m", "x": [' + b",".join(
        [b"[" * 127 + b"]" * 127] * ((MAX_BODY - 100) // 255)) + b"]}"
    bodies = [nested(300_000), chains, b'{"model": "m", "x": ' + b'{"a":' * 100_000,
              b'{"model": "\xff", "x": ' + b"[" * 1000]
    deadline = trio.current_time() + 2.0
    sent = 0

    async def attacker(index: int) -> None:
        nonlocal sent
        async with raw_client(router.address) as client:
            while trio.current_time() < deadline:
                body = bodies[(index + sent) % len(bodies)]
                path = PATHS[sent % len(PATHS)]
                await client.send(http_request("POST", path, body))
                response = await client.read_response()
                assert response.status == 400, response
                sent += 1

    async with served_during(router.address), trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(attacker, index)
    assert sent >= 8
    await assert_bounded(router, before, rss_mib=96)
