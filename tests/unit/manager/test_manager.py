"""ModelManager with scripted engines: routing, retries, fallbacks, the cache step, and what
each attempt settles (breaker, counters) however its answer ends."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from tests.fakes import FakeEngines, answer
from vllm_service.accounting.stats import DeploymentStats
from vllm_service.config import CacheConfig, ModelConfig
from vllm_service.engine import (
    EngineError,
    EngineUnavailableError,
    GenerationRequest,
    InvalidRequestError,
    SamplingParams,
    TokenDelta,
)
from vllm_service.engine.base import ChatMessage
from vllm_service.manager import Answer, ModelManager, ResponseCache

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def request(temperature: float | None = 0.0, text: str = "hi") -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        messages=(ChatMessage(role="user", content=text),),
        sampling=SamplingParams(max_tokens=8, temperature=temperature),
    )


def entry(name: str, **fields: Any) -> ModelConfig:
    retry = {"backoff_base": 0.0, "backoff_max": 0.0}
    return ModelConfig.model_validate({"name": name, "retry": retry, **fields})


def manager(
    models: list[ModelConfig], cache: ResponseCache | None = None
) -> tuple[ModelManager, FakeEngines]:
    engines = FakeEngines()
    return ModelManager(models, engines, cache=cache), engines


async def drain(answer: Answer) -> list[TokenDelta]:
    return [delta async for delta in answer]


def test_an_answer_reports_its_route_and_hands_on_every_delta() -> None:
    mgr, engines = manager([entry("m")])
    engines.of("m")[0].enqueue(answer("a", "b"))

    async def scenario() -> tuple[Answer, list[TokenDelta]]:
        started = await mgr.answer(mgr.resolve("m"), request())
        return started, await drain(started)

    started, deltas = run(scenario())
    assert [d.text for d in deltas] == ["a", "b", ""]
    assert started.route.deployment == "m"
    assert started.route.engine == "llamacpp"
    assert (started.route.fallback, started.route.cache) == (False, "bypass")
    dep = mgr.deployments[0]
    assert dep.outcomes == {"success": 1}
    assert dep.in_flight == 0
    assert engines.of("m")[0].endings == ["finished"]


def test_a_failure_before_the_first_token_is_retried_on_another_deployment() -> None:
    mgr, engines = manager([entry("m"), entry("m")])
    first, second = engines.of("m")
    first.enqueue([EngineUnavailableError("down")])
    second.enqueue(answer("y"))

    async def scenario() -> tuple[str, str]:
        started = await mgr.answer(mgr.resolve("m"), request())
        text = "".join(d.text for d in await drain(started))
        return started.route.deployment, text

    assert run(scenario()) == ("m#1", "y")
    assert [dict(d.outcomes) for d in mgr.deployments] == [{"failure": 1}, {"success": 1}]
    assert mgr.deployments[0].breaker.consecutive_failures == 1


def test_each_deployment_is_tried_once_per_request() -> None:
    mgr, engines = manager([entry("m"), entry("m")])
    for engine in engines.of("m"):
        engine.enqueue([EngineUnavailableError("down")])
    with pytest.raises(EngineUnavailableError):
        run(mgr.answer(mgr.resolve("m"), request()))
    assert [len(e.history) for e in engines.of("m")] == [1, 1]


def test_an_invalid_request_is_raised_at_once_and_never_retried() -> None:
    mgr, engines = manager([entry("m"), entry("m")])
    for engine in engines.of("m"):
        engine.enqueue([InvalidRequestError("too long", param="messages")])

    with pytest.raises(InvalidRequestError):
        run(mgr.answer(mgr.resolve("m"), request()))
    assert sum(len(e.history) for e in engines.of("m")) == 1
    assert [d.breaker.state.value for d in mgr.deployments] == ["closed", "closed"]
    assert sum(d.outcomes["client_error"] for d in mgr.deployments) == 1


def test_the_fallback_model_answers_when_every_deployment_fails() -> None:
    mgr, engines = manager([entry("m", fallbacks=["backup"]), entry("backup")])
    engines.of("m")[0].enqueue([EngineError("broken")] * 1, [EngineError("broken")])

    async def scenario() -> Answer:
        started = await mgr.answer(mgr.resolve("m"), request())
        await drain(started)
        return started

    started = run(scenario())
    assert started.route.deployment == "backup"
    assert started.route.fallback is True


def test_with_nothing_left_the_last_error_is_raised() -> None:
    mgr, engines = manager([entry("m")])
    engines.of("m")[0].enqueue([EngineUnavailableError("down", retry_after=2.0)])
    with pytest.raises(EngineUnavailableError, match="down"):
        run(mgr.answer(mgr.resolve("m"), request()))


def test_a_failure_after_the_first_token_ends_the_stream_and_is_not_retried() -> None:
    mgr, engines = manager([entry("m"), entry("m")])
    for engine in engines.of("m"):
        engine.enqueue([TokenDelta(text="a"), EngineError("lost")])

    async def scenario() -> list[str]:
        started = await mgr.answer(mgr.resolve("m"), request())
        seen = [(await anext(started)).text]
        with pytest.raises(EngineError, match="lost"):
            await anext(started)
        return seen

    assert run(scenario()) == ["a"]
    assert sum(len(e.history) for e in engines.of("m")) == 1
    assert sum(d.outcomes["failure"] for d in mgr.deployments) == 1
    assert all(d.in_flight == 0 for d in mgr.deployments)


def test_closing_an_answer_early_aborts_the_sequence_and_releases_the_deployment() -> None:
    mgr, engines = manager([entry("m")])
    engine = engines.of("m")[0]
    engine.enqueue(answer("a", "b", "c"))

    async def scenario() -> None:
        started = await mgr.answer(mgr.resolve("m"), request())
        assert (await anext(started)).text == "a"
        await started.aclose()
        await started.aclose()  # settles once

    run(scenario())
    dep = mgr.deployments[0]
    assert dep.outcomes == {"cancelled": 1}
    assert dep.in_flight == 0
    assert engine.endings == ["closed"]
    assert dep.breaker.consecutive_failures == 0


def test_a_repeated_reproducible_request_is_answered_from_the_cache() -> None:
    cache = ResponseCache(CacheConfig())
    mgr, engines = manager([entry("m")], cache)
    engine = engines.of("m")[0]
    engine.enqueue(answer("cached", " answer"))

    async def scenario() -> list[tuple[str, str, str]]:
        routes = []
        for _ in range(2):
            started = await mgr.answer(mgr.resolve("m"), request())
            text = "".join(d.text for d in await drain(started))
            routes.append((started.route.deployment, started.route.cache, text))
        return routes

    first, second = run(scenario())
    assert first == ("m", "miss", "cached answer")
    assert second == ("cache", "hit", "cached answer")
    assert len(engine.history) == 1


def test_an_answer_cut_short_is_not_cached() -> None:
    cache = ResponseCache(CacheConfig())
    mgr, engines = manager([entry("m")], cache)
    engine = engines.of("m")[0]
    engine.enqueue(answer("a", "b"), answer("a", "b"))

    async def scenario() -> str:
        started = await mgr.answer(mgr.resolve("m"), request())
        await anext(started)
        await started.aclose()
        again = await mgr.answer(mgr.resolve("m"), request())
        await drain(again)
        return again.route.cache

    assert run(scenario()) == "miss"
    assert len(engine.history) == 2


def test_sampled_requests_bypass_the_cache() -> None:
    cache = ResponseCache(CacheConfig())
    mgr, _ = manager([entry("m")], cache)

    async def scenario() -> str:
        started = await mgr.answer(mgr.resolve("m"), request(temperature=0.8))
        await drain(started)
        return started.route.cache

    assert run(scenario()) == "bypass"


def test_health_reports_typed_stats_per_deployment() -> None:
    mgr, _ = manager([entry("m"), entry("m")])
    assert not run(mgr.health())["m"].ready  # its model is loaded at start: not yet started

    async def started() -> dict[str, DeploymentStats]:
        await mgr.start()
        return await mgr.health()

    stats = run(started())
    assert sorted(stats) == ["m", "m#1"]
    assert stats["m#1"].model == "m"
    assert stats["m"].breaker == "closed"
    assert stats["m"].engine.info == {"fake": 1}
    assert stats["m"].ready
