"""Clients that speak only the Responses API, through the router to backends that do not:
OpenAI's Agents SDK running a tool-calling loop, and litellm's ``responses()``. They run
on asyncio in a worker thread (bounded; no network: the Agents SDK's tracing is off)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, TypeVar

import openai
import pytest
import trio
from test_responses_e2e import KINDS, MODEL, start_upstream

from continuum import RouterHandle
from helpers import router_config, start_router

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ["LITELLM_TELEMETRY"] = "False"

CALL_TIMEOUT = 60
_T = TypeVar("_T")


async def in_thread(fn: Callable[[], _T]) -> _T:
    with trio.fail_after(CALL_TIMEOUT + 10):
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


async def bridged(nursery: trio.Nursery, kind: str) -> tuple[Any, RouterHandle]:
    mock, backend = await start_upstream(nursery, kind)
    return mock, await start_router(nursery, router_config([backend]))


@pytest.mark.parametrize("kind", KINDS)
async def test_agents_sdk_tool_loop(nursery: trio.Nursery, kind: str) -> None:
    agents = pytest.importorskip("agents")
    mock, router = await bridged(nursery, kind)
    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(location: str) -> str:
        """The weather in a city."""
        calls.append(location)
        return f"22 C and sunny in {location}"

    def run() -> Any:
        async def main() -> Any:
            client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x",
                                        max_retries=0, timeout=CALL_TIMEOUT)
            agent = agents.Agent(
                name="weather", instructions="Answer with the weather tool.",
                tools=[get_weather],
                model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client))
            return await agents.Runner.run(agent, "What is the weather in Paris?",
                                           max_turns=4)
        return asyncio.run(main())

    result = await in_thread(run)
    assert len(calls) >= 1, "the agent never called its tool"
    assert isinstance(result.final_output, str) and result.final_output
    # The last turn reached the backend with the tool's output in it (as the backend's
    # own shape: chat tool message, Anthropic tool_result, Gemini functionResponse).
    assert b"22 C and sunny" in (mock.last_request_body or b"")


@pytest.mark.parametrize("kind", KINDS)
async def test_litellm_responses(nursery: trio.Nursery, kind: str) -> None:
    mock, router = await bridged(nursery, kind)
    import litellm

    litellm.telemetry = False
    common: dict[str, Any] = {"api_base": router.url + "/v1", "api_key": "x",
                              "timeout": CALL_TIMEOUT}

    def run() -> tuple[Any, Any, list[str]]:
        async def both() -> tuple[Any, list[str]]:
            first = await litellm.aresponses(model=f"openai/{MODEL}", input="hello there",
                                             **common)
            stream = await litellm.aresponses(model=f"openai/{MODEL}", input="stream it",
                                              stream=True, **common)
            kinds = [event.type async for event in stream]
            return first, kinds
        first, kinds = asyncio.run(both())
        second = litellm.responses(model=f"openai/{MODEL}", input="and again",
                                   previous_response_id=first.id, **common)
        return first, second, kinds

    first, second, kinds = await in_thread(run)
    texts = [part.text for item in first.output if item.type == "message"
             for part in item.content]
    assert texts and all(texts)
    assert [item.type for item in second.output] == ["message"]
    # litellm wraps the router's ids in its own; unwrapped, the chain reached the router's
    # store: the first turn went to the backend again with the second.
    body = mock.last_request_body or b""
    assert b"hello there" in body and b"and again" in body
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
