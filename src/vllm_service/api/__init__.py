"""The HTTP layer: OpenAI protocol, validation, errors, SSE."""

from vllm_service.api.app import create_app

__all__ = ["create_app"]
