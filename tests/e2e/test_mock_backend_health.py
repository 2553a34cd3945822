"""``type: mock`` backends of every API become healthy without an api_key (the in-process
mock asks for a key, as the real APIs do; the router gives it one)."""

from __future__ import annotations

import httpx
import pytest
import trio

from helpers import router_config, start_router


@pytest.mark.parametrize("api", ["openai", "anthropic", "gemini"])
async def test_mock_backend_without_api_key_is_healthy_and_answers(
    nursery: trio.Nursery, api: str
) -> None:
    config = router_config(
        [{"name": "m", "type": "mock", "models": ["mock-model"], "mock": {"api": api}}],
        health_checks={"enabled": True, "interval": 0.2, "timeout": 1.0,
                       "unhealthy_threshold": 1, "healthy_threshold": 1},
    )
    router = await start_router(nursery, config)
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        with trio.fail_after(5):
            await trio.sleep(0.5)  # a few probe rounds
            health = (await client.get("/admin/health")).json()
        [backend] = health["backends"]
        assert backend["healthy"] is True, backend
        response = await client.post("/v1/chat/completions", json={
            "model": "mock-model", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
