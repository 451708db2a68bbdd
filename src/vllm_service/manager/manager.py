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
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from vllm_service.accounting.stats import DeploymentStats
from vllm_service.config import ModelConfig, RetryConfig
from vllm_service.engine import (
    Engine,
    EngineError,
    EngineUnavailableError,
    GenerationRequest,
    InvalidRequestError,
    TokenDelta,
)
from vllm_service.engine.registry import kind_named
from vllm_service.manager.breaker import BreakerOpenError, CircuitBreaker, Permit
from vllm_service.manager.cache import (
    AnswerRecorder,
    CacheControl,
    CachedAnswer,
    CacheLookup,
    ResponseCache,
)

logger = logging.getLogger(__name__)


def build_engine(model: ModelConfig) -> Engine:
    """The engine a model entry asks for, built by its kind's factory (engine/registry.py)."""
    return kind_named(model.engine).build(model.name, model.options, model.defaults)


class UnknownModelError(LookupError):
    """No served model has this name or alias."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


#: The deployment name a cached answer reports.
CACHE_DEPLOYMENT = "cache"


@dataclass(slots=True)
class Route:
    """How one sequence was served; filled in by the manager once its answer has started."""

    deployment: str | None = None
    #: A fallback served it: a fallback model, or a stale cached answer.
    fallback: bool = False
    #: hit, semantic_hit, stale_hit, miss, refresh (no-cache) or bypass (not cacheable).
    cache: str = "bypass"
    cache_key: str | None = None
    #: The choices of one request share a group: they never wait for each other's answer.
    group: object = None
    #: Seconds spent looking the answer up in the cache (and waiting for an identical one).
    cache_seconds: float = 0.0
    #: The engine kind of the deployment that served it (llamacpp, upstream, process).
    engine: str | None = None


@dataclass(eq=False)
class Deployment:
    """One engine serving a model, with its breaker and its counters."""

    id: str
    config: ModelConfig
    engine: Engine
    breaker: CircuitBreaker
    in_flight: int = 0
    #: Outcomes of attempts: success, failure, overloaded, client_error, cancelled, rejected.
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass(eq=False)
class ServedModel:
    """A model as clients name it, and the deployments that serve it."""

    config: ModelConfig
    deployments: list[Deployment]

    @property
    def engine(self) -> Engine:
        """The first deployment's engine (for listings)."""
        return self.deployments[0].engine


class ModelManager:
    """Owns the engines of every configured model and routes requests to them."""

    def __init__(
        self,
        models: list[ModelConfig],
        engine_factory: Callable[[ModelConfig], Engine] = build_engine,
        *,
        cache: ResponseCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
        self.startup_error: BaseException | None = None
        self._devices: dict[str, str] = {}

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
        """Start every engine; a failure is kept for /health and /ready to report."""
        try:
            await asyncio.gather(*(d.engine.start() for d in self.deployments))
        except Exception as exc:
            logger.exception("an engine failed to start")
            self.startup_error = exc
        for dep_id, stats in (await self.health()).items():
            self._devices[dep_id] = stats.engine.device

    async def stop(self) -> None:
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
            )
            for dep, health in zip(deployments, results, strict=True)
        }

    # -- routing ----------------------------------------------------------------------------

    def _candidates(self, served: ServedModel, tried: set[Deployment]) -> list[Deployment]:
        """Untried deployments, fewest in flight first (ties: configuration order)."""
        return sorted(
            (d for d in served.deployments if d not in tried),
            key=lambda d: d.in_flight,
        )

    def generate(
        self,
        served: ServedModel,
        req: GenerationRequest,
        route: Route | None = None,
        cache_control: CacheControl = CacheControl.USE,
    ) -> AsyncIterator[TokenDelta]:
        """Stream the answer; ``route`` says how it was served once it has started."""
        return self._serve(served, req, route or Route(), cache_control)

    async def _serve(
        self,
        served: ServedModel,
        req: GenerationRequest,
        route: Route,
        control: CacheControl,
    ) -> AsyncIterator[TokenDelta]:
        cache = self.cache
        lookup = None
        if cache is not None and control is not CacheControl.BYPASS:
            lookup = cache.plan(served.config, req)
        if cache is None or lookup is None:
            if cache is not None:
                cache.count(served.config.name, "bypass")
            async for delta in self._generate(served, req, route, None):
                yield delta
            return
        route.cache_key = lookup.key
        flight = None
        if control is CacheControl.USE:
            looked_up = time.perf_counter()
            with self.tracer.start_as_current_span("vllm.cache") as span:
                found = await cache.get(lookup)
                if found is None:
                    flight, shared = await cache.join(lookup, route.group or route)
                    if shared is not None:
                        cache.count(served.config.name, "hit")
                        found = shared, "hit"
                span.set_attribute("vllm.cache.outcome", found[1] if found else "miss")
                span.set_attribute("vllm.cache.waited", flight is None and found is not None)
            route.cache_seconds = time.perf_counter() - looked_up
            if found is not None:
                answer, route.cache = found
                route.deployment = CACHE_DEPLOYMENT
                yield answer.delta()
                return
        route.cache = "miss" if control is CacheControl.USE else "refresh"
        cache.count(served.config.name, route.cache)
        recorder = AnswerRecorder()
        try:
            async for delta in self._generate(served, req, route, lookup):
                recorder.add(delta)
                yield delta
        finally:
            recorded = recorder.answer if route.cache != "stale_hit" else None
            if flight is not None:
                cache.finish(lookup, flight, recorded)
            if recorded is not None:
                await cache.put(lookup, recorded)

    async def _generate(
        self,
        served: ServedModel,
        req: GenerationRequest,
        route: Route,
        lookup: CacheLookup | None,
    ) -> AsyncIterator[TokenDelta]:
        retry = served.config.retry
        deadline = self._clock() + retry.deadline
        chain = [served, *(self.resolve(name) for name in served.config.fallbacks)]
        last_error: EngineError | None = None
        for model in chain:
            started = await self._first_delta(model, req, deadline, model.config.retry)
            if isinstance(started, EngineError):
                last_error = started
                if isinstance(started, InvalidRequestError):
                    break  # the request itself is wrong: no other deployment will differ
                if model is served and lookup is not None:
                    # The cache step: between the model's own deployments and its fallbacks.
                    stale = await self._stale(lookup, route)
                    if stale is not None:
                        yield stale.delta()
                        return
                continue
            dep, permit, stream, first, span = started
            route.deployment, route.fallback = dep.id, model is not served
            route.engine = dep.config.engine
            inner = self._stream(dep, permit, stream, first, span)
            try:
                async for delta in inner:
                    yield delta
            finally:
                await inner.aclose()  # runs its accounting even when our reader left early
            return
        raise last_error or EngineUnavailableError(
            f"no deployment of {served.config.name!r} is available", retry_after=1.0
        )

    async def _stale(self, lookup: CacheLookup, route: Route) -> CachedAnswer | None:
        """The cache step of the fallback chain: an answer within its stale window."""
        answer = await self.cache.get_stale(lookup) if self.cache is not None else None
        if answer is not None:
            route.deployment, route.fallback, route.cache = CACHE_DEPLOYMENT, True, "stale_hit"
        return answer

    async def _first_delta(
        self, served: ServedModel, req: GenerationRequest, deadline: float, retry: RetryConfig
    ) -> tuple[Deployment, Permit, AsyncIterator[TokenDelta], TokenDelta, trace.Span] | EngineError:
        """Try deployments until one yields its first delta; the error if none does."""
        tried: set[Deployment] = set()
        attempts = 0
        error: EngineError | None = None
        for dep in self._candidates(served, tried):
            if attempts >= retry.max_attempts or self._clock() >= deadline:
                break
            tried.add(dep)
            try:
                permit = dep.breaker.acquire()
            except BreakerOpenError as exc:
                dep.outcomes["rejected"] += 1
                error = EngineUnavailableError(str(exc), retry_after=exc.retry_after)
                continue
            if attempts:
                await self._backoff(attempts, error, retry, deadline)
            attempts += 1
            dep.in_flight += 1
            # One span per attempt; current while the engine starts, so that an upstream
            # receives it as the parent in traceparent.
            span = self.tracer.start_span(
                "vllm.attempt",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "vllm.deployment": dep.id,
                    "vllm.engine": dep.config.engine,
                    "vllm.attempt": attempts,
                },
            )
            stream = dep.engine.generate(req)
            try:
                with trace.use_span(span, end_on_exit=False):
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        first = await anext(stream)
            except BaseException as exc:
                dep.in_flight -= 1
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]
                outcome = self._settle(permit, exc)
                dep.outcomes[outcome] += 1
                span.set_attribute("vllm.outcome", outcome)
                span.end()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if isinstance(exc, TimeoutError):
                    exc = EngineUnavailableError("the request's deadline passed", retry_after=1.0)
                if isinstance(exc, StopAsyncIteration):
                    exc = EngineError(f"deployment {dep.id} ended without an answer")
                if not isinstance(exc, EngineError):
                    raise
                error = exc
                if isinstance(exc, InvalidRequestError):
                    return exc
                continue
            return dep, permit, stream, first, span
        return error or EngineUnavailableError(
            f"no deployment of {served.config.name!r} is available", retry_after=1.0
        )

    async def _backoff(
        self, attempt: int, error: EngineError | None, retry: RetryConfig, deadline: float
    ) -> None:
        delay = min(retry.backoff_max, retry.backoff_base * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: replicas are not hit in lockstep
        if isinstance(error, EngineUnavailableError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, retry.max_retry_after))
        await asyncio.sleep(max(0.0, min(delay, deadline - self._clock())))

    @staticmethod
    def _settle(permit: Permit, exc: BaseException) -> str:
        """Report an attempt's outcome to the breaker; returns its name."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            permit.release()
            return "cancelled"
        if isinstance(exc, EngineUnavailableError) and exc.overloaded:
            permit.release()
            return "overloaded"
        if isinstance(exc, InvalidRequestError):
            permit.success()  # the deployment answered; the client was wrong
            return "client_error"
        # Unreachable, timed out, 5xx, a broken stream: the deployment is to blame.
        permit.failure()
        return "failure"

    async def _stream(
        self,
        dep: Deployment,
        permit: Permit,
        stream: AsyncIterator[TokenDelta],
        first: TokenDelta,
        span: trace.Span,
    ) -> AsyncGenerator[TokenDelta]:
        """Hand on a started answer; a failure from here on ends it (never retried)."""
        outcome = "success"
        try:
            yield first
            if first.finish_reason is None:
                async for delta in stream:
                    yield delta
        except BaseException as exc:
            outcome = self._settle(permit, exc)
            raise
        else:
            permit.success()
        finally:
            dep.outcomes[outcome] += 1
            span.set_attribute("vllm.outcome", outcome)
            span.end()
            dep.in_flight -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
