"""Content that more than one translator reads the same way."""

from __future__ import annotations

import base64
import urllib.parse


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:[<media type>][;<parameter>...][;base64],<data>`` (RFC 2397) → (media type,
    base64 data); None when ``url`` is not a data URL or has no comma.

    Parameters (``;charset=...``, ``;name=...``) are not part of the media type; data without
    ``;base64`` is percent-decoded and encoded as base64, so callers always get base64; a
    missing media type is ``text/plain``, as the RFC says.
    """
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep:
        return None
    fields = header.split(";")
    if "base64" not in fields[1:]:
        data = base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()
    return fields[0] or "text/plain", data
