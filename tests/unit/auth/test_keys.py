"""API keys in a real SQLite database, on an injected clock: hashed at rest, found by their
keyed hash, revoked within the lookup cache's second, rotated with a grace period."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from vllm_service.auth import KeyStore, Principal, generate_key, key_hash
from vllm_service.auth.keys import CACHE_SECONDS, load_secret
from vllm_service.storage import Database, api_keys

T = TypeVar("T")
SECRET = b"test-secret"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def store_in(tmp_path: Path, clock: Clock, **static: Principal) -> KeyStore:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/keys.db")
    await db.upgrade()
    return KeyStore(db, SECRET, static, clock=clock)


def test_keys_are_random_and_only_their_keyed_hash_is_stored(tmp_path: Path) -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("vs-") and len(k) == 46 for k in keys)

    async def scenario() -> tuple[str, list[str]]:
        store = await store_in(tmp_path, Clock())
        new = await store.create("a", "user", [])
        async with store.db.engine.connect() as conn:
            stored = [r for (r,) in (await conn.execute(select(api_keys.c.hash))).all()]
        await store.db.close()
        return new.key, stored

    key, stored = run(scenario())
    assert stored == [key_hash(SECRET, key)]
    assert key not in stored[0]
    assert key_hash(b"other secret", key) != stored[0]


def test_a_revoked_key_stops_within_the_cache_second(tmp_path: Path) -> None:
    clock = Clock()

    async def scenario() -> list[Principal | None]:
        store = await store_in(tmp_path, clock)
        other = await store_in(tmp_path, clock)  # another replica, its own cache
        new = await store.create("a", "user", ["m"])
        seen = [await other.lookup(new.key)]
        await store.revoke(new.key_id)
        seen.append(await store.lookup(new.key))  # the revoking replica: at once
        seen.append(await other.lookup(new.key))  # the other: still cached
        clock.now += CACHE_SECONDS + 0.01
        seen.append(await other.lookup(new.key))
        await store.db.close()
        await other.db.close()
        return seen

    first, here, cached, later = run(scenario())
    assert first is not None
    assert first.models == frozenset({"m"})
    assert (here, later) == (None, None)
    assert cached is not None


def test_rotation_keeps_the_old_key_for_its_grace_period(tmp_path: Path) -> None:
    clock = Clock()

    async def scenario() -> tuple[bool, bool, bool, str]:
        store = await store_in(tmp_path, clock)
        old = await store.create("svc", "viewer", [], rpm=60)
        new = await store.rotate(old.key_id, grace=3600)
        assert new is not None
        during = await store.lookup(old.key) is not None
        clock.now += 3600 + CACHE_SECONDS + 1
        after = await store.lookup(old.key) is not None
        principal = await store.lookup(new.key)
        await store.db.close()
        assert principal is not None
        return during, after, principal.role == "viewer", principal.name

    assert run(scenario()) == (True, False, True, "svc")


def test_expired_and_unknown_keys_and_static_keys(tmp_path: Path) -> None:
    clock = Clock()
    ci = Principal("static:ci", "ci", "user")

    async def scenario() -> list[Principal | None]:
        store = await store_in(tmp_path, clock, **{"vs-static": ci})
        short = await store.create("short", "user", [], expires_at=clock.now + 60)
        seen = [await store.lookup("vs-static"), await store.lookup(short.key)]
        clock.now += 61 + CACHE_SECONDS
        seen += [await store.lookup(short.key), await store.lookup("vs-unknown")]
        await store.db.close()
        return seen

    static, fresh, expired, unknown = run(scenario())
    assert static == ci
    assert fresh is not None
    assert (expired, unknown) == (None, None)


def test_the_server_secret_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "auth-secret"
    first = load_secret(None, path)
    assert load_secret(None, path) == first
    assert len(first) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_secret("configured", path) == b"configured"
