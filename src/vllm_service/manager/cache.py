"""ResponseCache: answers to repeated requests, served without generating.

* The key of a sequence is a hash of everything that decides its output: the resolved model,
  the messages (or prompt), and every sampling parameter. Only reproducible sequences are
  cached (temperature 0, or a seed given) unless ``cache_sampled`` says otherwise.
* An answer is stored only once it finished normally; one cut short (an error, a client that
  left) never is.
* Single flight: a request identical to one still generating waits for that one's answer
  (bounded by ``single_flight_timeout``); if the first fails, the waiters generate on their own.
* Semantic (opt-in): when the exact key misses, the last message's embedding is compared with
  those of answers cached for the same context (model, parameters, earlier messages); the
  nearest above ``threshold`` is a hit.
* The cache never fails a request: a store error (Redis down) is a miss, counted, and the store
  is left alone for ``redis_retry_interval`` before it is tried again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from vllm_service.accounting.stats import CacheStats
from vllm_service.config import CacheConfig, ModelConfig
from vllm_service.engine import GenerationRequest
from vllm_service.manager.breaker import BreakerOpenError, CircuitBreaker
from vllm_service.manager.cache_store import CacheStore, MemoryStore, RedisStore, Vector
from vllm_service.manager.cached_answer import (
    CachedAnswer,
    CacheLookup,
)
from vllm_service.manager.semantic import Embedder, nearest, shared_embedder

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Bumped when the key's inputs or the stored format change, so old entries stop matching.
KEY_VERSION = "1"


def _digest(parts: object) -> str:
    text = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Flight:
    """A sequence being generated that identical requests may wait for."""

    def __init__(self, owner: object, started: float) -> None:
        #: The HTTP request generating it: its other choices must not wait for it (they are
        #: not read until every choice has started).
        self.owner = owner
        self.started = started
        self.done: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()


class ResponseCache:
    """The response cache of one service process (its store may be shared)."""

    def __init__(
        self,
        config: CacheConfig,
        *,
        store: CacheStore | None = None,
        embedder: Embedder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        if store is None:
            store = self._build_store(config, clock)
        self.store = store
        if config.semantic.enabled and embedder is None:
            embedder = shared_embedder()
        self._embedder = embedder if config.semantic.enabled else None
        # A store that fails is skipped for redis_retry_interval, then one call tries it again.
        self._store_breaker = CircuitBreaker(
            "response-cache",
            failure_threshold=1,
            recovery_timeout=config.redis_retry_interval,
            half_open_max_calls=1,
            probe_timeout=config.redis_timeout * 2,
            clock=clock,
        )
        self._flights: dict[str, Flight] = {}
        #: (model, outcome) → count; outcomes: hit, semantic_hit, stale_hit, miss, refresh, bypass.
        self.lookups: Counter[tuple[str, str]] = Counter()
        #: Failed store calls by operation (get, put, delete, ...).
        self.errors: Counter[str] = Counter()
        self.stores = 0
        self.single_flight_waits = 0
        self.last_error: str | None = None

    @staticmethod
    def _build_store(config: CacheConfig, clock: Callable[[], float]) -> CacheStore:
        if config.backend == "redis":
            return RedisStore(
                config.redis_url,
                prefix=config.key_prefix,
                timeout=config.redis_timeout,
                stale_if_error=config.stale_if_error,
                max_neighbours=config.semantic.max_neighbours,
            )
        return MemoryStore(
            max_entries=config.max_entries,
            max_bytes=config.max_bytes,
            stale_if_error=config.stale_if_error,
            max_neighbours=config.semantic.max_neighbours,
            clock=clock,
        )

    # -- keys -------------------------------------------------------------------------------

    def plan(self, model: ModelConfig, req: GenerationRequest) -> CacheLookup | None:
        """Where ``req``'s answer is cached, or None when it must not be cached."""
        if not (self.config.enabled and model.cache.enabled):
            return None
        sampling = req.sampling
        if sampling.prompt_logprobs is not None:
            return None  # a stored answer keeps no prompt scores to replay
        if req.tools_json is not None or any(
            m.tool_calls_json or m.tool_call_id for m in req.messages or ()
        ):
            return None  # tools passed through to an upstream: its calls are not stored
        reproducible = sampling.temperature == 0 or sampling.seed is not None
        if not (reproducible or self.config.cache_sampled):
            return None
        params = dataclasses.astuple(sampling)
        messages = [[m.role, m.content] for m in req.messages] if req.messages else None
        key = _digest([KEY_VERSION, model.name, params, messages, req.prompt, req.prompt_token_ids])
        ttl = model.cache.ttl or self.config.ttl
        context = question = None
        if self._embedder is not None:
            if req.messages:
                *earlier, last = messages or []
                context = _digest([KEY_VERSION, model.name, params, earlier, last[0]])
                question = last[1]
            elif req.prompt is not None:
                context = _digest([KEY_VERSION, model.name, params, "prompt"])
                question = req.prompt
        return CacheLookup(model.name, key, ttl, context, question)

    # -- the store, guarded -----------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._store_breaker.state.value != "closed"

    async def _guarded(self, op: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        """Run a store call; a failure (or a store still resting after one) gives ``default``."""
        try:
            permit = self._store_breaker.acquire()
        except BreakerOpenError:
            return default
        try:
            result = await call()
        except asyncio.CancelledError:
            permit.release()
            raise
        except Exception as exc:  # Redis down, timed out, protocol error: serve uncached
            permit.failure()
            self.errors[op] += 1
            if not self.degraded or self.last_error is None:
                logger.warning("response cache %s failed: %r", op, exc)
            self.last_error = f"{op}: {exc!r}"
            return default
        permit.success()
        return result

    async def _read(self, key: str, *, stale: bool) -> CachedAnswer | None:
        raw = await self._guarded("get", lambda: self.store.get(key, stale=stale), None)
        if raw is None:
            return None
        try:
            return CachedAnswer.decode(raw)
        except (ValueError, KeyError, TypeError):
            self.errors["decode"] += 1
            return None

    # -- lookups ----------------------------------------------------------------------------

    async def get(self, lookup: CacheLookup) -> tuple[CachedAnswer, str] | None:
        """A fresh answer and how it was found (hit, semantic_hit), or None (not yet counted)."""
        answer = await self._read(lookup.key, stale=False)
        if answer is not None:
            self.lookups[lookup.model, "hit"] += 1
            return answer, "hit"
        if self._embedder is None or lookup.context is None or lookup.question is None:
            return None
        no_candidates: list[tuple[str, Vector]] = []
        candidates = await self._guarded(
            "neighbours", lambda: self.store.neighbours(lookup.context or ""), no_candidates
        )
        best = nearest(self._embedder.embed(lookup.question), candidates)
        if best is None or best[1] < self.config.semantic.threshold:
            return None
        answer = await self._read(best[0], stale=False)
        if answer is None:
            return None
        self.lookups[lookup.model, "semantic_hit"] += 1
        return answer, "semantic_hit"

    async def get_stale(self, lookup: CacheLookup) -> CachedAnswer | None:
        """An answer within its stale window, for when every deployment failed."""
        if self.config.stale_if_error <= 0:
            return None
        answer = await self._read(lookup.key, stale=True)
        if answer is not None:
            self.lookups[lookup.model, "stale_hit"] += 1
        return answer

    def count(self, model: str, outcome: str) -> None:
        self.lookups[model, outcome] += 1

    async def put(self, lookup: CacheLookup, answer: CachedAnswer) -> None:
        value = answer.encode()
        stored = await self._guarded(
            "put", lambda: _true(self.store.put(lookup.key, value, lookup.ttl)), False
        )
        if not stored:
            return
        self.stores += 1
        if self._embedder is not None and lookup.context and lookup.question is not None:
            vector = self._embedder.embed(lookup.question)
            await self._guarded(
                "add_neighbour",
                lambda: self.store.add_neighbour(
                    lookup.context or "", lookup.key, vector, lookup.ttl
                ),
                None,
            )

    # -- embeddings (manager/embedding.py) -------------------------------------------------

    def embedding_key(
        self, model: ModelConfig, dimensions: int | None, text: str
    ) -> tuple[str, float] | None:
        """Where one text's embedding is cached and for how long; None when not cached."""
        if not (self.config.enabled and model.cache.enabled):
            return None
        key = _digest([KEY_VERSION, "embedding", model.name, dimensions, text])
        return key, model.cache.ttl or self.config.ttl

    async def get_raw(self, key: str) -> bytes | None:
        return await self._guarded("get", lambda: self.store.get(key, stale=False), None)

    async def put_raw(self, key: str, value: bytes, ttl: float) -> None:
        if await self._guarded("put", lambda: _true(self.store.put(key, value, ttl)), False):
            self.stores += 1

    # -- single flight ----------------------------------------------------------------------

    async def join(
        self, lookup: CacheLookup, owner: object
    ) -> tuple[Flight | None, CachedAnswer | None]:
        """Lead the generation of ``lookup`` (a Flight to finish), or wait for its leader.

        Returns (flight, None) to the leader, (None, answer) to a waiter whose leader
        succeeded, and (None, None) to a waiter that must generate on its own (its leader
        failed or took too long, or belongs to the same request).
        """
        flight = self._flights.get(lookup.key)
        now = self._clock()
        if flight is None or now - flight.started > self.config.single_flight_timeout:
            # A flight older than anyone would wait for is taken over, so that one whose leader
            # vanished without finishing cannot hold every later identical request.
            flight = self._flights[lookup.key] = Flight(owner, now)
            return flight, None
        if flight.owner is owner:
            return None, None
        self.single_flight_waits += 1
        try:
            answer = await asyncio.wait_for(
                asyncio.shield(flight.done), self.config.single_flight_timeout
            )
        except TimeoutError:
            return None, None
        return None, answer

    def finish(self, lookup: CacheLookup, flight: Flight, answer: CachedAnswer | None) -> None:
        """The leader's answer (None: it failed) goes to every waiter."""
        if self._flights.get(lookup.key) is flight:
            del self._flights[lookup.key]
        if not flight.done.done():
            flight.done.set_result(answer)

    # -- administration ---------------------------------------------------------------------

    async def purge(self, key: str | None = None) -> int:
        """Remove one answer (by key) or all; returns how many were removed."""
        if key is None:
            return await self._guarded("clear", self.store.clear, 0)
        return int(await self._guarded("delete", lambda: self.store.delete(key), False))

    async def ping(self) -> None:
        """Probe a resting store so /health notices when Redis is back."""
        ping = getattr(self.store, "ping", None)
        if ping is not None and self.degraded:
            await self._guarded("ping", ping, None)

    def stats(self) -> CacheStats:
        return CacheStats(
            lookups=dict(self.lookups),
            errors=dict(self.errors),
            stores=self.stores,
            single_flight_waits=self.single_flight_waits,
            degraded=self.degraded,
            store=self.store.stats(),
        )

    def health(self) -> dict[str, Any]:
        store = self.store.stats()
        body: dict[str, Any] = {
            "enabled": self.config.enabled,
            "backend": self.config.backend,
            "state": "degraded" if self.degraded else "ok",
            "semantic": self._embedder is not None,
            "stores": self.stores,
            "errors": sum(self.errors.values()),
            **(dataclasses.asdict(store) if store is not None else {}),
        }
        if self.degraded and self.last_error:
            body["error"] = self.last_error
        return body

    async def close(self) -> None:
        await self.store.close()


async def _true(call: Awaitable[None]) -> bool:
    await call
    return True
