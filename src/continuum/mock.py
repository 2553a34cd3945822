"""``continuum.mock``: the mock upstream under the name it was first published as.

The mock lives in :mod:`continuum.testing` (the test doubles); this module keeps
``from continuum.mock import MockUpstream, serve_mock`` and ``python -m continuum.mock``
(the same as ``trio-continuum mock``) working.
"""

from __future__ import annotations

import sys

from .cli import add_mock_arguments as add_mock_arguments
from .cli import mock_config_from_args as mock_config_from_args
from .cli import mock_main as main
from .cli import parse_mock_failure as parse_mock_failure
from .cli import run_mock_from_args as run_mock_from_args
from .testing import MockUpstream as MockUpstream
from .testing import ResponseStore as ResponseStore
from .testing import serve_mock as serve_mock

__all__ = [
    "MockUpstream",
    "ResponseStore",
    "add_mock_arguments",
    "main",
    "mock_config_from_args",
    "parse_mock_failure",
    "run_mock_from_args",
    "serve_mock",
]

if __name__ == "__main__":
    sys.exit(main())
