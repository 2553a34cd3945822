"""OpenAI's list pages (``{"object": "list", "data", "first_id", "last_id", "has_more"}``)
with ``limit``, ``order`` and ``after`` from the query string: the shape of
``GET /v1/responses/{id}/input_items`` and ``GET /v1/files``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import msgspec

from .types import TranslationError

JSON = dict[str, Any]


class PageQuery(msgspec.Struct, frozen=True):
    limit: int
    order: str  # "asc" | "desc"
    after: str | None
    #: The query's other parameters (first value of each).
    extra: dict[str, str]


def page_query(query: str, *, default_limit: int = 20, max_limit: int = 100,
               default_order: str = "desc") -> PageQuery:
    """Read ``limit``, ``order`` and ``after`` (a TranslationError names a bad one)."""
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    limit = default_limit
    raw = params.pop("limit", None)
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= max_limit:
            raise TranslationError(f"limit must be an integer from 1 to {max_limit}", "limit")
        limit = int(raw)
    order = params.pop("order", default_order)
    if order not in ("asc", "desc"):
        raise TranslationError("order must be 'asc' or 'desc'", "order")
    after = params.pop("after", None) or None
    return PageQuery(limit, order, after, params)


def list_page(items: Sequence[JSON], page: PageQuery) -> JSON:
    """One page of ``items`` (given oldest first), in ``page.order``, after the item whose
    ``id`` is ``page.after`` (an unknown one starts from the beginning)."""
    ordered = list(items) if page.order == "asc" else list(reversed(items))
    if page.after is not None:
        for index, item in enumerate(ordered):
            if item.get("id") == page.after:
                ordered = ordered[index + 1:]
                break
    data = ordered[:page.limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": len(ordered) > page.limit,
    }
