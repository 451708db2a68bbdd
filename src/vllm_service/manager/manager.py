"""ModelManager: model names to deployments; routing, circuit breakers, retries, fallbacks.

A model is one or more deployments (config entries sharing a name), each an engine with its
own circuit breaker. A request goes to the admitted deployment with the fewest requests in
flight. Failures before the first token are retried on another deployment (exponential
backoff with jitter, a capped Retry-After), within the model's attempt budget and one overall
deadline; then an answer the response cache still holds for the request (within its
stale window); then the model's fallbacks in order; then the last error is returned.
Once a token has been handed on, nothing is retried: a failure ends the stream.

A reproducible request is first looked up in the response cache; a hit is replayed without
touching a deployment, and a miss that finishes normally is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from opentelemetry import trace

from vllm_service.accounting.stats import DeploymentStats
from vllm_service.config import LoadingConfig, ModelConfig, RetryConfig
from vllm_service.engine import (
    Engine,
    EngineError,
    EngineUnavailableError,
    GenerationRequest,
    InvalidRequestError,
    TokenDelta,
)
from vllm_service.engine.registry import kind_named
from vllm_service.manager.answer import CACHE_DEPLOYMENT, Answer, CacheStep, Route
from vllm_service.manager.breaker import BreakerOpenError, CircuitBreaker
from vllm_service.manager.cache import ResponseCache
from vllm_service.manager.cached_answer import CacheControl
from vllm_service.manager.deployment import Attempt, Deployment, ServedModel
from vllm_service.manager.residency import ModelLoader

logger = logging.getLogger(__name__)


def build_engine(model: ModelConfig) -> Engine:
    """The engine a model entry asks for, built by its kind's factory (engine/registry.py)."""
    return kind_named(model.engine).build(model.name, model.options, model.defaults)


class UnknownModelError(LookupError):
    """No served model has this name or alias."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class ModelManager:
    """Owns the engines of every configured model and routes requests to them."""

    def __init__(
        self,
        models: list[ModelConfig],
        engine_factory: Callable[[ModelConfig], Engine] = build_engine,
        *,
        cache: ResponseCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        loading: LoadingConfig | None = None,
        preload: set[str] | None = None,
    ) -> None:
        """``preload``: the models loaded at start (None: all); the others load on demand."""
        self._clock = clock
        self.cache = cache
        #: Spans of cache lookups and of attempts on deployments (the app sets its own).
        self.tracer: trace.Tracer = trace.get_tracer("vllm_service")
        self._served: list[ServedModel] = []
        by_name: dict[str, ServedModel] = {}
        for entry in models:
            served = by_name.get(entry.name)
            if served is None:
                served = by_name[entry.name] = ServedModel(config=entry, deployments=[])
                self._served.append(served)
            index = len(served.deployments)
            dep_id = entry.name if index == 0 else f"{entry.name}#{index}"
            b = entry.breaker
            served.deployments.append(
                Deployment(
                    id=dep_id,
                    config=entry,
                    engine=engine_factory(entry),
                    breaker=CircuitBreaker(
                        dep_id,
                        failure_threshold=b.failure_threshold,
                        recovery_timeout=b.recovery_timeout,
                        half_open_max_calls=b.half_open_max_calls,
                        probe_timeout=b.probe_timeout,
                        clock=clock,
                        on_transition=self._log_transition,
                    ),
                )
            )
        self._by_name = {
            name: s for s in self._served for d in s.deployments for name in d.config.all_names
        }
        self.loader = ModelLoader.for_deployments(
            self.deployments, loading or LoadingConfig(), preload, clock
        )
        self.startup_error: BaseException | None = None
        self._devices: dict[str, str] = {}
        #: Models whose traffic goes to their fallbacks first (the quality gate holds them).
        self.held: set[str] = set()

    def hold(self, model: str, held: bool) -> None:
        """Send a model's traffic to its fallbacks first (held), or back to it."""
        if held:
            self.held.add(model)
        else:
            self.held.discard(model)

    @staticmethod
    def _log_transition(name: str, old: object, new: object) -> None:
        logger.warning("circuit breaker %s: %s -> %s", name, old, new)

    @property
    def served(self) -> list[ServedModel]:
        return list(self._served)

    @property
    def deployments(self) -> list[Deployment]:
        return [d for s in self._served for d in s.deployments]

    def resolve(self, model: str) -> ServedModel:
        try:
            return self._by_name[model]
        except KeyError:
            raise UnknownModelError(model) from None

    def device(self, served: ServedModel) -> str | None:
        """The device the model's first deployment runs on, once it has started."""
        return self._devices.get(served.deployments[0].id)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the upstreams and load the preloaded models (the others load on demand);
        a failure is kept for /health and /ready to report."""
        results = await asyncio.gather(
            *(d.engine.start() for d in self.deployments if d.residency is None),
            *(self.loader.load(r) for r in self.loader.residencies if r.preload),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                logger.error("an engine failed to start: %s", result)
                self.startup_error = self.startup_error or result
        for dep_id, stats in (await self.health()).items():
            self._devices[dep_id] = stats.engine.device

    async def stop(self) -> None:
        await self.loader.stop()
        await asyncio.gather(*(d.engine.stop() for d in self.deployments), return_exceptions=True)
        if self.cache is not None:
            await self.cache.close()

    async def health(self) -> dict[str, DeploymentStats]:
        """Each deployment's engine health, with its breaker and routing counters."""
        deployments = self.deployments
        results = await asyncio.gather(*(d.engine.health() for d in deployments))
        return {
            dep.id: DeploymentStats(
                model=dep.config.name,
                engine=health,
                breaker=dep.breaker.state.value,
                breaker_opened=dep.breaker.opened_total,
                in_flight=dep.in_flight,
                attempts=dict(dep.outcomes),
                residency=dep.residency.stats() if dep.residency is not None else None,
            )
            for dep, health in zip(deployments, results, strict=True)
        }

    @asynccontextmanager
    async def using(self, served: ServedModel, wait: float = 60.0) -> AsyncIterator[Engine]:
        """The model's first engine, loaded (on demand) and held loaded while in use."""
        dep = served.deployments[0]
        if dep.residency is None:
            yield dep.engine
            return
        error = await self.loader.hold(dep.residency, wait)
        if error is not None:
            raise error
        try:
            yield dep.engine
        finally:
            dep.residency.release()

    # -- serving --------------------------------------------------------------------------

    async def answer(
        self,
        served: ServedModel,
        req: GenerationRequest,
        cache_control: CacheControl = CacheControl.USE,
        group: object = None,
        *,
        probe: bool = False,
    ) -> Answer:
        """Start the sequence: from the cache, a deployment, or a fallback, in that order.

        Returns once its first delta is in hand; raises the last EngineError when nothing can
        answer. The choices of one request share ``group``: they never wait for each other.
        A ``probe`` asks the model's own deployments only, held or not, and no cache (the
        quality gate measuring a held model).
        """
        if probe:
            return await self._from_deployments(served, req, None, probe=True)
        cache = self.cache
        lookup = None
        if cache is not None and cache_control is not CacheControl.BYPASS:
            lookup = cache.plan(served.config, req)
        if cache is None or lookup is None:
            if cache is not None:
                cache.count(served.config.name, "bypass")
            return await self._from_deployments(served, req, None)
        step = CacheStep(cache, lookup)
        if cache_control is CacheControl.USE:
            hit = await self._lookup(step, group)
            if hit is not None:
                return hit
        else:
            step.outcome = "refresh"
        cache.count(served.config.name, step.outcome)
        try:
            return await self._from_deployments(served, req, step)
        except BaseException:
            await step.settle(False)  # identical requests waiting for this one stop waiting
            raise

    async def _lookup(self, step: CacheStep, group: object) -> Answer | None:
        """A cached answer (or one an identical request in flight just produced), or None."""
        cache, lookup = step.cache, step.lookup
        looked_up = time.perf_counter()
        with self.tracer.start_as_current_span("vllm.cache") as span:
            found = await cache.get(lookup)
            if found is None:
                step.flight, shared = await cache.join(lookup, group if group is not None else step)
                if shared is not None:
                    cache.count(lookup.model, "hit")
                    found = shared, "hit"
            span.set_attribute("vllm.cache.outcome", found[1] if found else "miss")
            span.set_attribute("vllm.cache.waited", step.flight is None and found is not None)
        step.seconds = time.perf_counter() - looked_up
        if found is None:
            return None
        answer, outcome = found
        route = Route(CACHE_DEPLOYMENT, None, False, outcome, lookup.key, step.seconds)
        return Answer(route, answer.delta())

    async def _from_deployments(
        self,
        served: ServedModel,
        req: GenerationRequest,
        step: CacheStep | None,
        *,
        probe: bool = False,
    ) -> Answer:
        """The model's deployments, then a stale cached answer, then the fallback models; a
        held model's fallbacks first, then its own deployments."""
        deadline = self._clock() + served.config.retry.deadline
        chain = [served, *(self.resolve(name) for name in served.config.fallbacks)]
        if probe:
            chain = [served]
        elif served.config.name in self.held and len(chain) > 1:
            chain = [*chain[1:], served]
        error: EngineError | None = None
        for model in chain:
            try:
                attempt, stream, first = await self._first_delta(model, req, deadline)
            except InvalidRequestError:
                raise  # the request itself is wrong: no other deployment will differ
            except EngineError as exc:
                error = exc
                stale = await self._stale(step) if model is served else None
                if stale is not None:
                    return stale
                continue
            dep = attempt.deployment
            route = Route(
                deployment=dep.id,
                engine=dep.config.engine,
                fallback=model is not served,
                cache=step.outcome if step is not None else "bypass",
                cache_key=step.lookup.key if step is not None else None,
                cache_seconds=step.seconds if step is not None else 0.0,
            )
            return Answer(route, first, stream, attempt, step)
        raise error or EngineUnavailableError(
            f"no deployment of {served.config.name!r} is available", retry_after=1.0
        )

    async def _stale(self, step: CacheStep | None) -> Answer | None:
        """The cache step of the fallback chain: an answer within its stale window."""
        if step is None:
            return None
        answer = await step.cache.get_stale(step.lookup)
        if answer is None:
            return None
        step.outcome = "stale_hit"
        await step.settle(False)  # a stale answer is not stored again
        route = Route(CACHE_DEPLOYMENT, None, True, "stale_hit", step.lookup.key, step.seconds)
        return Answer(route, answer.delta())

    def _candidates(self, served: ServedModel) -> list[Deployment]:
        """The model's deployments, fewest in flight first (ties: configuration order)."""
        return sorted(served.deployments, key=lambda d: d.in_flight)

    async def _first_delta(
        self, served: ServedModel, req: GenerationRequest, deadline: float
    ) -> tuple[Attempt, AsyncIterator[TokenDelta], TokenDelta]:
        """Try the model's deployments until one yields its first delta; raise the last error."""
        retry = served.config.retry
        attempts = 0
        error: EngineError | None = None
        for dep in self._candidates(served):
            if attempts >= retry.max_attempts or self._clock() >= deadline:
                break
            try:
                permit = dep.breaker.acquire()
            except BreakerOpenError as exc:
                dep.outcomes["rejected"] += 1
                error = EngineUnavailableError(str(exc), retry_after=exc.retry_after)
                continue
            if attempts:
                await self._backoff(attempts, error, retry, deadline)
            attempts += 1
            try:
                unloaded = await self.loader.hold(dep.residency, deadline - self._clock())
            except BaseException:
                permit.release()  # the client went away while the model loaded
                raise
            if unloaded is not None:
                permit.release()  # not the deployment's failure: its model is not in memory
                dep.outcomes["unavailable"] += 1
                error = unloaded
                continue
            attempt = Attempt(dep, permit, self._attempt_span(dep, attempts))
            dep.in_flight += 1
            stream = dep.engine.generate(req)
            try:
                with trace.use_span(attempt.span, end_on_exit=False):
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        return attempt, stream, await anext(stream)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]
                attempt.settle(exc)
                error = self._attempt_error(dep, exc)
                if isinstance(error, InvalidRequestError):
                    raise error from None
        raise error or EngineUnavailableError(
            f"no deployment of {served.config.name!r} is available", retry_after=1.0
        )

    def _attempt_span(self, dep: Deployment, attempt: int) -> trace.Span:
        # One span per attempt; current while the engine starts, so that an upstream receives
        # it as the parent in traceparent.
        return self.tracer.start_span(
            "vllm.attempt",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "vllm.deployment": dep.id,
                "vllm.engine": dep.config.engine,
                "vllm.attempt": attempt,
            },
        )

    @staticmethod
    def _attempt_error(dep: Deployment, exc: BaseException) -> EngineError:
        """What a failed attempt means for the request; re-raises what is not an engine's."""
        if isinstance(exc, TimeoutError):
            return EngineUnavailableError("the request's deadline passed", retry_after=1.0)
        if isinstance(exc, StopAsyncIteration):
            return EngineError(f"deployment {dep.id} ended without an answer")
        if isinstance(exc, EngineError):
            return exc
        raise exc

    async def _backoff(
        self, attempt: int, error: EngineError | None, retry: RetryConfig, deadline: float
    ) -> None:
        delay = min(retry.backoff_max, retry.backoff_base * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: replicas are not hit in lockstep
        if isinstance(error, EngineUnavailableError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, retry.max_retry_after))
        await asyncio.sleep(max(0.0, min(delay, deadline - self._clock())))
