"""The Responses API through the router with the official openai SDK, against backends
that do not speak it: an OpenAI-compatible server without ``/v1/responses`` (bridged onto
chat completions), an Anthropic one and a Gemini one (bridged on through their
translators). Plain, streamed, a tool loop, ``previous_response_id`` chains, structured
output with ``.parse()``, the stored responses' endpoints, and how chains route."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pydantic
import pytest
import trio

from continuum import RouterHandle
from continuum.mock import MockUpstream, serve_mock
from helpers import router_config, start_router

MODEL = "bridged"
HANG_GUARD = 30
CHAT_ONLY = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
WEATHER_TOOL: dict[str, Any] = {
    "type": "function", "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]},
}
KINDS = ("openai", "anthropic", "gemini")


async def start_upstream(nursery: trio.Nursery, kind: str, models: tuple[str, ...] = (MODEL,),
                         name: str = "up") -> tuple[MockUpstream, dict[str, Any]]:
    """A mock of ``kind`` that has no Responses API, and its backend entry."""
    if kind == "openai":
        mock = MockUpstream(None, models, name=name, seed=0, endpoints=CHAT_ONLY)
        backend_type = "vllm"
    else:
        mock = MockUpstream(None, models, name=name, seed=0, api=kind)
        backend_type = kind
    address = await nursery.start(serve_mock, mock)
    backend = {"name": name, "type": backend_type, "url": f"http://{address}",
               "api_key": "k", "models": list(models)}
    return mock, backend


async def bridged_router(nursery: trio.Nursery, kind: str, **sections: Any
                         ) -> tuple[MockUpstream, RouterHandle]:
    mock, backend = await start_upstream(nursery, kind)
    router = await start_router(nursery, router_config([backend], **sections))
    return mock, router


def sdk(router: RouterHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                              timeout=20.0)


@pytest.mark.parametrize("kind", KINDS)
async def test_plain(nursery: trio.Nursery, kind: str) -> None:
    mock, router = await bridged_router(nursery, kind)
    with trio.fail_after(HANG_GUARD):
        response = await sdk(router).responses.create(
            model=MODEL, input="hello there", instructions="Be brief.",
            max_output_tokens=200, temperature=0.5, metadata={"k": "v"})
    assert response.status == "completed"
    assert response.output_text == "Mock reply to: hello there"
    assert response.id.startswith("resp_")
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.metadata == {"k": "v"} and response.instructions == "Be brief."
    assert "/v1/responses" not in mock.requests_by_path


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_events(nursery: trio.Nursery, kind: str) -> None:
    _, router = await bridged_router(nursery, kind)
    with trio.fail_after(HANG_GUARD):
        stream = await sdk(router).responses.create(model=MODEL, input="stream me",
                                                   stream=True)
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for expected in ("response.output_item.added", "response.content_part.added",
                     "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done"):
        assert expected in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text == final.output_text == "Mock reply to: stream me"
    assert {e.response.id for e in events if hasattr(e, "response")} == {final.id}


@pytest.mark.parametrize("kind", KINDS)
async def test_tool_loop_with_previous_response_id(nursery: trio.Nursery, kind: str) -> None:
    mock, router = await bridged_router(nursery, kind)
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        first = await client.responses.create(model=MODEL, input="What is the weather?",
                                              tools=[WEATHER_TOOL])  # type: ignore[list-item]
        calls = [item for item in first.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert "location" in json.loads(calls[0].arguments)
        second = await client.responses.create(
            model=MODEL, previous_response_id=first.id, tools=[WEATHER_TOOL],  # type: ignore[list-item]
            input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                    "output": "22 C and sunny"}])
    assert second.status == "completed" and second.output_text
    assert second.previous_response_id == first.id
    # The bridge sent the whole conversation: the first question went again.
    assert b"What is the weather?" in (mock.last_request_body or b"")


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_tool_call_events(nursery: trio.Nursery, kind: str) -> None:
    _, router = await bridged_router(nursery, kind)
    with trio.fail_after(HANG_GUARD):
        stream = await sdk(router).responses.create(
            model=MODEL, input="weather please", tools=[WEATHER_TOOL],  # type: ignore[list-item]
            stream=True)
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "location" in json.loads(done.arguments)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", KINDS)
async def test_chained_turns_carry_history(nursery: trio.Nursery, kind: str) -> None:
    mock, router = await bridged_router(nursery, kind)
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        one = await client.responses.create(model=MODEL, input="My name is Ada.")
        two = await client.responses.create(model=MODEL, input="And yours?",
                                            previous_response_id=one.id)
        three = await client.responses.create(model=MODEL, input="Bye",
                                              previous_response_id=two.id, stream=True)
        last = [event async for event in three][-1]
    assert two.output_text == "Mock reply to: And yours?"
    body = mock.last_request_body or b""
    for earlier in (b"My name is Ada.", b"Mock reply to: My name is Ada.", b"And yours?"):
        assert earlier in body
    assert last.type == "response.completed"


class Weather(pydantic.BaseModel):
    city: str
    temperature: float


async def test_text_format_parse(nursery: trio.Nursery) -> None:
    _, router = await bridged_router(nursery, "openai")
    with trio.fail_after(HANG_GUARD):
        parsed = await sdk(router).responses.parse(model=MODEL, input="weather as JSON",
                                                   text_format=Weather)
    assert isinstance(parsed.output_parsed, Weather)


@pytest.mark.parametrize("kind", KINDS)
async def test_stored_response_endpoints(nursery: trio.Nursery, kind: str) -> None:
    _, router = await bridged_router(nursery, kind)
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        made = await client.responses.create(
            model=MODEL, input=[{"role": "user", "content": "first"},
                                {"role": "user", "content": "second"}])
        fetched = await client.responses.retrieve(made.id)
        items = await client.responses.input_items.list(made.id, order="asc")
        await client.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(made.id)
        unstored = await client.responses.create(model=MODEL, input="x", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unstored.id)
    assert fetched.id == made.id and fetched.output_text == made.output_text
    texts = [item.content[0].text for item in items.data]  # type: ignore[union-attr]
    assert texts == ["first", "second"]


async def test_previous_response_not_found(nursery: trio.Nursery) -> None:
    _, router = await bridged_router(nursery, "openai")
    with trio.fail_after(HANG_GUARD), pytest.raises(openai.BadRequestError) as err:
        await sdk(router).responses.create(model=MODEL, input="x",
                                           previous_response_id="resp_nope")
    assert err.value.code == "previous_response_not_found"


async def test_builtin_tool_is_a_clear_400(nursery: trio.Nursery) -> None:
    mock, router = await bridged_router(nursery, "anthropic")
    with trio.fail_after(HANG_GUARD), pytest.raises(openai.BadRequestError) as err:
        await sdk(router).responses.create(model=MODEL, input="x",
                                           tools=[{"type": "web_search"}])
    assert "web_search" in err.value.message and err.value.param == "tools[0]"
    assert mock.requests_by_path.get("/v1/messages") is None


async def test_native_and_bridged_side_by_side(nursery: trio.Nursery) -> None:
    """A chain stays with the kind of backend that holds its previous turn; the router's
    GET finds a native response at the backend that made it."""
    native = MockUpstream(None, (MODEL,), name="native", seed=0)
    address = await nursery.start(serve_mock, native)
    bridged, bridged_backend = await start_upstream(nursery, "openai", name="bridged")
    router = await start_router(nursery, router_config([
        {"name": "native", "type": "openai", "url": f"http://{address}", "models": [MODEL]},
        bridged_backend]))
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        made = [await client.responses.create(model=MODEL, input=f"turn {i}")
                for i in range(4)]  # round robin: both kinds answer
        for response in made:
            follow = await client.responses.create(model=MODEL, input="more",
                                                   previous_response_id=response.id)
            assert follow.status == "completed"
            fetched = await client.responses.retrieve(response.id)
            assert fetched.output_text == response.output_text
    assert native.requests_by_path["/v1/responses"] >= 2
    assert bridged.requests_by_path["/v1/chat/completions"] >= 2


@pytest.mark.parametrize(("field_key", "field"), [
    ("auto", "max_completion_tokens"),  # OpenAI's own name for it
    ("max_tokens", "max_tokens"),  # the backend's max_tokens_field wins
])
async def test_responses_forced_to_bridge_on_an_openai_backend(
        nursery: trio.Nursery, field_key: str, field: str) -> None:
    mock = MockUpstream(None, (MODEL,), name="o", seed=0)
    address = await nursery.start(serve_mock, mock)
    router = await start_router(nursery, router_config([
        {"name": "o", "type": "openai", "url": f"http://{address}", "models": [MODEL],
         "responses": "bridge", "max_tokens_field": field_key}]))
    with trio.fail_after(HANG_GUARD):
        response = await sdk(router).responses.create(model=MODEL, input="hi",
                                                      max_output_tokens=50)
    assert response.output_text == "Mock reply to: hi"
    assert "/v1/responses" not in mock.requests_by_path
    sent = json.loads(mock.last_request_body or b"{}")
    assert sent[field] == 50


@pytest.mark.parametrize("bridged", [True, False], ids=["bridged", "native"])
async def test_stream_token_metrics(nursery: trio.Nursery, bridged: bool) -> None:
    """Responses streams report tokens in the terminal event's response.usage, bridged or
    passed through."""
    if bridged:
        _, router = await bridged_router(nursery, "openai")
    else:
        native = MockUpstream(None, (MODEL,), name="native", seed=0)
        address = await nursery.start(serve_mock, native)
        router = await start_router(nursery, router_config([
            {"name": "native", "type": "openai", "url": f"http://{address}",
             "models": [MODEL]}]))
    with trio.fail_after(HANG_GUARD):
        stream = await sdk(router).responses.create(model=MODEL, input="count me",
                                                    stream=True)
        final = [e async for e in stream][-1].response  # type: ignore[union-attr]
        await trio.sleep(0.3)  # the metrics sink drains every 100 ms
        async with httpx.AsyncClient(base_url=router.url) as http:
            text = (await http.get("/metrics")).text
    assert final.usage is not None
    expected = final.usage.output_tokens
    line = next(line for line in text.splitlines()
                if line.startswith("continuum_tokens_total") and 'direction="completion"' in line)
    assert float(line.rsplit(" ", 1)[1]) == expected
