"""An async Redis client on trio streams (RESP parsed by hiredis), for shared router state.

Why not a general-purpose client: the one measured here (``benches/redis_client.py``) costs
several times a minimal round trip on trio, and the router pays it on every request that a
shared limit applies to. This client does the few things the router needs — commands,
scripts by SHA-1, pipelining of concurrent calls, TLS, AUTH, timeouts, back-off — and no
more. See ``_connection`` and ``_client`` for how.
"""

from ._client import Arg as Arg
from ._client import RedisClient as RedisClient
from ._client import RedisStatistics as RedisStatistics
from ._client import Script as Script
from ._connection import Reply as Reply
from ._errors import RedisAuthError as RedisAuthError
from ._errors import RedisConfigError as RedisConfigError
from ._errors import RedisConnectionError as RedisConnectionError
from ._errors import RedisError as RedisError
from ._errors import RedisNoScriptError as RedisNoScriptError
from ._errors import RedisProtocolError as RedisProtocolError
from ._errors import RedisReplyError as RedisReplyError
from ._errors import RedisTimeoutError as RedisTimeoutError
from ._errors import RedisUnavailableError as RedisUnavailableError
from ._options import RedisOptions as RedisOptions

__all__ = [
    "Arg",
    "RedisAuthError",
    "RedisClient",
    "RedisConfigError",
    "RedisConnectionError",
    "RedisError",
    "RedisNoScriptError",
    "RedisOptions",
    "RedisProtocolError",
    "RedisReplyError",
    "RedisStatistics",
    "RedisTimeoutError",
    "RedisUnavailableError",
    "Reply",
    "Script",
]
