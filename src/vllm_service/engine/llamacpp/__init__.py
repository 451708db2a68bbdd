"""The embedded llama.cpp engine (continuous batching on llama.cpp's C API)."""

from vllm_service.engine.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
