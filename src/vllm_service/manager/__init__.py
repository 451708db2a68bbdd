"""The model manager: model names and aliases to engines."""

from vllm_service.manager.manager import ModelManager, ServedModel, UnknownModelError

__all__ = ["ModelManager", "ServedModel", "UnknownModelError"]
