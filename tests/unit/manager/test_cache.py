"""The response cache's parts on an injected clock: TTL, stale window, LRU bounds, keys."""

from __future__ import annotations

import asyncio

import pytest

from vllm_service.accounting.stats import StoreStats
from vllm_service.config import CacheConfig, ModelConfig
from vllm_service.engine import FinishReason, GenerationRequest, SamplingParams
from vllm_service.engine.base import ChatMessage, TokenLogprob, TopLogprob, Usage
from vllm_service.manager.cache import ResponseCache
from vllm_service.manager.cache_store import MemoryStore
from vllm_service.manager.cached_answer import CacheControl, CachedAnswer


def _stats(store: MemoryStore) -> StoreStats:
    stats = store.stats()
    assert stats is not None  # a memory store knows what it holds
    return stats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_entries_expire_after_their_ttl_and_serve_stale_only_within_the_window() -> None:
    clock = Clock()
    store = MemoryStore(max_entries=10, max_bytes=10_000, stale_if_error=5.0, clock=clock)

    async def scenario() -> list[bytes | None]:
        await store.put("k", b"answer", ttl=10.0)
        seen = [await store.get("k", stale=False)]
        clock.now += 9.9
        seen.append(await store.get("k", stale=False))
        clock.now += 0.2  # past the TTL
        seen += [await store.get("k", stale=False), await store.get("k", stale=True)]
        clock.now += 5.0  # past the stale window too
        seen.append(await store.get("k", stale=True))
        return seen

    assert run(scenario()) == [b"answer", b"answer", None, b"answer", None]
    assert _stats(store).entries == 0
    assert _stats(store).expirations == 1


def test_least_recently_used_entries_are_evicted_first() -> None:
    store = MemoryStore(max_entries=3, max_bytes=10_000, clock=Clock())

    async def scenario() -> list[bytes | None]:
        for key in "abc":
            await store.put(key, key.encode(), ttl=60)
        await store.get("a", stale=False)  # a is now the most recently used
        await store.put("d", b"d", ttl=60)  # evicts b, the least recently used
        return [await store.get(k, stale=False) for k in "abcd"]

    assert run(scenario()) == [b"a", None, b"c", b"d"]
    assert _stats(store).evictions == 1


def test_the_byte_bound_evicts_until_the_new_entry_fits() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1000, clock=Clock())

    async def scenario() -> list[bytes | None]:
        for key in "abcd":
            await store.put(key, b"x" * 300, ttl=60)
        await store.put("huge", b"x" * 2000, ttl=60)  # larger than the cache: not stored
        return [await store.get(k, stale=False) for k in ["a", "b", "c", "d", "huge"]]

    assert run(scenario()) == [None, b"x" * 300, b"x" * 300, b"x" * 300, None]
    assert store.stats() == StoreStats(entries=3, bytes=900, evictions=1, expirations=0)


@pytest.mark.parametrize(
    ("header", "control"),
    [
        (None, CacheControl.USE),
        ("max-age=60", CacheControl.USE),
        ("no-cache", CacheControl.REFRESH),
        ("No-Cache, max-age=0", CacheControl.REFRESH),
        ("no-store", CacheControl.BYPASS),
        ("no-cache, no-store", CacheControl.BYPASS),
    ],
)
def test_cache_control_header(header: str | None, control: CacheControl) -> None:
    assert CacheControl.from_header(header) is control


def request(content: str = "hi", **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        messages=(ChatMessage("user", content),),
    )


def test_only_reproducible_requests_are_cached_unless_configured() -> None:
    model = ModelConfig(name="m")
    cache = ResponseCache(CacheConfig())
    assert cache.plan(model, request(temperature=0.0)) is not None
    assert cache.plan(model, request(temperature=0.8, seed=7)) is not None
    assert cache.plan(model, request(temperature=0.8)) is None
    sampled = ResponseCache(CacheConfig(cache_sampled=True))
    assert sampled.plan(model, request(temperature=0.8)) is not None
    off = ModelConfig(name="m", cache={"enabled": False})
    assert cache.plan(off, request(temperature=0.0)) is None
    short = cache.plan(ModelConfig(name="m", cache={"ttl": 5}), request(temperature=0.0))
    assert short is not None
    assert short.ttl == 5
    assert cache.plan(model, request(temperature=0.0)).ttl == 3600  # type: ignore[union-attr]


def test_the_key_covers_the_model_the_messages_and_every_sampling_parameter() -> None:
    cache = ResponseCache(CacheConfig())
    m = ModelConfig(name="m")

    def key(model: ModelConfig = m, content: str = "hi", **sampling: object) -> str:
        lookup = cache.plan(model, request(content, **{"temperature": 0.0, **sampling}))
        assert lookup is not None
        return lookup.key

    base = key()
    assert key() == base  # the request id is not part of it
    variants = {
        key(ModelConfig(name="other")),
        key(content="hello"),
        key(max_tokens=5),
        key(top_p=0.5),
        key(stop=("x",)),
        key(logprobs=2),
        key(json_object=True),
        key(seed=1),
    }
    assert base not in variants
    assert len(variants) == 8


def test_a_cached_answer_round_trips_with_its_logprobs() -> None:
    answer = CachedAnswer(
        text="Bonjour é",
        finish_reason=FinishReason.LENGTH,
        usage=Usage(prompt_tokens=7, completion_tokens=2, cached_tokens=3),
        logprobs=(
            TokenLogprob("Bon", -0.5, b"Bon", (TopLogprob("Hel", -1.5, b"Hel"),)),
            TokenLogprob("jour é", -0.25, "jour é".encode(), ()),
        ),
    )
    assert CachedAnswer.decode(answer.encode()) == answer


def test_a_failed_leader_is_not_shared_and_a_waiter_generates_on_its_own() -> None:
    cache = ResponseCache(CacheConfig(single_flight_timeout=5))
    lookup = cache.plan(ModelConfig(name="m"), request(temperature=0.0))
    assert lookup is not None

    leader = object()

    async def scenario() -> tuple[object, object]:
        flight, shared = await cache.join(lookup, leader)
        assert flight is not None
        assert shared is None
        # Another choice of the leader's own request does not wait for it.
        assert await cache.join(lookup, leader) == (None, None)
        waiter = asyncio.ensure_future(cache.join(lookup, object()))
        await asyncio.sleep(0)
        cache.finish(lookup, flight, None)  # the leader failed
        failed = await waiter
        # Next time the leader succeeds: a waiter receives its answer.
        flight, _ = await cache.join(lookup, leader)
        assert flight is not None
        waiter = asyncio.ensure_future(cache.join(lookup, object()))
        await asyncio.sleep(0)
        answer = CachedAnswer("x", FinishReason.STOP, Usage(1, 1))
        cache.finish(lookup, flight, answer)
        return failed, await waiter

    failed, shared = run(scenario())  # type: ignore[misc]
    assert failed == (None, None)
    assert shared == (None, CachedAnswer("x", FinishReason.STOP, Usage(1, 1)))
    assert cache.single_flight_waits == 2


def test_a_flight_whose_leader_vanished_is_taken_over_after_the_timeout() -> None:
    clock = Clock()
    cache = ResponseCache(CacheConfig(single_flight_timeout=5), clock=clock)
    lookup = cache.plan(ModelConfig(name="m"), request(temperature=0.0))
    assert lookup is not None

    async def scenario() -> tuple[object, object]:
        abandoned, _ = await cache.join(lookup, object())  # never finished
        clock.now += 6
        return abandoned, (await cache.join(lookup, object()))[0]

    abandoned, taken_over = run(scenario())  # type: ignore[misc]
    assert abandoned is not None
    assert taken_over is not None
    assert taken_over is not abandoned
