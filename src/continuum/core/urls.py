"""URLs cleaned for showing (sans-IO): each function says what it keeps and drops.

A configured URL can carry a secret in its user info (``user:password@``), and the router
shows URLs to three audiences: the config (rendered, dumped, in validation errors) keeps
everything but the password, which it masks so that a masked URL sent back can be matched
with the one it stands for; the admin API shows a backend's URL without its user info; the
startup summary in the log shows no more than where requests go (scheme, host, port, path).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, urlsplit, urlunsplit

#: What a URL that cannot be parsed is shown as where it must not be shown raw.
UNPARSABLE: Final = "(unparsable URL)"


def mask_password(url: str, mask: str) -> str:
    """``url`` as written with its password (if any) replaced by ``mask``: the user name,
    host, port, path, query and fragment stay. Done on the text, not a parse, so a URL
    that does not parse (a bad port, an unclosed ``[``) is masked too."""
    start = url.find("//")
    if start < 0:
        return url
    start += 2
    end = len(url)
    for delimiter in "/?#":
        found = url.find(delimiter, start)
        if 0 <= found < end:
            end = found
    userinfo, at, _ = url[start:end].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return url
    return url[:start] + f"{user}:{mask}" + url[start + len(userinfo):]


def _host_port(parts: SplitResult) -> str:
    """The host (IPv6 in brackets) and the port of a parsed URL; ValueError for a bad port."""
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    port = parts.port
    return netloc if port is None else f"{netloc}:{port}"


def without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: everything else stays (unchanged when it has no
    user info); :data:`UNPARSABLE` when it does not parse."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        netloc = _host_port(parts)
    except ValueError:
        return UNPARSABLE
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def origin_and_path(url: str) -> str:
    """Only the scheme, host, port and path of ``url``: no user info, query or fragment
    (where keys could hide); :data:`UNPARSABLE` when it does not parse."""
    try:
        parts = urlsplit(url)
        netloc = _host_port(parts)
    except ValueError:
        return UNPARSABLE
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
