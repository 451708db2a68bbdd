"""POST /v1/embeddings, as OpenAI shapes it: from the embedding model that ships in a package,
or from a served model (any GGUF model of the embedded engine, pooled by llama.cpp; an upstream's
own /embeddings; see manager/embedding.py).

The model is WordLlama's l2_supercat (256 dimensions, 16 MB, inside the ``wordllama`` wheel:
nothing is downloaded), served under ``wordllama-l2-supercat``: the same embedder the semantic
cache and the quality scores use, loaded once. It was chosen because it is the one embedding
model these machines can install (no model hub), it is fast on a CPU (tens of microseconds per
short text), and it was trained to be truncated (``dimensions``: the first N components,
renormalized). Inputs are text: a string or a list of strings; token-id inputs (ids of
OpenAI's tokenizer) mean nothing to its tokenizer and are refused with a 400. Each request is
bounded (``embeddings.max_inputs``, ``max_input_tokens``, ``max_total_tokens``) before any
vector is computed; the batch is embedded off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vllm_service.api.auth import principal_of
from vllm_service.api.errors import InvalidRequest, ModelNotFound
from vllm_service.api.protocol import check_text
from vllm_service.api.responses import ERROR_RESPONSES
from vllm_service.api.serving import Manager, resolve_model
from vllm_service.auth import Permission, requires
from vllm_service.config import EmbeddingsConfig
from vllm_service.manager.embedding import embed_texts
from vllm_service.manager.semantic import DIMENSIONS, MODEL_ID, shared_embedder

router = APIRouter(prefix="/v1", tags=["openai"])


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(strict=True)] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_text(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    check_text(item)
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def embeddings_available(config: EmbeddingsConfig) -> bool:
    """Whether the shipped embedding model can be served (enabled, and its package there)."""
    if not config.enabled:
        return False
    try:
        shared_embedder()
    except RuntimeError:
        return False
    return True


def _texts(body: EmbeddingRequest, config: EmbeddingsConfig) -> list[str]:
    raw = body.input
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if not all(isinstance(item, str) for item in raw):
        raise InvalidRequest(
            f"The model '{body.model}' takes text: token-id inputs are not supported.",
            param="input",
        )
    if len(raw) > config.max_inputs:
        raise InvalidRequest(
            f"'input' has {len(raw)} items; at most {config.max_inputs} are allowed.",
            param="input",
        )
    texts = [str(item) for item in raw]
    for i, text in enumerate(texts):
        if not text:
            raise InvalidRequest(f"'input[{i}]' is an empty string.", param="input")
    return texts


@router.post(
    "/embeddings",
    response_model=EmbeddingList,
    responses={400: ERROR_RESPONSES[400], 404: ERROR_RESPONSES[404], 503: ERROR_RESPONSES[503]},
)
@requires(Permission.INFERENCE)
async def create_embeddings(
    request: Request, body: EmbeddingRequest, manager: Manager
) -> EmbeddingList:
    """Embeddings of a text or a list of texts (OpenAI's embeddings API): from the shipped
    embedder, or from a served model (the embedded engine mean-pools a GGUF model; an upstream
    answers from its own /embeddings)."""
    config: EmbeddingsConfig = request.app.state.embeddings
    if body.model == MODEL_ID and request.app.state.embeddings_available:
        if not principal_of(request).may_use(MODEL_ID):
            raise ModelNotFound(body.model)
        vectors, tokens = await _shipped(body, config)
    else:
        served = resolve_model(request, manager, body.model)
        if body.dimensions is not None and body.dimensions < 1:
            raise InvalidRequest("'dimensions' must be at least 1.", param="dimensions")
        result = await embed_texts(
            manager,
            served,
            _texts(body, config),
            dimensions=body.dimensions,
            max_total_tokens=config.max_total_tokens,
        )
        vectors, tokens = np.asarray(result.vectors, dtype=np.float32), result.prompt_tokens
    data = []
    for i, row in enumerate(vectors.astype(np.float32)):
        value: list[float] | str
        if body.encoding_format == "base64":
            value = base64.b64encode(row.astype("<f4").tobytes()).decode()
        else:
            value = row.tolist()
        data.append(Embedding(index=i, embedding=value))
    return EmbeddingList(
        data=data,
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


async def _shipped(body: EmbeddingRequest, config: EmbeddingsConfig) -> tuple[Any, int]:
    """Vectors and tokens from the shipped WordLlama embedder."""
    if body.dimensions is not None and not 1 <= body.dimensions <= DIMENSIONS:
        raise InvalidRequest(
            f"'dimensions' must be between 1 and {DIMENSIONS} for '{MODEL_ID}'.",
            param="dimensions",
        )
    texts = _texts(body, config)
    embedder = shared_embedder()
    # Counted before anything is embedded: refusing costs a tokenization, not the vectors.
    texts_ids = await asyncio.to_thread(embedder.encode, texts)
    counts = [len(ids) for ids in texts_ids]
    for i, count in enumerate(counts):
        if count > config.max_input_tokens:
            raise InvalidRequest(
                f"'input[{i}]' has {count} tokens; at most {config.max_input_tokens} are allowed.",
                param="input",
            )
    if sum(counts) > config.max_total_tokens:
        raise InvalidRequest(
            f"'input' has {sum(counts)} tokens in all; at most {config.max_total_tokens}.",
            param="input",
        )
    vectors = await asyncio.to_thread(embedder.embed_ids, texts_ids)
    if body.dimensions is not None and body.dimensions < vectors.shape[1]:
        vectors = vectors[:, : body.dimensions]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1, norms)
    return vectors, sum(counts)
