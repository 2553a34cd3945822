"""Rate and concurrency limits: the admission algorithm, in memory and as Redis scripts.

Sans-IO: nothing here does I/O or reads a clock. The caller passes ``now`` (any monotonic
seconds for :class:`MemoryLimiter`; Redis scripts read the server's clock unless told
otherwise) and sends the scripts' arguments with whatever Redis client it has::

    checks = [RateCheck("api_key", key_id, Rate(1.0, 60)),              # 60 rpm, burst 60
              RateCheck("api_key", key_id, Rate(1000.0, 60_000), cost=512, tokens=True),
              ConcurrencyCheck("api_key", key_id, limit=4, ttl=600.0)]
    decision = limiter.admit(checks, now, lease="inst1:42")            # memory
    # or: keys, args = admission_arguments(checks, prefix, lease="inst1:42")
    #     decision = decode_admission(checks, await redis.evalsha(ADMIT, keys, args), lease)
    if not decision.allowed: ...429, decision.retry_after, ratelimit_headers(decision)...
    ...
    limiter.settle(decision, tokens_used=usage_total, now=now)         # or SETTLE script

Why GCRA (the generic cell rate algorithm) for rates
    GCRA is a token bucket stated as one timestamp: the *theoretical arrival time* (TAT) at
    which the bucket would be full again. Admitting ``n`` units moves it ``n`` emission
    intervals (``1/rate``) into the future; a request is refused when that would put it
    more than ``burst`` intervals ahead of now. It admits exactly what a token bucket of
    capacity ``burst`` refilled at ``rate`` admits, but it keeps one number per key instead
    of two (tokens and last refill), needs no refill arithmetic, and gives the answers the
    429 and the ``x-ratelimit-*`` headers need directly: remaining = the free intervals
    left, reset = TAT - now, retry-after = how far the request overshoots. In Redis that
    is one ``GET`` and one ``SET ... PX`` per limit inside one script, and the key expires
    by itself exactly when it would read as a full bucket, so idle clients cost no memory.
    A sliding-window log would keep one entry per request (memory grows with the rate);
    fixed windows admit up to twice the limit across a window edge.

One atomic admission per request
    A request is usually under several limits (its key, its client, the model, global).
    One call checks all of them and takes from all of them only if every one admits it:
    a request refused by one limit consumes nothing from the others. Over Redis this is
    one ``EVALSHA`` of :data:`ADMIT_SCRIPT` — one round trip, atomic across instances.

Tokens: reserve, then reconcile
    The tokens a request will use are known only at its end. Admission charges a
    reservation (``max_tokens`` or a default) as the check's ``cost``; :meth:`settle`
    (or :data:`SETTLE_SCRIPT`, off the request path) then moves the TAT by the difference
    with the real usage, refunding or charging more. A request that never reports usage
    keeps its reservation charged. A reservation larger than the bucket is admitted when
    the bucket is full and leaves it in debt, rather than never.

Concurrency: leases that expire
    In-flight requests are counted as leases (a Redis sorted set per key: member = lease
    id, score = expiry). Settling removes the lease; a lease whose instance crashed
    expires after ``ttl`` seconds, so a crash cannot leak slots for longer than that. The
    ``ttl`` must exceed the longest request (the router's request timeout).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias, final

import msgspec

#: Decisions within a millionth of an interval of the limit go the caller's way (float
#: arithmetic must not turn "exactly the burst" into a refusal).
_EPSILON: Final = 1e-6
_MAX_IDENT: Final = 128
_US: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A sustained rate and the burst a fresh bucket admits at once."""

    #: Units (requests or tokens) per second, sustained.
    per_second: float
    #: The bucket's capacity: units admitted at once from idle. At least 1.
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and math.isfinite(self.per_second)):
            raise ValueError(f"a rate must be a positive number, got {self.per_second}")
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"a burst must be >= 1, got {self.burst}")

    @classmethod
    def per_minute(cls, amount: float, burst: float | None = None) -> Rate:
        """``amount`` per minute; the burst defaults to a whole minute's worth (what
        ``rate_limit: 60`` means to most users: 60 at once, then one a second)."""
        return cls(amount / 60.0, amount if burst is None else burst)

    @property
    def interval(self) -> float:
        """Seconds per unit (GCRA's emission interval)."""
        return 1.0 / self.per_second


@dataclass(frozen=True, slots=True)
class RateCheck:
    """One rate limit that applies to a request."""

    #: What the limit is about (``api_key``, ``client``, ``backend``, ``model``,
    #: ``global``): part of the key, and the ``scope`` label of metrics.
    scope: str
    #: Who within the scope (a key id, a client address, a model name; ``""`` for global).
    ident: str
    rate: Rate
    #: Units this request takes: 1 for a request limit, the reservation for tokens.
    cost: float = 1.0
    #: A token limit (reconciled at settle time) rather than a request limit.
    tokens: bool = False
    key: str = field(init=False, repr=False, compare=False)
    #: GCRA's constants for this check, computed once (a request limit's check is cached
    #: and reused by every request): emission interval, tolerance, the units a full
    #: bucket must hold for the request (the cost, at most the burst), float slack.
    interval: float = field(init=False, repr=False, compare=False)
    tolerance: float = field(init=False, repr=False, compare=False)
    need: float = field(init=False, repr=False, compare=False)
    slack: float = field(init=False, repr=False, compare=False)
    #: How far an admission moves the TAT (the cost in intervals).
    step: float = field(init=False, repr=False, compare=False)
    #: Its ARGV in :data:`ADMIT_SCRIPT`, made by the first admission that sends it.
    argv: tuple[str, ...] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not (self.cost >= 0 and math.isfinite(self.cost)):
            raise ValueError(f"a cost must be >= 0, got {self.cost}")
        kind = "tk" if self.tokens else "rq"
        setattr_ = object.__setattr__
        setattr_(self, "key", f"{kind}:{self.scope}:{_ident(self.ident)}")
        rate = self.rate
        interval = rate.interval
        setattr_(self, "interval", interval)
        setattr_(self, "tolerance", rate.burst * interval)
        setattr_(self, "need", min(self.cost, rate.burst))
        setattr_(self, "slack", rate.burst * interval + interval * _EPSILON)
        setattr_(self, "step", self.cost * interval)


@dataclass(frozen=True, slots=True)
class ConcurrencyCheck:
    """A limit on requests in flight at once, counted with expiring leases."""

    scope: str
    ident: str
    limit: int
    #: Seconds a lease lives if never released (a crashed instance's requests).
    ttl: float
    key: str = field(init=False, repr=False, compare=False)
    #: Its ARGV in :data:`ADMIT_SCRIPT`, made by the first admission that sends it.
    argv: tuple[str, ...] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {self.limit}")
        if not (self.ttl > 0 and math.isfinite(self.ttl)):
            raise ValueError(f"a lease ttl must be a positive number, got {self.ttl}")
        object.__setattr__(self, "key", f"cc:{self.scope}:{_ident(self.ident)}")


Check: TypeAlias = RateCheck | ConcurrencyCheck


class LimitState(msgspec.Struct, frozen=True):
    """What one limit said about one request: enough for a 429 and the headers. (Made
    for every limit of every request: a frozen Struct builds ~10x faster than a frozen
    dataclass.)"""

    check: Check
    allowed: bool
    #: The limit's size: the burst (requests or tokens) or the concurrency limit.
    limit: float
    #: Units (or slots) left after this request.
    remaining: int
    #: Seconds until the limit is back to its full size (0 for concurrency: unknown).
    reset_after: float
    #: When refused: seconds until this request would fit (``None`` for concurrency,
    #: which frees up when some request ends, not at a known time).
    retry_after: float | None
    #: In memory, a rate limit's theoretical arrival time before this admission (what a
    #: refusal puts back; 0.0 otherwise).
    tat: float = 0.0


class Decision(msgspec.Struct, frozen=True):
    """The outcome of one admission."""

    allowed: bool
    states: tuple[LimitState, ...]
    #: The lease id taken on every concurrency check (``None`` if there was none or the
    #: request was refused); pass the decision back to ``settle`` to release it.
    lease: str | None = None
    #: False when settling cannot change anything (an admission in memory of request rate
    #: limits only: no lease, no token reservation), so the caller skips it.
    settles: bool = True

    @property
    def denied(self) -> tuple[LimitState, ...]:
        return tuple(s for s in self.states if not s.allowed)

    @property
    def retry_after(self) -> float | None:
        """Seconds before retrying can succeed, as far as the rate limits know (the
        largest wait among the refusing limits; ``None`` when allowed or when only a
        concurrency limit refused)."""
        waits = [s.retry_after for s in self.states if not s.allowed and s.retry_after is not None]
        return max(waits) if waits else None


ALLOW_ALL: Final = Decision(allowed=True, states=())


def full_state(check: RateCheck) -> LimitState:
    """What ``check`` says when its bucket is full (idle: its TAT not after now): admitted,
    its TAT moved ``step`` past now. The same figures :meth:`MemoryLimiter.admit` gives
    then, computed without a clock."""
    burst = check.rate.burst
    reset = check.step
    remaining = int((check.tolerance - reset) / check.interval + _EPSILON)
    return LimitState(check, True, burst, min(max(remaining, 0), int(burst)), reset, None)


@final
class FixedChecks:
    """The checks every request of one client makes as they are (no token reservation in
    them), and what an admission on full buckets says, computed once.

    A limit nobody is near refills between its requests, so most admissions find every
    bucket full: with request rate limits only (no lease, no reservation) the decision is
    then known in advance, and so are its ``x-ratelimit-*`` lines
    (:meth:`MemoryLimiter.admit_full` only moves the TATs)."""

    __slots__ = ("busy_until", "checks", "full", "head", "steps")

    def __init__(self, checks: tuple[Check, ...]) -> None:
        self.checks = checks
        #: The decision on full buckets, or ``None`` when it is not known in advance (a
        #: token or concurrency check, or two checks of one key).
        self.full: Decision | None = None
        #: Its ``x-ratelimit-*`` lines (:func:`ratelimit_head`).
        self.head = b""
        #: Each check's (key, step) when ``full`` is known, else empty.
        self.steps: tuple[tuple[str, float], ...] = ()
        #: Some bucket is not full before this (the TAT :meth:`MemoryLimiter.admit_full`
        #: last found ahead of now): a client that keeps a bucket in use does not try the
        #: full-bucket pass on every request.
        self.busy_until = 0.0
        rates = tuple(c for c in checks if type(c) is RateCheck and not c.tokens)
        if checks and len(rates) == len(checks) and len({c.key for c in rates}) == len(rates):
            self.steps = tuple((c.key, c.step) for c in rates)
            self.full = Decision(True, tuple(full_state(c) for c in rates), settles=False)
            self.head = ratelimit_head(self.full)


def _ident(ident: str) -> str:
    """``ident`` as a key part: kept when short and printable, else hashed (a client
    cannot make keys of any length or content)."""
    if len(ident) <= _MAX_IDENT and ident.isprintable():
        return ident
    return "sha256:" + hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()


# -- in memory --------------------------------------------------------------------------


@final
class MemoryLimiter:
    """Limits held in this process (``storage: memory``).

    Memory is bounded: rate keys are kept in the order they were last charged, and each
    :meth:`sweep` drops the oldest while they are idle (a TAT in the past reads the same as
    no entry); past ``max_keys`` an admission drops the oldest even if not idle
    (that client gets a fresh bucket: bounded memory wins over exactness for the
    longest-idle of ``max_keys`` clients). Concurrency keys live while they hold leases.
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._tats: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        """Keys held (rate and concurrency)."""
        return len(self._tats) + len(self._leases)

    def admit(self, checks: Sequence[Check], now: float, lease: str | None = None) -> Decision:
        """Check every limit; take from all of them only if all admit the request.
        ``lease`` (unique per request) is required when a concurrency check is given.

        Every limited request runs this, so the GCRA step is written out here, without a
        call or a tuple per check; idle keys go in :meth:`sweep`, not here."""
        tats = self._tats
        states: list[LimitState] = []
        allowed = True
        concurrency = tokens = False
        for check in checks:
            if type(check) is RateCheck:
                if check.tokens:
                    tokens = True
                # GCRA: admitted when the request's units fit before the tolerance. Charged
                # at once (taken out and put back at the end: the order is "last charged");
                # a refusal puts every TAT back below.
                # Distances from now, not instants: ``ahead`` is exactly 0.0 for an idle
                # bucket, where ``(now + x) - now`` is x rounded to the clock's magnitude
                # (a year of uptime rounds to ~4 ns, more than a fast limit's slack).
                key = check.key
                tat = tats.pop(key, now)
                if tat > now:
                    start = tat
                    ahead = tat - now
                else:
                    start = now
                    ahead = 0.0
                interval = check.interval
                reach = ahead + check.need * interval
                if reach <= check.slack:
                    new_tat = start + check.step
                    reset = ahead + check.step
                    retry: float | None = None
                    ok = True
                else:  # refused: tat > now, so what is put back is the TAT as it was
                    new_tat = start
                    reset = ahead
                    retry = reach - check.tolerance
                    if retry < 0.0:
                        retry = 0.0
                    ok = allowed = False
                tats[key] = new_tat
                burst = check.rate.burst
                # int() truncates towards zero: the same as floor() once clipped at 0.
                remaining = int((check.tolerance - reset) / interval + _EPSILON)
                if remaining < 0:
                    remaining = 0
                elif remaining > burst:
                    remaining = int(burst)
                states.append(LimitState(check, ok, burst, remaining,
                                         reset if reset > 0.0 else 0.0, retry, tat))
            else:
                assert isinstance(check, ConcurrencyCheck)
                if lease is None:
                    raise ValueError("a concurrency check needs a lease id")
                state = self._slots(check, now)
                if not state.allowed:
                    allowed = False
                concurrency = True
                states.append(state)
        if not allowed:
            for state in states:  # nothing is taken: every rate limit as it was
                check = state.check
                if type(check) is RateCheck:
                    if state.tat > now:
                        tats[check.key] = state.tat
                    else:  # idle, the same as no entry
                        del tats[check.key]
            return Decision(False, tuple(states))
        if concurrency:
            assert lease is not None
            for state in states:
                check = state.check
                if type(check) is ConcurrencyCheck:
                    self._leases.setdefault(check.key, {})[lease] = now + check.ttl
        while len(tats) > self.max_keys:
            del tats[next(iter(tats))]
        return Decision(True, tuple(states), lease if concurrency else None,
                        concurrency or tokens)

    def admit_full(self, fixed: FixedChecks, now: float) -> bool:
        """Admit a request under ``fixed`` when every one of its buckets is full (then the
        decision is ``fixed.full``): each TAT moves one ``step`` past now, in one pass.
        Otherwise nothing is taken and the answer is False: :meth:`admit` decides. Only for
        a ``fixed`` whose ``full`` is known (request rate limits of distinct keys)."""
        if now < fixed.busy_until:
            return False
        tats = self._tats
        for key, step in fixed.steps:
            tat = tats.pop(key, now)
            if tat > now:  # not full: put back what this admission took (idle buckets)
                tats[key] = tat
                fixed.busy_until = tat
                for taken, _ in fixed.steps:
                    if taken == key:
                        break
                    del tats[taken]
                return False
            tats[key] = now + step
        while len(tats) > self.max_keys:
            del tats[next(iter(tats))]
        return True

    def sweep(self, now: float) -> int:
        """Drop the least recently charged keys while they are idle (a TAT in the past
        reads the same as no entry); returns how many went. Called on a timer (the
        AccessControl's task, every second), not per request: ``max_keys`` bounds the
        memory meanwhile."""
        tats = self._tats
        dropped = 0
        while tats:
            oldest = next(iter(tats))
            if tats[oldest] > now:
                break
            del tats[oldest]
            dropped += 1
        return dropped

    def settle(self, decision: Decision, tokens_used: int | None, now: float) -> None:
        """After the request: release its leases, and correct its token reservations by
        the real usage (``None``: unknown, the reservation stays charged)."""
        if not decision.allowed:
            return
        for state in decision.states:
            check = state.check
            if type(check) is ConcurrencyCheck:
                leases = self._leases.get(check.key)
                if leases is not None and decision.lease is not None:
                    leases.pop(decision.lease, None)
                    if not leases:
                        del self._leases[check.key]
            elif type(check) is RateCheck and check.tokens and tokens_used is not None:
                delta = (tokens_used - check.cost) * check.rate.interval
                tat = max(self._tats.pop(check.key, now), now) + delta
                if tat > now:
                    self._tats[check.key] = tat

    def _slots(self, check: ConcurrencyCheck, now: float) -> LimitState:
        leases = self._leases.get(check.key)
        if leases:
            for lease_id in [k for k, expiry in leases.items() if expiry <= now]:
                del leases[lease_id]
        held = len(leases) if leases else 0
        allowed = held < check.limit
        return LimitState(
            check=check,
            allowed=allowed,
            limit=check.limit,
            remaining=check.limit - held - (1 if allowed else 0),
            reset_after=0.0,
            retry_after=None,
        )


# -- over Redis -------------------------------------------------------------------------

#: Both scripts start here: ARGV[1] is now in microseconds, or "" for the server's clock
#: (one clock for every instance; Redis >= 5 replicates a script's effects, so TIME
#: before writes is allowed).
_LUA_NOW: Final = """
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

#: One atomic admission. KEYS: one per check. ARGV[1]: now in microseconds, or "" for the
#: server's clock (every instance then agrees on time); ARGV[2]: the lease id ("" if none);
#: then four values per check — "g", interval (us), tolerance (us), cost for a rate;
#: "c", limit, ttl (us), "" for concurrency. Returns {allowed, then per check: allowed,
#: remaining, reset (us), retry (us, -1 if none)}; writes only when every check admits.
ADMIT_SCRIPT: Final = (
    _LUA_NOW
    + """local lease = ARGV[2]
local out = {1}
local writes = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local at = 2 + (i - 1) * 4
  local kind = ARGV[at + 1]
  local ok, remaining, reset, retry
  if kind == 'g' then
    local interval = tonumber(ARGV[at + 2])
    local tolerance = tonumber(ARGV[at + 3])
    local cost = tonumber(ARGV[at + 4])
    local burst = tolerance / interval
    local start = tonumber(redis.call('GET', key) or '0')
    local ahead = 0
    if start > now then ahead = start - now else start = now end
    local need = cost
    if need > burst then need = burst end
    local reach = ahead + need * interval
    ok = reach <= tolerance + interval * 1e-6
    reset = ahead
    if ok then
      reset = ahead + cost * interval
      writes[#writes + 1] = {'g', key, start + cost * interval}
      retry = -1
    else
      retry = reach - tolerance
    end
    remaining = math.floor((tolerance - reset) / interval + 1e-6)
    if remaining < 0 then remaining = 0 end
  else
    local limit = tonumber(ARGV[at + 2])
    local ttl = tonumber(ARGV[at + 3])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now))
    local held = redis.call('ZCARD', key)
    ok = held < limit
    remaining = limit - held
    if ok then
      remaining = remaining - 1
      writes[#writes + 1] = {'c', key, now + ttl}
    end
    reset = 0
    retry = -1
  end
  if not ok then out[1] = 0 end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset)
  out[#out + 1] = retry < 0 and -1 or math.ceil(retry)
end
if out[1] == 1 then
  for _, w in ipairs(writes) do
    if w[1] == 'g' then
      local ms = math.ceil((w[3] - now) / 1000) + 1
      redis.call('SET', w[2], string.format('%.3f', w[3]), 'PX', ms)
    else
      redis.call('ZADD', w[2], string.format('%.0f', w[3]), lease)
      local ms = math.ceil((w[3] - now) / 1000) + 1
      if redis.call('PTTL', w[2]) < ms then redis.call('PEXPIRE', w[2], ms) end
    end
  end
end
return out
"""
)

#: After the request, off its path. KEYS: one per entry. ARGV[1]: now (us) or "";
#: ARGV[2]: the lease id; then three values per key — "t", interval (us), units to add
#: (negative: refund) for a token reconciliation; "c", "", "" to release the lease.
SETTLE_SCRIPT: Final = (
    _LUA_NOW
    + """for i = 1, #KEYS do
  local key = KEYS[i]
  local at = 2 + (i - 1) * 3
  if ARGV[at + 1] == 't' then
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    tat = tat + tonumber(ARGV[at + 3]) * tonumber(ARGV[at + 2])
    if tat > now then
      redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
    else
      redis.call('DEL', key)
    end
  else
    redis.call('ZREM', key, ARGV[2])
  end
end
return #KEYS
"""
)


def _now_arg(now: float | None) -> str:
    return "" if now is None else repr(round(now * _US))


def admission_arguments(
    checks: Sequence[Check], prefix: str, lease: str | None = None, now: float | None = None
) -> tuple[list[str], list[str]]:
    """``KEYS`` and ``ARGV`` of :data:`ADMIT_SCRIPT` for ``checks``. ``now`` (seconds)
    overrides the server's clock (tests drive a simulated clock with it)."""
    keys: list[str] = []
    args = [_now_arg(now), lease or ""]
    for check in checks:
        keys.append(prefix + check.key)
        argv = check.argv
        if argv is None:  # once per check: cached checks are sent many times
            argv = _argv(check)
            object.__setattr__(check, "argv", argv)
        if lease is None and type(check) is ConcurrencyCheck:
            raise ValueError("a concurrency check needs a lease id")
        args += argv
    return keys, args


def _argv(check: Check) -> tuple[str, ...]:
    if type(check) is RateCheck:
        interval = check.rate.interval * _US
        return "g", repr(interval), repr(check.rate.burst * interval), repr(check.cost)
    assert isinstance(check, ConcurrencyCheck)
    return "c", str(check.limit), repr(check.ttl * _US), ""


def decode_admission(checks: Sequence[Check], reply: object, lease: str | None) -> Decision:
    """The :class:`Decision` in a reply of :data:`ADMIT_SCRIPT` (``ValueError`` if the
    reply does not have its shape)."""
    if not isinstance(reply, list) or len(reply) != 1 + 4 * len(checks):
        raise ValueError(f"unexpected admission reply: {reply!r:.200}")
    allowed = reply[0] == 1
    states: list[LimitState] = []
    for i, check in enumerate(checks):
        ok, remaining, reset_us, retry_us = reply[1 + 4 * i : 5 + 4 * i]
        if type(check) is RateCheck:
            limit: float = check.rate.burst
            retry: float | None = None if retry_us < 0 else retry_us / _US
        else:
            assert isinstance(check, ConcurrencyCheck)
            limit, retry = check.limit, None
        states.append(
            LimitState(
                check=check,
                allowed=ok == 1,
                limit=limit,
                remaining=int(remaining),
                reset_after=reset_us / _US,
                retry_after=retry,
            )
        )
    taken = allowed and any(type(c) is ConcurrencyCheck for c in checks)
    return Decision(allowed, tuple(states), lease if taken else None)


def settlement_arguments(
    decision: Decision, tokens_used: int | None, prefix: str, now: float | None = None
) -> tuple[list[str], list[str]] | None:
    """``KEYS`` and ``ARGV`` of :data:`SETTLE_SCRIPT` for a finished request, or ``None``
    when there is nothing to settle (no lease, no token correction: no round trip)."""
    if not decision.allowed:
        return None
    keys: list[str] = []
    args = [_now_arg(now), decision.lease or ""]
    for state in decision.states:
        check = state.check
        if type(check) is ConcurrencyCheck and decision.lease is not None:
            keys.append(prefix + check.key)
            args += ["c", "", ""]
        elif type(check) is RateCheck and check.tokens and tokens_used is not None:
            if tokens_used == check.cost:
                continue
            keys.append(prefix + check.key)
            args += ["t", repr(check.rate.interval * _US), repr(tokens_used - check.cost)]
    return (keys, args) if keys else None


# -- response headers -------------------------------------------------------------------


def _tightest(decision: Decision) -> tuple[LimitState | None, LimitState | None]:
    """The tightest request limit and the tightest token limit of a decision: the one
    with the fewest units left, then the one that takes longest to refill."""
    requests: LimitState | None = None
    tokens: LimitState | None = None
    for state in decision.states:
        check = state.check
        if type(check) is not RateCheck:
            continue
        if check.tokens:
            if tokens is None or state.remaining < tokens.remaining or (
                    state.remaining == tokens.remaining
                    and state.reset_after > tokens.reset_after):
                tokens = state
        elif requests is None or state.remaining < requests.remaining or (
                state.remaining == requests.remaining
                and state.reset_after > requests.reset_after):
            requests = state
    return requests, tokens


def ratelimit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for a decision,
    from the tightest request limit and the tightest token limit (the one with the fewest
    units left), plus ``retry-after`` (whole seconds, at least 1) when refused."""
    requests, tokens = _tightest(decision)
    out: list[tuple[bytes, bytes]] = []
    for kind, tightest in ((b"requests", requests), (b"tokens", tokens)):
        if tightest is not None:
            out += [
                (b"x-ratelimit-limit-" + kind, b"%d" % int(tightest.limit)),
                (b"x-ratelimit-remaining-" + kind, b"%d" % tightest.remaining),
                (b"x-ratelimit-reset-" + kind, _duration(tightest.reset_after)),
            ]
    if not decision.allowed:
        wait = decision.retry_after
        out.append((b"retry-after", b"%d" % max(1, math.ceil(wait or 1.0))))
    return out


_REQUESTS_HEAD: Final = (b"x-ratelimit-limit-requests: %d\r\nx-ratelimit-remaining-requests: %d"
                         b"\r\nx-ratelimit-reset-requests: %s\r\n")
_TOKENS_HEAD: Final = (b"x-ratelimit-limit-tokens: %d\r\nx-ratelimit-remaining-tokens: %d"
                       b"\r\nx-ratelimit-reset-tokens: %s\r\n")


def ratelimit_head(decision: Decision) -> bytes:
    """The header lines of :func:`ratelimit_headers`, as the bytes of a response head
    (``name: value\\r\\n`` each). Every admitted request pays for this, so it is one
    %-format per kind rather than a list of pairs joined."""
    requests, tokens = _tightest(decision)
    head = b""
    if requests is not None:
        head = _REQUESTS_HEAD % (int(requests.limit), requests.remaining,
                                 _duration(requests.reset_after))
    if tokens is not None:
        head += _TOKENS_HEAD % (int(tokens.limit), tokens.remaining,
                                _duration(tokens.reset_after))
    if not decision.allowed:
        head += b"retry-after: %d\r\n" % max(1, math.ceil(decision.retry_after or 1.0))
    return head


def _duration(seconds: float) -> bytes:
    """:func:`format_duration` as bytes; under a second (the usual reset of a request
    limit) without building a str."""
    if seconds <= 0:
        return b"0s"
    ms = round(seconds * 1000)
    if ms < 1000:
        return b"%dms" % (ms if ms > 1 else 1)
    return format_duration(seconds).encode()


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1s``,
    ``6m0s``, ``1h2m3.5s``."""
    if seconds <= 0:
        return "0s"
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{max(1, ms)}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text
