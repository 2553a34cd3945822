"""Backend profiles: each backend-API fact in one place (credentials, paths, the model
list), and ``build_call`` built on them — the code the router runs for every attempt."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from continuum.apis.calls import build_call
from continuum.apis.profiles import DROPPED_REQUEST_HEADERS, backend_api, backend_profile
from continuum.apis.types import ChatDialect, TranslationError
from continuum.config import BackendConfig, MockConfig

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
CHAT_PATH = "/v1/chat/completions"
STREAMED = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()


def backend(**fields: Any) -> BackendConfig:
    return BackendConfig(**{"name": "b", "url": "https://upstream.test", **fields})


@pytest.mark.parametrize(
    ("fields", "api"),
    [
        ({}, "openai"),
        ({"type": "vllm"}, "openai"),
        ({"type": "anthropic"}, "anthropic"),
        ({"type": "gemini"}, "gemini"),
        ({"type": "gemini", "gemini_api": "openai"}, "openai"),
        ({"type": "mock", "url": "", "mock": MockConfig(api="anthropic")}, "anthropic"),
    ],
)
def test_the_api_a_backend_speaks(fields: dict[str, Any], api: str) -> None:
    assert backend_api(backend(**fields)) == api
    assert backend_profile(backend(**fields)).api == api


def test_openai_compatible_credentials_and_paths() -> None:
    profile = backend_profile(backend(api_key="sk", headers={"X-Team": "a"}))
    assert profile.auth == [(b"authorization", b"Bearer sk"), (b"x-team", b"a")]
    assert profile.target(b"/v1/chat/completions?x=1") == b"/v1/chat/completions?x=1"
    assert profile.models_path == b"/v1/models"
    assert backend_profile(backend()).auth == []


def test_anthropic_credentials() -> None:
    profile = backend_profile(backend(type="anthropic", api_key="sk-ant",
                                      anthropic_version="2024-01-01"))
    assert profile.auth == [(b"x-api-key", b"sk-ant"), (b"anthropic-version", b"2024-01-01")]
    keyless = backend_profile(backend(type="anthropic"))
    assert keyless.auth == [(b"anthropic-version", b"2023-06-01")]


def test_gemini_native_credentials_and_model_list() -> None:
    profile = backend_profile(backend(type="gemini", api_key="g"))
    assert profile.auth == [(b"x-goog-api-key", b"g")]
    assert profile.models_path == b"/v1beta/models"
    assert profile.probe_path("/v1/models") == b"/v1beta/models"
    listing = {"models": [{"name": "models/gemini-x", "supportedGenerationMethods":
                           ["generateContent"]},
                          {"name": "models/embed", "supportedGenerationMethods":
                           ["embedContent"]}]}
    assert profile.model_page(json.dumps(listing).encode())[0] == ("gemini-x",)
    with pytest.raises(ValueError):  # what the catalog turns into an upstream failure
        profile.model_page(b"<html>")


def test_gemini_openai_compatible_endpoint() -> None:
    """Gemini's own OpenAI-compatible endpoint: every OpenAI path under /v1beta/openai, a
    bearer key; other paths (a configured probe) are left as they are."""
    profile = backend_profile(backend(type="gemini", gemini_api="openai", api_key="g"))
    assert profile.auth == [(b"authorization", b"Bearer g")]
    assert profile.target(b"/v1/chat/completions") == b"/v1beta/openai/chat/completions"
    assert profile.target(b"/v1/embeddings") == b"/v1beta/openai/embeddings"
    assert profile.target(b"/v1/models?x=1") == b"/v1beta/openai/models?x=1"
    assert profile.target(b"/health") == b"/health"
    assert profile.models_path == b"/v1beta/openai/models"
    assert profile.probe_path("/v1/models") == b"/v1beta/openai/models"
    assert profile.probe_path("/health") == b"/health"


def test_openai_model_list_reads_each_id_once() -> None:
    profile = backend_profile(backend())
    body = b'{"object": "list", "data": [{"id": "a"}, {"id": "b"}, {"id": "a"}]}'
    assert profile.model_page(body)[0] == ("a", "b")
    with pytest.raises(msgspec.DecodeError):
        profile.model_page(b"<html>")


def test_paged_model_lists_name_their_next_page() -> None:
    gemini = backend_profile(backend(type="gemini", api_key="g"))
    assert gemini.models_page_path() == b"/v1beta/models?pageSize=1000"
    assert gemini.models_page_path("a b&c") == b"/v1beta/models?pageSize=1000&pageToken=a%20b%26c"
    page = {"models": [{"name": "models/g1"}], "nextPageToken": "t2"}
    assert gemini.model_page(json.dumps(page).encode()) == (("g1",), "t2")
    assert gemini.model_page(b'{"models": [], "nextPageToken": ""}') == ((), None)
    claude = backend_profile(backend(type="anthropic"))
    assert claude.models_page_path() == b"/v1/models?limit=1000"
    assert claude.models_page_path("m-2") == b"/v1/models?limit=1000&after_id=m-2"
    body = b'{"data": [{"id": "m-1"}, {"id": "m-2"}], "has_more": true, "last_id": "m-2"}'
    assert claude.model_page(body) == (("m-1", "m-2"), "m-2")
    assert claude.model_page(body.replace(b"true", b"false")) == (("m-1", "m-2"), None)
    openai = backend_profile(backend())
    assert openai.models_page_path("ignored") == b"/v1/models"
    assert openai.model_page(b'{"data": [{"id": "a"}], "has_more": true}') == (("a",), None)


def test_the_in_process_mock_gets_a_key_of_its_own() -> None:
    profile = backend_profile(BackendConfig(name="m", type="mock",
                                            mock=MockConfig(api="gemini")))
    assert profile.auth == [(b"x-goog-api-key", b"mock")]


def test_pass_through_headers_drop_client_credentials_and_hop_by_hop() -> None:
    profile = backend_profile(backend(api_key="sk", headers={"x-team": "a"}))
    client = [(b"authorization", b"Bearer client"), (b"x-api-key", b"client"),
              (b"connection", b"keep-alive"), (b"x-team", b"client's"),
              (b"x-request-id", b"r1"), (b"content-type", b"application/json")]
    assert profile.request_headers(client) == [
        (b"x-request-id", b"r1"), (b"content-type", b"application/json"),
        (b"authorization", b"Bearer sk"), (b"x-team", b"a"),
    ]
    assert {b"authorization", b"x-api-key", b"cookie", b"host"} <= DROPPED_REQUEST_HEADERS


def _headers(call_headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    seen: dict[bytes, list[bytes]] = {}
    for name, value in call_headers:
        seen.setdefault(name, []).append(value)
    return seen


def test_a_translated_call_carries_the_profile_credentials_once() -> None:
    client = [(b"authorization", b"Bearer client"), (b"traceparent", b"00-ab-cd-01"),
              (b"x-request-id", b"r1"), (b"cookie", b"c")]
    anthropic = backend_profile(backend(type="anthropic", api_key="sk-ant",
                                        headers={"x-api-key": "other", "x-team": "a"}))
    call = build_call("/v1/chat/completions", anthropic, "", client, STREAMED, "claude", True)
    assert call.target == b"/v1/messages" and call.translate is not None
    headers = _headers(call.headers)
    assert headers[b"x-api-key"] == [b"sk-ant"]  # the api_key's, never two
    assert headers[b"anthropic-version"] == [b"2023-06-01"]
    assert headers[b"accept"] == [b"text/event-stream"]
    assert headers[b"x-team"] == [b"a"]
    assert headers[b"traceparent"] == [b"00-ab-cd-01"] and headers[b"x-request-id"] == [b"r1"]
    assert b"authorization" not in headers and b"cookie" not in headers

    gemini = backend_profile(backend(type="gemini", api_key="g"))
    call = build_call("/v1/chat/completions", gemini, "", client, CHAT, "gemini-x", False)
    assert call.target == b"/v1beta/models/gemini-x:generateContent"
    headers = _headers(call.headers)
    assert headers[b"x-goog-api-key"] == [b"g"]
    assert headers[b"content-type"] == [b"application/json"]
    keyless = build_call("/v1/chat/completions", backend_profile(backend(type="gemini")), "",
                         client, CHAT, "gemini-x", False)
    assert b"x-goog-api-key" not in _headers(keyless.headers)


def test_a_pass_through_call_keeps_the_query_and_uses_the_profile_path() -> None:
    profile = backend_profile(backend(type="gemini", gemini_api="openai", api_key="g"))
    call = build_call("/v1/embeddings", profile, "a=1", [], b"{}", "m", False)
    assert call.target == b"/v1beta/openai/embeddings?a=1"
    assert call.headers == [(b"authorization", b"Bearer g")]
    assert call.translate is None and call.stream is None


@pytest.mark.parametrize(
    ("fields", "dialect"),
    [
        ({"type": "openai"}, ChatDialect(max_tokens_field="max_completion_tokens",
                                         max_stop_sequences=4)),
        ({"type": "vllm"}, ChatDialect(map_thinking=True, reasoning_content=True)),
        ({"type": "ollama"}, ChatDialect(map_thinking=True, reasoning_content=True)),
        ({"type": "mock", "url": ""}, ChatDialect(map_thinking=True, reasoning_content=True)),
        ({"type": "gemini", "gemini_api": "openai"},
         ChatDialect(map_thinking=True, max_stop_sequences=5, gemini_signatures=True)),
        ({"type": "gemini"}, ChatDialect(map_thinking=True, max_stop_sequences=5,
                                         native_gemini=True)),
        ({"type": "openai", "reasoning": "send", "max_tokens_field": "max_tokens"},
         ChatDialect(map_thinking=True, reasoning_content=True, max_stop_sequences=4)),
        ({"type": "lmstudio", "reasoning": "drop", "max_tokens_field": "max_completion_tokens"},
         ChatDialect(max_tokens_field="max_completion_tokens")),
    ],
)
def test_chat_dialect_follows_type_and_keys(fields: dict[str, Any], dialect: ChatDialect) -> None:
    """What a /v1/messages request becomes for each backend (the auto values resolved)."""
    assert backend_profile(backend(**fields)).chat_dialect == dialect


def test_thinking_conflict_reaches_the_anthropic_call() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "reasoning_effort": "low", "tool_choice": "required",
                       "tools": [{"type": "function", "function": {"name": "f"}}]}).encode()
    drop = build_call(CHAT_PATH, backend_profile(backend(type="anthropic")), "", [], body,
                      "m", False)
    assert "thinking" not in json.loads(drop.body)
    with pytest.raises(TranslationError):
        build_call(CHAT_PATH, backend_profile(backend(type="anthropic",
                                                      thinking_conflict="reject")),
                   "", [], body, "m", False)


@pytest.mark.parametrize("api", ["openai", "gemini"])
def test_a_discovered_list_drops_ids_the_router_could_not_echo(api: str) -> None:
    ids = ["ok-model", "bad\r\nx-injected: 1", "", "m" * 257, "ok-model", "tab\tname"]
    if api == "gemini":
        body = json.dumps({"models": [
            {"name": f"models/{i}", "supportedGenerationMethods": ["generateContent"]}
            for i in ids]}).encode()
        profile = backend_profile(backend(type="gemini"))
    else:
        body = json.dumps({"object": "list", "data": [{"id": i} for i in ids]}).encode()
        profile = backend_profile(backend())
    assert profile.model_page(body)[0] == ("ok-model",)


def test_an_unreadable_gemini_list_is_a_value_error_like_any_other() -> None:
    # The catalog maps DecodeError/ValueError to an upstream failure; a TranslationError
    # escaping it once ended `serve` at start-up.
    profile = backend_profile(backend(type="gemini"))
    with pytest.raises(ValueError):
        profile.model_page(b"not json")
    assert profile.model_page(b'{"models": 3}')[0] == ()
