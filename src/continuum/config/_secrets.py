"""Where a configuration keeps its secrets: masking them for output, and putting them back
when a masked document comes in again.

One list of places, read both ways, so what ``check``, ``GET /admin/config`` and the
config history show is exactly what an edited document may leave as ``***``:

* ``backends[].api_key``, the secrets in ``backends[].url`` (password, a user name alone,
  query values whose name sounds secret), and ``backends[].headers`` whose name sounds
  secret;
* ``api_keys.api_keys[].key`` and ``key_sha256``;
* ``rate_limiting.bypass_keys`` entries that are keys rather than a key's ``id``;
* ``metrics.auth.password``, ``admin.auth.token`` and ``admin.auth.password``;
* the secrets in ``responses.redis.url`` and ``rate_limiting.redis.url``.

The entries read from ``api_keys.api_keys_file`` are not part of a document at all (the file
is read again whenever the document is loaded), so nothing here ever shows them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._schema import Config, ConfigError
from ._text import MASK, is_secret_name, join_path, mask, mask_url

#: ``section.sub``: the secret fields of a nested struct (one level of mapping below a section).
_NESTED_SECRETS = (("metrics", "auth", "password"), ("admin", "auth", "token"),
                   ("admin", "auth", "password"))
#: The same for URLs, whose secrets are masked in place (the rest of the URL is shown).
_NESTED_URLS = (("responses", "redis", "url"), ("rate_limiting", "redis", "url"))
#: The secret fields of each ``api_keys.api_keys`` entry.
_KEY_FIELDS = ("key", "key_sha256")


def _lists(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def plain_builtins(config: Config) -> dict[str, Any]:
    """The configuration as a plain document (mappings, lists, scalars), without
    ``source``: what a config file would hold."""
    data: dict[str, Any] = _lists(msgspec.to_builtins(config))
    data.pop("source", None)
    data["api_keys"].pop("file_entries", None)  # set by the loader from api_keys_file
    return data


def _key_ids(config: Config) -> set[str]:
    return {entry.id for entry in config.api_keys.entries if entry.id}


def masked_builtins(config: Config) -> dict[str, Any]:
    """:func:`plain_builtins` with every secret shown as ``***`` (or ``""`` when empty)."""
    data = plain_builtins(config)
    for b in data["backends"]:
        b["api_key"] = mask(b["api_key"])
        b["url"] = mask_url(b["url"])
        b["headers"] = {k: (mask(v) if is_secret_name(k) else v) for k, v in b["headers"].items()}
    for entry in data["api_keys"]["api_keys"]:
        for name in _KEY_FIELDS:
            entry[name] = mask(entry[name])
    limiting = data["rate_limiting"]
    ids = _key_ids(config)
    # A bypass entry is a key's id (shown) or a key itself (a secret).
    limiting["bypass_keys"] = [v if v in ids else mask(v) for v in limiting["bypass_keys"]]
    for section, sub, name in _NESTED_SECRETS:
        node = data[section][sub]
        node[name] = mask(node[name])
    for section, sub, name in _NESTED_URLS:
        node = data[section][sub]
        node[name] = mask_url(node[name])
    return data


def restore_secrets(document: dict[str, Any], current: Config, source: str) -> dict[str, Any]:
    """``document`` (a config about to be validated) with every ``***`` at a secret's place
    replaced by the current config's value there, so a document read from
    ``GET /admin/config`` can be edited and sent back without its secrets.

    Backends are matched by name, client keys by ``id`` (else by position). A ``***`` with
    no current secret to stand for is a :class:`ConfigError` naming its key path (it would
    otherwise become the literal key ``***``)."""
    out = dict(document)
    backends = out.get("backends")
    if isinstance(backends, list):
        by_name = {b.name: b for b in current.backends}
        out["backends"] = [
            _restore_backend(entry, by_name, f"backends[{i}]", source)
            if isinstance(entry, dict) else entry
            for i, entry in enumerate(backends)
        ]
    keys = out.get("api_keys")
    if isinstance(keys, dict) and isinstance(keys.get("api_keys"), list):
        current_keys = current.api_keys.api_keys
        entries = []
        for i, entry in enumerate(keys["api_keys"]):
            for name in _KEY_FIELDS:
                if isinstance(entry, dict) and entry.get(name) == MASK:
                    entry = dict(entry)
                    by_id = {k.id: getattr(k, name) for k in current_keys if k.id}
                    given_id = entry.get("id")
                    known = by_id.get(given_id) if isinstance(given_id, str) else None
                    if known is None and i < len(current_keys) and not given_id:
                        known = getattr(current_keys[i], name)
                    entry[name] = _known(known, f"api_keys.api_keys[{i}].{name}", source)
            entries.append(entry)
        out["api_keys"] = {**keys, "api_keys": entries}
    limiting = out.get("rate_limiting")
    bypass = limiting.get("bypass_keys") if isinstance(limiting, dict) else None
    if isinstance(bypass, list) and MASK in bypass:
        # The k-th ``***`` stands for the k-th key (not an id) of the current list.
        ids = _key_ids(current)
        hidden = iter([v for v in current.rate_limiting.bypass_keys if v not in ids])
        restored: list[Any] = []
        for i, value in enumerate(bypass):
            if value == MASK:
                value = _known(next(hidden, None), f"rate_limiting.bypass_keys[{i}]", source)
            restored.append(value)
        assert isinstance(limiting, dict)
        out["rate_limiting"] = {**limiting, "bypass_keys": restored}
    for section, sub, name in _NESTED_SECRETS:
        node = out.get(section)
        inner = node.get(sub) if isinstance(node, dict) else None
        if isinstance(inner, dict) and inner.get(name) == MASK:
            value = getattr(getattr(getattr(current, section), sub), name)
            inner = {**inner, name: _known(value, f"{section}.{sub}.{name}", source)}
            out[section] = {**node, sub: inner}  # type: ignore[dict-item]
    for section, sub, name in _NESTED_URLS:
        node = out.get(section)
        inner = node.get(sub) if isinstance(node, dict) else None
        given = inner.get(name) if isinstance(inner, dict) else None
        if isinstance(given, str) and MASK in given:
            value = getattr(getattr(getattr(current, section), sub), name)
            if mask_url(value) != given:
                raise ConfigError(f"{MASK!r} stands for the current URL's secrets, but the "
                                  "current URL is another one", source=source,
                                  path=f"{section}.{sub}.{name}")
            assert isinstance(node, dict) and isinstance(inner, dict)
            out[section] = {**node, sub: {**inner, name: value}}
    return out


def _restore_backend(entry: dict[str, Any], by_name: dict[str, Any], path: str,
                     source: str) -> dict[str, Any]:
    if not _has_mask(entry):
        return entry
    entry = dict(entry)
    name = entry.get("name")
    current = by_name.get(name) if isinstance(name, str) else None
    if entry.get("api_key") == MASK:
        entry["api_key"] = _known(current and current.api_key, f"{path}.api_key", source)
    url = entry.get("url")
    if isinstance(url, str) and MASK in url:
        if current is None or mask_url(current.url) != url:
            raise ConfigError(f"{MASK!r} stands for the current URL's secrets, but the "
                              "current backend of this name has another URL",
                              source=source, path=f"{path}.url")
        entry["url"] = current.url
    headers = entry.get("headers")
    if isinstance(headers, dict):
        restored = {}
        for key, value in headers.items():
            if value == MASK and isinstance(key, str) and is_secret_name(key):
                known = current.headers.get(key) if current is not None else None
                value = _known(known, join_path(f"{path}.headers", key), source)
            restored[key] = value
        entry["headers"] = restored
    return entry


def _has_mask(entry: dict[str, Any]) -> bool:
    headers = entry.get("headers")
    return (entry.get("api_key") == MASK or MASK in str(entry.get("url", ""))
            or (isinstance(headers, dict) and MASK in headers.values()))


def _known(value: str | None, path: str, source: str) -> str:
    if not value:
        raise ConfigError(f"{MASK!r} stands for a secret of the current config, and there is "
                          "none here to keep (write the value itself)", source=source, path=path)
    return value
