"""Engines: the embedded llama.cpp engine and upstream OpenAI-compatible servers."""

from __future__ import annotations

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
]
