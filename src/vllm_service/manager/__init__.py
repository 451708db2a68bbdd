"""The model manager: model names and aliases to engines."""

from vllm_service.manager.answer import CACHE_DEPLOYMENT, Answer, Route
from vllm_service.manager.cache import ResponseCache
from vllm_service.manager.cached_answer import CacheControl
from vllm_service.manager.deployment import Deployment, ServedModel
from vllm_service.manager.manager import ModelManager, UnknownModelError, build_engine

__all__ = [
    "CACHE_DEPLOYMENT",
    "Answer",
    "CacheControl",
    "Deployment",
    "ModelManager",
    "ResponseCache",
    "Route",
    "ServedModel",
    "UnknownModelError",
    "build_engine",
]
