"""The model manager: model names and aliases to engines."""

from vllm_service.manager.cache import CacheControl, ResponseCache
from vllm_service.manager.manager import (
    ModelManager,
    Route,
    ServedModel,
    UnknownModelError,
    build_engine,
)

__all__ = [
    "CacheControl",
    "ModelManager",
    "ResponseCache",
    "Route",
    "ServedModel",
    "UnknownModelError",
    "build_engine",
]
