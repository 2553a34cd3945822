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
immutable, built once per key, client address (a bounded dict), model and backend as one
group in their order, so a request only concatenates tuples and builds its token checks
(whose cost is its own reservation).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from .access import ApiKey
from .ratelimit import Check, ConcurrencyCheck, FixedChecks, Rate, RateCheck

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
#: One client's (or model's, ...) checks, built once: those before its token check, its
#: token limit (the check itself depends on the request's reservation), those after.
_Group = tuple[tuple[Check, ...], _Dimension, tuple[Check, ...]]


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
        #: Check groups by client address, by model, by key digest, by backend (keys come from the
        #: config: that one needs no bound).
        self._cache: dict[str, _Group] = {}
        self._models: dict[str, _Group | None] = {}
        self._keys: dict[str, _Group] = {}
        #: A key's whole list of checks when it does not depend on the request (no token
        #: limit, no per_model), by key digest: most keyed requests then build nothing, and
        #: an admission on full buckets knows its outcome (:class:`FixedChecks`).
        self.fixed: dict[str, FixedChecks] = {}
        self._backends: dict[str, _Group] = {}
        self._global = _group("global", "", global_, lease_ttl) if global_ else None

    @property
    def cached_checks(self) -> int:
        """Client check groups held in the cache now (at most ``max_cached``)."""
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
    ) -> Sequence[Check]:
        """The checks of one request before routing: its client (``key``, else the address
        ``client``), its model, global. ``reservation``: the tokens it may use."""
        if key is not None:
            fixed = self.fixed.get(key.digest)
            if fixed is not None:
                return fixed.checks
        out: list[Check] = []
        extend = self._extend
        if key is not None:
            group = self._keys.get(key.digest)
            if group is None:
                group = self._key_group(key)
                glob = self._global
                if not self.per_model and group[1] is None and (glob is None or glob[1] is None):
                    fixed = self.fixed[key.digest] = FixedChecks(
                        group[0] + (glob[0] if glob else ()))
                    return fixed.checks
        else:
            group = self._cache.get(client)
            if group is None:
                group = self._client_group(client)
        extend(out, group, reservation)
        if self.per_model:
            model_group = self._model_group(model)
            if model_group is not None:
                extend(out, model_group, reservation)
        if self._global is not None:
            extend(out, self._global, reservation)
        return out

    def backend_checks(self, backend: str, reservation: float) -> list[Check]:
        """The checks of ``per_backend`` for the backend routing chose."""
        out: list[Check] = []
        group = self._backends.get(backend)
        if group is None:
            if len(self._backends) >= _MAX_CACHED_MODELS:
                self._backends.clear()
            group = self._backends[backend] = _group("backend", backend, self.per_backend,
                                                     self.lease_ttl)
        self._extend(out, group, reservation)
        return out

    @staticmethod
    def _extend(out: list[Check], group: _Group, reservation: float) -> None:
        before, tokens, after = group
        out += before
        if tokens is not None:
            scope, ident, rate = tokens
            # A reservation over the bucket would leave it in debt for the whole request.
            cost = min(reservation, rate.burst)
            out.append(RateCheck(scope, ident, rate, cost=cost, tokens=True))
            out += after

    def _client_group(self, client: str) -> _Group:
        cache = self._cache
        if len(cache) >= self._max_cached:
            cache.clear()
        group = cache[client] = _group("client", client, self.per_client, self.lease_ttl)
        return group

    def _key_group(self, key: ApiKey) -> _Group:
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
        group = _make_group(requests, tokens, concurrent, self.lease_ttl)
        self._keys[key.digest] = group
        return group

    def _model_group(self, model: str) -> _Group | None:
        models = self._models
        if model in models:
            return models[model]
        found = None
        for pattern, spec in self.per_model:
            if pattern == model or fnmatch.fnmatchcase(model, pattern):
                found = _group("model", model, spec, self.lease_ttl)
                break
        if len(models) >= _MAX_CACHED_MODELS:
            models.clear()
        models[model] = found
        return found


def _group(scope: str, ident: str, spec: LimitSpec, lease_ttl: float) -> _Group:
    return _make_group(
        (scope, ident, spec.requests) if spec.requests else None,
        (scope, ident, spec.tokens) if spec.tokens else None,
        (scope, ident, spec.concurrent) if spec.concurrent else None,
        lease_ttl,
    )


def _make_group(
    requests: _Dimension, tokens: _Dimension, concurrent: _Concurrency, lease_ttl: float
) -> _Group:
    """One client's, model's or backend's checks in their order (requests, tokens,
    concurrency), built once: only the token check depends on the request."""
    before: list[Check] = []
    after: list[Check] = []
    if requests is not None:
        scope, ident, rate = requests
        before.append(RateCheck(scope, ident, rate))
    if concurrent is not None:
        scope, ident, limit = concurrent
        (after if tokens is not None else before).append(
            ConcurrencyCheck(scope, ident, limit, lease_ttl))
    return tuple(before), tokens, tuple(after)
