"""The mock Realtime upstream against the official openai SDK's realtime client (sync client in
a worker thread, as in ``test_demo_clients``), and its failure injection."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import openai
import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from continuum.testing import MockRealtime, RealtimeScript, serve_mock_realtime

T = TypeVar("T")
MODEL = "gpt-realtime"


async def in_thread(fn: Callable[[], T], timeout: float = 30) -> T:
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


@pytest.fixture
async def mock(nursery: trio.Nursery) -> AsyncIterator[MockRealtime]:
    upstream = MockRealtime(script=RealtimeScript(text_chunks=4, audio_chunks=3,
                                                  audio_chunk_bytes=9600))
    upstream.address = await nursery.start(serve_mock_realtime, upstream)  # type: ignore[attr-defined]
    yield upstream


def base_url(mock: MockRealtime) -> str:
    return f"http://{mock.address}/v1"  # type: ignore[attr-defined]


def sdk(mock: MockRealtime) -> openai.OpenAI:
    # The beta client always dials wss:// unless websocket_base_url says otherwise.
    return openai.OpenAI(base_url=base_url(mock), api_key="sk-mock", max_retries=0,
                         websocket_base_url=base_url(mock).replace("http:", "ws:"))


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def test_a_text_exchange_with_the_sdk(mock: MockRealtime) -> None:
    def run() -> dict[str, Any]:
        seen: dict[str, Any] = {"types": [], "text": ""}
        with sdk(mock).realtime.connect(model=MODEL) as conn:
            created = conn.recv()
            assert created.type == "session.created"
            seen["model"] = created.session.model
            conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                         "instructions": "be brief"})
            updated = conn.recv()
            assert updated.type == "session.updated"
            seen["instructions"] = updated.session.instructions
            conn.conversation.item.create(item=user_text("hello   there"))
            conn.response.create()
            for event in conn:
                seen["types"].append(event.type)
                if event.type == "response.output_text.delta":
                    seen["text"] += event.delta
                if event.type == "response.done":
                    seen["usage"] = event.response.usage.to_dict()
                    seen["status"] = event.response.status
                    break
        return seen

    seen = await in_thread(run)
    assert seen["model"] == MODEL
    assert seen["instructions"] == "be brief"
    assert seen["types"] == [
        "conversation.item.added", "conversation.item.done", "response.created",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 4, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "conversation.item.done",
        "response.done",
    ]
    assert seen["text"] == "Mock realtime reply to: hello   there"
    assert seen["status"] == "completed"
    usage = seen["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (2, 4, 6)
    assert usage["output_token_details"] == {"text_tokens": 4, "audio_tokens": 0}
    assert mock.handshakes[-1].headers["authorization"] == "Bearer sk-mock"
    assert mock.handshakes[-1].query == {"model": MODEL}


async def test_audio_in_and_out_and_cached_tokens_on_the_second_turn(mock: MockRealtime) -> None:
    pcm = bytes(range(256)) * 300  # 76,800 bytes: 16 audio tokens at 4,800 bytes each

    def run() -> tuple[list[bytes], list[dict[str, Any]], list[str]]:
        audio: list[bytes] = []
        usages: list[dict[str, Any]] = []
        types: list[str] = []
        with sdk(mock).realtime.connect(model=MODEL) as conn:
            assert conn.recv().type == "session.created"
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[:40000]).decode())
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[40000:]).decode())
            conn.input_audio_buffer.commit()
            for _ in range(2):
                conn.response.create()
                for event in conn:
                    types.append(event.type)
                    if event.type == "response.output_audio.delta":
                        audio.append(base64.b64decode(event.delta))
                    if event.type == "response.done":
                        usages.append(event.response.usage.to_dict())
                        break
        return audio, usages, types

    audio, usages, types = await in_thread(run)
    assert types[:4] == ["input_audio_buffer.committed", "conversation.item.added",
                         "conversation.item.done", "response.created"]
    assert "response.output_audio_transcript.delta" in types
    assert len(audio) == 6 and all(chunk == (bytes(range(256)) * 38)[:9600] for chunk in audio)
    first, second = usages
    assert first["input_token_details"]["audio_tokens"] == 16
    assert first["input_token_details"]["cached_tokens"] == 0
    assert first["output_token_details"] == {"text_tokens": 4, "audio_tokens": 3}
    # The second turn reads the first turn again (cached) plus the answer.
    assert second["input_tokens"] == first["input_tokens"] + 7
    assert second["input_token_details"]["cached_tokens"] == first["input_tokens"]


async def test_the_beta_client_gets_the_beta_event_names(mock: MockRealtime) -> None:
    def run() -> tuple[list[str], str]:
        types: list[str] = []
        text = ""
        with sdk(mock).beta.realtime.connect(model=MODEL) as conn:
            types.append(conn.recv().type)
            conn.session.update(session={"modalities": ["text"]})
            types.append(conn.recv().type)
            conn.conversation.item.create(item=user_text("hi"))  # type: ignore[arg-type]
            conn.response.create()
            for event in conn:
                types.append(event.type)
                if event.type == "response.text.delta":
                    text += event.delta
                if event.type == "response.done":
                    break
        return types, text

    types, text = await in_thread(run)
    assert types[:3] == ["session.created", "session.updated", "conversation.item.created"]
    assert "response.text.delta" in types and "response.text.done" in types
    assert "conversation.item.added" not in types
    assert text == "Mock realtime reply to: hi"
    assert mock.handshakes[-1].headers["openai-beta"] == "realtime=v1"


async def test_binary_frames_are_echoed_and_bad_events_get_error_events(mock: MockRealtime) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    def run() -> tuple[bytes, list[Any]]:
        with sdk(mock).realtime.connect(model=MODEL) as conn:
            conn.recv()
            conn.send_raw(payload)
            echoed = conn.recv_bytes()
            errors = []
            conn.send_raw("not json")
            errors.append(conn.recv())
            conn.send_raw(json.dumps({"type": "no.such.event", "event_id": "evt_1"}))
            errors.append(conn.recv())
            conn.input_audio_buffer.commit()
            errors.append(conn.recv())
            conn.response.cancel()
            errors.append(conn.recv())
            conn.conversation.item.create(item=user_text("still there?"))
            errors.append(conn.recv())  # the session goes on
        return echoed, errors

    echoed, events = await in_thread(run)
    assert echoed == payload
    assert [e.type for e in events] == ["error"] * 4 + ["conversation.item.added"]
    assert [e.error.code for e in events[:4]] == [
        "invalid_json", "invalid_value", "input_audio_buffer_commit_empty",
        "response_cancel_not_active",
    ]
    assert events[1].error.event_id == "evt_1"
    assert mock.counters.binary_received == 1


async def test_refusals_are_http_errors_with_an_openai_body(mock: MockRealtime) -> None:
    def status_of(model: str | None, path: str = "/v1/realtime") -> tuple[int, dict[str, Any]]:
        query = f"?model={model}" if model else ""
        try:
            with connect(f"ws://{mock.address}{path}{query}"):  # type: ignore[attr-defined]
                pass
        except InvalidStatus as exc:
            return exc.response.status_code, json.loads(exc.response.body or b"{}")
        raise AssertionError("the handshake was accepted")

    mock.models = frozenset({MODEL})
    mock.fail_next("refuse", status=503)
    status, body = await in_thread(lambda: status_of(MODEL))
    assert status == 503 and body["error"]["code"] == "mock_refused"
    assert (await in_thread(lambda: status_of("other")))[0] == 404
    assert (await in_thread(lambda: status_of(None)))[0] == 400
    assert (await in_thread(lambda: status_of(MODEL, "/v1/other")))[0] == 404
    assert mock.counters.refused == 4
    # The refusal was used once: the next session is served.
    def served() -> str:
        with sdk(mock).realtime.connect(model=MODEL) as conn:
            return str(conn.recv().type)

    assert await in_thread(served) == "session.created"


@pytest.mark.parametrize("kind", ["close", "reset"])
async def test_a_session_ended_by_the_mock(mock: MockRealtime, kind: str) -> None:
    mock.fail_next(kind, code=4321, after=2)

    def run() -> tuple[list[str], int | None, str | None]:
        types: list[str] = []
        with sdk(mock).realtime.connect(model=MODEL) as conn:
            conn.conversation.item.create(item=user_text("x"))
            try:
                while True:
                    types.append(conn.recv().type)
            except ConnectionClosed as exc:
                received = exc.rcvd
                return types, received.code if received else None, (
                    received.reason if received else None)

    types, code, reason = await in_thread(run)
    assert types == ["session.created", "conversation.item.added"]
    if kind == "close":
        assert (code, reason) == (4321, "mock: session closed on purpose")
    else:
        assert code is None  # no close frame: the connection died


async def test_a_stalled_mock_stops_answering_even_pings(mock: MockRealtime) -> None:
    mock.fail_next("stall", after=1, duration=30)

    def run() -> tuple[str, int | None]:
        options: Any = {"ping_interval": 0.2, "ping_timeout": 0.5, "close_timeout": 0.5}
        with sdk(mock).realtime.connect(model=MODEL, websocket_connection_options=options) as c:
            first = c.recv().type
            c.conversation.item.create(item=user_text("anyone?"))
            try:
                c.recv()
            except ConnectionClosed as exc:
                return first, exc.sent.code if exc.sent else None
        raise AssertionError("an answer came")

    first, sent = await in_thread(run)
    assert first == "session.created"
    assert sent == 1011  # websockets' own keep-alive gave up on the silent peer


async def test_drip_spaces_the_events(mock: MockRealtime) -> None:
    mock.fail_next("drip", delay=0.1)

    def run() -> float:
        with sdk(mock).realtime.connect(model=MODEL) as conn:
            started = time.monotonic()
            conn.recv()
            conn.conversation.item.create(item=user_text("slow"))
            conn.recv()
            conn.recv()
            return time.monotonic() - started

    assert await in_thread(run) >= 0.25  # three events, each 0.1 s late


async def test_the_clients_close_code_is_recorded(mock: MockRealtime) -> None:
    def run() -> None:
        conn = sdk(mock).realtime.connect(model=MODEL).enter()
        conn.recv()
        conn.close(code=4001, reason="client says bye")

    await in_thread(run)
    with trio.fail_after(10):
        while not mock.client_closes:
            await trio.sleep(0.01)
    assert mock.client_closes[-1] == (4001, "client says bye")
    with trio.fail_after(10):
        while mock.counters.active:
            await trio.sleep(0.01)


def test_fail_next_checks_its_arguments() -> None:
    mock = MockRealtime()
    with pytest.raises(ValueError, match="unknown realtime failure"):
        mock.fail_next("explode")
    with pytest.raises(ValueError, match=r"300\.\.599"):
        mock.fail_next("refuse", status=200)
    with pytest.raises(ValueError, match="cannot be sent"):
        mock.fail_next("close", code=1006)
    with pytest.raises(ValueError, match="text_chunks"):
        RealtimeScript(text_chunks=0)


async def test_two_mocks_in_one_process_are_independent(nursery: trio.Nursery) -> None:
    first, second = MockRealtime(name="a"), MockRealtime(name="b")
    first.address = await nursery.start(serve_mock_realtime, first)  # type: ignore[attr-defined]
    second.address = await nursery.start(serve_mock_realtime, second, "::1")  # type: ignore[attr-defined]
    assert second.address.startswith("[::1]:")  # type: ignore[attr-defined]
    first.fail_next("refuse")

    def run() -> str:
        with sdk(second).realtime.connect(model=MODEL) as conn:
            return str(conn.recv().type)

    assert await in_thread(run) == "session.created"
    assert (first.counters.sessions, second.counters.sessions) == (0, 1)


# --- on the mock's own HTTP listener ------------------------------------------------------------


async def test_the_http_mock_serves_realtime_on_its_own_port(nursery: trio.Nursery) -> None:
    """A ``MockUpstream`` of the OpenAI API answers ``/v1/realtime`` upgrades on the port of
    its HTTP API, as a real OpenAI-compatible server does; other paths stay HTTP."""
    import httpx

    from continuum.testing import MockUpstream, serve_mock

    upstream = MockUpstream(models=[MODEL, "other"])
    address = await nursery.start(serve_mock, upstream)
    url = f"http://{address}/v1"
    client = openai.OpenAI(base_url=url, api_key="sk", max_retries=0,
                           websocket_base_url=url.replace("http:", "ws:"))

    def run() -> tuple[str, str, int]:
        with client.realtime.connect(model=MODEL) as conn:
            created = conn.recv()
            conn.send_raw(b"\x00\x01binary")
            echoed = conn.recv_bytes()
            assert echoed == b"\x00\x01binary"
            conn.response.create()
            done = next(e for e in conn if e.type == "response.done")
            models = httpx.get(f"{url}/models").json()["data"]
            return created.session.model, done.response.status, len(models)

    model, status, listed = await in_thread(run)
    assert (model, status, listed) == (MODEL, "completed", 2)
    assert upstream.realtime.counters.sessions == 1
    assert upstream.requests_by_path["/v1/realtime"] == 1
    # Its model list is the HTTP API's; failures are queued on ``upstream.realtime``.
    upstream.set_models(["other"])
    status_code, body = await in_thread(
        lambda: _refusal(f"ws://{address}/v1/realtime?model={MODEL}"))
    assert status_code == 404 and body["error"]["code"] == "model_not_found"
    upstream.realtime.fail_next("refuse", status=503)
    status_code, body = await in_thread(
        lambda: _refusal(f"ws://{address}/v1/realtime?model=other"))
    assert status_code == 503 and body["error"]["code"] == "mock_refused"


async def test_a_websocket_upgrade_elsewhere_on_the_http_mock_is_refused(
    nursery: trio.Nursery,
) -> None:
    from continuum.testing import MockUpstream, serve_mock

    address = await nursery.start(serve_mock, MockUpstream(models=[MODEL]))
    status_code, _ = await in_thread(lambda: _refusal(f"ws://{address}/v1/models"))
    assert status_code == 400


def _refusal(url: str) -> tuple[int, Any]:
    try:
        with connect(url, open_timeout=20):
            pass
    except InvalidStatus as exc:
        body = exc.response.body or b"{}"
        return exc.response.status_code, json.loads(body) if body.startswith(b"{") else {}
    raise AssertionError("the handshake was accepted")
