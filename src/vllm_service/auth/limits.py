"""Per-key limits: requests and tokens per minute, requests at once.

Windows are whole minutes (a request counts in the minute it arrives). Tokens are reserved at
admission (the prompt's estimate plus max_tokens) and reconciled with the real usage after the
answer. In memory for one process; in Redis for replicas, where each check is one atomic Lua
script, so a limit holds across every replica (not per replica). Redis down: the configured
policy, fail open (served unlimited, /health degraded) or closed (503), never a 500.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    #: Dollars per budget_period (day or month, UTC), counted from the cost ledger.
    budget_usd: float | None = None
    budget_period: str | None = None

    def __bool__(self) -> bool:
        limits = (self.rpm, self.tpm, self.max_parallel, self.budget_usd)
        return any(v is not None for v in limits)


@dataclass(frozen=True, slots=True)
class Verdict:
    """An admission: allowed or not, and OpenAI's x-ratelimit-* headers."""

    allowed: bool
    headers: dict[str, str]
    retry_after: float = 0.0
    #: Which limit refused it: requests, tokens or parallel.
    refused: str | None = None
    #: It was counted (to settle when the answer ends); not when the store was down.
    counted: bool = True


class LimitsUnavailable(Exception):
    """The shared store (Redis) did not answer."""


class LimitStore(Protocol):
    async def admit(
        self, key_id: str, limits: Limits, tokens: int, window: int
    ) -> tuple[int, int, int, bool]:
        """Count one request of ``tokens`` if every limit allows it; returns the requests and
        tokens used in the window and the requests in flight after it, and whether it was
        admitted."""
        ...

    async def adjust(self, key_id: str, window: int, tokens: int, release: bool) -> None:
        """Add ``tokens`` (negative: give back) to the window; end one request in flight."""
        ...


class MemoryLimits:
    """Counters in this process."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, int], list[int]] = {}
        self._parallel: dict[str, int] = {}

    async def admit(
        self, key_id: str, limits: Limits, tokens: int, window: int
    ) -> tuple[int, int, int, bool]:
        used = self._used.setdefault((key_id, window), [0, 0])
        parallel = self._parallel.get(key_id, 0)
        ok = (
            (limits.rpm is None or used[0] + 1 <= limits.rpm)
            and (limits.tpm is None or used[1] + tokens <= limits.tpm)
            and (limits.max_parallel is None or parallel + 1 <= limits.max_parallel)
        )
        if ok:
            used[0] += 1
            used[1] += tokens
            parallel += 1
            self._parallel[key_id] = parallel
        if len(self._used) > 100_000:
            self._used = {k: v for k, v in self._used.items() if k[1] >= window}
        return used[0], used[1], parallel, ok

    async def adjust(self, key_id: str, window: int, tokens: int, release: bool) -> None:
        used = self._used.get((key_id, window))
        if used is not None:
            used[1] = max(0, used[1] + tokens)
        if release:
            self._parallel[key_id] = max(0, self._parallel.get(key_id, 0) - 1)


# KEYS: requests, tokens, parallel. ARGV: rpm, tpm, max_parallel (-1: none), tokens, ttl.
_ADMIT = """
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(redis.call('GET', KEYS[2]) or '0')
local p = tonumber(redis.call('GET', KEYS[3]) or '0')
local rpm, tpm, par, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if (rpm >= 0 and r + 1 > rpm) or (tpm >= 0 and t + n > tpm) or (par >= 0 and p + 1 > par) then
  return {r, t, p, 0}
end
r = redis.call('INCR', KEYS[1])
t = redis.call('INCRBY', KEYS[2], n)
p = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], 3600)
return {r, t, p, 1}
"""


class RedisLimits:
    """Counters in Redis, shared by every replica; each admission is one Lua script."""

    def __init__(self, url: str, *, prefix: str = "vllm-service:limits:", timeout: float = 0.25):
        self._redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix
        self._admit = self._redis.register_script(_ADMIT)

    def _keys(self, key_id: str, window: int) -> list[str]:
        base = f"{self._prefix}{key_id}:"
        return [f"{base}r:{window}", f"{base}t:{window}", f"{base}parallel"]

    async def admit(
        self, key_id: str, limits: Limits, tokens: int, window: int
    ) -> tuple[int, int, int, bool]:
        args = [
            -1 if limits.rpm is None else limits.rpm,
            -1 if limits.tpm is None else limits.tpm,
            -1 if limits.max_parallel is None else limits.max_parallel,
            tokens,
            int(WINDOW * 2),
        ]
        try:
            r, t, p, ok = await self._admit(keys=self._keys(key_id, window), args=args)
        except (RedisError, OSError) as exc:
            raise LimitsUnavailable(str(exc)) from exc
        return int(r), int(t), int(p), bool(ok)

    async def adjust(self, key_id: str, window: int, tokens: int, release: bool) -> None:
        _, tokens_key, parallel_key = self._keys(key_id, window)
        try:
            pipe = self._redis.pipeline(transaction=False)
            if tokens:
                pipe.incrby(tokens_key, tokens)
            if release:
                pipe.decr(parallel_key)
            await pipe.execute()
        except (RedisError, OSError):
            pass  # the counters expire by themselves

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    """Admits a key's request against its limits and writes OpenAI's rate-limit headers."""

    def __init__(
        self,
        store: LimitStore,
        *,
        fail_open: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.fail_open = fail_open
        self._clock = clock
        #: The shared store failed the last call (served per the fail-open policy).
        self.degraded = False

    def window(self) -> int:
        return int(self._clock() // WINDOW)

    async def admit(self, key_id: str, limits: Limits, tokens: int) -> Verdict:
        window = self.window()
        try:
            requests, used, _, ok = await self.store.admit(key_id, limits, tokens, window)
        except LimitsUnavailable:
            self.degraded = True
            if self.fail_open:
                return Verdict(True, {}, counted=False)
            raise
        self.degraded = False
        reset = math.ceil((window + 1) * WINDOW - self._clock())
        headers: dict[str, str] = {}
        if limits.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(limits.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, limits.rpm - requests))
            headers["x-ratelimit-reset-requests"] = f"{reset}s"
        if limits.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tpm - used))
            headers["x-ratelimit-reset-tokens"] = f"{reset}s"
        if ok:
            return Verdict(True, headers)
        refused = "requests"
        if limits.rpm is None or requests < limits.rpm:
            refused = "tokens"
            if limits.tpm is None or used + tokens <= limits.tpm:
                refused = "parallel"
        retry = 1.0 if refused == "parallel" else float(reset)
        return Verdict(False, headers, retry_after=retry, refused=refused)

    async def settle(self, key_id: str, window: int, reserved: int, used: int) -> None:
        """The answer is done: give back the tokens reserved beyond its real usage and end
        its request in flight."""
        await self.store.adjust(key_id, window, used - reserved, release=True)
