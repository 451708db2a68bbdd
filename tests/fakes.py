"""A scriptable engine for tests of the layers above the engine (manager, API).

Each ``generate`` call plays the next enqueued script: deltas in order, and an exception where
the script has one (before the first delta: the engine refused; later: the stream broke). It
records every request it got, and how each of its streams ended.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable

from vllm_service.config import ModelConfig
from vllm_service.engine import (
    EngineHealth,
    FinishReason,
    GenerationRequest,
    ModelCard,
    TokenDelta,
)
from vllm_service.engine.base import Usage

Script = list[TokenDelta | BaseException]


def answer(
    *pieces: str, prompt_tokens: int = 3, reason: FinishReason = FinishReason.STOP
) -> Script:
    """A script that streams ``pieces`` and finishes, with usage."""
    deltas: Script = [TokenDelta(text=p) for p in pieces]
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(pieces))
    deltas.append(TokenDelta(text="", finish_reason=reason, usage=usage))
    return deltas


class FakeEngine:
    """Plays scripts; by default answers "ok"."""

    def __init__(self, name: str, kind: str = "fake", device: str = "cpu") -> None:
        self.name = name
        self.kind = kind
        self.device = device
        self.scripts: collections.deque[Script] = collections.deque()
        self.history: list[GenerationRequest] = []
        #: How each stream ended: "finished" (its final delta was read), "closed" (its reader
        #: left before) or "failed".
        self.endings: list[str] = []
        #: Set to hold every stream after its first delta until released.
        self.gate: asyncio.Event | None = None

    def enqueue(self, *scripts: Iterable[TokenDelta | BaseException]) -> None:
        self.scripts.extend(list(s) for s in scripts)

    async def generate(self, req: GenerationRequest) -> AsyncIterator[TokenDelta]:
        self.history.append(req)
        script = self.scripts.popleft() if self.scripts else answer("ok")
        ending = "closed"
        try:
            for index, item in enumerate(script):
                await asyncio.sleep(0)
                if isinstance(item, BaseException):
                    ending = "failed"
                    raise item
                if item.finish_reason is not None:
                    ending = "finished"  # its reader may close it right after this one
                yield item
                if index == 0 and self.gate is not None:
                    await self.gate.wait()
            ending = "finished"
        finally:
            self.endings.append(ending)

    async def health(self) -> EngineHealth:
        return EngineHealth(state="ready", device=self.device, info={"fake": 1})

    def models(self) -> list[ModelCard]:
        return [ModelCard(owned_by="test", created=0, max_model_len=2048)]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class FakeEngines:
    """An engine_factory that builds FakeEngines and keeps them, by deployment order."""

    def __init__(self) -> None:
        self.built: list[FakeEngine] = []

    def __call__(self, model: ModelConfig) -> FakeEngine:
        engine = FakeEngine(model.name)
        self.built.append(engine)
        return engine

    def of(self, name: str) -> list[FakeEngine]:
        return [e for e in self.built if e.name == name]
