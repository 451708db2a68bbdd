"""ModelManager: resolves a requested model name (or alias) to the engine that serves it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from vllm_service.config import ModelConfig
from vllm_service.engine import Engine, EngineHealth, GenerationRequest, TokenDelta, build_engine

logger = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """No served model has this name or alias."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


@dataclass(frozen=True, slots=True)
class ServedModel:
    config: ModelConfig
    engine: Engine


class ModelManager:
    """Owns the engines of every configured model and routes requests to them."""

    def __init__(
        self,
        models: list[ModelConfig],
        engine_factory: Callable[[ModelConfig], Engine] = build_engine,
    ) -> None:
        self._served = [ServedModel(config=m, engine=engine_factory(m)) for m in models]
        self._by_name = {name: s for s in self._served for name in s.config.all_names}
        self.startup_error: BaseException | None = None
        self._devices: dict[str, str] = {}

    @property
    def served(self) -> list[ServedModel]:
        return list(self._served)

    def resolve(self, model: str) -> ServedModel:
        try:
            return self._by_name[model]
        except KeyError:
            raise UnknownModelError(model) from None

    def device(self, served: ServedModel) -> str | None:
        """The device the model's engine runs on, once it has started."""
        return self._devices.get(served.config.name)

    def generate(self, served: ServedModel, req: GenerationRequest) -> AsyncIterator[TokenDelta]:
        return served.engine.generate(req)

    async def start(self) -> None:
        """Start every engine; a failure is kept for /health and /ready to report."""
        try:
            await asyncio.gather(*(s.engine.start() for s in self._served))
        except Exception as exc:
            logger.exception("an engine failed to start")
            self.startup_error = exc
        for name, health in (await self.health()).items():
            self._devices[name] = health.device

    async def stop(self) -> None:
        await asyncio.gather(*(s.engine.stop() for s in self._served), return_exceptions=True)

    async def health(self) -> dict[str, EngineHealth]:
        results = await asyncio.gather(*(s.engine.health() for s in self._served))
        return {s.config.name: h for s, h in zip(self._served, results, strict=True)}
