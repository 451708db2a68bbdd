"""The OpenAI-compatible endpoints, one module each: /v1/models, /v1/chat/completions,
/v1/completions. What chat and completions share is in api/serving.py."""

from __future__ import annotations

from vllm_service.api import chat, completions, models

ROUTERS = (models.router, chat.router, completions.router)
