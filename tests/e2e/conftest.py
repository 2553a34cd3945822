"""The end-to-end suites run against both fronts: the router's own HTTP/1.1 server and
hypercorn serving the same router as an ASGI app (``server.frontend``). A test about what
only the native server does (raw HTTP/1.1 framing, its TLS listener) is marked
``native_only``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import FRONT


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "native_only: runs against the native front only (HTTP/1.1 specifics)")
    config.addinivalue_line(
        "markers", "front_given: runs once (its routers name their front themselves)")


@pytest.fixture(params=["native", "hypercorn"], autouse=True)
def front(request: pytest.FixtureRequest) -> Iterator[str]:
    """The front every router of the test gets (unless its config names one)."""
    if request.param != "native" and request.node.get_closest_marker("native_only"):
        pytest.skip("native front only")
    if request.param != "native" and request.node.get_closest_marker("front_given"):
        pytest.skip("the test names its front")
    token = FRONT.set(request.param)
    try:
        yield request.param
    finally:
        FRONT.reset(token)
