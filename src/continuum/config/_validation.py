"""Validation: the walk of a parsed document along the schema, and the checks across fields.

The walk rejects unknown keys (with a suggestion), folds the Rust router's alias keys into
their canonical place, parses durations and sizes and checks every type and bound; the
cross-field checks (URLs, unique names, header syntax, API keys, ...) run on the built
Structs. Every problem is a :class:`ConfigError` naming the source, the dotted key path and
what was expected; a value under a secret-looking key, or one that came from an environment
variable, is described and never echoed (:meth:`Context.show`).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import fnmatch
import hashlib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi

from ..core.endpoints import ENDPOINTS, backend_api_of
from ..core.redis_url import parse_redis_url
from ._schema import (
    ALIASES,
    DEFAULT_URLS,
    HIDDEN,
    ApiKeyEntry,
    BackendConfig,
    Config,
    ConfigError,
    LimitConfig,
    MockConfig,
)
from ._text import is_secret_name, join_path, last_key, mask_url, type_name
from ._units import DURATION_HELP, SIZE_HELP, parse_bind_address, parse_duration, parse_size


class Context(msgspec.Struct):
    """One validation run: the source's name, the environment, and what substitution did
    (so :meth:`show` can hide substituted values, and every unset variable is reported)."""

    source: str
    env: Mapping[str, str]
    # path -> the environment variables substituted into the value at that path
    substituted: dict[str, list[str]] = msgspec.field(default_factory=dict)
    # (path, name) of every ${NAME} without a value or default: reported all at once
    missing: list[tuple[str, str]] = msgspec.field(default_factory=list)
    # The run that read ``api_keys.api_keys_file`` (its errors name that file).
    key_file: Context | None = None
    # Where relative file names are taken from when ``source`` is not a file.
    directory: str | None = None

    def error(self, path: str, detail: str) -> ConfigError:
        return ConfigError(detail, source=self.source, path=path)

    def show(self, path: str, value: object) -> str:
        """Describe ``value`` for an error message, hiding anything secret."""
        if path in self.substituted:
            names = ", ".join("${" + n + "}" for n in self.substituted[path])
            return f"{type_name(value)} from {names} (value hidden)"
        if isinstance(value, str | int | float) and is_secret_name(last_key(path)):
            return f"{type_name(value)} (value hidden)"
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, str):
            return repr(value if len(value) <= 80 else value[:77] + "...")
        return type_name(value)




def _bounds(t: Any) -> str:
    ge, gt = getattr(t, "ge", None), getattr(t, "gt", None)
    le, lt = getattr(t, "le", None), getattr(t, "lt", None)
    if ge is not None and le is not None:
        return f" between {ge:g} and {le:g}"
    parts = []
    if ge is not None:
        parts.append(f">= {ge:g}")
    if gt is not None:
        parts.append(f"> {gt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    return (" " + " and ".join(parts)) if parts else ""


def _describe(t: Any) -> str:
    kind = None
    if isinstance(t, mi.Metadata):
        kind = (t.extra or {}).get("kind")
        t = t.type
    if kind == "duration":
        return DURATION_HELP + _bounds(t)
    if kind == "size":
        return SIZE_HELP + _bounds(t)
    if kind == "bind":
        return "an address or a list of addresses ('host:port', '[::1]:port', 'unix:/path')"
    if kind == "filemode":
        return "a file mode such as 0o660 or '0660'"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        return "an integer" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in t.values)
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.UnionType):
        return " or ".join(_describe(x) for x in t.types)
    if isinstance(t, mi.VarTupleType):
        return "a list"
    if isinstance(t, mi.DictType | mi.StructType):
        return "a mapping"
    return "a valid value"


def _in_bounds(t: Any, v: float) -> bool:
    ge, gt = getattr(t, "ge", None), getattr(t, "gt", None)
    le, lt = getattr(t, "le", None), getattr(t, "lt", None)
    return not (
        (ge is not None and v < ge)
        or (gt is not None and v <= gt)
        or (le is not None and v > le)
        or (lt is not None and v >= lt)
    )


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def env_bool(text: str) -> bool | None:
    """A boolean as the environment writes one (``true``/``yes``/``on``/``1``,
    ``false``/``no``/``off``/``0``, any case, spaces around); None for anything else."""
    word = text.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else None


def _coerce_env(value: str, t: Any) -> Any:
    """A substituted string aimed at a bool/int/float field is parsed as one."""
    text = value.strip()
    if isinstance(t, mi.BoolType):
        flag = env_bool(text)
        if flag is not None:
            return flag
    elif isinstance(t, mi.IntType):
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
    elif isinstance(t, mi.FloatType):
        try:
            return float(text)
        except ValueError:
            pass
    return value


def _check(value: Any, t: Any, path: str, ctx: Context) -> Any:
    kind = None
    whole = t
    if isinstance(t, mi.Metadata):
        kind = (t.extra or {}).get("kind")
        t = t.type
    substituted = path in ctx.substituted

    def bad() -> ConfigError:
        return ctx.error(path, f"expected {_describe(whole)}, got {ctx.show(path, value)}")

    if kind == "duration":
        try:
            if substituted and isinstance(value, str):
                value = _coerce_env(value, mi.FloatType())
            seconds = parse_duration(value)
        except ValueError:
            raise bad() from None
        if not _in_bounds(t, seconds):
            raise bad()
        return seconds
    if kind == "size":
        try:
            size = parse_size(value)
        except ValueError:
            raise bad() from None
        if not _in_bounds(t, size):
            raise bad()
        return size
    if kind == "bind":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise bad()
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            ipath = join_path(path, i) if not isinstance(value, str) else path
            if not isinstance(item, str):
                raise ctx.error(ipath, f"expected {_describe(whole)}, got {ctx.show(ipath, item)}")
            try:
                parsed = str(parse_bind_address(item))
            except ValueError as exc:
                raise ctx.error(ipath, f"{exc}; got {ctx.show(ipath, item)}") from None
            if parsed in seen:
                first = join_path(path, seen[parsed])
                raise ctx.error(ipath, f"duplicate address (same as {first})")
            seen[parsed] = i
        return list(items)
    if kind == "filemode":
        if value is None:
            return None
        mode: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            mode = value
        elif isinstance(value, str) and re.fullmatch(r"\s*(0o|0)?[0-7]{1,4}\s*", value):
            mode = int(value.strip().removeprefix("0o"), 8)
        if mode is None or not 0 <= mode <= 0o777:
            raise ctx.error(
                path,
                f"expected a file mode between 0o000 and 0o777 (YAML: 0660 or '0o660'), "
                f"got {ctx.show(path, value)}",
            )
        return mode

    if substituted and isinstance(value, str):
        value = _coerce_env(value, t)

    if isinstance(t, mi.StructType):
        return check_struct(value, t, path, ctx)
    if isinstance(t, mi.AnyType):
        return value
    if isinstance(t, mi.UnionType):
        if value is None and any(isinstance(x, mi.NoneType) for x in t.types):
            return None
        if substituted and value == "" and any(isinstance(x, mi.NoneType) for x in t.types):
            return None
        others = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(others) == 1:
            try:
                return _check(value, others[0], path, ctx)
            except ConfigError:
                raise bad() from None
        raise bad()  # pragma: no cover - no such unions in the schema
    if isinstance(t, mi.NoneType):
        if value is not None:
            raise bad()
        return None
    if isinstance(t, mi.BoolType):
        if not isinstance(value, bool):
            raise bad()
        return value
    if isinstance(t, mi.IntType):
        if isinstance(value, bool) or not isinstance(value, int) or not _in_bounds(t, value):
            raise bad()
        return value
    if isinstance(t, mi.FloatType):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if value != value or not _in_bounds(t, value):
            raise bad()
        return float(value)
    if isinstance(t, mi.StrType):
        if isinstance(value, _dt.date | _dt.datetime):  # YAML timestamps: keep as text
            return value.isoformat()
        if not isinstance(value, str):
            raise bad()
        return value
    if isinstance(t, mi.LiteralType):
        if value not in t.values or isinstance(value, bool):
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [str(v) for v in t.values], n=1)
                if not close:
                    lowered = {str(v).lower(): str(v) for v in t.values}
                    close = [lowered[value.lower()]] if value.lower() in lowered else []
                if close:
                    raise ctx.error(
                        path,
                        f"expected {_describe(whole)}, got {ctx.show(path, value)} "
                        f"(did you mean {close[0]!r}?)",
                    )
            raise bad()
        return value
    if isinstance(t, mi.VarTupleType):
        if value is None:
            return []
        if not isinstance(value, list):
            raise bad()
        return [_check(v, t.item_type, join_path(path, i), ctx) for i, v in enumerate(value)]
    if isinstance(t, mi.DictType):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad()
        out: dict[str, Any] = {}
        for k, v in value.items():
            kpath = join_path(path, k)
            if not isinstance(k, str):
                raise ctx.error(kpath, f"keys must be strings, got {type_name(k)}")
            out[k] = _check(v, t.value_type, kpath, ctx)
        return out
    raise bad()  # pragma: no cover


def _field_type(st: mi.StructType, names: tuple[str, ...]) -> Any:
    t: Any = st
    for name in names:
        t = t.type if isinstance(t, mi.Metadata) else t
        t = next(f.type for f in t.fields if f.name == name)
    return t


def _merge(
    out: dict[str, Any], target: tuple[str, ...], value: Any, origin: str, path: str, ctx: Context
) -> None:
    node = out
    for name in target[:-1]:
        node = node.setdefault(name, {})
    leaf = target[-1]
    canonical = ".".join(p for p in (path, *target) if p)
    if leaf not in node:
        node[leaf] = value
        return
    if isinstance(node[leaf], dict) and isinstance(value, dict):
        clash = sorted(set(node[leaf]) & set(value))
        if not clash:
            node[leaf].update(value)
            return
        canonical = f"{canonical}.{clash[0]}"
    raise ctx.error(origin, f"conflicts with {canonical}; set it in one place only")


def check_struct(value: Any, st: mi.StructType, path: str, ctx: Context) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a mapping, got {ctx.show(path, value)}")
    hidden = HIDDEN.get(st.cls, frozenset())
    # Keyed by the name a document uses (``global`` for the field ``global_``).
    fields = {f.encode_name: f for f in st.fields if f.name not in hidden}
    aliases = ALIASES.get(st.cls, {})
    out: dict[str, Any] = {}
    pending: list[tuple[tuple[str, ...], Any, str]] = []
    for key, item in value.items():
        kpath = join_path(path, key)
        if not isinstance(key, str):
            raise ctx.error(kpath, f"keys must be strings, got {type_name(key)}")
        if key in fields:
            out[key] = _check(item, fields[key].type, kpath, ctx)
        elif key in aliases:
            target = aliases[key]
            pending.append((target, _check(item, _field_type(st, target), kpath, ctx), kpath))
        else:
            known = sorted([*fields, *aliases])
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if close:
                detail = f"unknown key {key!r} (did you mean {close[0]!r}?)"
            else:
                detail = f"unknown key {key!r}; valid keys here: {', '.join(known)}"
            raise ctx.error(kpath, detail)
    for target, converted, origin in pending:
        _merge(out, target, converted, origin, path, ctx)
    for f in st.fields:
        if f.required and f.encode_name not in out:
            raise ctx.error(path or "<top level>", f"missing required key {f.encode_name!r}")
    return out


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Characters no header value or request line may carry: C0 controls but HTAB, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_translation_keys(b: BackendConfig, path: str, ctx: Context) -> None:
    """The agent-loop translation keys only shape a chat request some backends get: set on
    another backend they would be accepted and ignored, so they are refused."""
    chat = b.type != "anthropic" and not (b.type == "gemini" and b.gemini_api == "native")
    if not chat:
        for key, default in (("max_tokens_field", "auto"), ("reasoning", "auto")):
            if getattr(b, key) != default:
                raise ctx.error(
                    f"{path}.{key}",
                    "only valid for OpenAI-compatible backends (this backend's type is "
                    f"{b.type!r}{', gemini_api native' if b.type == 'gemini' else ''})")
    if b.type != "gemini" and b.gemini_api != "native":
        raise ctx.error(f"{path}.gemini_api",
                        f"only valid for type 'gemini' (this backend's type is {b.type!r})")
    if b.type != "anthropic" and b.thinking_conflict != "drop":
        raise ctx.error(f"{path}.thinking_conflict",
                        f"only valid for type 'anthropic' (this backend's type is {b.type!r})")


def _check_header_value(value: str, path: str, ctx: Context) -> None:
    """A value the router sends upstream as (part of) a header: one line of latin-1, or a
    CR/LF would split it into headers of its own (and a non-latin-1 one cannot be sent)."""
    if _CONTROL.search(value):
        raise ctx.error(path, "header values must not contain CR, LF, NUL or other control "
                              "characters (a trailing newline from a file or variable?)")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ctx.error(path, "header values must be latin-1 text (no other characters can "
                              "be sent in an HTTP/1.1 header)") from None


def _check_path(value: str, path: str, ctx: Context) -> None:
    """A path the router puts in an upstream request line."""
    if not value.startswith("/"):
        raise ctx.error(path, f"expected a path starting with '/', got {ctx.show(path, value)}")
    if not value.isascii() or _CONTROL.search(value) or any(c.isspace() for c in value):
        raise ctx.error(path, "expected a path of printable ASCII without spaces "
                              "(percent-encode other characters)")


def _check_url(url: str, path: str, ctx: Context) -> None:
    expected = "expected an http:// or https:// URL with a host, e.g. 'http://localhost:8000'"
    if not url:
        raise ctx.error(path, f"{expected}; a url is required unless type is 'mock'")
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port <= 65535
    except ValueError:
        raise ctx.error(path, f"{expected}, got {ctx.show(path, mask_url(url))}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or any(c.isspace() for c in url)
        or _CONTROL.search(url)
        or parts.fragment
    ):
        raise ctx.error(path, f"{expected}, got {ctx.show(path, mask_url(url))}")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ctx.error(path, f"{expected}; its host name is not valid, got "
                              f"{ctx.show(path, mask_url(url))}") from None
    if not parts.path.isascii():
        raise ctx.error(path, f"{expected}; percent-encode non-ASCII characters in its path, "
                              f"got {ctx.show(path, mask_url(url))}")


def _check_server_tls(cfg: Config, ctx: Context) -> None:
    """``server.tls`` files exist (they are loaded when the router starts), and the front
    options that need TLS or hypercorn have them."""
    server = cfg.server
    tls = server.tls
    for key in ("cert_file", "key_file", "client_ca_file"):
        value = getattr(tls, key)
        if value is not None and not Path(value).is_file():
            raise ctx.error(f"server.tls.{key}", f"file not found: {value!r}")
    if not tls.enabled and (tls.key_file is not None or tls.client_ca_file is not None):
        raise ctx.error("server.tls.cert_file", "key_file and client_ca_file need a cert_file")
    if server.http3 and (server.frontend != "hypercorn" or not tls.enabled):
        raise ctx.error("server.http3", "HTTP/3 needs server.frontend: hypercorn and server.tls")


def _check_tcp_address(address: str | None, path: str, ctx: Context) -> None:
    """A separate listener's ``host:port`` (metrics, admin)."""
    if address is None:
        return
    try:
        parsed = parse_bind_address(address)
    except ValueError as exc:
        raise ctx.error(path, f"{exc}; got {ctx.show(path, address)}") from None
    if parsed.kind != "tcp":
        raise ctx.error(path, f"expected 'host:port', got {ctx.show(path, address)}")


def _check_admin(cfg: Config, ctx: Context) -> None:
    """The admin API's credentials must exist for the method that reads them."""
    _check_tcp_address(cfg.admin.bind_address, "admin.bind_address", ctx)
    auth = cfg.admin.auth
    if auth.method in ("bearer_token", "api_key") and not auth.token:
        raise ctx.error("admin.auth.token", f"method {auth.method!r} needs a non-empty token")
    if auth.method == "basic" and (not auth.username or not auth.password):
        raise ctx.error("admin.auth", "method 'basic' needs a non-empty username and password")
    if auth.method == "basic" and ":" in auth.username:
        raise ctx.error("admin.auth.username", "must not contain ':' (basic auth splits on it)")


def check_semantics(cfg: Config, ctx: Context) -> Config:
    _check_path(cfg.health_checks.endpoint, "health_checks.endpoint", ctx)
    endpoint = cfg.metrics.endpoint
    if not endpoint.startswith("/"):
        p = "metrics.endpoint"
        raise ctx.error(p, f"expected a path starting with '/', got {ctx.show(p, endpoint)}")
    auth = cfg.metrics.auth
    if auth.enabled and (not auth.username or not auth.password):
        raise ctx.error("metrics.auth", "enabled auth needs a non-empty username and password")
    _check_tcp_address(cfg.metrics.bind_address, "metrics.bind_address", ctx)
    _check_admin(cfg, ctx)
    endpoint = cfg.tracing.endpoint
    if endpoint:
        _check_url(endpoint, "tracing.endpoint", ctx)
    _check_server_tls(cfg, ctx)

    cfg = _check_api_keys(cfg, ctx)
    _check_rate_limiting(cfg, ctx)
    _check_cors(cfg, ctx)

    if not cfg.backends:
        raise ctx.error("backends", "at least one backend is required")
    names: dict[str, int] = {}
    backends = []
    for i, b in enumerate(cfg.backends):
        p = f"backends[{i}]"
        if not b.name.strip():
            raise ctx.error(f"{p}.name", "must not be empty")
        if b.name in names:
            raise ctx.error(
                f"{p}.name",
                f"duplicate backend name {b.name!r} (also used by backends[{names[b.name]}])",
            )
        names[b.name] = i
        if _CONTROL.search(b.name):  # it becomes the x-continuum-backend header
            raise ctx.error(f"{p}.name", "must not contain control characters")
        if b.type == "mock":
            if b.url:
                raise ctx.error(
                    f"{p}.url", "mock backends take no url (the router serves them in-process)"
                )
        else:
            if not b.url and b.type in DEFAULT_URLS:
                b = msgspec.structs.replace(b, url=DEFAULT_URLS[b.type])
            _check_url(b.url, f"{p}.url", ctx)
            if b.mock != MockConfig():
                raise ctx.error(
                    f"{p}.mock", f"only valid for type 'mock' (this backend's type is {b.type!r})"
                )
        _check_translation_keys(b, p, ctx)
        for j, model in enumerate(b.models):
            if not model.strip():
                raise ctx.error(f"{p}.models[{j}]", "model names must not be empty")
            if _CONTROL.search(model):  # it becomes the x-continuum-model header
                raise ctx.error(f"{p}.models[{j}]", "must not contain control characters")
        for hname, hvalue in b.headers.items():
            hp = join_path(f"{p}.headers", hname)
            if not _HEADER_NAME.fullmatch(hname):
                raise ctx.error(hp, "not a valid HTTP header name")
            _check_header_value(hvalue, hp, ctx)
        if b.api_key is not None:
            _check_header_value(b.api_key, f"{p}.api_key", ctx)
        _check_header_value(b.anthropic_version, f"{p}.anthropic_version", ctx)
        if b.ca_file is not None and not Path(b.ca_file).is_file():
            raise ctx.error(f"{p}.ca_file", f"file not found: {b.ca_file!r}")
        if b.api_key == "":
            b = msgspec.structs.replace(b, api_key=None)
        hc = b.health_check
        if hc is not None and hc.endpoint is not None:
            _check_path(hc.endpoint, f"{p}.health_check.endpoint", ctx)
        _check_endpoints(b, p, ctx)
        backends.append(b)
    _check_responses_and_files(cfg, ctx)
    for key in cfg.routing.weights:
        if not key:
            raise ctx.error("routing.weights", "keys must be backend names or URLs")
    if cfg.routing.consistent_hash.key == "header" and not _HEADER_NAME.fullmatch(
        cfg.routing.consistent_hash.header
    ):
        raise ctx.error("routing.consistent_hash.header", "not a valid HTTP header name")
    for alias, target in cfg.model_aliases.items():
        p = join_path("model_aliases", alias)
        if not alias or not target:
            raise ctx.error(p, "aliases and their targets must be non-empty model names")
        if target in cfg.model_aliases:
            raise ctx.error(p, f"{target!r} is itself an alias; point at a served model")
    for model, chain in cfg.fallbacks.items():
        p = join_path("fallbacks", model)
        if not chain:
            raise ctx.error(p, "expected a non-empty list of models to try in order")
        if model in chain:
            raise ctx.error(p, f"a model cannot fall back to itself ({model!r})")
        if len(set(chain)) != len(chain):
            raise ctx.error(p, "the list names a model twice")
    return msgspec.structs.replace(cfg, backends=tuple(backends))


# -- client keys, rate limits, CORS ---------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
#: What a key sent in a header can be: visible ASCII, no spaces.
_KEY_TEXT = re.compile(r"[\x21-\x7e]+")


def key_digest(entry: ApiKeyEntry) -> str:
    """The entry's SHA-256 in lower-case hex: of ``key``, or ``key_sha256`` as given."""
    if entry.key:
        return hashlib.sha256(entry.key.encode()).hexdigest()
    return entry.key_sha256.lower()


def _key_entries(cfg: Config, ctx: Context) -> Iterator[tuple[ApiKeyEntry, Context, str]]:
    for i, entry in enumerate(cfg.api_keys.api_keys):
        yield entry, ctx, f"api_keys.api_keys[{i}]"
    file_ctx = ctx.key_file or ctx
    for i, entry in enumerate(cfg.api_keys.file_entries):
        yield entry, file_ctx, f"api_keys[{i}]"


def _check_api_keys(cfg: Config, ctx: Context) -> Config:
    """Each entry (inline or from ``api_keys_file``): exactly one of ``key`` and
    ``key_sha256``, well formed; ids and keys unique across both lists. Errors name where
    the entry is; a key is never shown."""
    digests: dict[str, str] = {}
    ids: dict[str, str] = {}
    inline: list[ApiKeyEntry] = []
    loaded: list[ApiKeyEntry] = []
    for entry, ectx, p in _key_entries(cfg, ctx):
        where = p if ectx is ctx else f"{ectx.source}: {p}"
        if entry.key and entry.key_sha256:
            raise ectx.error(p, "set either key or key_sha256, not both")
        if not entry.key and not entry.key_sha256:
            raise ectx.error(f"{p}.key", "must not be empty (or give key_sha256)")
        if entry.key and not _KEY_TEXT.fullmatch(entry.key):
            raise ectx.error(f"{p}.key", "must be printable ASCII without spaces (a trailing "
                                         "newline from a file or variable?)")
        if entry.key_sha256:
            if not _HEX64.fullmatch(entry.key_sha256):
                raise ectx.error(f"{p}.key_sha256", "expected 64 hexadecimal digits (the "
                                                    "SHA-256 of the key, e.g. from "
                                                    "'printf %s KEY | sha256sum')")
            entry = msgspec.structs.replace(entry, key_sha256=entry.key_sha256.lower())
        digest = key_digest(entry)
        if digest in digests:
            field_name = "key" if entry.key else "key_sha256"
            raise ectx.error(f"{p}.{field_name}", f"duplicate key (same as {digests[digest]})")
        digests[digest] = where
        if entry.id:
            if _CONTROL.search(entry.id) or not entry.id.strip():
                raise ectx.error(f"{p}.id", "must be printable text")
            if entry.id in ids:
                raise ectx.error(f"{p}.id", f"duplicate id {entry.id!r} (also used by "
                                            f"{ids[entry.id]})")
            ids[entry.id] = where
        for j, pattern in enumerate(entry.models):
            if not pattern.strip():
                raise ectx.error(f"{p}.models[{j}]", "model names must not be empty")
        if entry.expires_at is not None:
            try:
                _dt.datetime.fromisoformat(entry.expires_at)
            except ValueError:
                raise ectx.error(
                    f"{p}.expires_at",
                    f"expected an ISO 8601 time such as '2025-12-31T23:59:59Z', "
                    f"got {ectx.show(f'{p}.expires_at', entry.expires_at)}",
                ) from None
        (inline if ectx is ctx and p.startswith("api_keys.api_keys[") else loaded).append(entry)
    keys = cfg.api_keys
    if keys.mode == "blocking" and not any(k.enabled for k in (*inline, *loaded)):
        raise ctx.error("api_keys.api_keys", "blocking mode needs at least one enabled key")
    keys = msgspec.structs.replace(keys, api_keys=tuple(inline), file_entries=tuple(loaded))
    return msgspec.structs.replace(cfg, api_keys=keys)


def _check_networks(values: tuple[str, ...], path: str, ctx: Context) -> None:
    for i, value in enumerate(values):
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            p = f"{path}[{i}]"
            raise ctx.error(p, f"expected an IP address or a CIDR such as '10.0.0.0/8' or "
                               f"'2001:db8::/32', got {ctx.show(p, value)}") from None


def _check_limit(limit: LimitConfig, path: str, ctx: Context) -> None:
    if limit.burst_capacity is not None and limit.requests_per_second is None:
        raise ctx.error(f"{path}.burst_capacity", "needs requests_per_second")


def _check_rate_limiting(cfg: Config, ctx: Context) -> None:
    rl = cfg.rate_limiting
    limits = rl.limits
    for name in ("per_client", "per_api_key", "per_backend", "global_"):
        label = name.rstrip("_")
        _check_limit(getattr(limits, name), f"rate_limiting.limits.{label}", ctx)
    for model, limit in limits.per_model.items():
        p = join_path("rate_limiting.limits.per_model", model)
        if not model.strip():
            raise ctx.error(p, "model names must not be empty")
        _check_limit(limit, p, ctx)
    _check_networks(rl.whitelist, "rate_limiting.whitelist", ctx)
    _check_networks(rl.trusted_proxies, "rate_limiting.trusted_proxies", ctx)
    for i, value in enumerate(rl.bypass_keys):
        if not value:
            raise ctx.error(f"rate_limiting.bypass_keys[{i}]", "must not be empty")
    redis = rl.redis
    try:
        parse_redis_url(redis.url)
    except ValueError as exc:
        raise ctx.error("rate_limiting.redis.url", str(exc)) from None
    if redis.ca_file is not None and not Path(redis.ca_file).is_file():
        raise ctx.error("rate_limiting.redis.ca_file", f"file not found: {redis.ca_file!r}")
    if _CONTROL.search(redis.key_prefix):
        raise ctx.error("rate_limiting.redis.key_prefix", "must not contain control characters")


#: An origin pattern: ``*``, or scheme://host[:port] where ``*`` stands for any characters.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+", re.I)
_METHOD = re.compile(r"[A-Z]+")


def _check_cors(cfg: Config, ctx: Context) -> None:
    cors = cfg.cors
    for i, origin in enumerate(cors.allowed_origins):
        p = f"cors.allowed_origins[{i}]"
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ctx.error(p, f"expected '*' or an origin such as 'https://app.example.com' "
                               f"(with '*' for any part: 'https://*.example.com'), no path; "
                               f"got {ctx.show(p, origin)}")
        fnmatch.translate(origin)  # a pattern fnmatch can compile
    for i, method in enumerate(cors.allowed_methods):
        if not _METHOD.fullmatch(method):
            raise ctx.error(f"cors.allowed_methods[{i}]",
                            f"expected an HTTP method in capitals such as 'POST', got "
                            f"{ctx.show(f'cors.allowed_methods[{i}]', method)}")
    for name in ("allowed_headers", "expose_headers"):
        for i, header in enumerate(getattr(cors, name)):
            if header == "*" and name == "allowed_headers":
                continue
            if not _HEADER_NAME.fullmatch(header):
                raise ctx.error(f"cors.{name}[{i}]", "not a valid HTTP header name")


def _check_endpoints(b: BackendConfig, p: str, ctx: Context) -> None:
    """A backend lists only endpoints its API can reach; ``responses: native`` needs the
    Responses API itself (an OpenAI-compatible backend)."""
    api = backend_api_of(b.type, b.gemini_api, b.mock.api)
    seen: set[str] = set()
    for j, endpoint in enumerate(b.endpoints or ()):
        ep = f"{p}.endpoints[{j}]"
        if endpoint in seen:
            raise ctx.error(ep, f"{endpoint} is listed twice")
        seen.add(endpoint)
        if api not in ENDPOINTS[endpoint].apis:
            raise ctx.error(ep, f"a backend speaking the {api} API cannot serve {endpoint}")
    if b.responses == "native" and api != "openai":
        raise ctx.error(f"{p}.responses", f"native needs an OpenAI-compatible backend (this "
                        f"one speaks the {api} API); use bridge or auto")


def _check_responses_and_files(cfg: Config, ctx: Context) -> None:
    redis = cfg.responses.redis
    if cfg.responses.store == "redis":
        scheme = redis.url.partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            p = "responses.redis.url"
            raise ctx.error(p, "expected a redis://, rediss:// or unix:// URL, got "
                               f"{ctx.show(p, mask_url(redis.url))}")
    files = cfg.files
    if files.enabled:
        if not files.directory.strip():
            raise ctx.error("files.directory", "must not be empty")
        if files.max_file_size > cfg.server.max_upload_size:
            raise ctx.error("files.max_file_size",
                            f"larger than server.max_upload_size "
                            f"({cfg.server.max_upload_size} bytes), which bounds every upload")
        if files.max_file_size > files.max_total_size:
            raise ctx.error("files.max_file_size", "larger than files.max_total_size")
