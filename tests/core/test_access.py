"""Sans-IO access facts: key lookup by digest, scopes, model patterns, the client's address
behind trusted proxies, and CORS answers."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from continuum.core import access
from continuum.core.access import (
    DISABLED,
    EXPIRED,
    MAX_FORWARDED_HOPS,
    MISSING,
    UNKNOWN,
    ApiKey,
    ClientAddresses,
    CorsPolicy,
    KeyTable,
    ModelPatterns,
    key_digest,
    key_label,
    parse_address,
    parse_networks,
    required_scope,
)


def key(secret: str, **fields: object) -> ApiKey:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return ApiKey(digest=digest, id=str(fields.pop("id", "")), label="x", **fields)  # type: ignore[arg-type]


def test_lookup_by_digest_and_every_reason() -> None:
    table = KeyTable([key("good"), key("off", enabled=False), key("old", expires_at=100.0)])
    assert table.lookup(b"good", 0.0)[0] is not None
    assert table.lookup(None, 0.0) == (None, MISSING)
    assert table.lookup(b"", 0.0) == (None, MISSING)
    assert table.lookup(b"nope", 0.0) == (None, UNKNOWN)
    assert table.lookup(b"off", 0.0) == (None, DISABLED)
    assert table.lookup(b"old", 99.9)[0] is not None
    assert table.lookup(b"old", 100.0) == (None, EXPIRED)
    assert table.lookup(b"g" * 100_000, 0.0) == (None, UNKNOWN)  # not even hashed
    assert key_digest(b"good") == hashlib.sha256(b"good").hexdigest()


def test_presented_keys_are_remembered_bounded_and_rechecked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [key(f"k{i}") for i in range(10)]
    table = KeyTable([*keys, key("off", enabled=False), key("old", expires_at=100.0)],
                     max_cached=4)
    hashed: list[bytes] = []
    real_digest = access.key_digest

    def counting(presented: bytes) -> str:
        hashed.append(presented)
        return real_digest(presented)

    monkeypatch.setattr(access, "key_digest", counting)
    assert table.lookup(b"k1", 0.0)[0] is keys[1]
    assert table.lookup(b"k1", 0.0)[0] is keys[1]
    assert hashed == [b"k1"]  # the second time: no hash
    assert table.cached == 1
    # Unknown and disabled keys are never remembered (a flood of guesses fills nothing).
    for i in range(100):
        assert table.lookup(b"guess%d" % i, 0.0) == (None, UNKNOWN)
    assert table.lookup(b"off", 0.0) == (None, DISABLED)
    assert table.lookup(b"off", 0.0) == (None, DISABLED)
    assert table.cached == 1
    assert hashed.count(b"off") == 2
    # Bounded: past max_cached it starts again, and every key is still found.
    for _ in range(3):
        for i, k in enumerate(keys):
            assert table.lookup(b"k%d" % i, 0.0)[0] is k
            assert table.cached <= 4
    # A remembered key that expires is refused, and forgotten (looked up again: hashed).
    assert table.lookup(b"old", 99.0)[0] is not None
    hashes = hashed.count(b"old")
    assert table.lookup(b"old", 99.0)[0] is not None
    assert hashed.count(b"old") == hashes  # remembered
    assert table.lookup(b"old", 100.0) == (None, EXPIRED)
    assert hashed.count(b"old") == hashes
    assert table.lookup(b"old", 101.0) == (None, EXPIRED)
    assert hashed.count(b"old") == hashes + 1  # forgotten
    assert table.lookup(b"old", 50.0)[0] is not None  # a clock that went back: found again
    with pytest.raises(ValueError):
        KeyTable([], max_cached=0)


def test_scopes() -> None:
    assert required_scope("GET", "/v1/models") == "read"
    assert required_scope("HEAD", "/v1/models/x") == "read"
    assert required_scope("POST", "/v1/chat/completions") == "write"
    assert required_scope("POST", "/v1/files") == "files"
    assert required_scope("GET", "/v1/realtime") == "write"  # a session is inference
    assert required_scope("GET", "/v1/files/file-1/content") == "files"
    everything = key("a")
    reader = key("b", scopes=frozenset({"read"}))
    admin = key("c", scopes=frozenset({"admin"}))
    assert everything.may("write") and everything.may("files")
    assert reader.may("read") and not reader.may("write") and not reader.may("files")
    assert all(admin.may(s) for s in ("read", "write", "files", "admin"))


def test_labels_never_hold_the_key() -> None:
    digest = "ab" * 32
    assert key_label("team-a", "sk-whatever", digest) == "team-a"
    assert key_label("", "sk-0123456789", digest) == "...6789"
    assert key_label("", "short", digest) == "sha256:abababab"
    assert key_label("", "", digest) == "sha256:abababab"


def test_model_patterns() -> None:
    patterns = ModelPatterns(["gpt-4o-mini", "claude-*", "llama-3.[12]-*"])
    assert patterns.match("gpt-4o-mini") and patterns.match("claude-sonnet-4")
    assert patterns.match("llama-3.1-8b") and not patterns.match("llama-3.3-70b")
    assert not patterns.match("gpt-4o") and not patterns.match("gpt-4o-mini-x")
    assert not patterns.match("xclaude-1")
    assert ModelPatterns([]).match("anything") and not ModelPatterns([])


# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("1.2.3.4", "1.2.3.4"), (" 1.2.3.4:5678 ", "1.2.3.4"),
     ("[2001:db8::1]:80", "2001:db8::1"), ("2001:db8::1", "2001:db8::1"), ("[::1]", "::1"),
     ("::ffff:10.0.0.1", "10.0.0.1"), ("unknown", None), ("", None), ("1.2.3.4:x", None),
     ("[zz]", None)],
)
def test_parse_address(text: str, parsed: str | None) -> None:
    address = parse_address(text)
    assert (str(address) if address is not None else None) == parsed


def test_client_address_behind_trusted_proxies() -> None:
    plain = ClientAddresses(())
    assert plain.resolve("9.9.9.9", [b"1.1.1.1"]) == ("9.9.9.9", parse_address("9.9.9.9"))
    proxies = ClientAddresses(parse_networks(["10.0.0.0/8", "127.0.0.1"]))
    # A peer that is no trusted proxy: its headers say nothing.
    assert proxies.resolve("8.8.8.8", [b"1.1.1.1"])[0] == "8.8.8.8"
    # The rightmost hop no trusted proxy wrote; what the client put on the left is ignored.
    assert proxies.resolve("127.0.0.1", [b"6.6.6.6, 1.1.1.1, 10.0.0.7"])[0] == "1.1.1.1"
    # Several headers are one list, in order.
    assert proxies.resolve("10.1.1.1", [b"6.6.6.6", b"2.2.2.2, 10.0.0.2"])[0] == "2.2.2.2"
    # Empty hops are skipped; IPv4-mapped and ported forms read as the address.
    assert proxies.resolve("::ffff:127.0.0.1", [b" , [::ffff:3.3.3.3]:443,,"])[0] == "3.3.3.3"
    # No header: X-Real-IP; nothing: the peer; every hop trusted: the first of them.
    assert proxies.resolve("127.0.0.1", [], b"4.4.4.4")[0] == "4.4.4.4"
    assert proxies.resolve("127.0.0.1", [])[0] == "127.0.0.1"
    assert proxies.resolve("127.0.0.1", [b"10.0.0.9, 10.0.0.8"])[0] == "10.0.0.9"
    # A garbage hop is the client's identity (bounded), never whitelisted as an address.
    text, ip = proxies.resolve("127.0.0.1", [b"x" * 500])
    assert ip is None and text == "x" * 64
    # A unix socket's peer.
    assert proxies.resolve("", [b"1.1.1.1"]) == ("", None)


def test_many_hops_are_not_walked() -> None:
    proxies = ClientAddresses(parse_networks(["10.0.0.0/8"]))
    hops = b", ".join(b"10.0.0.%d" % (i % 250) for i in range(10_000))
    text, _ = proxies.resolve("10.0.0.1", [b"5.5.5.5, " + hops])
    assert text.startswith("10.0.0.")  # the hop past the limit, not the walk to 5.5.5.5
    within = b", ".join(b"10.0.0.%d" % i for i in range(MAX_FORWARDED_HOPS))
    assert proxies.resolve("10.0.0.1", [b"5.5.5.5, " + within])[0] == "5.5.5.5"


@given(st.lists(st.binary(max_size=40), max_size=8), st.binary(max_size=40))
def test_any_header_bytes_resolve_to_a_bounded_identity(values: list[bytes], real: bytes) -> None:
    proxies = ClientAddresses(parse_networks(["0.0.0.0/0", "::/0"]))
    text, _ = proxies.resolve("127.0.0.1", values, real)
    assert isinstance(text, str) and len(text) <= 64


# -- CORS -------------------------------------------------------------------------------------


def test_cors_origins_and_preflights() -> None:
    policy = CorsPolicy(["https://app.example.com", "https://*.example.org"], ["GET", "POST"],
                        ["authorization", "content-type"], ["x-request-id"], False, 600)
    assert policy.allows(b"https://app.example.com") and policy.allows(b"HTTPS://APP.example.com")
    assert policy.allows(b"https://a.b.example.org")
    assert not policy.allows(b"https://example.org") and not policy.allows(b"null")
    head = policy.response_head(b"https://app.example.com")
    assert b"access-control-allow-origin: https://app.example.com\r\n" in head
    assert b"vary: origin\r\n" in head and b"access-control-expose-headers: x-request-id" in head
    assert policy.response_head(b"https://evil.example") == b"vary: origin\r\n"
    head2, why = policy.preflight(b"https://app.example.com", b"POST", b"Authorization")
    assert head2 is not None and why == ""
    assert b"access-control-allow-headers: authorization\r\n" in head2
    assert b"access-control-max-age: 600\r\n" in head2
    assert policy.preflight(b"https://evil.example", b"POST", None) == (None,
                                                                        "origin not allowed")
    assert policy.preflight(b"https://app.example.com", b"DELETE", None)[1].startswith("method")
    assert policy.preflight(b"https://app.example.com", b"POST", b"x-other")[1].startswith(
        "header")


def test_cors_any_origin_with_and_without_credentials() -> None:
    anyone = CorsPolicy(["*"], ["POST"], ["*"], [], False, 60)
    assert anyone.response_head(b"https://x.test").startswith(b"access-control-allow-origin: *")
    head, _ = anyone.preflight(b"https://x.test", b"post", b"x-a, x-b")
    assert head is not None and b"access-control-allow-headers: x-a, x-b\r\n" in head
    creds = CorsPolicy(["*"], ["POST"], ["*"], [], True, 60)
    head = creds.response_head(b"https://x.test")
    assert b"access-control-allow-origin: https://x.test\r\n" in head
    assert b"access-control-allow-credentials: true\r\n" in head
