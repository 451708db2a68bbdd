"""Auth on a real service: the official SDK with and without a key, a key made by
`vllm-service keys create` working at once and stopping within a second of `keys revoke`, the
audit export listing what changed, and no open service on a non-loopback host by accident."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx2
import openai
import pytest

from tests.conftest import MODEL, Postgres, Service, service_command, start_service


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_SERVICE_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")  # the service's data dir (conftest)
    return subprocess.run(
        [*service_command(), *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def service(tmp_path: Path) -> Service:
    svc = start_service(tmp_path, {"auth": {"enabled": True}})
    yield svc
    svc.stop()


def test_keys_work_at_once_and_stop_when_revoked(service: Service, tmp_path: Path) -> None:
    made = cli(tmp_path, "keys", "create", "--name", "app", "--role", "user")
    assert made.returncode == 0, made.stderr
    key, id_line = made.stdout.splitlines()[:2]
    key_id = id_line.split()[1]
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=key)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    anonymous = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key="vs-not-a-key")
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    assert cli(tmp_path, "keys", "revoke", key_id).returncode == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = httpx2.get(f"{service.base_url}/v1/models", headers={"authorization": f"Bearer {key}"})
        if r.status_code == 401:
            break
        time.sleep(0.1)
    stopped = time.monotonic() - (deadline - 5)
    assert r.status_code == 401
    assert stopped < 2.0  # within the lookup cache's second (plus the command's own start)
    # The key never reached the log.
    assert key not in service.log()


def test_admin_actions_are_in_the_audit_export(service: Service, tmp_path: Path) -> None:
    admin = cli(tmp_path, "keys", "create", "--name", "ops", "--role", "admin").stdout.split()[0]
    user = cli(tmp_path, "keys", "create", "--name", "u", "--role", "user").stdout.split()[0]
    base = service.base_url
    forbidden = httpx2.delete(f"{base}/admin/cache", headers={"authorization": f"Bearer {user}"})
    assert forbidden.status_code == 403
    done = httpx2.delete(f"{base}/admin/cache", headers={"authorization": f"Bearer {admin}"})
    assert done.status_code == 200
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    answered = httpx2.post(
        f"{base}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {user}"}
    )
    assert answered.status_code == 200
    time.sleep(0.5)  # the ledger writer moves rows every 0.2 s
    export = cli(tmp_path, "audit", "export", "--since", "1h")
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    actions = [r for r in rows if r["kind"] == "action"]
    assert [a["action"] for a in actions] == ["key.create", "key.create", "cache.purge"]
    calls = [r for r in rows if r["kind"] == "request"]
    assert [(c["route"], c["status"], c["client"]) for c in calls] == [
        ("/v1/chat/completions", 200, "127.0.0.1")
    ]
    assert calls[0]["key_id"] not in (None, "anonymous")
    # Prompts and answers are not kept unless audit.log_content says so.
    assert cli(tmp_path, "audit", "export", "--what", "content").stdout == ""
    assert actions[-1]["client"] == "127.0.0.1"
    assert actions[-1]["actor"] != "anonymous"
    assert admin not in export.stdout
    assert user not in export.stdout


def test_serve_refuses_an_open_remote_host(tmp_path: Path) -> None:
    run = subprocess.run(
        [*service_command(), "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
    )
    assert run.returncode == 2
    assert "auth.allow_unauthenticated_remote" in run.stderr


def test_two_replicas_on_one_redis_hold_one_60_rpm_limit(tmp_path: Path) -> None:
    from tests.integration.test_cache import RedisServer

    for name in ("redis", "a", "b"):
        (tmp_path / name).mkdir()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    config = {
        "auth": {"enabled": True, "limits_backend": "redis", "redis_url": redis.url},
        # One ledger database (and so one key table) for both replicas.
        "ledger": {"data_dir": str(tmp_path / "data" / "vllm-service")},
    }
    first = start_service(tmp_path / "a", config)
    second = start_service(tmp_path / "b", config)
    try:
        made = cli(tmp_path, "keys", "create", "--name", "shared", "--rpm", "60")
        key = made.stdout.split()[0]
        # Windows are whole minutes: start at the beginning of one.
        if time.time() % 60 > 40:
            time.sleep(60 - time.time() % 60 + 0.2)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        headers = {"authorization": f"Bearer {key}"}
        statuses = []
        with httpx2.Client(timeout=60) as http:
            for i in range(61):
                base = (first, second)[i % 2].base_url
                statuses.append(
                    http.post(f"{base}/v1/chat/completions", json=body, headers=headers)
                )
        assert [r.status_code for r in statuses[:60]] == [200] * 60
        assert statuses[60].status_code == 429
        client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**body)
        check_shared_tokens_limit(tmp_path, first, second)
        check_revocation_reaches_both(tmp_path, key, first, second)
    finally:
        first.stop()
        second.stop()
        redis.kill()


def test_a_budget_counts_what_the_ledger_recorded(service: Service, tmp_path: Path) -> None:
    # Each answer costs about $7e-6 at gpt-4o-mini's list price (no hardware cost set).
    made = cli(
        tmp_path,
        "keys",
        "create",
        "--name",
        "b",
        "--budget-usd",
        "0.00002",
        "--budget-period",
        "day",
    )
    key = made.stdout.split()[0]
    client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=key, max_retries=0)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    answered = 0
    refused: openai.RateLimitError | None = None
    for _ in range(20):
        try:
            client.chat.completions.create(**chat)
        except openai.RateLimitError as exc:
            refused = exc
            break
        answered += 1
        time.sleep(1.3)  # the ledger's writer, then the budget's one-second cache
    assert refused is not None
    assert refused.code == "insufficient_quota"
    assert 2 <= answered <= 4


def test_keys_in_postgresql_with_hostile_names(postgres: Postgres) -> None:
    import asyncio

    from vllm_service.auth import KeyStore
    from vllm_service.storage import Database

    async def scenario() -> None:
        db = Database(postgres.url)
        await db.upgrade()
        store = KeyStore(db, b"secret")
        name = "x'); DROP TABLE api_keys; --"
        new = await store.create(name, "viewer", ["m'--"])
        principal = await store.lookup(new.key)
        assert principal is not None
        assert (principal.name, principal.models) == (name, frozenset({"m'--"}))
        assert await store.lookup("' OR '1'='1") is None
        assert await store.revoke(new.key_id)
        assert await KeyStore(db, b"secret").lookup(new.key) is None  # another replica
        assert any(row["name"] == name for row in await store.listing())
        await db.close()

    asyncio.run(scenario())


def test_content_is_kept_redacted_only_when_asked(tmp_path: Path) -> None:
    svc = start_service(tmp_path, {"audit": {"log_content": True}})
    try:
        secret = "Mail jane.doe@example.com, card 4111 1111 1111 1111, key sk-abcdefghijklmnopqrst."
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": secret}],
            "max_tokens": 4,
            "stream": True,
        }
        with httpx2.stream("POST", f"{svc.base_url}/v1/chat/completions", json=body) as r:
            streamed = "".join(r.iter_text())
        assert r.status_code == 200
        assert "[DONE]" in streamed
    finally:
        svc.stop()
    rows = [
        json.loads(line)
        for line in cli(tmp_path, "audit", "export", "--what", "content").stdout.splitlines()
    ]
    assert len(rows) == 1
    kept = rows[0]
    assert kept["route"] == "/v1/chat/completions"
    assert "[REDACTED:EMAIL]" in kept["prompt"]
    assert "[REDACTED:CARD]" in kept["prompt"]
    assert "[REDACTED:KEY]" in kept["prompt"]
    assert "jane.doe" not in kept["prompt"]
    assert kept["prompt"].startswith("user: Mail ")
    assert kept["completion"]


def check_shared_tokens_limit(tmp_path: Path, first: Service, second: Service) -> None:
    """One tokens-per-minute limit across both replicas: each answer's real usage (about 70
    tokens) counts, so a second answer cannot fit in 100 tokens on either replica."""
    key = cli(tmp_path, "keys", "create", "--name", "tpm", "--tpm", "100").stdout.split()[0]
    headers = {"authorization": f"Bearer {key}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 40,
        "ignore_eos": True,
    }
    with httpx2.Client(timeout=60, headers=headers) as http:
        r = http.post(f"{first.base_url}/v1/chat/completions", json=body)
        assert r.status_code == 200
        used = r.json()["usage"]["total_tokens"]
        assert used > 50
        time.sleep(0.3)  # the first answer's usage is settled after its last byte
        r = http.post(f"{second.base_url}/v1/chat/completions", json=body)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["type"] == "tokens"
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 100 - used


def check_revocation_reaches_both(
    tmp_path: Path, key: str, first: Service, second: Service
) -> None:
    key_id = next(
        json.loads(line)["id"]
        for line in cli(tmp_path, "keys", "list").stdout.splitlines()
        if json.loads(line)["name"] == "shared"
    )
    assert cli(tmp_path, "keys", "revoke", key_id).returncode == 0
    revoked_at = time.monotonic()
    headers = {"authorization": f"Bearer {key}"}
    for service in (first, second):
        while True:
            r = httpx2.get(f"{service.base_url}/v1/models", headers=headers, timeout=10)
            if r.status_code == 401 or time.monotonic() - revoked_at > 5:
                break
            time.sleep(0.05)
        assert r.status_code == 401
    assert time.monotonic() - revoked_at < 1.5  # the lookup cache's second, and a margin
