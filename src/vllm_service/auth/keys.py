"""API keys: made from 256 random bits, stored only as a keyed hash, looked up by that hash.

A key is ``vs-`` and 43 URL-safe characters. The database holds HMAC-SHA256(server secret,
key): a stolen database does not give usable keys, and the lookup is by that digest (indexed),
then confirmed with ``hmac.compare_digest`` on fixed-length digests. Lookups are cached for
about a second, so a revoked key stops working on every replica within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update

from vllm_service.auth.limits import Limits
from vllm_service.storage import Database, api_keys

KEY_PREFIX = "vs-"
#: How long a lookup is trusted before the database is asked again (revocation delay).
CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's id, name, role and the models it may use (empty: all)."""

    key_id: str
    name: str
    role: str
    models: frozenset[str] = field(default_factory=frozenset)
    limits: Limits = field(default_factory=Limits)

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


#: The caller when auth is off: every permission, no key.
ANONYMOUS = Principal(key_id="anonymous", name="anonymous", role="admin")


def generate_key() -> str:
    """A new key: 256 bits from the OS's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(secret: bytes, key: str) -> str:
    """The keyed hash stored for a key (hex; fixed length)."""
    return hmac.new(secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str
    key_id: str
    prefix: str


class KeyStore:
    """Keys in the database, plus static keys from the environment (small setups)."""

    def __init__(
        self,
        db: Database,
        secret: bytes,
        static: Mapping[str, Principal] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self._secret = secret
        #: Static keys by their keyed hash.
        self._static = {key_hash(secret, k): p for k, p in (static or {}).items()}
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def lookup(self, key: str) -> Principal | None:
        """The principal a presented key belongs to; None if unknown, revoked or expired."""
        digest = key_hash(self._secret, key)
        for stored, static in self._static.items():
            if hmac.compare_digest(stored, digest):
                return static
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        principal = await self._fetch(digest, now)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal

    async def _fetch(self, digest: str, now: float) -> Principal | None:
        query = select(api_keys).where(api_keys.c.hash == digest)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None or not hmac.compare_digest(row["hash"], digest):
            return None
        if row["revoked_at"] is not None and row["revoked_at"] <= now:
            return None
        if row["expires_at"] is not None and row["expires_at"] <= now:
            return None
        async with self.db.engine.begin() as conn:  # at most once a second per key (cache)
            stamp = update(api_keys).where(api_keys.c.id == row["id"]).values(last_used_at=now)
            await conn.execute(stamp)
        models = frozenset(m for m in row["models"].split(",") if m)
        limits = Limits(
            rpm=row["rpm"],
            tpm=row["tpm"],
            max_parallel=row["max_parallel"],
            budget_usd=row["budget_usd"],
            budget_period=row["budget_period"],
        )
        return Principal(row["id"], row["name"], row["role"], models, limits)

    async def create(self, name: str, role: str, models: list[str], **limits: object) -> NewKey:
        """Store a new key; the key itself is returned once and never stored."""
        key = generate_key()
        key_id = os.urandom(8).hex()
        values = {
            "id": key_id,
            "prefix": key[:10],
            "hash": key_hash(self._secret, key),
            "name": name,
            "role": role,
            "models": ",".join(models),
            "created_at": self._clock(),
            **limits,
        }
        async with self.db.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        return NewKey(key, key_id, key[:10])

    async def revoke(self, key_id: str, at: float | None = None) -> bool:
        """Stop a key (at once, or at ``at``); False if there is no such key."""
        when = self._clock() if at is None else at
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
        self._cache.clear()
        return bool(result.rowcount)

    async def rotate(self, key_id: str, grace: float) -> NewKey | None:
        """A new key with the old one's name, role and limits; the old one keeps working for
        ``grace`` seconds."""
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
        if row is None or row["revoked_at"] is not None:
            return None
        limits = {k: row[k] for k in ("rpm", "tpm", "max_parallel", "budget_usd", "budget_period")}
        limits["expires_at"] = row["expires_at"]
        models = [m for m in row["models"].split(",") if m]
        new = await self.create(row["name"], row["role"], models, **limits)
        await self.revoke(key_id, at=self._clock() + grace)
        return new

    async def listing(self) -> list[dict[str, object]]:
        """Every key (never its hash), newest first."""
        columns = [c for c in api_keys.columns if c.name != "hash"]
        query = select(*columns).order_by(api_keys.c.created_at.desc())
        async with self.db.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]


def load_secret(explicit: str | None, path: Path) -> bytes:
    """The server secret: the configured one, else the one in ``path`` (made at first use,
    readable by this user only)."""
    if explicit:
        return explicit.encode()
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    return secret
