"""vllm-service: a self-hosted, OpenAI-compatible LLM service."""

__version__ = "0.1.0"

__all__ = ["__version__"]
