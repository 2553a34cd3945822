"""Configuration: the schema (frozen msgspec Structs), units, validation, loading (YAML or
TOML, ``${ENV}``) and rendering with secrets masked.

``config`` sits at the bottom of the package, next to ``core``: it imports nothing of
``continuum`` but ``core``, and every other layer may read it. Its modules, in the order they
build on each other: ``_schema`` (the Structs and :class:`ConfigError`), ``_units``
(durations, sizes, addresses), ``_text`` (key paths and masking in messages),
``_validation`` (the walk along the schema, the cross-field checks), ``_toml`` (TOML read
and written), ``_loading`` (YAML or TOML, and ``${ENV}``), ``_secrets`` (where secrets are,
masked and restored), ``_render`` (the effective config, warnings), ``_changes`` (diffs,
patches, client documents: what the admin API and hot reload build on) and ``_template``
(``generate_config``).
"""

from __future__ import annotations

from ._changes import Change as Change
from ._changes import Keys as Keys
from ._changes import canonical_patch as canonical_patch
from ._changes import carry as carry
from ._changes import covered as covered
from ._changes import diff_configs as diff_configs
from ._changes import editable_document as editable_document
from ._changes import merge_patch as merge_patch
from ._changes import parse_document as parse_document
from ._changes import summarize as summarize
from ._loading import config_from_dict as config_from_dict
from ._loading import config_search_path as config_search_path
from ._loading import load_config as load_config
from ._loading import parse_config as parse_config
from ._render import config_warnings as config_warnings
from ._render import dump_effective_config as dump_effective_config
from ._render import limit_warnings as limit_warnings
from ._render import unserved_model_warnings as unserved_model_warnings
from ._schema import AdminAuthConfig as AdminAuthConfig
from ._schema import AdminConfig as AdminConfig
from ._schema import ApiKeyEntry as ApiKeyEntry
from ._schema import ApiKeysConfig as ApiKeysConfig
from ._schema import BackendConfig as BackendConfig
from ._schema import CacheConfig as CacheConfig
from ._schema import CircuitBreakerConfig as CircuitBreakerConfig
from ._schema import Config as Config
from ._schema import ConfigError as ConfigError
from ._schema import CorsConfig as CorsConfig
from ._schema import DeduplicationConfig as DeduplicationConfig
from ._schema import FilesConfig as FilesConfig
from ._schema import HealthChecksConfig as HealthChecksConfig
from ._schema import HotReloadConfig as HotReloadConfig
from ._schema import HttpClientConfig as HttpClientConfig
from ._schema import LimitConfig as LimitConfig
from ._schema import LoggingConfig as LoggingConfig
from ._schema import MetricsAuthConfig as MetricsAuthConfig
from ._schema import MetricsConfig as MetricsConfig
from ._schema import MockConfig as MockConfig
from ._schema import MockFailure as MockFailure
from ._schema import OptionalMetricsConfig as OptionalMetricsConfig
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
from ._secrets import masked_builtins as masked_builtins
from ._secrets import restore_secrets as restore_secrets
from ._template import generate_config as generate_config
from ._toml import dump_toml as dump_toml
from ._units import DURATION_HELP as DURATION_HELP
from ._units import BindAddress as BindAddress
from ._units import parse_bind_address as parse_bind_address
from ._units import parse_duration as parse_duration
from ._units import parse_size as parse_size

__all__ = [
    "DURATION_HELP",
    "AdminAuthConfig",
    "AdminConfig",
    "ApiKeyEntry",
    "ApiKeysConfig",
    "BackendConfig",
    "BindAddress",
    "CacheConfig",
    "Change",
    "CircuitBreakerConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "DeduplicationConfig",
    "FilesConfig",
    "HealthChecksConfig",
    "HotReloadConfig",
    "HttpClientConfig",
    "Keys",
    "LimitConfig",
    "LoggingConfig",
    "MetricsAuthConfig",
    "MetricsConfig",
    "MockConfig",
    "MockFailure",
    "OptionalMetricsConfig",
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
    "canonical_patch",
    "carry",
    "config_from_dict",
    "config_search_path",
    "config_warnings",
    "covered",
    "diff_configs",
    "dump_effective_config",
    "dump_toml",
    "editable_document",
    "generate_config",
    "limit_warnings",
    "load_config",
    "masked_builtins",
    "merge_patch",
    "parse_bind_address",
    "parse_config",
    "parse_document",
    "parse_duration",
    "parse_size",
    "restore_secrets",
    "summarize",
    "unserved_model_warnings",
]
