"""Shared test helpers: real routers and mock upstreams on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import trio

from continuum import RouterHandle, config_from_dict, serve
from continuum._config import MockConfig
from continuum.mock import MockUpstream, serve_mock


async def start_mock(
    nursery: trio.Nursery,
    models: Sequence[str] = ("mock-model",),
    config: MockConfig | None = None,
    *,
    name: str = "mock",
    seed: int | None = 0,
) -> tuple[MockUpstream, str]:
    """A mock upstream on 127.0.0.1:<ephemeral>; returns it and its base URL."""
    upstream = MockUpstream(config, models, name=name, seed=seed)
    address = await nursery.start(serve_mock, upstream)
    return upstream, f"http://{address}"


def router_config(
    backends: Sequence[Mapping[str, Any]], **sections: Mapping[str, Any]
) -> dict[str, Any]:
    """A config dict bound to 127.0.0.1:0 with health checks off unless given."""
    data: dict[str, Any] = {
        "server": {"bind_address": "127.0.0.1:0", "shutdown_timeout": 5},
        "health_checks": {"enabled": False},
        "backends": list(backends),
    }
    for key, value in sections.items():
        base = data.get(key, {})
        data[key] = {**base, **value} if isinstance(base, dict) else value
    return data


async def start_router(nursery: trio.Nursery, data: Mapping[str, Any]) -> RouterHandle:
    """Start a router from a config dict; returns its handle once it is listening."""
    handle: RouterHandle = await nursery.start(serve, config_from_dict(data, source="<test>"))
    return handle
