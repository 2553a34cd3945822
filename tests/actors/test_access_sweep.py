"""The AccessControl's task drops idle rate-limit keys held in memory on its timer (no
request sweeps them), so memory follows the clients in use, not every client ever seen."""

from __future__ import annotations

import trio
import trio.testing

from continuum.actors.access import SWEEP_PERIOD, AccessControl
from continuum.config import config_from_dict
from continuum.core.clock import now as clock
from continuum.observability.metrics import Metrics
from helpers import router_config


async def test_idle_keys_are_swept_on_the_timer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    config = config_from_dict(router_config(
        [{"name": "a", "url": "http://127.0.0.1:9", "models": ["m"]}],
        rate_limiting={"limits": {"per_client": {"requests_per_second": 100,
                                                 "burst_capacity": 1}}}), source="<test>")
    keeper = AccessControl(config, Metrics())
    memory, plan = keeper.memory, keeper.plan
    assert memory is not None and plan is not None
    started = clock()
    # Charged a second ago (idle now: the bucket refilled in 10 ms), and charged now (in use).
    assert memory.admit(plan.checks(None, "10.0.0.1", "m", 0), started - 1.0).allowed
    assert memory.admit(plan.checks(None, "10.0.0.2", "m", 0), started + 60.0).allowed
    assert len(memory) == 2
    nursery.start_soon(keeper.run)
    await trio.sleep(SWEEP_PERIOD / 2)
    assert len(memory) == 2  # not yet
    await trio.sleep(SWEEP_PERIOD)
    assert len(memory) == 1  # the idle one went; the one in use stays
