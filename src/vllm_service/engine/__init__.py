"""Engines: the embedded llama.cpp engine; other kinds register through build_engine."""

from __future__ import annotations

from vllm_service.config import ModelConfig
from vllm_service.engine.base import (
    ContextLengthExceededError,
    Engine,
    EngineError,
    EngineHealth,
    EngineUnavailableError,
    FinishReason,
    GenerationRequest,
    InvalidRequestError,
    ModelCard,
    SamplingParams,
    TokenDelta,
)


def build_engine(model: ModelConfig) -> Engine:
    """The engine a model config asks for (one construction path for every engine kind)."""
    if model.engine == "llamacpp":
        from vllm_service.engine.llamacpp.engine import LlamaCppEngine

        return LlamaCppEngine(model.name, model.options)
    raise ValueError(f"unknown engine kind {model.engine!r}")  # pragma: no cover - config guards


__all__ = [
    "ContextLengthExceededError",
    "Engine",
    "EngineError",
    "EngineHealth",
    "EngineUnavailableError",
    "FinishReason",
    "GenerationRequest",
    "InvalidRequestError",
    "ModelCard",
    "SamplingParams",
    "TokenDelta",
    "build_engine",
]
