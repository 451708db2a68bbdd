"""Engines: the embedded llama.cpp engine and upstream OpenAI-compatible servers."""

from __future__ import annotations

from vllm_service.config import LlamaCppOptions, ModelConfig, ProcessOptions, UpstreamOptions
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
    SamplingDefaults,
    SamplingParams,
    TokenDelta,
)


def build_engine(model: ModelConfig) -> Engine:
    """The engine a model config asks for (one construction path for every engine kind)."""
    options = model.options
    if model.engine == "llamacpp" and isinstance(options, LlamaCppOptions):
        from vllm_service.engine.llamacpp.engine import LlamaCppEngine

        return LlamaCppEngine(model.name, options, model.defaults)
    if model.engine == "process" and isinstance(options, ProcessOptions):
        from vllm_service.engine.process import ProcessEngine

        return ProcessEngine(model.name, options, model.defaults)
    if model.engine == "upstream" and isinstance(options, UpstreamOptions):
        from vllm_service.engine.upstream import UpstreamEngine

        return UpstreamEngine(model.name, options, model.defaults)
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
    "SamplingDefaults",
    "SamplingParams",
    "TokenDelta",
    "build_engine",
]
