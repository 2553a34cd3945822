"""Access control's secrets never leave through the admin API or ``check``: client keys
(inline, as SHA-256, from ``api_keys_file``), raw ``bypass_keys`` and the rate limits'
Redis password. Every answer of ``GET /admin/config``, its history and export, a change's
summary, and ``trio-continuum check``'s output are searched for each of them; a masked
document sent back keeps them all."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import trio
import yaml

from continuum import RouterHandle, load_config, serve
from helpers import router_config, start_mock

TOKEN = "admin-token-5566778899"
INLINE = "sk-inline-admin-AAAA1111"
HASHED = "sk-hashed-admin-BBBB2222"
FILED = "sk-filed-admin-CCCC3333"
FILED_AGAIN = "sk-filed-admin-DDDD4444"
BYPASS = "sk-bypass-admin-EEEE5555"
REDIS_PASSWORD = "redis-pass-FFFF6666"
DIGEST = hashlib.sha256(HASHED.encode()).hexdigest()
FILE_ID = "from-the-file"
SECRETS = (TOKEN, INLINE, HASHED, DIGEST, FILED, FILED_AGAIN, BYPASS, REDIS_PASSWORD,
           FILE_ID)


def clean(response: httpx.Response) -> httpx.Response:
    for secret in SECRETS:
        assert secret not in response.text, (secret, response.request.url)
    return response


def paths(response: httpx.Response) -> list[str]:
    """The key paths a change touched, live or waiting for a restart."""
    body = response.json()
    return [c["path"] for c in body["changes"]] + body["needs_restart"]


async def test_access_secrets_never_in_admin_answers_history_export_or_check(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, url = await start_mock(nursery, ("m",), name="a")
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([{"key": FILED, "id": FILE_ID}]))
    data = router_config(
        [{"name": "a", "url": url, "models": ["m"]}],
        admin={"auth": {"method": "bearer_token", "token": TOKEN}},
        api_keys={"api_keys_file": str(keys_file),
                  "api_keys": [{"key": INLINE, "id": "inline"},
                               {"key_sha256": DIGEST, "id": "hashed"}]},
        rate_limiting={"bypass_keys": ["inline", BYPASS],
                       "redis": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6399/0"}},
    )
    path = tmp_path / "router.yaml"
    path.write_text(json.dumps(data))
    router: RouterHandle = await nursery.start(serve, load_config(path))
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=router.url, headers=headers, timeout=20.0) as client:
        body = clean(await client.get("/admin/config")).json()
        document = body["config"]
        entries = document["api_keys"]["api_keys"]
        assert [(e["key"], e["key_sha256"]) for e in entries] == [("***", ""), ("", "***")]
        assert "file_entries" not in document["api_keys"]
        assert document["rate_limiting"]["bypass_keys"] == ["inline", "***"]
        assert document["rate_limiting"]["redis"]["url"] == "redis://:***@127.0.0.1:6399/0"
        clean(await client.get("/admin/config/full"))
        clean(await client.get("/admin/config", params={"section": "rate_limiting"}))
        # the masked document sent back keeps every secret: nothing changes
        r = clean(await client.put("/admin/config", json=document))
        assert r.status_code == 200 and not r.json()["changed"], r.text
        keys = router.config.api_keys
        assert [k.key for k in keys.api_keys] == [INLINE, ""]
        assert keys.api_keys[1].key_sha256 == DIGEST
        assert router.config.rate_limiting.bypass_keys == ("inline", BYPASS)
        assert REDIS_PASSWORD in router.config.rate_limiting.redis.url
        # a change of a secret reads "changed (secret)" in the answer and the history
        document["rate_limiting"]["bypass_keys"] = ["inline", "sk-another-bypass"]
        document["routing"]["strategy"] = "Random"
        r = clean(await client.put("/admin/config", json=document))
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        assert "rate_limiting.bypass_keys" in paths(r)
        # a keys file with other keys under the same name is a secret change too
        keys_file.write_text(yaml.safe_dump([{"key": FILED_AGAIN, "id": FILE_ID}]))
        r = clean(await client.post("/admin/config/reload"))
        assert r.status_code == 200 and r.json()["version"] == 3, r.text
        assert "api_keys.api_keys_file" in paths(r)
        history = clean(await client.get("/admin/config/history")).json()
        assert len(history["versions"]) >= 3
        for fmt in ("yaml", "json"):
            for version in ("1", "2", "3"):
                clean(await client.get("/admin/config/export",
                                       params={"format": fmt, "version": version}))
    check = subprocess.run([sys.executable, "-m", "continuum", "check", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    for secret in SECRETS:
        assert secret not in check.stdout + check.stderr, secret
    assert "redis://:***@127.0.0.1:6399/0" in check.stdout
