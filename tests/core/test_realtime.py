"""The Realtime protocol facts (``continuum.core.realtime``), without sockets."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from openai.types.realtime import RealtimeErrorEvent, ResponseDoneEvent, SessionCreatedEvent

from continuum.core import realtime
from continuum.core.realtime import (
    RealtimeUsage,
    UsageTally,
    client_subprotocol,
    close_reason,
    error_event,
    forwarded_headers,
    handshake_problem,
    is_abnormal_close,
    is_websocket_upgrade,
    parse_subprotocols,
    relayed_close_code,
    session_from_event,
    split_subprotocols,
    upstream_target,
    usage_from_event,
)

HANDSHAKE = [
    (b"host", b"router:8080"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
]


def _response_done(usage: dict[str, Any] | None) -> str:
    return json.dumps({
        "type": "response.done",
        "event_id": "event_1",
        "response": {"id": "resp_1", "object": "realtime.response", "status": "completed",
                     "output": [], "usage": usage},
    })


FULL_USAGE = {
    "total_tokens": 95,
    "input_tokens": 60,
    "output_tokens": 35,
    "input_token_details": {
        "text_tokens": 20, "audio_tokens": 38, "image_tokens": 2, "cached_tokens": 16,
        "cached_tokens_details": {"text_tokens": 10, "audio_tokens": 6, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 5, "audio_tokens": 30},
}


# --- the handshake ---------------------------------------------------------------------------


def test_a_complete_handshake_has_no_problem() -> None:
    assert is_websocket_upgrade(HANDSHAKE)
    assert handshake_problem("GET", HANDSHAKE) is None


@pytest.mark.parametrize(
    ("method", "change", "status"),
    [
        ("POST", {}, 405),
        ("GET", {b"upgrade": None}, 426),
        ("GET", {b"upgrade": b"h2c"}, 426),
        ("GET", {b"connection": b"keep-alive"}, 400),
        ("GET", {b"sec-websocket-version": b"8"}, 426),
        ("GET", {b"sec-websocket-key": None}, 400),
        ("GET", {b"sec-websocket-key": b"short"}, 400),
        ("GET", {b"host": None}, 400),
        ("GET", {b"content-length": b"5"}, 400),
        ("GET", {b"transfer-encoding": b"chunked"}, 400),
    ],
)
def test_handshake_problems_wsproto_would_refuse(
    method: str, change: dict[bytes, bytes | None], status: int
) -> None:
    headers = [(k, v) for k, v in HANDSHAKE if k not in change]
    headers += [(k, v) for k, v in change.items() if v is not None]
    problem = handshake_problem(method, headers)
    assert problem is not None and problem[0] == status


def test_subprotocols_from_several_headers_in_order() -> None:
    headers = [
        (b"sec-websocket-protocol", b"realtime, openai-insecure-api-key.sk-1"),
        (b"other", b"x"),
        (b"sec-websocket-protocol", b"openai-beta.realtime-v1"),
    ]
    assert parse_subprotocols(headers) == [
        "realtime", "openai-insecure-api-key.sk-1", "openai-beta.realtime-v1"
    ]


def test_the_key_subprotocol_is_taken_out_and_the_rest_kept_in_order() -> None:
    key, rest = split_subprotocols(
        ["realtime", "openai-insecure-api-key.sk-abc.def", "openai-beta.realtime-v1",
         "openai-insecure-api-key.second"]
    )
    assert key == "sk-abc.def"
    assert rest == ["realtime", "openai-beta.realtime-v1"]
    assert split_subprotocols(["realtime"]) == (None, ["realtime"])


def test_the_client_gets_the_upstreams_subprotocol_only_if_it_offered_it() -> None:
    offered = ["realtime", "openai-insecure-api-key.sk"]
    assert client_subprotocol("realtime", offered) == "realtime"
    assert client_subprotocol("other", offered) is None
    assert client_subprotocol(None, offered) is None
    assert client_subprotocol("openai-insecure-api-key.sk", offered) is None


def test_only_the_allowlisted_client_headers_go_upstream() -> None:
    headers = [
        *HANDSHAKE,
        (b"openai-beta", b"realtime=v1"),
        (b"openai-organization", b"org-1"),
        (b"openai-project", b"proj-1"),
        (b"authorization", b"Bearer client-key"),
        (b"cookie", b"a=b"),
        (b"origin", b"https://example.com"),
        (b"sec-websocket-protocol", b"realtime"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
    ]
    assert forwarded_headers(headers) == [
        (b"openai-beta", b"realtime=v1"),
        (b"openai-organization", b"org-1"),
        (b"openai-project", b"proj-1"),
    ]


@pytest.mark.parametrize(
    ("url", "query", "secure", "host", "port", "host_header", "resource"),
    [
        ("https://api.openai.com", "model=gpt-realtime", True, "api.openai.com", 443,
         "api.openai.com", "/v1/realtime?model=gpt-realtime"),
        ("http://127.0.0.1:8001/", "model=m&intent=x", False, "127.0.0.1", 8001,
         "127.0.0.1:8001", "/v1/realtime?model=m&intent=x"),
        ("https://gw.example.com:8443/openai/", "", True, "gw.example.com", 8443,
         "gw.example.com:8443", "/openai/v1/realtime"),
        ("http://[::1]:9000", "model=m", False, "::1", 9000, "[::1]:9000",
         "/v1/realtime?model=m"),
        ("wss://rt.example.com", "model=m", True, "rt.example.com", 443, "rt.example.com",
         "/v1/realtime?model=m"),
    ],
)
def test_upstream_target_from_a_backend_url(
    url: str, query: str, secure: bool, host: str, port: int, host_header: str, resource: str
) -> None:
    target = upstream_target(url, query)
    assert (target.secure, target.host, target.port) == (secure, host, port)
    assert (target.host_header, target.resource) == (host_header, resource)
    assert target.url == f"{'wss' if secure else 'ws'}://{host_header}{resource}"


def test_upstream_target_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="not an http"):
        upstream_target("ftp://example.com", "")
    with pytest.raises(ValueError, match="not an http"):
        upstream_target("unix:/run/x.sock", "")


# --- events read on the way through -----------------------------------------------------------


def test_usage_of_a_response_done_event_with_every_detail() -> None:
    message = _response_done(FULL_USAGE)
    ResponseDoneEvent.model_validate_json(message)  # the shape the official SDK reads
    assert usage_from_event(message) == RealtimeUsage(
        input_tokens=60, output_tokens=35, total_tokens=95, input_text_tokens=20,
        input_audio_tokens=38, input_image_tokens=2, cached_tokens=16, cached_text_tokens=10,
        cached_audio_tokens=6, output_text_tokens=5, output_audio_tokens=30,
    )
    assert usage_from_event(message.encode()) == usage_from_event(message)


def test_usage_without_details_and_without_total() -> None:
    usage = usage_from_event(_response_done({"input_tokens": 3, "output_tokens": 4}))
    assert usage == RealtimeUsage(input_tokens=3, output_tokens=4, total_tokens=7)


@pytest.mark.parametrize(
    "message",
    [
        _response_done(None),
        json.dumps({"type": "response.output_text.delta", "delta": '"response.done" is a word'}),
        json.dumps({"type": "response.created", "response": {"usage": {"input_tokens": 1}}}),
        '{"type": "response.done", "response": ',
        '"response.done"',
        "",
    ],
)
def test_no_usage_from_other_messages(message: str) -> None:
    assert usage_from_event(message) is None


def test_large_messages_without_the_mark_are_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(realtime, "_decode_done", refuse)
    monkeypatch.setattr(realtime, "_decode_created", refuse)
    audio = json.dumps({"type": "response.output_audio.delta", "delta": "QUJD" * 1_000_000})
    assert usage_from_event(audio) is None
    assert session_from_event(audio) is None


def test_session_id_and_model_from_session_created() -> None:
    message = json.dumps({
        "type": "session.created", "event_id": "event_1",
        "session": {"type": "realtime", "id": "sess_1", "object": "realtime.session",
                    "model": "gpt-realtime", "output_modalities": ["audio"]},
    })
    SessionCreatedEvent.model_validate_json(message)
    session = session_from_event(message)
    assert session is not None and (session.id, session.model) == ("sess_1", "gpt-realtime")
    assert session_from_event(message.replace("session.created", "session.updated")) is None


def test_usage_tally_sums_a_session() -> None:
    tally = UsageTally()
    tally.observe('{"type": "session.created", "session": {"id": "sess_9", "model": "m"}}')
    tally.observe('{"type": "response.output_text.delta", "delta": "hi"}')
    tally.observe(_response_done(FULL_USAGE))
    tally.observe(_response_done({"input_tokens": 100, "output_tokens": 5}))
    tally.observe("not json at all")
    assert (tally.session_id, tally.model) == ("sess_9", "m")
    assert (tally.responses, tally.input_tokens, tally.output_tokens) == (2, 160, 40)
    assert [u.total_tokens for u in tally.usages] == [95, 105]


# --- what the router says itself ----------------------------------------------------------------


def test_error_event_is_what_the_sdk_parses_as_an_error() -> None:
    text = error_event("the upstream connection was lost")
    event = RealtimeErrorEvent.model_validate_json(text)
    assert event.type == "error"
    assert event.error.type == "server_error"
    assert event.error.code == "upstream_error"
    assert event.error.message == "the upstream connection was lost"
    assert event.event_id.startswith("event_")
    other = msgspec.json.decode(error_event("x", code=None, error_type="t", event_id="event_2"))
    assert other == {"type": "error", "event_id": "event_2",
                     "error": {"type": "t", "code": None, "message": "x", "param": None,
                               "event_id": None}}
    assert error_event("x") != error_event("x")  # a fresh event id each time


def test_close_reason_fits_a_close_frame_on_whole_characters() -> None:
    assert close_reason("short") == "short"
    long = "é" * 100  # 200 bytes of UTF-8
    cut = close_reason(long)
    assert len(cut.encode()) <= 123 and cut == "é" * 61


@pytest.mark.parametrize(
    ("code", "relayed", "abnormal"),
    [(1000, 1000, False), (1001, 1001, False), (1005, 1000, False), (1006, 1011, True),
     (1009, 1009, False), (1011, 1011, False), (1015, 1011, True), (4000, 4000, False),
     (999, 1011, False), (5000, 1011, False)],
)
def test_close_codes(code: int, relayed: int, abnormal: bool) -> None:
    assert relayed_close_code(code) == relayed
    assert is_abnormal_close(code) is abnormal
