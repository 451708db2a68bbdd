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
        # The same tokenizer without padding: a batch of texts is not padded to its longest
        # (one long input among many short ones would multiply the work and the memory).
        self._unpadded: Any = Tokenizer.from_str(tokenizer.to_str())
        self._unpadded.no_padding()
        self._weights: np.ndarray[Any, Any] = np.asarray(weights, dtype=np.float32)

    def embed(self, text: str) -> Vector:
        vector = self._model.embed([text], norm=True)[0]
        return np.asarray(vector, dtype=np.float32)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, unpadded (their count is the text's usage)."""
        encodings = self._unpadded.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def embed_ids(self, texts_ids: list[list[int]]) -> np.ndarray[Any, Any]:
        """Unit-length embeddings of texts given as token ids (``encode``), one row each: the
        mean of their token vectors, as WordLlama pools them."""
        out = np.zeros((len(texts_ids), self._weights.shape[1]), dtype=np.float32)
        last = self._weights.shape[0] - 1
        for row, ids in enumerate(texts_ids):
            if ids:
                out[row] = self._weights[np.clip(ids, 0, last)].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

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
