"""ModelLoader with engines that count their loads: on-demand loading, LRU unloading, draining
busy models, the limits, failures and clients that give up."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from tests.fakes import FakeEngine, FakeEngines
from vllm_service.config import ConfigError, LoadingConfig, ModelConfig, load_settings
from vllm_service.engine import EngineUnavailableError
from vllm_service.engine.capabilities import Resident
from vllm_service.manager import ModelManager
from vllm_service.manager.residency import LoadState, ModelBusyError, ModelLoader, Residency

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class CountingEngine(FakeEngine):
    """A fake engine whose model takes memory: counts starts and stops, and records how many
    requests held it when it was stopped."""

    def __init__(self, name: str, size: int = 100) -> None:
        super().__init__(name)
        self.size = size
        self.starts = 0
        self.stops = 0
        self.fail: Exception | None = None
        self.release_load: asyncio.Event | None = None
        self.residency: Residency | None = None
        self.users_at_stop: list[int] = []

    async def start(self) -> None:
        self.starts += 1
        if self.release_load is not None:
            await self.release_load.wait()
        if self.fail is not None:
            raise self.fail

    async def stop(self) -> None:
        self.stops += 1
        if self.residency is not None:
            self.users_at_stop.append(self.residency.users)

    def memory_bytes(self) -> int:
        return self.size


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def loader(
    *names: str, clock: Clock | None = None, **limits: Any
) -> tuple[ModelLoader, dict[str, Residency], dict[str, CountingEngine]]:
    engines = {name: CountingEngine(name) for name in names}
    residencies = {name: Residency(name, engines[name], preload=False) for name in names}
    for name, engine in engines.items():
        engine.residency = residencies[name]
    made = ModelLoader(list(residencies.values()), clock=clock or Clock(), **limits)
    return made, residencies, engines


def test_the_counting_engine_is_a_resident_engine() -> None:
    assert isinstance(CountingEngine("m"), Resident)


def test_concurrent_first_requests_wait_for_one_load() -> None:
    async def scenario() -> tuple[int, int, LoadState]:
        ld, res, engines = loader("a")
        engines["a"].release_load = asyncio.Event()
        waiting = [asyncio.create_task(ld.acquire(res["a"])) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert res["a"].state is LoadState.LOADING
        engines["a"].release_load.set()
        await asyncio.gather(*waiting)
        return engines["a"].starts, res["a"].users, res["a"].state

    assert run(scenario()) == (1, 5, LoadState.LOADED)


def test_the_least_recently_used_idle_model_makes_room() -> None:
    clock = Clock()

    async def scenario() -> dict[str, LoadState]:
        ld, res, _ = loader("a", "b", "c", clock=clock, max_loaded_models=2)
        for name in ("a", "b", "a"):  # a used last
            clock.now += 1
            await ld.acquire(res[name])
            res[name].release(clock)
        clock.now += 1
        await ld.acquire(res["c"])
        return {name: r.state for name, r in res.items()}

    states = run(scenario())
    assert states == {"a": LoadState.LOADED, "b": LoadState.UNLOADED, "c": LoadState.LOADED}


def test_a_busy_model_is_drained_never_unloaded_while_serving() -> None:
    async def scenario() -> None:
        ld, res, engines = loader("a", "b", max_loaded_models=1)
        await ld.acquire(res["a"])  # a request on a, in flight
        wants_b = asyncio.create_task(ld.acquire(res["b"]))
        await asyncio.sleep(0.01)
        assert res["a"].state is LoadState.DRAINING  # it takes no new requests...
        more_a = asyncio.create_task(ld.acquire(res["a"]))
        await asyncio.sleep(0.01)
        assert not more_a.done()  # ...so b does not starve behind a stream of a's
        assert not wants_b.done()
        assert engines["a"].stops == 0
        res["a"].release()  # the request in flight ends
        await wants_b
        assert res["a"].state is LoadState.UNLOADED
        assert res["b"].users == 1
        # the waiting a's turn is next: b serves the request it has, then drains in its turn
        assert res["b"].state is LoadState.DRAINING
        res["b"].release()
        await more_a  # the waiting a loads again in its turn
        assert engines["a"].starts == 2
        assert engines["a"].users_at_stop == [0]
        assert engines["b"].users_at_stop == [0]

    run(scenario())


def test_a_failed_load_gives_its_reason_and_is_retried_after_a_while() -> None:
    clock = Clock()

    async def scenario() -> None:
        ld, res, engines = loader("a", clock=clock, retry_failed_after=10.0)
        engines["a"].fail = RuntimeError("no such file: a.gguf")
        with pytest.raises(EngineUnavailableError, match=r"failed to load: no such file"):
            await ld.acquire(res["a"])
        assert engines["a"].stops == 1  # what the failed load allocated is freed
        with pytest.raises(EngineUnavailableError, match=r"no such file") as again:
            await ld.acquire(res["a"])
        assert engines["a"].starts == 1  # refused at once, without trying again
        assert again.value.retry_after == pytest.approx(10.0)
        engines["a"].fail = None
        clock.now += 10.5
        await ld.acquire(res["a"])
        assert engines["a"].starts == 2
        assert res["a"].state is LoadState.LOADED
        assert (res["a"].failures, res["a"].loads, res["a"].reason) == (1, 1, None)

    run(scenario())


def test_an_admin_load_retries_a_failed_model_at_once() -> None:
    async def scenario() -> int:
        ld, res, engines = loader("a", retry_failed_after=3600.0)
        engines["a"].fail = RuntimeError("broken")
        with pytest.raises(EngineUnavailableError):
            await ld.acquire(res["a"])
        engines["a"].fail = None
        await ld.load(res["a"])
        assert res["a"].state is LoadState.LOADED
        assert res["a"].users == 0
        return engines["a"].starts

    assert run(scenario()) == 2


def test_the_memory_budget_bounds_what_is_loaded_together() -> None:
    async def scenario() -> None:
        ld, res, engines = loader("a", "b", "c", memory_budget=250)
        for name in ("a", "b", "c"):
            await ld.acquire(res[name])
            res[name].release()
        loaded = [n for n, r in res.items() if r.state is LoadState.LOADED]
        assert loaded == ["b", "c"]  # 3 x 100 bytes do not fit in 250: a went
        engines["a"].size = 300
        with pytest.raises(EngineUnavailableError, match="memory budget"):
            await ld.acquire(res["a"])

    run(scenario())


def test_a_client_that_gives_up_does_not_abandon_the_load() -> None:
    async def scenario() -> None:
        ld, res, engines = loader("a")
        engines["a"].release_load = asyncio.Event()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await ld.acquire(res["a"])
        assert res["a"].state is LoadState.LOADING
        assert res["a"].waiting == 0
        engines["a"].release_load.set()
        await ld.acquire(res["a"])
        assert engines["a"].starts == 1

    run(scenario())


def test_a_plan_that_gives_up_hands_the_drained_model_back() -> None:
    async def scenario() -> None:
        ld, res, engines = loader("a", "b", max_loaded_models=1)
        await ld.acquire(res["a"])
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await ld.acquire(res["b"])
        assert res["a"].state is LoadState.LOADED  # serves again, nothing unloaded
        async with asyncio.timeout(1):
            await ld.acquire(res["a"])
        assert res["a"].users == 2
        assert engines["a"].stops == 0

    run(scenario())


def test_an_unload_by_hand_refuses_a_busy_model() -> None:
    async def scenario() -> None:
        ld, res, engines = loader("a")
        assert not await ld.unload(res["a"])  # not loaded
        await ld.acquire(res["a"])
        with pytest.raises(ModelBusyError, match="1 request"):
            await ld.unload(res["a"])
        res["a"].release()
        assert await ld.unload(res["a"])
        assert res["a"].unloads["admin"] == 1
        assert engines["a"].users_at_stop == [0]

    run(scenario())


def test_a_model_larger_than_the_budget_is_refused_when_the_service_is_built() -> None:
    engines = FakeEngines()

    def factory(model: ModelConfig) -> CountingEngine:
        engine = CountingEngine(model.name, size=5000)
        engines.built.append(engine)
        return engine

    with pytest.raises(ConfigError, match=r"loading\.memory_budget: model 'big' needs 5000 bytes"):
        ModelManager([ModelConfig(name="big")], factory, loading=LoadingConfig(memory_budget=4096))


def test_preload_defaults_to_what_the_limit_allows_and_is_checked() -> None:
    models = [{"name": n} for n in ("a", "b", "c")]
    assert load_settings(models=models).preloaded() == {"a", "b", "c"}
    limited = load_settings(models=models, loading={"max_loaded_models": 2})
    assert limited.preloaded() == {"a", "b"}
    chosen = load_settings(models=models, loading={"max_loaded_models": 2, "preload": ["c"]})
    assert chosen.preloaded() == {"c"}
    with pytest.raises(ConfigError, match=r"loading\.preload: 'z' is not a configured model"):
        load_settings(models=models, loading={"preload": ["z"]})
    with pytest.raises(ConfigError, match=r"more than loading\.max_loaded_models"):
        load_settings(models=models, loading={"max_loaded_models": 1, "preload": ["a", "b"]})
