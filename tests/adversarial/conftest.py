"""Every case of the adversarial suite that uses a ``router`` fixture (a
:class:`harness.RouterProcess`) runs inside :func:`harness.case_guard`: a second client
probes ``/health`` throughout, and afterwards the router must be alive, hold no leftover
connection and not have grown beyond a loose RSS bound."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import RouterProcess, case_guard


@pytest.fixture(autouse=True)
def _case_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    if "router" not in request.fixturenames:
        yield
        return
    router = request.getfixturevalue("router")
    if not isinstance(router, RouterProcess):
        yield
        return
    with case_guard(router):
        yield
