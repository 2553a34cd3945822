"""trio-continuum: a high-performance LLM API router on trio.

Embed it in a trio program::

    async with trio.open_nursery() as nursery:
        router = await nursery.start(continuum.serve, continuum.load_config("configs/demo.yaml"))
        ...
        router.shutdown()
"""

# How the package is laid out, and the one rule its imports follow.
#
# One folder per layer. Sans-IO layers are plain functions and classes over bytes and
# values, tested without sockets or a clock; only the I/O layers (net, actors, testing)
# and this face import trio.
#
#   core           sans-IO policy: strategies, circuit breaker, health state, retry pacing,
#                  errors in both shapes, SSE, messages between actors, the clock
#   config         the schema, units, validation, loading, rendering (sans-IO)
#   apis           translation between the client and backend APIs, backend profiles,
#                  build_call (sans-IO)
#   observability  metric definitions and merging, tracing, logging (sans-IO)
#   net            trio I/O: the HTTP server, the upstream pools, Redis, WebSocket relay
#   testing        the mock upstream and other test doubles, public like trio.testing
#   actors         the router's actors and the request path that runs through them
#   the face       continuum/__init__.py, __main__.py, cli.py, runner.py, admin_cli.py, mock.py,
#                  asgi.py
#
# A layer imports its own modules and the layers after its name below, nothing else:
# nothing imports upward, not even under TYPE_CHECKING (declare a Protocol in the lower
# layer instead), and no modules import each other in a circle. tests/test_layout.py reads
# these lines and holds the code to them.
#
#   core           imports nothing of continuum
#   config         imports core
#   apis           imports core, config
#   observability  imports core, config
#   net            imports core, observability
#   testing        imports core, config, net
#   actors         imports core, config, apis, net, observability, testing
#   the face       imports anything
#
# New subsystems land in the layer they belong to: algorithms and wire facts in core,
# translation in apis, sockets and protocols in net, the tasks that own state in actors.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .actors.supervisor import RouterHandle as RouterHandle
    from .actors.supervisor import serve as serve
    from .config import BackendConfig as BackendConfig
    from .config import Config as Config
    from .config import ConfigError as ConfigError
    from .config import config_from_dict as config_from_dict
    from .config import dump_effective_config as dump_effective_config
    from .config import generate_config as generate_config
    from .config import load_config as load_config
    from .config import parse_config as parse_config
    from .core.errors import RouterError as RouterError

__version__ = "0.1.0"

__all__ = [
    "BackendConfig",
    "Config",
    "ConfigError",
    "RouterError",
    "RouterHandle",
    "__version__",
    "config_from_dict",
    "dump_effective_config",
    "generate_config",
    "load_config",
    "parse_config",
    "serve",
]

# The public names are imported when first read (PEP 562), not with the package: every
# ``continuum.*`` module, the CLI's included, imports this file first, and trio with the
# router's whole graph costs ~0.2 s that ``trio-continuum --help``, ``check``,
# ``generate-config`` and ``admin`` need not pay; only ``run`` imports it, through
# ``continuum.runner`` (docs/operations.md, "Start-up").
_HOMES: Final[dict[str, str]] = {
    "RouterHandle": ".actors.supervisor",
    "serve": ".actors.supervisor",
    "BackendConfig": ".config",
    "Config": ".config",
    "ConfigError": ".config",
    "config_from_dict": ".config",
    "dump_effective_config": ".config",
    "generate_config": ".config",
    "load_config": ".config",
    "parse_config": ".config",
    "RouterError": ".core.errors",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # bound like an import: later reads are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
