"""Test doubles, public like ``trio.testing``: the mock LLM upstream (OpenAI, Anthropic and
Gemini APIs, with latency, pacing and failures to inject), its Realtime (WebSocket) mode, and
a ``redis-server`` launcher (:mod:`continuum.testing.redis_server`).

The mock is written in its own words: it imports ``continuum.core``, ``continuum.config``
and ``continuum.net``, never the translators it is tested against.
"""

from __future__ import annotations

from ._realtime import MockRealtime as MockRealtime
from ._realtime import RealtimeScript as RealtimeScript
from ._realtime import serve_mock_realtime as serve_mock_realtime
from ._responses import ResponseStore as ResponseStore
from ._upstream import MockUpstream as MockUpstream
from ._upstream import open_mock_server as open_mock_server
from ._upstream import serve_mock as serve_mock

__all__ = [
    "MockRealtime",
    "MockUpstream",
    "RealtimeScript",
    "ResponseStore",
    "open_mock_server",
    "serve_mock",
    "serve_mock_realtime",
]
