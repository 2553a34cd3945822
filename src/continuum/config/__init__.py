"""Configuration: the schema (frozen msgspec Structs), units, validation, loading (YAML,
``${ENV}``) and rendering with secrets masked.

``config`` sits at the bottom of the package, next to ``core``: it imports nothing of
``continuum`` but ``core``, and every other layer may read it. Its modules, in the order they
build on each other: ``_schema`` (the Structs and :class:`ConfigError`), ``_units``
(durations, sizes, addresses), ``_text`` (key paths and masking in messages),
``_validation`` (the walk along the schema, the cross-field checks), ``_loading`` (YAML and
``${ENV}``), ``_render`` (the effective config, warnings) and ``_template``
(``generate_config``).
"""

from __future__ import annotations

from ._loading import config_from_dict as config_from_dict
from ._loading import load_config as load_config
from ._loading import parse_config as parse_config
from ._render import config_warnings as config_warnings
from ._render import dump_effective_config as dump_effective_config
from ._render import limit_warnings as limit_warnings
from ._render import unserved_model_warnings as unserved_model_warnings
from ._schema import ApiKeyEntry as ApiKeyEntry
from ._schema import ApiKeysConfig as ApiKeysConfig
from ._schema import BackendConfig as BackendConfig
from ._schema import CacheConfig as CacheConfig
from ._schema import Config as Config
from ._schema import ConfigError as ConfigError
from ._schema import CorsConfig as CorsConfig
from ._schema import DeduplicationConfig as DeduplicationConfig
from ._schema import FilesConfig as FilesConfig
from ._schema import HealthChecksConfig as HealthChecksConfig
from ._schema import HttpClientConfig as HttpClientConfig
from ._schema import LimitConfig as LimitConfig
from ._schema import LoggingConfig as LoggingConfig
from ._schema import MetricsAuthConfig as MetricsAuthConfig
from ._schema import MetricsConfig as MetricsConfig
from ._schema import MockConfig as MockConfig
from ._schema import MockFailure as MockFailure
from ._schema import RateLimitingConfig as RateLimitingConfig
from ._schema import RateLimitsConfig as RateLimitsConfig
from ._schema import RealtimeConfig as RealtimeConfig
from ._schema import RedisConfig as RedisConfig
from ._schema import RequestConfig as RequestConfig
from ._schema import ResponsesConfig as ResponsesConfig
from ._schema import ResponsesRedisConfig as ResponsesRedisConfig
from ._schema import RoutingConfig as RoutingConfig
from ._schema import ServerConfig as ServerConfig
from ._schema import ServerTlsConfig as ServerTlsConfig
from ._schema import TracingConfig as TracingConfig
from ._template import generate_config as generate_config
from ._units import DURATION_HELP as DURATION_HELP
from ._units import BindAddress as BindAddress
from ._units import parse_bind_address as parse_bind_address
from ._units import parse_duration as parse_duration
from ._units import parse_size as parse_size

__all__ = [
    "DURATION_HELP",
    "ApiKeyEntry",
    "ApiKeysConfig",
    "BackendConfig",
    "BindAddress",
    "CacheConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "DeduplicationConfig",
    "FilesConfig",
    "HealthChecksConfig",
    "HttpClientConfig",
    "LimitConfig",
    "LoggingConfig",
    "MetricsAuthConfig",
    "MetricsConfig",
    "MockConfig",
    "MockFailure",
    "RateLimitingConfig",
    "RateLimitsConfig",
    "RealtimeConfig",
    "RedisConfig",
    "RequestConfig",
    "ResponsesConfig",
    "ResponsesRedisConfig",
    "RoutingConfig",
    "ServerConfig",
    "ServerTlsConfig",
    "TracingConfig",
    "config_from_dict",
    "config_warnings",
    "dump_effective_config",
    "generate_config",
    "limit_warnings",
    "load_config",
    "parse_bind_address",
    "parse_config",
    "parse_duration",
    "parse_size",
    "unserved_model_warnings",
]
