"""Merge the Prometheus text expositions of several worker processes into one.

Counters and histograms add up; so do most gauges (connections, in-flight requests, pool
sizes). A gauge that is a state rather than an amount (``*_status``, ``*_state``) takes the
maximum across workers, and ``*_created`` / ``*_start_time_seconds`` the minimum.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

_LABEL_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def _combine(sample_name: str, family_type: str, values: list[float]) -> float:
    if sample_name.endswith(("_created", "_start_time_seconds")):
        return min(values)
    if family_type == "gauge" and sample_name.endswith(("_status", "_state")):
        return max(values)
    return sum(values)


def _format_value(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(value)


def merge_expositions(texts: Iterable[str]) -> str:
    """One exposition whose samples combine the same series across ``texts``."""
    families: dict[str, tuple[str, str]] = {}  # name → (type, help)
    series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, (family.type, family.documentation))
            bucket = series.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                bucket.setdefault(key, []).append(sample.value)
    lines: list[str] = []
    for name, (kind, doc) in families.items():
        exposed = f"{name}_total" if kind == "counter" else name
        help_text = doc.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {exposed} {help_text}")
        lines.append(f"# TYPE {exposed} {kind if kind != 'unknown' else 'untyped'}")
        for (sample_name, labels), values in series[name].items():
            value = _combine(sample_name, kind, values)
            if labels:
                rendered = ",".join(f'{k}="{v.translate(_LABEL_ESCAPES)}"' for k, v in labels)
                lines.append(f"{sample_name}{{{rendered}}} {_format_value(value)}")
            else:
                lines.append(f"{sample_name} {_format_value(value)}")
    return "\n".join(lines) + "\n"
