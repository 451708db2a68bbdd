"""Embeddings for semantic similarity, from models that are on disk: WordLlama's (inside its
wheel, the semantic cache's too) by default, or a local sentence-transformers model folder."""

from __future__ import annotations

from typing import Any

import numpy as np

from vllm_service.config.quality import QualityConfig
from vllm_service.quality.dimensions import Embed


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder (never fetched)."""

    def __init__(self, path: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RuntimeError("pip install sentence-transformers for this embedder") from exc
        self._model: Any = SentenceTransformer(path, local_files_only=True)

    def embed(self, text: str) -> Any:
        vector = self._model.encode([text], normalize_embeddings=True)[0]
        return np.asarray(vector, dtype=np.float32)


def build_embed(config: QualityConfig) -> Embed:
    if config.embedder == "sentence-transformers":
        if not config.sentence_transformers_path:
            raise RuntimeError("quality.sentence_transformers_path names the model folder")
        return SentenceTransformerEmbedder(config.sentence_transformers_path).embed
    from vllm_service.manager.semantic import shared_embedder

    return shared_embedder().embed
