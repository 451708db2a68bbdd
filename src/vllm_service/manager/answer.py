"""A started answer: how the manager served a sequence (its Route), and the sequence's deltas.

``ModelManager.answer`` returns an ``Answer`` once the sequence's first delta is in hand, so an
engine's refusal is raised before any response starts. The answer is an async iterator (not a
generator: no layer of its own between the engine and the response encoder) that hands on the
first delta and then the engine's; iterating it to its end, or closing it, settles once what
the attempt owes: the breaker's verdict, the deployment's counters and span, and the response
cache (a finished answer is stored; identical requests waiting for it get it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm_service.engine import TokenDelta
from vllm_service.manager.cache import Flight, ResponseCache
from vllm_service.manager.cached_answer import AnswerRecorder, CacheLookup
from vllm_service.manager.deployment import Attempt

#: The deployment name a cached answer reports.
CACHE_DEPLOYMENT = "cache"


@dataclass(frozen=True, slots=True)
class Route:
    """How one sequence was served: what the manager decided, for the API to report."""

    #: The deployment that answered, or CACHE_DEPLOYMENT.
    deployment: str
    #: The engine kind of that deployment (None for a cached answer).
    engine: str | None = None
    #: A fallback served it: a fallback model, or a stale cached answer.
    fallback: bool = False
    #: hit, semantic_hit, stale_hit, miss, refresh (no-cache) or bypass (not cacheable).
    cache: str = "bypass"
    cache_key: str | None = None
    #: Seconds spent looking the answer up in the cache (and waiting for an identical one).
    cache_seconds: float = 0.0


@dataclass(slots=True)
class CacheStep:
    """The response cache's part in one sequence: where its answer lives, the lookup's
    outcome, the flight it leads (identical requests waiting), what it recorded."""

    cache: ResponseCache
    lookup: CacheLookup
    outcome: str = "miss"
    seconds: float = 0.0
    flight: Flight | None = None
    recorder: AnswerRecorder = field(default_factory=AnswerRecorder)

    async def settle(self, finished: bool) -> None:
        """Hand a finished answer to the waiters and store it; on failure release them."""
        answer = self.recorder.answer if finished and self.outcome != "stale_hit" else None
        if self.flight is not None:
            self.cache.finish(self.lookup, self.flight, answer)
            self.flight = None
        if answer is not None:
            await self.cache.put(self.lookup, answer)


class Answer:
    """A started sequence: its Route, then its deltas (the first already received)."""

    def __init__(
        self,
        route: Route,
        first: TokenDelta,
        stream: AsyncIterator[TokenDelta] | None = None,
        attempt: Attempt | None = None,
        cache: CacheStep | None = None,
    ) -> None:
        self.route = route
        self._next: TokenDelta | None = first
        self._stream = stream
        self._attempt = attempt
        self._cache = cache
        self._ended = first.finish_reason is not None or stream is None
        self._settled = False
        if cache is not None:
            cache.recorder.add(first)

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> TokenDelta:
        if self._next is not None:
            delta, self._next = self._next, None
            return delta
        if self._ended or self._stream is None:
            await self._settle(None)
            raise StopAsyncIteration
        try:
            delta = await anext(self._stream)
        except StopAsyncIteration:
            await self._settle(None)
            raise
        except BaseException as exc:
            await self._settle(exc)
            raise
        if self._cache is not None:
            self._cache.recorder.add(delta)
        self._ended = delta.finish_reason is not None
        return delta

    async def aclose(self) -> None:
        """Stop reading: a sequence still generating is aborted (its client went away)."""
        await self._settle(None if self._ended and self._next is None else GeneratorExit())

    async def _settle(self, exc: BaseException | None) -> None:
        if self._settled:
            return
        self._settled = True
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()  # type: ignore[attr-defined]
        if self._attempt is not None:
            self._attempt.settle(exc)
        if self._cache is not None:
            await self._cache.settle(exc is None)
