"""Which limits one request is under: from the configured limits and the caller's key to the
checks one admission makes (:mod:`continuum.core.ratelimit` decides them).

A request answers to, at most:

* its *client* — the API key it authenticated with, else its address. Each dimension
  (requests, tokens, requests in flight) comes from the key's own limit if it has one, else
  ``per_api_key`` (keys only), else ``per_client``. The scope is ``api_key`` for the first two
  and ``client`` for the last, so ``per_client`` and ``per_api_key`` never count one request
  twice;
* its model (``per_model``: the first name or glob that matches the model after alias
  resolution; each model its own counter);
* ``global``;
* its backend (``per_backend``), once routing has chosen one — a separate admission, since
  the backend is only known then (:meth:`LimitPlan.backend_checks`).

Sans-IO and cheap on purpose: the checks of request limits and concurrency limits are
immutable and cached per (scope, ident) in a bounded dict, so a request usually builds only
its token checks (whose cost is its own reservation).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from .access import ApiKey
from .ratelimit import Check, ConcurrencyCheck, Rate, RateCheck

#: Cached checks at most (a few MiB); past it the cache starts again (client addresses are
#: unbounded, and a check costs about a microsecond to build anyway).
MAX_CACHED_CHECKS: Final = 16384
_MAX_CACHED_MODELS: Final = 4096


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One configured limit: any of a request rate, a token rate, a concurrency cap."""

    requests: Rate | None = None
    tokens: Rate | None = None
    concurrent: int | None = None

    def __bool__(self) -> bool:
        return self.requests is not None or self.tokens is not None or self.concurrent is not None

    @classmethod
    def of(
        cls,
        requests_per_second: float | None = None,
        burst_capacity: float | None = None,
        tokens_per_minute: int | None = None,
        max_concurrent: int | None = None,
    ) -> LimitSpec:
        """From the config's words: the burst defaults to one second's worth (at least 1),
        a token rate's burst to a minute's worth."""
        requests = None
        if requests_per_second is not None:
            burst = burst_capacity if burst_capacity is not None else requests_per_second
            requests = Rate(requests_per_second, max(1.0, burst))
        tokens = Rate.per_minute(tokens_per_minute) if tokens_per_minute else None
        return cls(requests, tokens, max_concurrent)


#: (scope, ident, rate or limit) of one dimension of the client's limits.
_Dimension = tuple[str, str, Rate] | None
_Concurrency = tuple[str, str, int] | None


@final
class LimitPlan:
    """The configured limits, turned into checks per request; see the module docstring."""

    def __init__(
        self,
        *,
        per_client: LimitSpec = LimitSpec(),
        per_api_key: LimitSpec = LimitSpec(),
        per_backend: LimitSpec = LimitSpec(),
        per_model: Sequence[tuple[str, LimitSpec]] = (),
        global_: LimitSpec = LimitSpec(),
        lease_ttl: float = 600.0,
        max_cached: int = MAX_CACHED_CHECKS,
    ) -> None:
        self.per_client = per_client
        self.per_api_key = per_api_key
        self.per_backend = per_backend
        self.per_model = tuple((p, s) for p, s in per_model if s)
        self.global_ = global_
        self.lease_ttl = lease_ttl
        self._max_cached = max_cached
        self._cache: dict[tuple[str, str, str], Check] = {}
        self._models: dict[str, LimitSpec | None] = {}
        self._keys: dict[str, tuple[_Dimension, _Dimension, _Concurrency]] = {}

    @property
    def cached_checks(self) -> int:
        """Checks held in the cache now (at most ``max_cached``)."""
        return len(self._cache)

    # -- what applies ----------------------------------------------------------------------

    def key_has_limits(self, key: ApiKey) -> bool:
        return bool(key.rate_limit or key.tokens_per_minute or key.max_concurrent)

    @property
    def shared(self) -> bool:
        """Whether some limit applies to every request whoever sends it (model, global)."""
        return bool(self.per_model) or bool(self.global_)

    def applies(self, key: ApiKey | None) -> bool:
        """Whether any limit (before routing) may apply to a request of ``key``."""
        if self.shared or self.per_client:
            return True
        return key is not None and (bool(self.per_api_key) or self.key_has_limits(key))

    def needs_address(self, key: ApiKey | None) -> bool:
        """Whether the client's address is its identity (no key, and per_client set)."""
        return key is None and bool(self.per_client)

    def counts_tokens(self, keys: Sequence[ApiKey]) -> bool:
        """Whether any token limit is configured (the proxy then reads ``max_tokens``)."""
        specs = (self.per_client, self.per_api_key, self.per_backend, self.global_,
                 *(s for _, s in self.per_model))
        return any(s.tokens for s in specs) or any(k.tokens_per_minute for k in keys)

    # -- checks ----------------------------------------------------------------------------

    def checks(
        self, key: ApiKey | None, client: str, model: str, reservation: float
    ) -> list[Check]:
        """The checks of one request before routing: its client (``key``, else the address
        ``client``), its model, global. ``reservation``: the tokens it may use."""
        out: list[Check] = []
        if key is not None:
            requests, tokens, concurrent = self._key_dimensions(key)
        else:
            spec = self.per_client
            requests = ("client", client, spec.requests) if spec.requests else None
            tokens = ("client", client, spec.tokens) if spec.tokens else None
            concurrent = ("client", client, spec.concurrent) if spec.concurrent else None
        self._add(out, requests, tokens, concurrent, reservation)
        if self.per_model:
            spec_or_none = self._model_spec(model)
            if spec_or_none is not None:
                self._add_spec(out, "model", model, spec_or_none, reservation)
        if self.global_:
            self._add_spec(out, "global", "", self.global_, reservation)
        return out

    def backend_checks(self, backend: str, reservation: float) -> list[Check]:
        """The checks of ``per_backend`` for the backend routing chose."""
        out: list[Check] = []
        self._add_spec(out, "backend", backend, self.per_backend, reservation)
        return out

    def _add_spec(
        self, out: list[Check], scope: str, ident: str, spec: LimitSpec, reservation: float
    ) -> None:
        self._add(
            out,
            (scope, ident, spec.requests) if spec.requests else None,
            (scope, ident, spec.tokens) if spec.tokens else None,
            (scope, ident, spec.concurrent) if spec.concurrent else None,
            reservation,
        )

    def _add(
        self,
        out: list[Check],
        requests: _Dimension,
        tokens: _Dimension,
        concurrent: _Concurrency,
        reservation: float,
    ) -> None:
        cache = self._cache
        if requests is not None:
            scope, ident, rate = requests
            cached = cache.get(("rq", scope, ident))
            if cached is None:
                cached = self._remember(("rq", scope, ident), RateCheck(scope, ident, rate))
            out.append(cached)
        if tokens is not None:
            scope, ident, rate = tokens
            # A reservation over the bucket would leave it in debt for the whole request.
            cost = min(reservation, rate.burst)
            out.append(RateCheck(scope, ident, rate, cost=cost, tokens=True))
        if concurrent is not None:
            scope, ident, limit = concurrent
            cached = cache.get(("cc", scope, ident))
            if cached is None:
                cached = self._remember(
                    ("cc", scope, ident), ConcurrencyCheck(scope, ident, limit, self.lease_ttl)
                )
            out.append(cached)

    def _remember(self, key: tuple[str, str, str], check: Check) -> Check:
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[key] = check
        return check

    def _key_dimensions(self, key: ApiKey) -> tuple[_Dimension, _Dimension, _Concurrency]:
        dims = self._keys.get(key.digest)
        if dims is not None:
            return dims
        ident = key.ident
        shared, client = self.per_api_key, self.per_client
        as_client = "key:" + ident

        def pick(mine: Rate | None, theirs: Rate | None, fallback: Rate | None) -> _Dimension:
            if mine is not None:
                return ("api_key", ident, mine)
            if theirs is not None:
                return ("api_key", ident, theirs)
            if fallback is not None:
                return ("client", as_client, fallback)
            return None

        requests = pick(Rate.per_minute(key.rate_limit) if key.rate_limit else None,
                        shared.requests, client.requests)
        tokens = pick(Rate.per_minute(key.tokens_per_minute) if key.tokens_per_minute else None,
                      shared.tokens, client.tokens)
        concurrent: _Concurrency = None
        if key.max_concurrent:
            concurrent = ("api_key", ident, key.max_concurrent)
        elif shared.concurrent:
            concurrent = ("api_key", ident, shared.concurrent)
        elif client.concurrent:
            concurrent = ("client", as_client, client.concurrent)
        dims = (requests, tokens, concurrent)
        self._keys[key.digest] = dims
        return dims

    def _model_spec(self, model: str) -> LimitSpec | None:
        models = self._models
        if model in models:
            return models[model]
        found = None
        for pattern, spec in self.per_model:
            if pattern == model or fnmatch.fnmatchcase(model, pattern):
                found = spec
                break
        if len(models) >= _MAX_CACHED_MODELS:
            models.clear()
        models[model] = found
        return found
