"""Where the response cache keeps answers: this process's memory, or Redis shared by replicas.

An entry is fresh for its TTL; after that it may still be read as *stale* for the
``stale_if_error`` window (the cache step of the fallback chain), then it is gone.

Semantic lookups need the embeddings of the questions answered so far, grouped by *context*
(the model, the parameters and every message but the last): ``neighbours`` returns one
context's embeddings, ``add_neighbour`` records one.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from vllm_service.accounting.stats import StoreStats

Vector = npt.NDArray[np.float32]


class CacheStore(Protocol):
    """A key → answer (serialized) map with expiry, and per-context embedding lists."""

    async def get(self, key: str, *, stale: bool) -> bytes | None:
        """The answer if fresh; with ``stale``, also if expired within the stale window."""
        ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def clear(self) -> int:
        """Remove every entry; returns how many answers were removed."""
        ...

    async def neighbours(self, context: str) -> list[tuple[str, Vector]]: ...

    async def add_neighbour(self, context: str, key: str, vector: Vector, ttl: float) -> None: ...

    def stats(self) -> StoreStats | None:
        """Entries, bytes and evictions, where this process knows them."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    value: bytes
    fresh_until: float
    gone_at: float


class MemoryStore:
    """An LRU map bounded by entries and bytes, with TTL on an injectable monotonic clock."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        stale_if_error: float = 0.0,
        max_neighbours: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stale_if_error = stale_if_error
        self.max_neighbours = max_neighbours
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self.evictions = 0
        self.expirations = 0
        # context → (keys, their embeddings as rows); oldest first.
        self._neighbours: dict[str, tuple[list[str], list[Vector]]] = {}

    async def get(self, key: str, *, stale: bool) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.gone_at:
            self._remove(key)
            self.expirations += 1
            return None
        if now >= entry.fresh_until and not stale:
            return None
        self._entries.move_to_end(key)
        return entry.value

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        if len(value) > self.max_bytes:
            return  # larger than the whole cache: never stored
        self._remove(key)
        now = self._clock()
        self._entries[key] = _Entry(value, now + ttl, now + ttl + self.stale_if_error)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= len(entry.value)
        return True

    async def delete(self, key: str) -> bool:
        return self._remove(key)

    async def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self._neighbours.clear()
        self._bytes = 0
        return count

    async def neighbours(self, context: str) -> list[tuple[str, Vector]]:
        keys, vectors = self._neighbours.get(context, ([], []))
        live = [(k, v) for k, v in zip(keys, vectors, strict=True) if k in self._entries]
        if len(live) != len(keys):  # drop embeddings whose answers were evicted
            self._neighbours[context] = ([k for k, _ in live], [v for _, v in live])
        return live

    async def add_neighbour(self, context: str, key: str, vector: Vector, ttl: float) -> None:
        keys, vectors = self._neighbours.setdefault(context, ([], []))
        if key in keys:
            return
        keys.append(key)
        vectors.append(vector)
        if len(keys) > self.max_neighbours:
            del keys[0], vectors[0]

    def stats(self) -> StoreStats | None:
        return StoreStats(
            entries=len(self._entries),
            bytes=self._bytes,
            evictions=self.evictions,
            expirations=self.expirations,
        )

    async def close(self) -> None:
        return None


_FRESH_UNTIL = struct.Struct("<d")


class RedisStore:
    """Answers in Redis, shared by every replica; Redis' own TTL (and maxmemory policy) evict.

    Each value is prefixed with its fresh-until time (wall clock: replicas share it); the Redis
    key lives on for the stale window after that. Every call is bounded by ``timeout``: a slow
    Redis is a failed call, which the cache turns into a miss.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        stale_if_error: float = 0.0,
        max_neighbours: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # The cache decides what a failure means; redis-py must not retry behind it.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._prefix = prefix
        self._timeout = timeout
        self.stale_if_error = stale_if_error
        self.max_neighbours = max_neighbours
        self._clock = clock

    def _entry_key(self, key: str) -> str:
        return f"{self._prefix}e:{key}"

    def _context_key(self, context: str) -> str:
        return f"{self._prefix}s:{context}"

    async def get(self, key: str, *, stale: bool) -> bytes | None:
        async with asyncio.timeout(self._timeout):
            raw = await self._redis.get(self._entry_key(key))
        if not isinstance(raw, bytes) or len(raw) < _FRESH_UNTIL.size:
            return None
        (fresh_until,) = _FRESH_UNTIL.unpack_from(raw)
        if not stale and self._clock() >= fresh_until:
            return None
        return raw[_FRESH_UNTIL.size :]

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        fresh_until = self._clock() + ttl
        millis = max(1, int((ttl + self.stale_if_error) * 1000))
        async with asyncio.timeout(self._timeout):
            await self._redis.set(
                self._entry_key(key), _FRESH_UNTIL.pack(fresh_until) + value, px=millis
            )

    async def delete(self, key: str) -> bool:
        async with asyncio.timeout(self._timeout):
            removed: int = await self._redis.unlink(self._entry_key(key))
        return removed > 0

    async def clear(self) -> int:
        removed = 0
        async with asyncio.timeout(max(self._timeout, 30.0)):
            batch: list[bytes] = []
            async for name in self._redis.scan_iter(match=f"{self._prefix}*", count=1000):
                batch.append(name)
                if name.startswith(f"{self._prefix}e:".encode()):
                    removed += 1
                if len(batch) >= 1000:
                    await self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                await self._redis.unlink(*batch)
        return removed

    async def neighbours(self, context: str) -> list[tuple[str, Vector]]:
        async with asyncio.timeout(self._timeout):
            raw = await self._redis.hgetall(self._context_key(context))
        return [
            (k.decode(), np.frombuffer(v, dtype=np.float32))
            for k, v in raw.items()
            if isinstance(k, bytes) and isinstance(v, bytes)
        ]

    async def add_neighbour(self, context: str, key: str, vector: Vector, ttl: float) -> None:
        name = self._context_key(context)
        millis = max(1, int((ttl + self.stale_if_error) * 1000))
        async with asyncio.timeout(self._timeout):
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(name, key, vector.astype(np.float32).tobytes())
            pipe.pexpire(name, millis)
            pipe.hlen(name)
            *_, size = await pipe.execute()
            if size > self.max_neighbours:
                # Redis hashes keep no order: drop random others until within bounds.
                fields = await self._redis.hrandfield(name, size - self.max_neighbours)
                others = [f for f in fields or [] if isinstance(f, bytes) and f != key.encode()]
                if others:
                    await self._redis.hdel(name, *others)

    def stats(self) -> StoreStats | None:
        return None  # shared by every replica: this process does not know

    async def ping(self) -> None:
        async with asyncio.timeout(self._timeout):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
