"""configs/demo.yaml as a newcomer uses it: the real router and its in-process mocks, driven
by the official openai SDK, litellm and langchain-openai (issue 9, item 7).

Every SDK here is synchronous (or runs its own asyncio loop), so each call runs in a worker
thread (``trio.to_thread.run_sync``) against the router on an ephemeral loopback port, with
client timeouts, no client retries, and a trio deadline around it. Name lookups of anything
but loopback are refused and recorded: litellm must never fetch its remote cost map or
anything else (``LITELLM_LOCAL_MODEL_COST_MAP``, ``LITELLM_OFFLINE_MODE``).
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pydantic
import pytest
import trio
import yaml

from continuum import RouterHandle
from continuum.core.sse import PassThrough
from helpers import start_router

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ["LITELLM_TELEMETRY"] = "False"

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
MODEL = "demo-chat"
CALL_TIMEOUT = 60  # seconds per SDK call: generous, the machine is shared
_T = TypeVar("_T")


@pytest.fixture
async def router(nursery: trio.Nursery) -> RouterHandle:
    data = yaml.safe_load(DEMO.read_text())
    data["server"]["bind_address"] = "127.0.0.1:0"
    return await start_router(nursery, data)


@pytest.fixture
def base_url(router: RouterHandle) -> str:
    return f"{router.url}/v1"


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", None, "", "0.0.0.0"})


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and record) every name lookup except loopback, for the test's duration."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOCAL_HOSTS:
            asked.append(str(name))
            raise socket.gaierror(socket.EAI_NONAME, f"test: no network for {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield asked
    assert asked == [], f"a client tried to reach the internet: {asked}"


async def in_thread(fn: Callable[[], _T]) -> _T:
    """Run a blocking SDK call in a thread, bounded (the thread is abandoned on timeout)."""
    with trio.fail_after(CALL_TIMEOUT + 10):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0,
                         timeout=CALL_TIMEOUT)


# -- the models a newcomer parses into -------------------------------------------------------


class Mood(enum.StrEnum):
    happy = "happy"
    calm = "calm"
    grumpy = "grumpy"


class Pet(pydantic.BaseModel):
    name: str
    species: str
    age: int = pydantic.Field(ge=0, le=40)


class Person(pydantic.BaseModel):
    name: str
    mood: Mood
    pets: list[Pet]
    nickname: str | None
    scores: list[float]


class GetWeather(pydantic.BaseModel):
    """Current weather for a city."""

    location: str
    unit: Mood | None = None


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


# -- the official openai SDK ----------------------------------------------------------------------


async def test_openai_parse_into_a_pydantic_model(base_url: str) -> None:
    def run() -> list[tuple[Person | None, str | None]]:
        client = oai(base_url)
        results = []
        for parse in (client.chat.completions.parse, client.beta.chat.completions.parse):
            completion = parse(
                model=MODEL, messages=[{"role": "user", "content": "Describe someone."}],
                response_format=Person,
            )
            choice = completion.choices[0]
            results.append((choice.message.parsed, choice.finish_reason))
        return results

    for parsed, finish in await in_thread(run):
        assert isinstance(parsed, Person) and finish == "stop"
        assert isinstance(parsed.mood, Mood)
        assert parsed.pets and all(0 <= p.age <= 40 for p in parsed.pets)


async def test_openai_two_round_tool_loop(base_url: str) -> None:
    def run() -> tuple[list[Any], str, str | None]:
        client = oai(base_url)
        messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
        first = client.chat.completions.create(model=MODEL, messages=messages,
                                               tools=[WEATHER_TOOL])  # type: ignore[list-item]
        choice = first.choices[0]
        calls = choice.message.tool_calls or []
        messages.append(choice.message.model_dump(exclude_none=True))
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"})
        second = client.chat.completions.create(model=MODEL, messages=messages,
                                                tools=[WEATHER_TOOL])  # type: ignore[list-item]
        return calls, choice.finish_reason, second.choices[0].message.content

    calls, finish, answer = await in_thread(run)
    assert finish == "tool_calls"
    assert [c.function.name for c in calls] == ["get_weather"]
    arguments = json.loads(calls[0].function.arguments)
    assert set(arguments) == {"location", "unit"} and arguments["unit"] in ("celsius",
                                                                             "fahrenheit")
    assert answer == "Mock reply to: sunny, 21C"


async def test_openai_n_choices(base_url: str) -> None:
    def run() -> Any:
        return oai(base_url).chat.completions.create(
            model=MODEL, n=3, messages=[{"role": "user", "content": "hi"}])

    completion = await in_thread(run)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len({c.message.content for c in completion.choices}) == 3
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3 * 16  # demo: stream_chunks 16


async def test_openai_responses_plain_and_streamed(base_url: str) -> None:
    def run() -> tuple[Any, list[str], Any]:
        client = oai(base_url)
        plain = client.responses.create(model=MODEL, input="hello responses",
                                        instructions="be brief")
        with client.responses.stream(model=MODEL, input="hello stream") as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        return plain, kinds, final

    plain, kinds, final = await in_thread(run)
    assert plain.status == "completed" and plain.output_text == "Mock reply to: hello responses"
    assert plain.usage is not None and plain.usage.output_tokens == 16
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert final.output_text == "Mock reply to: hello stream"


async def test_openai_responses_tool_round_trip_with_previous_response_id(
    base_url: str, router: RouterHandle
) -> None:
    tool = {"type": "function", "name": "get_weather",
            "parameters": GetWeather.model_json_schema()}

    def run() -> tuple[Any, Any]:
        client = oai(base_url)
        first = client.responses.create(model=MODEL, input="Weather in Lima?",
                                        tools=[tool])  # type: ignore[list-item]
        call = first.output[0]
        assert call.type == "function_call"
        second = client.responses.create(
            model=MODEL, previous_response_id=first.id, tools=[tool],  # type: ignore[list-item]
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": "cloudy, 18C"}],
        )
        return first, second

    first, second = await in_thread(run)
    assert GetWeather.model_validate_json(first.output[0].arguments)
    assert second.previous_response_id == first.id
    assert second.output_text == "Mock reply to: cloudy, 18C"
    # RoundRobin sent the two rounds to different mocks: they share the router's store.
    served = {name: m.requests_by_path.get("/v1/responses", 0) for name, m in
              router.mocks.items()}
    assert served == {"mock-a": 1, "mock-b": 1}


# -- litellm -------------------------------------------------------------------------------------


@pytest.fixture
def litellm() -> Any:
    """Imported under the ``no_internet`` guard (autouse fixtures come first)."""
    import litellm

    litellm.telemetry = False
    return litellm


async def test_litellm_completion_tools_and_stream(litellm: Any, base_url: str) -> None:
    common = {"model": f"openai/{MODEL}", "api_base": base_url, "api_key": "unused",
              "timeout": CALL_TIMEOUT, "num_retries": 0}

    def run() -> tuple[Any, Any, str]:
        plain = litellm.completion(messages=[{"role": "user", "content": "hi"}], **common)
        tools = litellm.completion(
            messages=[{"role": "user", "content": "weather in Oslo?"}], tools=[WEATHER_TOOL],
            **common,
        )
        pieces = [
            chunk.choices[0].delta.content or ""
            for chunk in litellm.completion(
                messages=[{"role": "user", "content": "stream me"}], stream=True, **common)
        ]
        return plain, tools, "".join(pieces)

    plain, tools, streamed = await in_thread(run)
    assert plain.choices[0].message.content == "Mock reply to: hi"
    [call] = tools.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit")
    assert streamed == "Mock reply to: stream me"


async def test_litellm_acompletion_and_responses(litellm: Any, base_url: str) -> None:
    common = {"api_base": base_url, "api_key": "unused", "timeout": CALL_TIMEOUT}

    async def both() -> tuple[Any, Any]:
        chat = await litellm.acompletion(
            model=f"openai/{MODEL}", messages=[{"role": "user", "content": "async hi"}],
            num_retries=0, **common)
        response = await litellm.aresponses(model=f"openai/{MODEL}", input="async responses",
                                            **common)
        return chat, response

    def run() -> tuple[Any, Any, Any]:
        chat, aresponse = asyncio.run(both())
        response = litellm.responses(model=f"openai/{MODEL}", input="sync responses", **common)
        return chat, aresponse, response

    chat, aresponse, response = await in_thread(run)
    assert chat.choices[0].message.content == "Mock reply to: async hi"
    texts = [
        part.text for r in (aresponse, response) for item in r.output
        if item.type == "message" for part in item.content
    ]
    assert texts == ["Mock reply to: async responses", "Mock reply to: sync responses"]


# -- langchain-openai ------------------------------------------------------------------------------


def chat_model(base_url: str, **extra: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=base_url, api_key="unused",  # type: ignore[arg-type]
                      max_retries=0, timeout=CALL_TIMEOUT, **extra)


async def test_langchain_invoke_stream_tools_structured(base_url: str) -> None:
    def run() -> tuple[Any, str, Any, Any]:
        model = chat_model(base_url)
        invoked = model.invoke("hello langchain")
        streamed = "".join(str(chunk.content) for chunk in model.stream("stream langchain"))
        with_tools = model.bind_tools([GetWeather]).invoke("What's the weather in Tokyo?")
        structured = model.with_structured_output(Person).invoke("Describe someone.")
        return invoked, streamed, with_tools, structured

    invoked, streamed, with_tools, structured = await in_thread(run)
    assert invoked.content == "Mock reply to: hello langchain"
    assert streamed == "Mock reply to: stream langchain"
    [call] = with_tools.tool_calls
    assert call["name"] == "GetWeather" and isinstance(call["args"]["location"], str)
    assert isinstance(structured, Person)


async def test_langchain_responses_api(base_url: str) -> None:
    def run() -> tuple[Any, Any]:
        model = chat_model(base_url, use_responses_api=True)
        return model.invoke("hello responses"), model.bind_tools([GetWeather]).invoke(
            "weather in Lima?")

    answer, with_tools = await in_thread(run)
    assert answer.text == "Mock reply to: hello responses"
    [call] = with_tools.tool_calls
    assert call["name"] == "GetWeather"


# -- the router's pass-through of Responses streams ------------------------------------------------


def test_responses_stream_ends_on_its_terminal_event_even_when_it_is_large() -> None:
    """``response.completed`` carries the whole response, so its name is kilobytes before
    the stream's end, possibly split between two chunks."""
    final = (b'event: response.completed\ndata: {"type":"response.completed",'
             b'"sequence_number":9,"response":{"output":"' + b"x" * 5000 + b'"}}\n\n')
    for cut in (10, 30, 40, 45, 60, 2000):
        stream = PassThrough("/v1/responses")
        stream.feed(b'event: response.created\ndata: {"type":"response.created"}\n\n')
        stream.feed(final[:cut])
        stream.feed(final[cut:])
        assert stream.finish() == b"" and not stream.truncated, cut
    cut_short = PassThrough("/v1/responses")
    cut_short.feed(b'event: response.output_text.delta\ndata: {"type":"response.output_text'
                   b'.delta","delta":"response.completed"}\n\n')
    assert cut_short.finish() != b"" and cut_short.truncated


async def test_stream_through_the_router_is_not_flagged_truncated(base_url: str) -> None:
    body = {"model": MODEL, "input": "x " * 2000, "stream": True}
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT) as client:
        with trio.fail_after(CALL_TIMEOUT):
            r = await client.post(f"{base_url}/responses", json=body)
    assert r.status_code == 200
    assert b"event: error" not in r.content
    assert r.content.rstrip().endswith(b"}}")

