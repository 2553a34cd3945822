"""A bounded property-based fuzz of request heads and bodies against a router process.

Each example is one connection: a request line, headers and a body drawn by hypothesis
(known and junk methods, paths, versions, framing headers, JSON that is deep, wrong or not
UTF-8), sent and then half-closed. The property: the router answers with a well-formed
status line and never a 500, or closes; and it is still alive. A second client asks
``/health`` throughout. The example counts are small so the module runs in seconds; the
database keeps what once failed for the next run.

Bounds: RSS within 48 MiB of the start, no connection left open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from harness import (
    PROBE_MODEL,
    BackgroundProber,
    RouterProcess,
    Usage,
    assert_bounded,
    blocking_request,
    parse_status,
    router_config,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
         "/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/v1/models/x",
         "/health", "/admin/health", "/metrics", "/", "/v1/", "*"]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
           "get", "BREW", ""]
FRAMING = ["content-length", "transfer-encoding", "host", "expect", "connection", "upgrade",
           "authorization", "x-api-key", "x-request-id", "traceparent", "content-type"]

SETTINGS = settings(max_examples=120, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config = router_config(
        [{"name": "claude", "type": "mock", "models": ["claude-mock"],
          "mock": {"api": "anthropic"}}],
        server={"max_header_size": 16384, "max_request_body_size": 262144,
                "request_read_timeout": "1s", "keepalive_timeout": "1s"},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("fuzz")) as process:
        process.baseline = Usage.of(process)  # type: ignore[attr-defined]
        yield process
        process.assert_alive()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=5),
    max_leaves=30,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["request", "json", "deep", "bytes", "empty", "broken"]))
    if kind == "request":
        obj: dict[str, Any] = {
            "model": draw(st.sampled_from([PROBE_MODEL, "claude-mock", "", "nope", 5, None])),
            "messages": draw(st.one_of(
                st.just([{"role": "user", "content": "hi"}]), json_values)),
            "stream": draw(st.sampled_from([True, False, None, "yes"])),
            "max_tokens": draw(st.sampled_from([1, 16, -1, "x"])),
            "input": draw(json_values),
        }
        return json.dumps(obj).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(min_value=100, max_value=3000))
        opener = draw(st.sampled_from([b"[", b'{"a":', b"[1,"]))
        return b'{"model": "probe-model", "x": ' + opener * depth
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "empty":
        return b""
    good = json.dumps({"model": PROBE_MODEL, "messages": []}).encode()
    cut = draw(st.integers(min_value=0, max_value=len(good)))
    return good[:cut] + draw(st.binary(max_size=8))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS) | st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=8))
    path = draw(st.sampled_from(PATHS) | st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1",
                                    ""]))
    body = draw(bodies())
    headers: list[bytes] = []
    if draw(st.booleans()):
        headers.append(b"host: fuzz")
    if draw(st.booleans()):
        headers.append(b"content-length: %d" % len(body))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        name = draw(st.sampled_from(FRAMING) | st.text(
            alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
            max_size=10))
        value = draw(st.sampled_from(["chunked", "gzip, chunked", "5", "-1", "100-continue",
                                      "close", "Bearer x", "websocket", "1, 2"])
                     | st.binary(max_size=30).map(lambda b: b.decode("latin-1")))
        headers.append(f"{name}: {value}".encode("latin-1"))
    separator = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"]))
    head = f"{method} {path} {version}".encode("latin-1")
    return separator.join([head, *headers]) + separator * 2 + body


@SETTINGS
@given(data=requests())
def test_fuzzed_requests_never_500_and_never_kill(router: RouterProcess, data: bytes) -> None:
    status, raw = blocking_request(router.address, data, 10.0, half_close=True)
    assert status != 500, raw[:500]
    if raw:
        assert status >= 100, f"not an HTTP answer: {raw[:200]!r}"
    router.assert_alive()


@SETTINGS
@given(data=st.lists(requests(), min_size=2, max_size=5))
def test_fuzzed_pipelines_never_500_and_never_kill(router: RouterProcess, data: list[bytes]
                                                   ) -> None:
    status, raw = blocking_request(router.address, b"".join(data), 10.0, half_close=True)
    assert b" 500 " not in raw.split(b"\r\n\r\n", 1)[0], raw[:500]
    assert parse_status(raw) == status
    router.assert_alive()


def test_second_client_served_during_a_fuzz_run(router: RouterProcess) -> None:
    @settings(SETTINGS, max_examples=60)
    @given(data=requests())
    def fuzz(data: bytes) -> None:
        blocking_request(router.address, data, 10.0, half_close=True)

    with BackgroundProber(router.address):
        fuzz()
    router.assert_alive()


async def test_bounded_after_the_fuzz(router: RouterProcess) -> None:
    with trio.fail_after(30):
        await assert_bounded(router, router.baseline, rss_mib=48)  # type: ignore[attr-defined]
