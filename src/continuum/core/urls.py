"""URLs cleaned for showing (sans-IO): each function says what it keeps and drops.

A configured URL can carry secrets: a password or a token as the user name in its user info
(``user:password@``, ``TOKEN@``), and query parameters such as ``?key=``. The router shows URLs
to three audiences: the config (rendered, dumped, in validation errors) keeps everything but
those secrets, which it masks so that a masked URL sent back can be matched with the one it
stands for; the admin API shows a backend's URL without its user info and with secret query
values masked; the startup summary in the log shows no more than where requests go (scheme,
host, port, path).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from .secret_names import is_secret_name

#: What a URL that cannot be parsed is shown as where it must not be shown raw.
UNPARSABLE: Final = "(unparsable URL)"


def mask_query(query: str, mask: str) -> str:
    """A query string (without ``?``) with the value of every parameter whose name sounds
    secret (:func:`.secret_names.is_secret_name`) replaced by ``mask``; the rest as written."""
    if not query:
        return query
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, equals, _ = part.partition("=")
        if equals and is_secret_name(unquote(name)):
            parts[i] = f"{name}={mask}"
    return "&".join(parts)


def _masked_tail(tail: str, mask: str) -> str:
    """The path, query and fragment of a URL with the query's secret values masked."""
    end = tail.find("#")
    end = len(tail) if end < 0 else end
    start = tail.find("?", 0, end)
    if start < 0:
        return tail
    return tail[:start + 1] + mask_query(tail[start + 1:end], mask) + tail[end:]


def mask_secrets(url: str, mask: str) -> str:
    """``url`` as written with its secrets replaced by ``mask``: the password (``user:***@``),
    a user name given alone (``***@``: such a name is usually a token) and the values of
    query parameters whose name sounds secret (``?key=***``). The user name beside a
    password, host, port, path, other parameters and the fragment stay. Done on the text,
    not a parse, so a URL that does not parse (a bad port, an unclosed ``[``) is masked too."""
    start = url.find("//")
    if start < 0:
        return url
    start += 2
    end = len(url)
    for delimiter in "/?#":
        found = url.find(delimiter, start)
        if 0 <= found < end:
            end = found
    tail = _masked_tail(url[end:], mask)
    userinfo, at, _ = url[start:end].rpartition("@")
    if not at:
        return url[:end] + tail
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{mask}" if colon else mask
    return url[:start] + shown + url[start + len(userinfo):end] + tail


def _host_port(parts: SplitResult) -> str:
    """The host (IPv6 in brackets) and the port of a parsed URL; ValueError for a bad port."""
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    port = parts.port
    return netloc if port is None else f"{netloc}:{port}"


def without_userinfo(url: str, mask: str = "***") -> str:
    """``url`` without ``user:password@`` and with secret query values shown as ``mask``
    (see :func:`mask_query`): everything else stays; :data:`UNPARSABLE` when it does not
    parse."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.username is not None or parts.password is not None:
            netloc = _host_port(parts)
    except ValueError:
        return UNPARSABLE
    query = mask_query(parts.query, mask)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def origin_and_path(url: str) -> str:
    """Only the scheme, host, port and path of ``url``: no user info, query or fragment
    (where keys could hide); :data:`UNPARSABLE` when it does not parse."""
    try:
        parts = urlsplit(url)
        netloc = _host_port(parts)
    except ValueError:
        return UNPARSABLE
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
