"""Which models are in memory: loaded on demand, unloaded least-recently-used.

A resident engine holds its model in this process or on this machine (the embedded llama.cpp
engine, a managed process); an upstream holds nothing here and is always "loaded". Each
resident deployment has a ``Residency``: its state, who is using it, and what it costs.

- A model loads on its first request; concurrent first requests wait for one load.
- Loading needs room under ``loading.max_loaded_models`` and ``loading.memory_budget``. Idle
  models (nothing in flight, nobody waiting for them) are unloaded least-recently-used first.
  When every loaded model is busy, the least recently used one is *drained*: it takes no new
  requests, its in-flight ones finish, then it is unloaded. Requests that arrive for a
  draining model wait and load it again in their turn, so no model starves another.
- Loads are planned one at a time, first come first served (``_plan``); a load runs as its
  own task, so a client that goes away does not abandon a load others wait for.
- A failed load is reported with its reason (503) and tried again on a request after
  ``retry_failed_after`` seconds; an admin load tries at once.
- A model with requests in flight is never unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vllm_service.accounting.stats import ResidencyStats
from vllm_service.config import ConfigError, LoadingConfig
from vllm_service.engine import Engine, EngineError, EngineUnavailableError
from vllm_service.engine.capabilities import Resident
from vllm_service.engine.registry import kind_named

if TYPE_CHECKING:
    from vllm_service.manager.deployment import Deployment

logger = logging.getLogger(__name__)


class LoadState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    #: Loaded, finishing its requests before it is unloaded to make room; takes no new ones.
    DRAINING = "draining"
    UNLOADING = "unloading"
    FAILED = "failed"


#: States in which a model holds (or is about to hold) its memory.
OCCUPYING = frozenset(
    {LoadState.LOADING, LoadState.LOADED, LoadState.DRAINING, LoadState.UNLOADING}
)


class ModelBusyError(Exception):
    """An unload was asked of a model that is serving or loading."""


@dataclass(eq=False)
class Residency:
    """One resident deployment's place in memory."""

    name: str
    engine: Engine
    #: Loaded when the service starts.
    preload: bool
    state: LoadState = LoadState.UNLOADED
    #: Why the last load failed.
    reason: str | None = None
    #: Requests holding it loaded, and requests waiting for it to be loaded.
    users: int = 0
    waiting: int = 0
    last_used: float = 0.0
    loads: int = 0
    failures: int = 0
    #: Unloads by cause: lru (to make room), admin.
    unloads: Counter[str] = field(default_factory=Counter)
    #: Seconds the last successful load took, and the last unload.
    load_seconds: float | None = None
    unload_seconds: float | None = None
    failed_at: float = float("-inf")
    task: asyncio.Task[None] | None = None
    on_change: Callable[[], None] = lambda: None

    @property
    def memory_bytes(self) -> int:
        """What it holds once loaded (measured after its first load; the model file's size
        before); 0 where the engine cannot say."""
        if isinstance(self.engine, Resident):
            return self.engine.memory_bytes() or 0
        return 0

    def stats(self) -> ResidencyStats:
        return ResidencyStats(
            state=self.state.value,
            reason=self.reason,
            preload=self.preload,
            users=self.users,
            waiting=self.waiting,
            loads=self.loads,
            failures=self.failures,
            unloads=dict(self.unloads),
            load_seconds=self.load_seconds,
            unload_seconds=self.unload_seconds,
            memory_bytes=self.memory_bytes,
        )

    def release(self, clock: Callable[[], float] = time.monotonic) -> None:
        """A request that held it loaded is done."""
        self.users -= 1
        self.last_used = clock()
        if self.users == 0:
            self.on_change()


class ModelLoader:
    """Loads and unloads the resident deployments within the configured limits."""

    def __init__(
        self,
        residencies: list[Residency],
        *,
        max_loaded_models: int | None = None,
        memory_budget: int | None = None,
        retry_failed_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.residencies = residencies
        self.max_loaded_models = max_loaded_models
        self.memory_budget = memory_budget
        self.retry_failed_after = retry_failed_after
        self._clock = clock
        self._plan = asyncio.Lock()
        self._changed = asyncio.Event()
        for res in residencies:
            res.on_change = self._notify

    @classmethod
    def for_deployments(
        cls,
        deployments: Sequence[Deployment],
        loading: LoadingConfig,
        preload: set[str] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ModelLoader:
        """A residency for each deployment that holds its model here (``preload``: the
        models loaded at start, None for all); a model that cannot fit the memory budget even
        alone is a configuration error."""
        for dep in deployments:
            if kind_named(dep.config.engine).resident:
                wanted = preload is None or dep.config.name in preload
                dep.residency = Residency(dep.id, dep.engine, preload=wanted)
        residencies = [d.residency for d in deployments if d.residency is not None]
        budget = loading.memory_budget
        for res in residencies:
            if budget is not None and res.memory_bytes > budget:
                raise ConfigError(
                    f"loading.memory_budget: model {res.name!r} needs {res.memory_bytes} bytes "
                    f"(its file), more than the budget of {budget}"
                )
        return cls(
            residencies,
            max_loaded_models=loading.max_loaded_models,
            memory_budget=budget,
            retry_failed_after=loading.retry_failed_after,
            clock=clock,
        )

    def _notify(self) -> None:
        # Wake everyone waiting for a change; later waiters wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    # -- using a model ------------------------------------------------------------------------

    async def acquire(self, res: Residency) -> None:
        """Return once ``res`` is loaded, holding it loaded until ``res.release()``; raises
        EngineUnavailableError (with the reason) when it cannot be loaded. The caller bounds
        the wait (its deadline)."""
        res.waiting += 1
        try:
            while True:
                changed = self._changed
                if res.state is LoadState.LOADED:
                    res.users += 1
                    res.last_used = self._clock()
                    self._notify()  # a plan waiting for this model to be busy or idle looks again
                    return
                if res.state is LoadState.FAILED:
                    self._raise_if_recent_failure(res)
                if res.state in (LoadState.UNLOADED, LoadState.FAILED):
                    await self._load(res)
                    continue
                await changed.wait()  # loading, draining or unloading: wait for its next state
        finally:
            res.waiting -= 1

    async def hold(self, res: Residency | None, within: float) -> EngineError | None:
        """``acquire`` for a request's attempt: None once held (or nothing to hold), else
        the error to answer with (not loaded within the request's remaining time, or its
        load failed)."""
        if res is None:
            return None
        try:
            async with asyncio.timeout(max(0.0, within)):
                await self.acquire(res)
        except TimeoutError:
            return EngineUnavailableError(
                f"model {res.name!r} was not loaded before the request's deadline "
                f"({res.state.value})",
                retry_after=1.0,
            )
        except EngineUnavailableError as exc:
            return exc
        return None

    def _raise_if_recent_failure(self, res: Residency) -> None:
        wait = self.retry_failed_after - (self._clock() - res.failed_at)
        if wait > 0:
            raise EngineUnavailableError(
                f"model {res.name!r} failed to load: {res.reason}", retry_after=max(1.0, wait)
            )

    async def load(self, res: Residency) -> None:
        """Load now (an admin's or the start's request): a failed model is tried at once."""
        if res.state is LoadState.FAILED:
            res.failed_at = float("-inf")
        await self.acquire(res)
        res.release(self._clock)

    async def unload(self, res: Residency, cause: str = "admin") -> bool:
        """Unload an idle model; False when it was not loaded. Raises ModelBusyError while it
        has requests in flight or waiting, or is loading."""
        async with self._plan:
            if res.state in (LoadState.UNLOADED, LoadState.FAILED):
                return False
            if res.state is not LoadState.LOADED or res.users or res.waiting:
                raise ModelBusyError(
                    f"model {res.name!r} is {res.state.value} with {res.users} request(s) in "
                    f"flight and {res.waiting} waiting; unload it when it is idle"
                )
            await self._unload(res, cause)
            return True

    async def stop(self) -> None:
        """Let loads in progress finish (their engines are stopped with the others)."""
        tasks = [res.task for res in self.residencies if res.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- planning -----------------------------------------------------------------------------

    async def _load(self, res: Residency) -> None:
        """Make room and start loading ``res`` (one plan at a time)."""
        async with self._plan:
            if res.state not in (LoadState.UNLOADED, LoadState.FAILED):
                return  # another request started it while this one waited for its turn
            self._raise_if_recent_failure(res)
            drained: list[Residency] = []
            try:
                await self._make_room(res, drained)
            finally:
                for other in drained:
                    if other.state is LoadState.DRAINING:  # given up: it serves again
                        other.state = LoadState.LOADED
                        self._notify()
            res.state = LoadState.LOADING
            # Its own task: a client that goes away does not abandon a load others wait for.
            # Everyone (this request too) then waits for its end in the order they came.
            res.task = asyncio.create_task(self._run_load(res), name=f"load {res.name}")

    def _fits(self, res: Residency, leaving: set[Residency]) -> bool:
        """Whether ``res`` fits beside the models holding memory, but for ``leaving``."""
        staying = [r for r in self.residencies if r.state in OCCUPYING and r not in leaving]
        staying = [r for r in staying if r is not res]
        if self.max_loaded_models is not None and len(staying) + 1 > self.max_loaded_models:
            return False
        if self.memory_budget is not None:
            held = sum(r.memory_bytes for r in staying)
            return held + res.memory_bytes <= self.memory_budget
        return True

    async def _make_room(self, res: Residency, drained: list[Residency]) -> None:
        """Unload idle models, least recently used first, until ``res`` fits; when the rest
        are busy, drain the least recently used and wait for it to finish."""
        if self.memory_budget is not None and res.memory_bytes > self.memory_budget:
            raise EngineUnavailableError(
                f"model {res.name!r} needs {res.memory_bytes} bytes, more than the memory "
                f"budget of {self.memory_budget} (loading.memory_budget)"
            )
        while True:
            changed = self._changed
            if self._fits(res, set()):
                return
            loaded = sorted(
                (r for r in self.residencies if r.state is LoadState.LOADED and r is not res),
                key=lambda r: r.last_used,
            )
            idle = [r for r in loaded if not r.users and not r.waiting]
            done = [r for r in drained if r.state is LoadState.DRAINING and not r.users]
            if done or idle:
                await self._unload((done or idle)[0], "lru")
                continue
            leaving = {
                r for r in self.residencies if r.state in (LoadState.DRAINING, LoadState.UNLOADING)
            }
            if not self._fits(res, leaving) or not leaving:
                busy = [r for r in loaded if r.users]
                if busy:
                    busy[0].state = LoadState.DRAINING
                    drained.append(busy[0])
                    logger.info("draining model %s to make room for %s", busy[0].name, res.name)
            await changed.wait()

    async def _run_load(self, res: Residency) -> None:
        """Load the engine; the outcome goes into ``res`` (never raised: waiters read it)."""
        started = time.perf_counter()
        try:
            await res.engine.start()
        except BaseException as exc:
            res.state = LoadState.FAILED
            res.reason = str(exc) or type(exc).__name__
            res.failed_at = self._clock()
            res.failures += 1
            logger.error("model %s failed to load: %s", res.name, res.reason)
            with contextlib.suppress(Exception):
                await res.engine.stop()  # free whatever the failed load had allocated
            if not isinstance(exc, Exception):
                raise
        else:
            res.state = LoadState.LOADED
            res.reason = None
            res.loads += 1
            res.load_seconds = time.perf_counter() - started
            res.last_used = self._clock()
            logger.info("model %s loaded in %.2f s", res.name, res.load_seconds)
        finally:
            res.task = None
            self._notify()

    async def _unload(self, res: Residency, cause: str) -> None:
        res.state = LoadState.UNLOADING
        started = time.perf_counter()
        try:
            await res.engine.stop()
        finally:
            res.state = LoadState.UNLOADED
            res.unloads[cause] += 1
            res.unload_seconds = time.perf_counter() - started
            logger.info("model %s unloaded (%s)", res.name, cause)
            self._notify()
