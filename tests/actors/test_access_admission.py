"""AccessControl's short paths for the common request: a key seen before is found with one
probe (its expiry still checked), and a key's fixed request limits on full buckets are
admitted with the decision and the ``x-ratelimit-*`` lines computed once; anything else
takes the general path, with the same answers."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from continuum.actors.access import AccessControl
from continuum.config import config_from_dict
from continuum.core.errors import RouterError
from continuum.core.ratelimit import ratelimit_head
from continuum.net.server.connection import Request
from continuum.observability.metrics import Metrics
from helpers import router_config

GOOD = "sk-admission-test-key-0001"
CHAT = "/v1/chat/completions"


def _access(keys: list[dict[str, Any]], **rate_limiting: Any) -> AccessControl:
    config = config_from_dict(router_config(
        [{"name": "a", "url": "http://127.0.0.1:9", "models": ["m"]}],
        api_keys={"mode": "blocking", "api_keys": keys}, rate_limiting=rate_limiting),
        source="<test>")
    return AccessControl(config, Metrics())


def _request(*headers: tuple[bytes, bytes], path: str = CHAT) -> Request:
    return Request("POST", path, "", list(headers or [(b"authorization",
                                                      b"Bearer " + GOOD.encode())]),
                   b"", True)


def _config(keys: list[dict[str, Any]]) -> Any:
    return config_from_dict(router_config(
        [{"name": "a", "url": "http://127.0.0.1:9", "models": ["m"]}],
        api_keys={"mode": "blocking", "api_keys": keys}), source="<test>")


def _status(access: AccessControl, request: Request) -> int | str:
    """The key's label, or the status that refused the request."""
    try:
        return access.authenticate_request(request).label
    except RouterError as exc:
        return exc.status


def test_a_repeated_authorization_is_one_probe_and_nothing_else_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    access = AccessControl(_config([
        {"key": GOOD, "id": "good"},
        {"key": "sk-reader-key-0000000001", "id": "reader", "scopes": ["read"]},
        {"key": "sk-expiring-key-00000001", "id": "soon", "expires_at": "2030-01-01"},
    ]), Metrics())
    bearer = (b"authorization", b"Bearer " + GOOD.encode())
    assert [_status(access, _request(bearer)) for _ in range(2)] == ["good", "good"]
    assert access._bearers[bearer[1]][0].id == "good"  # remembered by the raw value
    # A key with scopes is checked against each request's path; one with an expiry
    # against the clock; neither is remembered by its raw value.
    reader = (b"authorization", b"Bearer sk-reader-key-0000000001")
    soon = (b"authorization", b"bearer   sk-expiring-key-00000001 ")
    assert [_status(access, _request(reader)) for _ in range(2)] == [403, 403]
    assert _status(access, _request(soon)) == "soon"
    monkeypatch.setattr(time, "time", lambda: 1_900_000_000.0)
    assert _status(access, _request(soon)) == 401
    # Not a bearer value: the key comes from x-api-key, and the value names nothing.
    basic = (b"authorization", b"Basic Zm9vOmJhcg==")
    assert _status(access, _request(basic, (b"x-api-key", GOOD.encode()))) == "good"
    assert _status(access, _request(basic)) == 401
    assert list(access._bearers) == [bearer[1]]
    # A reload that removes the key forgets what it remembered.
    access.configure(_config([{"key": "sk-another-key-000000001", "id": "other"}]))
    assert _status(access, _request(bearer)) == 401


def _admit(access: AccessControl) -> tuple[Any, bytes]:
    """One request's authentication and admission: (its Admission, its head lines)."""
    request = _request()
    conn: Any = SimpleNamespace(extra_head=b"", peer="127.0.0.1")
    admission = access.authenticate(request, GOOD.encode())
    assert access.admit_now(admission, request, conn, "m", 0.0) is None  # memory: no await
    return admission, conn.extra_head


def test_a_remembered_key_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    access = _access([{"key": GOOD, "id": "good", "expires_at": "2030-01-01T00:00:00Z"}])
    assert access.authenticate(_request(), GOOD.encode()).label == "good"
    assert access.authenticate(_request(), GOOD.encode()).label == "good"  # remembered
    monkeypatch.setattr(time, "time", lambda: 1_900_000_000.0)  # 2030-03-17
    with pytest.raises(RouterError) as refused:
        access.authenticate(_request(), GOOD.encode())
    assert refused.value.status == 401


def test_full_buckets_take_the_precomputed_admission() -> None:
    access = _access([{"key": GOOD, "id": "good", "rate_limit": 6_000_000_000}],
                     limits={"global": {"requests_per_second": 1e9, "burst_capacity": 1e9}})
    first, head = _admit(access)  # builds the key's fixed checks (the general path)
    assert access.plan is not None
    fixed = access.plan.fixed[first.key.digest]
    assert fixed.full is not None and fixed.head == ratelimit_head(fixed.full)
    # The tightest is the global limit (a burst of 1e9 against the key's 6e9); the general
    # path's remaining may be one less (its reset carries the clock's rounding).
    assert head.startswith(b"x-ratelimit-limit-requests: 1000000000\r\n")
    assert fixed.head.startswith(b"x-ratelimit-limit-requests: 1000000000\r\n"
                                 b"x-ratelimit-remaining-requests: 999999999\r\n")
    memory = access.memory
    assert memory is not None
    for _ in range(20):  # each bucket refills in nanoseconds: full at every admission
        before = dict(memory._tats)
        admission, head = _admit(access)
        assert admission.decisions == (fixed.full,) and head == fixed.head
        assert admission.decisions[0] is fixed.full and not admission.settles
        assert all(memory._tats[k] > v for k, v in before.items())  # each limit charged


def test_a_bucket_not_full_takes_the_general_path() -> None:
    access = _access([{"key": GOOD, "id": "good", "rate_limit": 2}],
                     limits={"global": {"requests_per_second": 1e9, "burst_capacity": 1e9}})
    heads = [_admit(access)[1] for _ in range(2)]
    assert [h.split(b"\r\n")[1] for h in heads] == [b"x-ratelimit-remaining-requests: 1",
                                                    b"x-ratelimit-remaining-requests: 0"]
    with pytest.raises(RouterError) as refused:
        _admit(access)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"


def test_exemptions_are_looked_at_before_any_limit() -> None:
    access = _access([{"key": GOOD, "id": "good", "rate_limit": 1}],
                     whitelist=["127.0.0.1"])
    for _ in range(3):  # over the key's limit, but whitelisted: never limited
        admission, head = _admit(access)
        assert not admission.limited and head == b""
