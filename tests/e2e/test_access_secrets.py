"""No key material anywhere: a router at debug level with keys inline, in a keys file and
as SHA-256, a raw bypass key and a Redis password, driven with good and bad keys. Its whole
log, ``trio-continuum check``'s output, ``/admin/health`` and ``/metrics`` are searched for
every secret (and for the keys clients sent that the router did not know)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from adversarial.harness import RouterProcess
from continuum.testing.redis_server import RedisServer

INLINE = "sk-inline-AAAA1111bbbb2222"
FILED = "sk-filed-CCCC3333dddd4444"
HASHED = "sk-hashed-EEEE5555ffff6666"
BYPASS = "sk-bypass-GGGG7777hhhh8888"
UNKNOWN = "sk-unknown-IIII9999jjjj0000"
DISABLED = "sk-disabled-KKKK1212llll3434"
REDIS_PASSWORD = "redis-PASS-mmmm5656"
DIGEST = hashlib.sha256(HASHED.encode()).hexdigest()


async def test_no_key_material_in_logs_check_or_admin(
    tmp_path: Path, redis_servers: Callable[..., RedisServer]
) -> None:
    redis = redis_servers(password=REDIS_PASSWORD)
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([{"key": FILED, "id": "filed", "rate_limit": 50},
                                         {"key_sha256": DIGEST, "max_concurrent": 3}]))
    config = {
        "server": {"shutdown_timeout": "2s"},
        "health_checks": {"enabled": False},
        "logging": {"level": "debug", "format": "json", "access_log": True},
        "api_keys": {"mode": "blocking", "api_keys_file": str(keys_file),
                     "api_keys": [{"key": INLINE, "rate_limit": 50},
                                  {"key": DISABLED, "enabled": False},
                                  {"key": BYPASS}]},
        "rate_limiting": {"storage": "redis", "bypass_keys": [BYPASS],
                          "redis": {"url": redis.url}},
        "backends": [{"name": "m", "type": "mock", "models": ["m"]}],
    }
    workdir = tmp_path / "router"
    workdir.mkdir()
    texts: list[str] = []
    with RouterProcess(config, workdir) as router:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=router.url, timeout=10.0) as client:
            statuses = []
            for key in (INLINE, FILED, HASHED, BYPASS, UNKNOWN, DISABLED):
                for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
                    response = await client.post("/v1/chat/completions", json=body,
                                                 headers=headers)
                    statuses.append(response.status_code)
                    texts.append(response.text + str(response.headers))
            assert statuses == [200] * 8 + [401] * 4
            for path in ("/admin/health", "/metrics", "/v1/models", "/health", "/ready"):
                response = await client.get(path, headers={"authorization": f"Bearer {INLINE}"})
                texts.append(response.text)
        lines = await router.log_lines(0, "POST /v1/chat/completions", count=12)
        assert len(lines) == 12
        texts.append(router.log())
        check = subprocess.run(
            [sys.executable, "-m", "continuum", "check", str(router.config_path)],
            capture_output=True, text=True, timeout=60,
        )
        assert check.returncode == 0, check.stderr
        texts += [check.stdout, check.stderr]
    everything = "\n".join(texts)
    assert '"key_id":"filed"' in everything and '"key_id":"-"' in everything
    assert "sha256:" + DIGEST[:8] in everything  # the hashed key's label
    for secret in (INLINE, FILED, HASHED, BYPASS, UNKNOWN, DISABLED, REDIS_PASSWORD, DIGEST):
        assert secret not in everything, secret
