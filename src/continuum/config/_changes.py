"""Changing a configuration: what differs between two (:func:`diff_configs`), a document to
edit (:func:`editable_document`, :func:`merge_patch`), a document sent by a client
(:func:`parse_document`), and keeping old values where a change cannot take effect live
(:func:`carry`).

All of it is plain data; the admin API and hot reload (``actors``) build on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
import yaml

from ..core.jsondepth import json_too_deep
from ._loading import _Loader, _yaml_error
from ._schema import ALIASES, Config, ConfigError
from ._secrets import masked_builtins, plain_builtins
from ._text import join_path, type_name
from ._toml import parse_toml

#: A key path as components: field names, dict keys and (in ``backends``) backend names.
Keys = tuple[str, ...]

#: Largest document accepted from a client, in bytes (a config is a few KiB).
MAX_DOCUMENT: Final = 1024 * 1024
#: Deepest nesting accepted in a client's document (a config is 5 levels deep).
MAX_DOCUMENT_DEPTH: Final = 32


class Change(msgspec.Struct, frozen=True):
    """One difference between two configs. ``old`` and ``new`` are shown with secrets
    masked (a changed secret reads ``***`` on both sides); ``kind`` is ``changed``,
    ``added`` (``old`` is None) or ``removed`` (``new`` is None)."""

    path: str
    kind: str
    old: Any = None
    new: Any = None
    keys: Keys = ()

    def describe(self) -> str:
        if self.kind == "added":
            return f"{self.path}: added"
        if self.kind == "removed":
            return f"{self.path}: removed"
        if self.old == self.new:  # a secret: both sides read ***
            return f"{self.path}: changed (secret)"
        return f"{self.path}: {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def diff_configs(old: Config, new: Config) -> list[Change]:
    """Every difference between ``old`` and ``new``, by key path, in document order.

    Backends are matched by name (``backends.NAME.weight``), so reordering or inserting one
    does not read as every later backend changing; a changed order alone is one change at
    ``backends``. ``source`` is not compared."""
    out: list[Change] = []
    _diff((), plain_builtins(old), plain_builtins(new), masked_builtins(old),
          masked_builtins(new), out)
    # The keys of api_keys_file are not in the documents (never shown): a changed file
    # under the same name is one secret change.
    file_keys = ("api_keys", "api_keys_file")
    if (old.api_keys.file_entries != new.api_keys.file_entries
            and not any(c.keys == file_keys for c in out)):
        name = new.api_keys.api_keys_file
        out.append(Change(_path(file_keys), "changed", name, name, ("api_keys", "file_entries")))
    return out


def _diff(keys: Keys, old: Any, new: Any, old_shown: Any, new_shown: Any,
          out: list[Change]) -> None:
    if old == new:
        return
    if keys == ("backends",) and isinstance(old, list) and isinstance(new, list):
        _diff_backends(old, new, old_shown, new_shown, out)
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            sub = (*keys, str(key))
            if key not in new:
                out.append(Change(_path(sub), "removed", old_shown[key], None, sub))
            elif key not in old:
                out.append(Change(_path(sub), "added", None, new_shown[key], sub))
            else:
                _diff(sub, old[key], new[key], old_shown[key], new_shown[key], out)
        return
    out.append(Change(_path(keys), "changed", old_shown, new_shown, keys))


def _diff_backends(old: Sequence[Any], new: Sequence[Any], old_shown: Sequence[Any],
                   new_shown: Sequence[Any], out: list[Change]) -> None:
    old_at = {b["name"]: i for i, b in enumerate(old)}
    new_at = {b["name"]: i for i, b in enumerate(new)}
    for name, i in old_at.items():
        keys = ("backends", name)
        if name not in new_at:
            out.append(Change(_path(keys), "removed", old_shown[i], None, keys))
        else:
            j = new_at[name]
            _diff(keys, old[i], new[j], old_shown[i], new_shown[j], out)
    for name, j in new_at.items():
        if name not in old_at:
            keys = ("backends", name)
            out.append(Change(_path(keys), "added", None, new_shown[j], keys))
    kept_old = [n for n in old_at if n in new_at]
    kept_new = [n for n in new_at if n in old_at]
    if kept_old != kept_new:
        out.append(Change("backends", "changed", kept_old, kept_new, ("backends",)))


def _path(keys: Keys) -> str:
    path = ""
    for key in keys:
        path = join_path(path, key)
    return path


def summarize(changes: Iterable[Change], limit: int = 6) -> str:
    """A one-line summary: ``routing.strategy: "RoundRobin" -> "LeastLatency"; backends.c:
    added`` (``and N more`` past ``limit``); ``no change`` when empty."""
    items = [c.describe() for c in changes]
    if not items:
        return "no change"
    if len(items) > limit:
        items = [*items[:limit], f"and {len(items) - limit} more"]
    return "; ".join(items)


def covered(keys: Keys, prefixes: Iterable[Keys]) -> bool:
    """Does one of ``prefixes`` cover the key path ``keys``?"""
    return any(keys[: len(p)] == p for p in prefixes)


def carry(new: Config, old: Config, keys: Keys) -> Config:
    """``new`` with ``old``'s value at ``keys`` (the deepest struct field on that path):
    what a change that cannot take effect live leaves in force."""
    return _carry(new, old, keys)  # type: ignore[no-any-return]


def _carry(new: Any, old: Any, keys: Keys) -> Any:
    name = keys[0]
    new_value, old_value = getattr(new, name), getattr(old, name)
    if (len(keys) > 1 and isinstance(new_value, msgspec.Struct)
            and isinstance(old_value, msgspec.Struct)):
        old_value = _carry(new_value, old_value, keys[1:])
    return msgspec.structs.replace(new, **{name: old_value})


# -- documents ----------------------------------------------------------------------------


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {_escape(k): _escape(v) for k, v in value.items()}
    return value


def editable_document(config: Config) -> dict[str, Any]:
    """``config`` as a document that validates back to the same config (secrets in clear,
    ``${`` escaped so nothing is substituted twice): the base a patch is merged into."""
    escaped: dict[str, Any] = _escape(plain_builtins(config))
    return escaped


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON Merge Patch (RFC 7386): mappings merge key by key, ``null`` removes a key (its
    default applies again), anything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def canonical_patch(patch: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` with the Rust router's alias keys (``selection_strategy``,
    ``cache.enable_deduplication``, ...) moved to their place in the schema, so merging it
    into a canonical document sets the field rather than clashing with it."""
    return _canonical(dict(patch), Config)


def _canonical(patch: dict[str, Any], struct: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = {f.name: f.type for f in msgspec.structs.fields(struct)}
    for key, value in patch.items():
        target = ALIASES.get(struct, {}).get(key)
        if target is not None:
            node = out
            for name in target[:-1]:
                node = node.setdefault(name, {})
            node[target[-1]] = value
            continue
        inner = fields.get(key)
        if isinstance(value, dict) and isinstance(inner, type) and issubclass(
                inner, msgspec.Struct):
            value = _canonical(value, inner)
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            value = {**out[key], **value}
        out[key] = value
    return out


class _UntrustedLoader(_Loader):
    """A client's YAML: no anchors or aliases (a few lines of them expand into billions of
    nodes for whoever walks the result), and at most :data:`MAX_DOCUMENT_DEPTH` levels."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = getattr(event, "start_mark", None)
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted "
                                              "here", mark)
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors (&name) are not accepted "
                                              "here", mark)
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DOCUMENT_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DOCUMENT_DEPTH} levels", mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed data nests more than ``limit`` tables and arrays deep (walked with a
    stack, not recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_document(body: bytes, content_type: str, source: str) -> dict[str, Any]:
    """A config document (or patch) sent by a client: JSON, or YAML or TOML when the content
    type says so. Bounded: at most :data:`MAX_DOCUMENT` bytes and :data:`MAX_DOCUMENT_DEPTH`
    levels, YAML without anchors or aliases. Problems are :class:`ConfigError`s."""
    if len(body) > MAX_DOCUMENT:
        raise ConfigError(f"the document is larger than {MAX_DOCUMENT // 1024} KiB",
                          source=source)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte offset {exc.start})", source=source) from None
    kind = content_type.lower()
    if "toml" in kind:
        data = parse_toml(text, source)
        if _deeper_than(data, MAX_DOCUMENT_DEPTH):
            raise ConfigError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels", source=source)
    elif "yaml" in kind:
        try:
            data = yaml.load(text, Loader=_UntrustedLoader)  # a SafeLoader
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, source) from None
        except RecursionError:
            raise ConfigError("nested too deeply", source=source) from None
    else:
        if json_too_deep(body, MAX_DOCUMENT_DEPTH):
            raise ConfigError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels", source=source)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"invalid JSON: {exc}", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type_name(data)}",
                          source=source)
    return data
