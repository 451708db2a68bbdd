"""Embeddings from a served model (/v1/embeddings for a model other than the shipped
embedder): what the response cache holds for each text, the rest from the model's engine,
loaded on demand. A text's embedding is deterministic (one forward pass of its own on the
embedded engine), so it is cached per text, with its token count for usage; an upstream's
answers, which count tokens only in total, are not cached.
"""

from __future__ import annotations

import struct

import numpy as np

from vllm_service.engine import InvalidRequestError
from vllm_service.engine.capabilities import EmbeddingEngine, Embeddings
from vllm_service.manager.deployment import ServedModel
from vllm_service.manager.manager import ModelManager


def _encode(tokens: int, vector: list[float]) -> bytes:
    return struct.pack("<I", tokens) + np.asarray(vector, dtype="<f4").tobytes()


def _decode(raw: bytes) -> tuple[int, list[float]]:
    (tokens,) = struct.unpack_from("<I", raw)
    return tokens, np.frombuffer(raw, dtype="<f4", offset=4).astype(float).tolist()


async def embed_texts(
    manager: ModelManager,
    served: ServedModel,
    texts: list[str],
    *,
    dimensions: int | None,
    max_total_tokens: int,
) -> Embeddings:
    """The model's normalized embeddings of ``texts``, in order (float32 values)."""
    cache = manager.cache
    keys = [
        cache.embedding_key(served.config, dimensions, text) if cache is not None else None
        for text in texts
    ]
    found: dict[int, tuple[int, list[float]]] = {}
    if cache is not None:
        for i, key in enumerate(keys):
            raw = await cache.get_raw(key[0]) if key is not None else None
            if raw is not None:
                found[i] = _decode(raw)
            cache.count(served.config.name, "hit" if raw is not None else "miss")
    missing = [i for i in range(len(texts)) if i not in found]
    if missing:
        fresh = await _from_engine(
            manager, served, [texts[i] for i in missing], dimensions, max_total_tokens
        )
        for k, i in enumerate(missing):
            vector = np.asarray(fresh.vectors[k], dtype="<f4").astype(float).tolist()
            tokens = fresh.tokens[k] if fresh.tokens is not None else 0
            found[i] = tokens, vector
            key = keys[i]
            if cache is not None and key is not None and fresh.tokens is not None:
                await cache.put_raw(key[0], _encode(tokens, vector), key[1])
        if fresh.tokens is None:  # an upstream's total
            return Embeddings([found[i][1] for i in range(len(texts))], fresh.prompt_tokens)
    counts = [found[i][0] for i in range(len(texts))]
    return Embeddings([found[i][1] for i in range(len(texts))], sum(counts), counts)


async def _from_engine(
    manager: ModelManager,
    served: ServedModel,
    texts: list[str],
    dimensions: int | None,
    max_total_tokens: int,
) -> Embeddings:
    async with manager.using(served) as engine:
        if not isinstance(engine, EmbeddingEngine):
            raise InvalidRequestError(
                f"The model '{served.config.name}' does not serve embeddings.", param="model"
            )
        return await engine.embed(texts, dimensions=dimensions, max_total_tokens=max_total_tokens)
