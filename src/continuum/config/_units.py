"""Units a config document may spell as text: durations (``"30s"``, ``"1m30s"``), sizes
(``"10MiB"``) and bind addresses (``"host:port"``, ``"[::1]:port"``, ``"unix:/path"``)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, NamedTuple

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(us|µs|ms|s|m|h)")
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)?\s*")
DURATION_HELP = "a duration (seconds, or a string like '30s', '500ms', '5m', '1h', '250us')"
SIZE_HELP = "a size in bytes (an integer, or a string like '512KB', '10MiB')"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"30s"``, ``"1.5s"``, ``"500ms"``, ``"5m"``,
    ``"1h"``, ``"250us"`` or a sum such as ``"1m30s"``.  Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if value < 0 or value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a duration")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not a duration")
    text = value.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError("not a duration")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"10MiB"``, ``"512KB"``, ``"1MB"``, ``"64B"``.
    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("not a size")
        return value
    if not isinstance(value, str):
        raise ValueError("not a size")
    m = _SIZE_RE.fullmatch(value)
    if m is None:
        raise ValueError("not a size")
    number, unit = m.group(1), (m.group(2) or "b").lower()
    if unit not in _SIZE_UNITS:
        raise ValueError("not a size")
    if unit == "b" and "." in number:
        raise ValueError("not a size")
    return int(float(number) * _SIZE_UNITS[unit])


class BindAddress(NamedTuple):
    """One parsed ``server.bind_address`` entry."""

    kind: Literal["tcp", "unix"]
    host: str = ""  # IPv6 without brackets
    port: int = 0
    path: str = ""  # unix socket path

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def parse_bind_address(text: str) -> BindAddress:
    """Parse ``"host:port"``, ``"[v6]:port"`` or ``"unix:/path"``; ValueError explains."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.strip():
            raise ValueError("a unix socket address needs a path, e.g. 'unix:/run/continuum.sock'")
        return BindAddress("unix", path=path)
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected '[ipv6]:port', e.g. '[::1]:8080'")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected 'host:port', '[ipv6]:port' or 'unix:/path'")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets, e.g. '[::1]:8080'")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a valid host name or IPv4 address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be an integer 0-65535, got {port_text!r}")
    return BindAddress("tcp", host=host, port=int(port_text))
