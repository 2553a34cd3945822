"""Configuration: the schema (frozen msgspec Structs), units, validation, loading (YAML,
``${ENV}``) and rendering with secrets masked.

Config sits at the bottom of the package, next to ``core``: it imports nothing of
``continuum`` but ``core``, and every layer may read it.
"""

from __future__ import annotations

from ._validation import ApiKeyEntry as ApiKeyEntry
from ._validation import ApiKeysConfig as ApiKeysConfig
from ._validation import BackendConfig as BackendConfig
from ._validation import BindAddress as BindAddress
from ._validation import CacheConfig as CacheConfig
from ._validation import Config as Config
from ._validation import ConfigError as ConfigError
from ._validation import DeduplicationConfig as DeduplicationConfig
from ._validation import HealthChecksConfig as HealthChecksConfig
from ._validation import HttpClientConfig as HttpClientConfig
from ._validation import LoggingConfig as LoggingConfig
from ._validation import MetricsAuthConfig as MetricsAuthConfig
from ._validation import MetricsConfig as MetricsConfig
from ._validation import MockConfig as MockConfig
from ._validation import MockFailure as MockFailure
from ._validation import RequestConfig as RequestConfig
from ._validation import RoutingConfig as RoutingConfig
from ._validation import ServerConfig as ServerConfig
from ._validation import Strategy as Strategy
from ._validation import TracingConfig as TracingConfig
from ._validation import config_from_dict as config_from_dict
from ._validation import config_warnings as config_warnings
from ._validation import dump_effective_config as dump_effective_config
from ._validation import generate_config as generate_config
from ._validation import load_config as load_config
from ._validation import parse_bind_address as parse_bind_address
from ._validation import parse_config as parse_config
from ._validation import parse_duration as parse_duration
from ._validation import parse_size as parse_size
from ._validation import unserved_model_warnings as unserved_model_warnings

__all__ = [
    "ApiKeyEntry",
    "ApiKeysConfig",
    "BackendConfig",
    "BindAddress",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DeduplicationConfig",
    "HealthChecksConfig",
    "HttpClientConfig",
    "LoggingConfig",
    "MetricsAuthConfig",
    "MetricsConfig",
    "MockConfig",
    "MockFailure",
    "RequestConfig",
    "RoutingConfig",
    "ServerConfig",
    "Strategy",
    "TracingConfig",
    "config_from_dict",
    "config_warnings",
    "dump_effective_config",
    "generate_config",
    "load_config",
    "parse_bind_address",
    "parse_config",
    "parse_duration",
    "parse_size",
    "unserved_model_warnings",
]
