"""The OpenAI-compatible endpoints, one module each: /v1/models, /v1/chat/completions,
/v1/completions, /v1/embeddings. What chat and completions share is in api/serving.py."""

from __future__ import annotations

from vllm_service.api import chat, completions, embeddings, models

ROUTERS = (models.router, chat.router, completions.router, embeddings.router)
