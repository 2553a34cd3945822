"""Access control on the request path: who is calling (client keys), what they may do
(scopes, models), and how much (rate and concurrency limits, in memory or in Redis).

The Ingress authenticates every ``/v1/*`` request (:meth:`AccessControl.authenticate`) and
the Proxy, once it knows the model, checks it and admits the request
(:meth:`AccessControl.admit`) before any upstream call; with ``per_backend`` limits it admits
the request again for the backend routing chose (:meth:`AccessControl.admit_backend`). When
the request ends, :meth:`AccessControl.settle` gives back its leases and reconciles its token
reservations with the usage the answer reported.

What a request pays, by configuration:

* nothing, when there are no keys and no limits: the router builds no ``AccessControl``;
* one dict probe when keys are configured (and a SHA-256 when the presented key was not
  seen before);
* ``storage: memory``: the checks (built once per client), one in-process GCRA step per
  limit, the ``x-ratelimit-*`` header lines (one %-format), no await; for a key's fixed
  request limits on full buckets (most keyed requests) one TAT update per limit, the
  decision and the header lines having been made once for the key (``FixedChecks``);
* ``storage: redis``: one ``EVALSHA`` round trip (all limits at once, atomic across
  instances), and no round trip at all when no limit applies. Settling (leases, tokens)
  goes to a background task with a bounded queue: the answer never waits for it.

When Redis fails (down, slow past ``timeout``, an error reply), ``on_error`` decides: allow
the request (without limits) or answer 503. The Redis client backs off by itself after a
failure, so a dead Redis costs a request a clock read, and comes back on its own; a metric
counts every failure and one log line says so (then one every 30 s while it lasts, and one
when Redis is back).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Final, final

import msgspec
import trio

from ..config import ApiKeyEntry, Config, LimitConfig
from ..core.access import (
    MAX_CACHED_KEYS,
    ApiKey,
    ClientAddresses,
    CorsPolicy,
    KeyTable,
    ModelPatterns,
    in_networks,
    key_digest,
    key_label,
    parse_networks,
    required_scope,
)
from ..core.clock import now as clock
from ..core.errors import RouterError, quoted
from ..core.limits import LimitPlan, LimitSpec
from ..core.ratelimit import (
    ADMIT_SCRIPT,
    SETTLE_SCRIPT,
    Check,
    ConcurrencyCheck,
    Decision,
    LimitState,
    MemoryLimiter,
    RateCheck,
    admission_arguments,
    decode_admission,
    ratelimit_head,
    ratelimit_headers,
    settlement_arguments,
)
from ..net.redis import (
    RedisClient,
    RedisError,
    RedisNoScriptError,
    RedisOptions,
    RedisProtocolError,
    RedisReplyError,
    RedisTimeoutError,
    RedisUnavailableError,
    Script,
)
from ..net.server.connection import Request, ServerConnection
from ..observability.metrics import Metrics

log = logging.getLogger("continuum.access")

ADMIT: Final = Script(ADMIT_SCRIPT)
SETTLE: Final = Script(SETTLE_SCRIPT)

#: One message for every 401, so a caller cannot tell a wrong key from a revoked one.
UNAUTHORIZED: Final = (
    "Invalid API key: send a valid key as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
)
#: Settlements waiting for the background task; past that one is dropped and counted (its
#: lease then expires by itself, its reservation stays charged).
_SETTLE_QUEUE: Final = 4096
#: How often idle rate-limit keys in memory are dropped (``MemoryLimiter.sweep``).
SWEEP_PERIOD: Final = 1.0
_SETTLE_BATCH: Final = 256
_SETTLE_RETRIES: Final = 5
_SETTLE_RETRY_DELAY: Final = 0.5
#: While Redis keeps failing, one log line per this many seconds.
_LOG_EVERY: Final = 30.0
#: Leases outlive the longest request by this much (a lease only matters when its
#: instance died without releasing it).
_LEASE_MARGIN: Final = 30.0

_KINDS: Final = {False: "requests", True: "tokens"}


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` value, else None."""
    if authorization is not None and authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return None


def client_key(request: Request) -> bytes | None:
    """The key a request presents: ``Authorization: Bearer``, else ``x-api-key``."""
    key = bearer_token(request.header(b"authorization"))
    return key if key is not None else request.header(b"x-api-key")


def _spec(limit: LimitConfig) -> LimitSpec:
    return LimitSpec.of(limit.requests_per_second, limit.burst_capacity,
                        limit.tokens_per_minute, limit.max_concurrent)


def _expiry(text: str | None) -> float | None:
    if text is None:
        return None
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # a time without a zone is UTC
    return moment.timestamp()


def api_key(entry: ApiKeyEntry) -> ApiKey:
    """The request path's view of a configured key (the key itself is not kept)."""
    digest = key_digest(entry.key.encode()) if entry.key else entry.key_sha256
    return ApiKey(
        digest=digest,
        id=entry.id,
        label=key_label(entry.id, entry.key, digest),
        name=entry.name,
        user_id=entry.user_id,
        organization_id=entry.organization_id,
        enabled=entry.enabled,
        expires_at=_expiry(entry.expires_at),
        scopes=frozenset(entry.scopes),
        models=ModelPatterns(entry.models),
        rate_limit=entry.rate_limit,
        tokens_per_minute=entry.tokens_per_minute,
        max_concurrent=entry.max_concurrent,
    )


def limit_plan(config: Config) -> LimitPlan | None:
    """The configured limits, or ``None`` when none can apply (switched off, or nothing
    set anywhere)."""
    rl = config.rate_limiting
    if not rl.enabled:
        return None
    limits = rl.limits
    request = config.request
    plan = LimitPlan(
        per_client=_spec(limits.per_client),
        per_api_key=_spec(limits.per_api_key),
        per_backend=_spec(limits.per_backend),
        per_model=[(name, _spec(limit)) for name, limit in limits.per_model.items()],
        global_=_spec(limits.global_),
        # A stream may retry up to request.timeout before it starts, then run for
        # streaming_timeout: a lease must outlive both, or a live request loses its slot.
        lease_ttl=request.timeout + request.streaming_timeout + _LEASE_MARGIN,
    )
    keyed = any(e.rate_limit or e.tokens_per_minute or e.max_concurrent
                for e in config.api_keys.entries)
    if not (keyed or plan.shared or plan.per_client or plan.per_api_key or plan.per_backend):
        return None
    return plan


def needed(config: Config) -> bool:
    """Whether the router needs an :class:`AccessControl` at all."""
    return (config.api_keys.mode == "blocking" or bool(config.api_keys.entries)
            or limit_plan(config) is not None)


@final
class Admission(msgspec.Struct):
    """One request's access facts: who it is, and what its admissions took (for the
    access log, for settling, and for the per-backend admission). A Struct: every
    request with access control makes one, and its defaults are set in C."""

    key: ApiKey | None
    presented: bytes | None
    #: What the access log shows: the key's label, ``-`` without one.
    label: str = "-"
    #: False once the request is exempt (whitelist, bypass key) or no limit applies.
    limited: bool = True
    client: str = ""
    reservation: float = 0.0
    #: Tuples, grown by one per admission (one or two per request): no list made for
    #: every request.
    decisions: tuple[Decision, ...] = ()
    #: (backend name, decision) of each per_backend admission.
    backend_decisions: tuple[tuple[str, Decision], ...] = ()
    #: Admitted by Redis and counted in ``AccessControl.admitted`` until settled.
    counted: bool = False
    #: Whether :meth:`AccessControl.settle` has anything to do for the admission before
    #: routing (a lease, a token reservation, a Redis count); ``per_backend`` admissions,
    #: made later, are not told here.
    settles: bool = False


@final
class AccessControl:
    """See the module docstring. One per router; its :meth:`run` task settles Redis
    admissions in the background."""

    def __init__(self, config: Config, metrics: Metrics, redis: RedisClient | None = None
                 ) -> None:
        rl = config.rate_limiting
        # Storage (fixed for the router's life: a reload keeps the counts).
        self.redis = redis if rl.storage == "redis" else None
        self._memory = MemoryLimiter() if self.redis is None else None
        self._prefix = rl.redis.key_prefix
        self._deny = rl.redis.on_error == "deny"
        self._redis_address = redis.options.address if redis is not None else ""
        self._lease_prefix = os.urandom(6).hex() + ":"
        self._leases = 0
        settle_send, settle_receive = trio.open_memory_channel[tuple[list[str], list[str]]](
            _SETTLE_QUEUE)
        self._settle_send = settle_send
        self._settle_receive = settle_receive
        # Metrics (children cached: a refusal costs one float add).
        self._metrics = metrics
        self._redis_ok = metrics.redis_latency.labels("admit")
        self._failing = 0  # Redis calls failed since the last success
        self._failing_logged = -float("inf")
        #: Settlements dropped (queue full, or Redis failing for too long).
        self.settlements_dropped = 0
        #: Requests admitted by Redis and not settled yet (a Realtime session admitted
        #: without limits is never counted): with none, an admission is a lone call.
        self.admitted = 0
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take the keys and the limits of ``config`` (at start, and on a config reload).
        The counts go on: a client keeps what it has used of a limit that is still there,
        and a request admitted before settles as it was admitted."""
        keys_cfg = config.api_keys
        rl = config.rate_limiting
        self.blocking = keys_cfg.mode == "blocking"
        keys = KeyTable(api_key(e) for e in keys_cfg.entries)
        plan = limit_plan(config)
        self.counts_tokens = plan is not None and plan.counts_tokens(list(keys))
        self.per_backend = plan is not None and bool(plan.per_backend)
        self.default_reservation = float(rl.default_token_reservation)
        self._whitelist = parse_networks(rl.whitelist)
        ids = {k.id for k in keys if k.id}
        self._bypass_ids = frozenset(v for v in rl.bypass_keys if v in ids)
        self._bypass_digests = frozenset(key_digest(v.encode()) for v in rl.bypass_keys
                                         if v not in ids)
        self._addresses = ClientAddresses(parse_networks(rl.trusted_proxies))
        self._forwarded = bool(rl.trusted_proxies)
        #: Whether :meth:`_exempt` has anything to do (an exemption, or addresses to resolve).
        self._exemptions = bool(self._bypass_ids or self._bypass_digests or self._whitelist
                                or (plan is not None and plan.per_client))
        # Per-request questions answered once.
        self._anonymous = not keys and not self.blocking
        #: Some limit applies to every request, whoever sends it.
        self._always = plan is not None and (plan.shared or bool(plan.per_client)
                                             or self.per_backend)
        #: Some check may be a concurrency check (a request then takes a lease).
        self._concurrency = plan is not None and (
            any(s.concurrent for s in (plan.per_client, plan.per_api_key, plan.per_backend,
                                       plan.global_, *(s for _, s in plan.per_model)))
            or any(k.max_concurrent for k in keys))
        self.keys = keys
        #: (key, presented key, label) by the raw ``Authorization`` value that presented a
        #: key without expiry or scopes (:meth:`authenticate_request`); new per config.
        self._bearers: dict[bytes | None, tuple[ApiKey, bytes, str]] = {}
        self.plan = plan
        #: The limiter when an admission may try :meth:`MemoryLimiter.admit_full` before
        #: anything else (memory storage, and no exemption to look at first), else None.
        self._quick = self._memory if not self._exemptions else None
        self._fixed = plan.fixed if plan is not None else {}

    @property
    def memory(self) -> MemoryLimiter | None:
        """The limits held in this process (None with Redis storage)."""
        return self._memory

    def admin_key(self, presented: bytes) -> str | None:
        """:data:`~continuum.core.credentials.AdminKeyCheck`: the label of a usable client
        key with the ``admin`` scope, else None (the key table's lookup: a digest and a
        dict probe, or one probe of its cache for a key already seen)."""
        key, _ = self.keys.lookup(presented)
        return key.label if key is not None and "admin" in key.scopes else None

    # -- who: keys, scopes, models ---------------------------------------------------------

    def authenticate_request(self, request: Request) -> Admission:
        """:meth:`authenticate` with the key the request presents (:func:`client_key`).
        An ``Authorization`` value that named a key without an expiry or scopes before
        (most requests) is one probe: the answer cannot have changed until a reload."""
        auth = request.header(b"authorization")
        seen = self._bearers.get(auth)
        if seen is not None:
            return Admission(*seen)
        presented = bearer_token(auth)
        if presented is None:
            return self.authenticate(request, request.header(b"x-api-key"))
        admission = self.authenticate(request, presented)
        key = admission.key
        if key is not None and key.expires_at is None and not key.scopes:
            assert auth is not None
            bearers = self._bearers
            if len(bearers) >= MAX_CACHED_KEYS:  # only found keys enter; still bounded
                bearers.clear()
            bearers[auth] = (key, presented, admission.label)
        return admission

    def authenticate(self, request: Request, presented: bytes | None) -> Admission:
        """The request's key and scope: 401 (blocking mode: no usable key, one message
        whatever the reason) or 403 (a key without the scope the request needs). In
        permissive mode a request without a usable key goes on as anonymous."""
        if self._anonymous:
            return Admission(None, presented)
        key, reason = self.keys.lookup(presented)
        if key is None:
            if self.blocking:
                self._metrics.auth_failures.labels(reason).inc()
                raise RouterError(401, UNAUTHORIZED,
                                  headers=[(b"www-authenticate", b'Bearer realm="continuum"')])
            return Admission(None, presented)
        # A key without scopes may do everything: no need to ask what the request needs.
        if key.scopes and not key.may(scope := required_scope(request.method, request.path)):
            self._metrics.auth_failures.labels("scope").inc()
            raise RouterError(403, f"This API key ({key.label}) lacks the {scope!r} scope "
                              f"needed for {request.method} {quoted(request.path, 60)}",
                              code="insufficient_scope")
        return Admission(key, presented, key.label)

    def allowed_chain(self, admission: Admission, model: str, resolved: str,
                      chain: tuple[str, ...]) -> tuple[str, ...]:
        """The models of ``chain`` (the resolved model and its fallbacks) the key may
        use; 403 when it may not use the model it asked for (after alias resolution)."""
        key = admission.key
        if key is None or not key.models.patterns:
            return chain
        patterns = key.models
        if not patterns.match(resolved):
            self._metrics.auth_failures.labels("model").inc()
            raise RouterError(403, f"This API key ({key.label}) may not use the model "
                              f"{quoted(model)}", code="model_not_allowed", param="model")
        allowed = tuple(m for m in chain if patterns.match(m))
        if not allowed:  # the chain left out the model itself (no backend for the path)
            raise RouterError(403, f"This API key ({key.label}) may not use the models "
                              f"that serve {quoted(model)}", code="model_not_allowed",
                              param="model")
        return allowed

    # -- how much: admission ---------------------------------------------------------------

    def _exempt(self, admission: Admission, request: Request, conn: ServerConnection) -> bool:
        """Whitelisted address or bypass key; also resolves the client's address when the
        limits need it."""
        key = admission.key
        if key is not None and key.id in self._bypass_ids:
            return True
        if self._bypass_digests and admission.presented and key_digest(
                admission.presented) in self._bypass_digests:
            return True
        plan = self.plan
        assert plan is not None
        if self._whitelist or plan.needs_address(key):
            if self._forwarded:
                forwarded = [v for n, v in request.headers if n == b"x-forwarded-for"]
                address, ip = self._addresses.resolve(conn.peer, forwarded,
                                                      request.header(b"x-real-ip"))
            else:
                address, ip = self._addresses.resolve(conn.peer)
            if self._whitelist and in_networks(ip, self._whitelist):
                return True
            admission.client = address
        return False

    async def admit(self, admission: Admission, request: Request, conn: ServerConnection,
                    model: str, reservation: float) -> None:
        """Admit the request under every limit that applies before routing, or refuse it
        (429 with ``Retry-After``; 503 when Redis fails and ``on_error`` is ``deny``).
        Admitted, its answers carry the ``x-ratelimit-*`` headers."""
        checks = self.admit_now(admission, request, conn, model, reservation)
        if checks is not None:
            await self.admit_redis(admission, conn, checks, model)

    def admit_now(self, admission: Admission, request: Request, conn: ServerConnection,
                  model: str, reservation: float) -> Sequence[Check] | None:
        """:meth:`admit` as far as it goes without waiting: everything, unless the checks
        go to Redis; then it returns them, for :meth:`admit_redis`. (In memory nothing
        waits, so the Proxy admits the common request without a coroutine of its own.)"""
        key = admission.key
        quick = self._quick
        if quick is not None and key is not None:
            # Most keyed requests: the key's fixed checks (built by an earlier admission,
            # so the limits apply to it) on full buckets, whose outcome and head lines are
            # known in advance; the limiter only moves their TATs.
            fixed = self._fixed.get(key.digest)
            if fixed is not None and fixed.full is not None and quick.admit_full(fixed,
                                                                                 clock()):
                admission.reservation = reservation
                admission.decisions += (fixed.full,)
                conn.extra_head += fixed.head
                return None
        plan = self.plan
        if plan is None or not (self._always or plan.applies(key)):
            admission.limited = False
            return None
        if self._exemptions and self._exempt(admission, request, conn):
            admission.limited = False
            return None
        admission.reservation = reservation
        checks = plan.checks(key, admission.client, model, reservation)
        if not checks:
            return None
        memory = self._memory
        if memory is None:
            return checks
        decision = memory.admit(checks, clock(),
                                self._lease(checks) if self._concurrency else None)
        if decision.allowed:
            admission.decisions += (decision,)
            if decision.settles:
                admission.settles = True
            conn.extra_head += ratelimit_head(decision)
            return None
        raise self._refusal(decision, admission, model)

    async def admit_redis(self, admission: Admission, conn: ServerConnection,
                          checks: Sequence[Check], model: str) -> None:
        """The rest of :meth:`admit` with Redis storage: one ``EVALSHA`` for ``checks``."""
        # Alone (no other admitted request in flight), the call may wait for its reply
        # without trio's wait path (see RedisClient.evalsha).
        decision = await self._admit(checks, lone=not self.admitted)
        if decision is None:  # Redis failed, on_error: allow
            return
        if decision.allowed:
            self.admitted += 1
            admission.counted = True
            admission.settles = True
            admission.decisions += (decision,)
            conn.extra_head += ratelimit_head(decision)
            return
        raise self._refusal(decision, admission, model)

    async def admit_backend(self, admission: Admission, conn: ServerConnection,
                            backend: str) -> Decision | None:
        """``per_backend``: admit the request for the backend routing chose. Returns the
        refusal when that backend's limit is reached (the caller tries another), else
        ``None``."""
        plan = self.plan
        if plan is None or not admission.limited:
            return None
        checks = plan.backend_checks(backend, admission.reservation)
        decision = await self._admit(checks)
        if decision is None:
            return None
        if not decision.allowed:
            return decision
        admission.backend_decisions += ((backend, decision),)
        head = ratelimit_head(Decision(True, _states(admission)))
        conn.extra_head = _replace_ratelimit(conn.extra_head, head)
        return None

    def backend_refusal(self, admission: Admission, refused: Decision, model: str
                        ) -> RouterError:
        """The 429 when every backend of the request was refused by ``per_backend``."""
        return self._refusal(refused, admission, model)

    def _lease(self, checks: Sequence[Check]) -> str | None:
        """A new lease id when some check counts requests in flight."""
        if not self._concurrency or not any(type(c) is ConcurrencyCheck for c in checks):
            return None
        self._leases += 1
        return f"{self._lease_prefix}{self._leases:x}"

    async def _admit(self, checks: Sequence[Check], lone: bool = False) -> Decision | None:
        lease = self._lease(checks)
        memory = self._memory
        if memory is not None:
            return memory.admit(checks, clock(), lease)
        keys, args = admission_arguments(checks, self._prefix, lease)
        redis = self.redis
        assert redis is not None
        started = clock()
        try:
            # The client ends every call within its timeout; shielded so that a request
            # cancelled meanwhile still learns what the script took (its lease is then
            # given back by settle).
            reply = await redis.evalsha(ADMIT, keys, args, shielded=True, lone=lone)
            decision = decode_admission(checks, reply, lease)
        except (RedisError, ValueError) as exc:
            self._redis_failed("admit", exc)
            if self._deny:
                raise RouterError(
                    503, "Rate limiting is unavailable (its Redis store does not answer), so "
                    "the request was refused (rate_limiting.redis.on_error: deny)",
                    code="rate_limiter_unavailable", retry_after=1) from None
            return None
        self._redis_ok.observe(clock() - started)
        if self._failing:
            self._redis_back()
        return decision

    def _refusal(self, decision: Decision, admission: Admission, model: str) -> RouterError:
        denied = decision.denied
        binding = max(denied, key=lambda s: -1.0 if s.retry_after is None else s.retry_after)
        check = binding.check
        if type(check) is RateCheck:
            kind = _KINDS[check.tokens]
            detail = f"limit {binding.limit:g}, remaining {binding.remaining}"
        else:
            kind = "concurrency"
            detail = f"at most {binding.limit:g} in flight"
        self._metrics.rate_limited.labels(kind, check.scope).inc()
        what = {"requests": "requests", "tokens": "tokens",
                "concurrency": "requests in flight"}[kind]
        whose = _whose(check.scope, check.ident, admission, model)
        wait = decision.retry_after
        when = f"; retry after {wait:.1f} s" if wait is not None else "; retry when one ends"
        return RouterError(429, f"Rate limit reached for {what} of {whose} ({detail}){when}",
                           code="rate_limit_exceeded", headers=ratelimit_headers(decision))

    # -- settling ----------------------------------------------------------------------------

    def settle(self, admission: Admission, tokens_used: int | None, backend: str) -> None:
        """The request is over: release its leases, and correct its token reservations by
        ``tokens_used`` (``None``: unknown, the reservation stays charged). A backend
        admission of an attempt that did not answer (``backend`` is the one that did) is
        refunded. Never awaits (it runs in ``finally``); Redis settles in the background."""
        if admission.counted:
            admission.counted = False
            self.admitted -= 1
        # ``settles`` is False for a memory admission of request limits only (most of them).
        for decision in admission.decisions:
            if decision.settles:
                self._settle(decision, tokens_used)
        for name, decision in admission.backend_decisions:
            if decision.settles:
                self._settle(decision, tokens_used if name == backend else 0)

    def charge(self, admission: Admission, tokens: int, backend: str = "") -> None:
        """Count ``tokens`` against the token limits an admitted request took (and those of
        its admission on ``backend``), now, leaving its leases and its reservation alone: a
        Realtime session's responses, as each ends (the session's own :meth:`settle`, at its
        end, then refunds the reservation)."""
        if tokens <= 0:
            return
        decisions = admission.decisions
        if backend:
            decisions = (*decisions, *(d for n, d in admission.backend_decisions if n == backend))
        for decision in decisions:
            # The token limits only, as if admitted at cost 0: settling "used ``tokens``"
            # against that adds exactly ``tokens`` (in memory and in Redis alike).
            states = tuple(
                msgspec.structs.replace(state, check=replace(state.check, cost=0.0))
                for state in decision.states
                if type(state.check) is RateCheck and state.check.tokens)
            if states:
                self._settle(Decision(True, states), tokens)

    def release_backend(self, admission: Admission, backend: str) -> None:
        """The request's admission on ``backend`` is over before the request is (a Realtime
        session that could not open there): its lease and reservation go back now."""
        kept = []
        for name, decision in admission.backend_decisions:
            if name == backend:
                self._settle(decision, 0)
            else:
                kept.append((name, decision))
        admission.backend_decisions = tuple(kept)

    def _settle(self, decision: Decision, tokens_used: int | None) -> None:
        memory = self._memory
        if memory is not None:
            # Only a lease or a token correction changes anything (settle's own rules;
            # the decision's own checks decide, whatever a reload changed since).
            if decision.lease is not None or tokens_used is not None:
                memory.settle(decision, tokens_used, clock())
            return
        arguments = settlement_arguments(decision, tokens_used, self._prefix)
        if arguments is None:
            return
        try:
            self._settle_send.send_nowait(arguments)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.settlements_dropped += 1

    async def run(self) -> None:
        """In memory: drop idle rate-limit keys every :data:`SWEEP_PERIOD` (work no
        request does). With Redis: settle admissions in batches, one pipelined write per
        batch (the ``EVALSHA`` calls go out together), retried for a few seconds while
        Redis is down."""
        redis = self.redis
        if redis is None:
            memory = self._memory
            assert memory is not None
            while True:
                await trio.sleep(SWEEP_PERIOD)
                memory.sweep(clock())
        receive = self._settle_receive
        while True:
            batch = [await receive.receive()]
            while len(batch) < _SETTLE_BATCH:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._settle_batch(redis, batch)

    async def _settle_batch(self, redis: RedisClient,
                            batch: list[tuple[list[str], list[str]]]) -> None:
        for attempt in range(_SETTLE_RETRIES):
            started = clock()
            try:
                try:
                    await redis.execute_many([("EVALSHA", SETTLE.sha1, len(keys), *keys, *args)
                                              for keys, args in batch])
                except RedisNoScriptError:  # the server lost it: one by one, reloading it
                    for keys, args in batch:
                        await redis.evalsha(SETTLE, keys, args)
            except RedisError as exc:
                self._redis_failed("settle", exc)
                if attempt + 1 < _SETTLE_RETRIES:
                    await trio.sleep(_SETTLE_RETRY_DELAY * (attempt + 1))
                continue
            self._metrics.redis_latency.labels("settle").observe(clock() - started)
            return
        self.settlements_dropped += len(batch)
        log.warning("rate limits: %d settlement(s) dropped (Redis unavailable); their "
                    "leases expire by themselves", len(batch))

    # -- Redis health ------------------------------------------------------------------------

    def _redis_failed(self, call: str, exc: Exception) -> None:
        self._metrics.redis_errors.labels(call, _error_kind(exc)).inc()
        self._failing += 1
        now = trio.current_time()
        if now - self._failing_logged < _LOG_EVERY:
            return
        what = "answered 503" if self._deny else "allowed without limits"
        if self._failing == 1:
            log.warning("rate limits: Redis at %s failed (%s); requests are %s "
                        "(rate_limiting.redis.on_error) until it answers again",
                        self._redis_address, exc, what)
        else:
            log.warning("rate limits: Redis at %s still failing: %d calls failed (last: %s); "
                        "requests are %s", self._redis_address, self._failing, exc, what)
        self._failing_logged = now

    def _redis_back(self) -> None:
        log.warning("rate limits: Redis at %s answers again (after %d failed calls)",
                    self._redis_address, self._failing)
        self._failing = 0
        self._failing_logged = -float("inf")


def redis_client(config: Config) -> RedisClient | None:
    """The Redis client of ``rate_limiting.redis`` when storage is Redis, with the
    limiter's scripts registered (loaded on every new connection). It connects on its
    first call: with no limit set (yet: a reload may add some) it is never called."""
    rl = config.rate_limiting
    if rl.storage != "redis":
        return None
    redis = rl.redis
    options = RedisOptions.from_url(
        redis.url, timeout=redis.timeout, connect_timeout=redis.connect_timeout,
        pool_size=redis.pool_size, ca_file=redis.ca_file, verify=redis.tls_verify,
        # The first failure refuses calls for backoff_initial: short, so that a blip costs
        # little, but a dead Redis is then not asked again on every request.
        backoff_initial=0.05, backoff_max=2.0,
    )
    client = RedisClient(options)
    client.register_script(ADMIT)
    client.register_script(SETTLE)
    return client


def cors_policy(config: Config) -> CorsPolicy | None:
    cors = config.cors
    if not cors.enabled:
        return None
    return CorsPolicy(cors.allowed_origins, cors.allowed_methods, cors.allowed_headers,
                      cors.expose_headers, cors.allow_credentials, cors.max_age)


# -- helpers ----------------------------------------------------------------------------------


def _states(admission: Admission) -> tuple[LimitState, ...]:
    states: list[LimitState] = []
    for decision in admission.decisions:
        states.extend(decision.states)
    for _, decision in admission.backend_decisions:
        states.extend(decision.states)
    return tuple(states)


def _replace_ratelimit(head: bytes, lines: bytes) -> bytes:
    """``head`` with its ``x-ratelimit-*`` lines replaced by ``lines``."""
    kept = [line for line in head.split(b"\r\n")
            if line and not line.startswith(b"x-ratelimit-")]
    rest = b"".join(line + b"\r\n" for line in kept)
    return rest + lines


def _whose(scope: str, ident: str, admission: Admission, model: str) -> str:
    if scope == "api_key":
        return f"API key {admission.label}"
    if scope == "client":
        return "this client"
    if scope == "model":
        return f"model {quoted(model)}"
    if scope == "backend":
        return f"backend {quoted(ident)}"
    return "the router"


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisUnavailableError):
        return "unavailable"
    if isinstance(exc, RedisReplyError):
        return "reply"
    if isinstance(exc, RedisProtocolError | ValueError):
        return "protocol"
    return "connection"
