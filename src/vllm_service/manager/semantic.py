"""Embeddings for the semantic cache, from a model that ships inside a PyPI package.

WordLlama's ``l2_supercat`` token embeddings (256 dimensions, 16 MB) are in the ``wordllama``
wheel itself, so nothing is downloaded at run time. An embedding costs tens of microseconds
on one CPU core: it runs inline on the event loop.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vllm_service.manager.cache_store import Vector

INSTALL_HINT = "the semantic cache needs the 'semantic' extra: pip install 'vllm-service[semantic]'"


class Embedder(Protocol):
    def embed(self, text: str) -> Vector:
        """A unit-length embedding of ``text``."""
        ...


class WordLlamaEmbedder:
    """WordLlama l2_supercat, loaded from the files inside the installed package."""

    def __init__(self) -> None:
        try:
            import wordllama
            from safetensors import safe_open
            from tokenizers import Tokenizer
            from wordllama.inference import WordLlamaInference
        except ImportError as exc:
            raise RuntimeError(INSTALL_HINT) from exc
        root = Path(wordllama.__file__).parent
        # WordLlama.load() looks for the bundled tokenizer in the wrong folder and then tries to
        # download it; the files are read directly instead.
        tokenizer_file = root / "tokenizers" / "l2_supercat_tokenizer_config.json"
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        weights_file = root / "weights" / "l2_supercat_256.safetensors"
        with safe_open(str(weights_file), framework="np") as f:
            weights = f.get_tensor("embedding.weight")
        self._model: Any = WordLlamaInference(weights, tokenizer, binary=False)

    def embed(self, text: str) -> Vector:
        vector = self._model.embed([text], norm=True)[0]
        return np.asarray(vector, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [int(sum(e.attention_mask)) for e in self._model.tokenize(texts)]

    def embed_many(self, texts: list[str]) -> np.ndarray[Any, Any]:
        """Unit-length embeddings of ``texts``, one row each."""
        vectors = np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)
        return vectors.reshape(len(texts), -1)

    @property
    def dimensions(self) -> int:
        return DIMENSIONS


#: WordLlama l2_supercat's embedding size (truncatable: trained matryoshka-style).
DIMENSIONS = 256
#: The id the shipped embedding model is served under (/v1/embeddings, /v1/models).
MODEL_ID = "wordllama-l2-supercat"


@functools.cache
def shared_embedder() -> WordLlamaEmbedder:
    """One WordLlama for the process: the semantic cache, quality scores and /v1/embeddings."""
    return WordLlamaEmbedder()


def nearest(query: Vector, candidates: list[tuple[str, Vector]]) -> tuple[str, float] | None:
    """The candidate most similar to ``query`` (cosine of unit vectors), with its similarity."""
    if not candidates:
        return None
    matrix = np.stack([v for _, v in candidates])
    scores = matrix @ query
    best = int(np.argmax(scores))
    return candidates[best][0], float(scores[best])
