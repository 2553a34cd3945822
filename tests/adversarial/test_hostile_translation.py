"""Hostile translated streams: upstreams whose SSE the translators must parse and cannot
trust (a thinking delta without its block, a signature for a block never started, absurd
block and tool call indexes, tool argument fragments without end, a thought signature of
many MiB, a Gemini function call that failed), against a router process.

Each case is one backend of its own behind one router process; the upstream keeps the
connection open after its hostile part (or keeps sending). For every request the client
must get a 200 stream that ends promptly with an error event in its API's shape saying what
went wrong, the attempt must count as the backend's failure, a second client must be served
meanwhile, and the router's RSS and descriptors must stay bounded.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from harness import (
    SSE_HEAD,
    RouterProcess,
    ScriptedUpstream,
    ThreadedUpstream,
    UpstreamConn,
    UpstreamRequest,
    Usage,
    assert_bounded,
    chat_request,
    chunk,
    default_answer,
    http_request,
    one_request,
    router_config,
    served_during,
)
from upstream_cases import ATTACK, backend_state, settled_state

Handler = Callable[[UpstreamRequest, UpstreamConn], Awaitable[None]]

#: A router's stream is cut by request.streaming_timeout at the latest, and after
#: request.idle_timeout without upstream bytes.
STREAMING_TIMEOUT = 15.0
IDLE_TIMEOUT = 4.0
PIECE = 1 << 16
#: Tool call arguments a live call streams through (more than any bound that holds them).
LIVE_BYTES = 16 << 20


def _sse(obj: Any, event: str = "x") -> bytes:
    return f"event: {event}\ndata: {json.dumps(obj)}\n\n".encode()


async def _hold(conn: UpstreamConn) -> None:
    """Send nothing more; wait until the router closes the connection."""
    try:
        while await conn.stream.receive_some(PIECE):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await conn.close()


async def _flood(conn: UpstreamConn, piece: bytes) -> None:
    """Send ``piece`` (one HTTP chunk each) until the router closes the connection."""
    try:
        while True:
            await conn.send(chunk(piece))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await conn.close()


_START = _sse({"type": "message_start", "message": {"id": "msg_h", "type": "message",
                                                   "role": "assistant", "content": [],
                                                   "usage": {"input_tokens": 5}}})


def _chat(*deltas: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps({"id": "c", "choices": [
        {"index": 0, "delta": d, "finish_reason": None}]}).encode() + b"\n\n" for d in deltas)


# -- Anthropic backends, an OpenAI client ---------------------------------------------------


async def thinking_without_block(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(SSE_HEAD + chunk(_START + _sse({
        "type": "content_block_delta", "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "sneaky"}})))
    await _hold(conn)


async def signature_unknown_index(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(SSE_HEAD + chunk(_START + _sse({
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "thinking", "thinking": ""}}) + _sse({
            "type": "content_block_delta", "index": 5,
            "delta": {"type": "signature_delta", "signature": "forged"}})))
    await _hold(conn)


async def absurd_block_index(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(SSE_HEAD + chunk(_START + _sse({
        "type": "content_block_start", "index": 2**62,
        "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}})))
    await _hold(conn)


async def endless_event(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """An event whose data line never ends."""
    await conn.send(SSE_HEAD + chunk(_START + b"data: {\"type\":\"content_block_delta\","))
    await _flood(conn, b"x" * PIECE)


# -- OpenAI-compatible backends, an Anthropic client (/v1/messages) --------------------------


async def absurd_tool_index(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(SSE_HEAD + chunk(_chat({"tool_calls": [
        {"index": 10**15, "id": "a", "type": "function",
         "function": {"name": "f", "arguments": "{}"}}]})))
    await _hold(conn)


async def endless_held_arguments(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """A call left unfinished while a second one's fragments keep coming: they are held
    back (its block cannot open), up to the bound."""
    await conn.send(SSE_HEAD + chunk(_chat(
        {"tool_calls": [{"index": 0, "id": "a", "type": "function",
                         "function": {"name": "f", "arguments": "{\"x\": "}}]},
        {"tool_calls": [{"index": 1, "id": "b", "type": "function",
                         "function": {"name": "g", "arguments": "{\"y\": \""}}]})))
    await _flood(conn, _chat({"tool_calls": [
        {"index": 1, "function": {"arguments": "y" * PIECE}}]}))


async def endless_live_arguments(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """One call whose arguments do not end (16 MiB, then silence): streamed through as
    they come, nothing held, until request.idle_timeout ends the stream."""
    fragment = chunk(_chat({"tool_calls": [{"index": 0, "function": {"arguments": "z" * PIECE}}]}))
    try:
        await conn.send(SSE_HEAD + chunk(_chat({"tool_calls": [
            {"index": 0, "id": "a", "type": "function",
             "function": {"name": "f", "arguments": "{\"x\": \""}}]})))
        for _ in range(LIVE_BYTES // PIECE):
            await conn.send(fragment)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    await _hold(conn)


async def too_many_tool_calls(request: UpstreamRequest, conn: UpstreamConn) -> None:
    calls = [{"tool_calls": [{"id": f"call_{i}", "type": "function",
                              "function": {"name": "f", "arguments": "{}"}}]}
             for i in range(5000)]
    await conn.send(SSE_HEAD + chunk(_chat(*calls)))
    await _hold(conn)


# -- Gemini backends, an OpenAI client ----------------------------------------------------------


async def huge_thought_signature(request: UpstreamRequest, conn: UpstreamConn) -> None:
    head = (b'data: {"candidates": [{"content": {"parts": [{"functionCall": '
            b'{"name": "f", "args": {}}, "thoughtSignature": "')
    await conn.send(SSE_HEAD + chunk(head))
    await _flood(conn, b"A" * PIECE)


async def malformed_function_call(request: UpstreamRequest, conn: UpstreamConn) -> None:
    event = {"candidates": [{"content": {}, "finishReason": "MALFORMED_FUNCTION_CALL",
                             "finishMessage": "Malformed function call: f(", "index": 0}]}
    await conn.send(SSE_HEAD + chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
    await _hold(conn)


@dataclass(frozen=True)
class Case:
    handler: Handler
    backend: dict[str, Any]  # its type and keys
    says: str  # in the error event's message
    anthropic_client: bool = False


CASES: dict[str, Case] = {
    "thinking_without_block": Case(thinking_without_block, {"type": "anthropic"},
                                   "thinking_delta for block 0"),
    "signature_unknown_index": Case(signature_unknown_index, {"type": "anthropic"},
                                    "signature_delta for block 5"),
    "absurd_block_index": Case(absurd_block_index, {"type": "anthropic"}, "out of range"),
    "endless_event": Case(endless_event, {"type": "anthropic"}, "larger than"),
    "absurd_tool_index": Case(absurd_tool_index, {"type": "vllm"}, "out of range", True),
    "endless_held_arguments": Case(endless_held_arguments, {"type": "vllm"}, "held back",
                                   True),
    "endless_live_arguments": Case(endless_live_arguments, {"type": "vllm"},
                                   "idle_timeout", True),
    "too_many_tool_calls": Case(too_many_tool_calls, {"type": "vllm"},
                                "tool calls in one answer", True),
    "huge_thought_signature": Case(huge_thought_signature, {"type": "gemini"}, "larger than"),
    "malformed_function_call": Case(malformed_function_call, {"type": "gemini"},
                                    "MALFORMED_FUNCTION_CALL"),
}


async def by_gemini_path(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """Gemini has the model in its path, not its body."""
    if request.target.startswith("/v1beta/models/"):
        model = request.target.removeprefix("/v1beta/models/").split(":")[0]
        await CASES[model].handler(request, conn)
    else:
        await default_answer(request, conn)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    handlers = {name: case.handler for name, case in CASES.items()}
    with ThreadedUpstream(ScriptedUpstream(handlers, default=by_gemini_path)) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def router(upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProcess]:
    backends = [{"name": name, "url": upstream.url, "models": [name], "api_key": "k",
                 **case.backend} for name, case in CASES.items()]
    config = router_config(
        backends,
        request={"timeout": 5, "idle_timeout": IDLE_TIMEOUT,
                 "streaming_timeout": STREAMING_TIMEOUT, "max_retries": 0},
        circuit_breaker={"failure_threshold": 100000, "minimum_requests": 100000},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-translation")) as process:
        yield process


def _request(name: str, case: Case) -> bytes:
    if not case.anthropic_client:
        return chat_request(name, "go", stream=True)
    body = json.dumps({"model": name, "max_tokens": 100, "stream": True,
                       "messages": [{"role": "user", "content": "go"}]}).encode()
    return http_request("POST", "/v1/messages", body,
                        headers=[("content-type", "application/json")])


def _error_message(body: bytes, anthropic: bool) -> str:
    """The message of the error event that ends a translated stream (and that it ends it)."""
    events = body.decode().strip().split("\n\n")
    if anthropic:
        kind, data = events[-1].split("\n")
        assert kind == "event: error", events[-2:]
    else:
        assert events[-1] == "data: [DONE]", events[-2:]
        data = events[-2]
    error = json.loads(data.removeprefix("data: "))["error"]
    assert isinstance(error["type"], str) and error["type"]
    message: str = error["message"]
    return message


@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_translated_stream(router: RouterProcess, name: str) -> None:
    case = CASES[name]
    before = Usage.of(router)
    state = await backend_state(router, name)
    attempts = 0
    async with served_during(router.address):
        deadline = trio.current_time() + ATTACK
        while attempts == 0 or trio.current_time() < deadline:
            response = await one_request(router.address, _request(name, case),
                                         timeout=STREAMING_TIMEOUT + 10)
            assert response is not None and response.status == 200, response
            assert response.header("transfer-encoding") == "chunked"
            message = _error_message(response.body, case.anthropic_client)
            assert case.says in message
            if case.says != "idle_timeout":
                # Ended by the translator, not by a timer (its message says which; a time
                # bound here would fail on a loaded machine).
                assert "idle" not in message.lower(), message
            else:
                assert len(response.body) > LIVE_BYTES  # all of it went through
            attempts += 1
    after = await settled_state(router, name, state["failures"] + attempts)
    assert after["failures"] - state["failures"] == attempts, after
    assert after["in_flight"] == 0 and after["pool"]["in_use"] == 0, after
    await assert_bounded(router, before, rss_mib=64.0)
