"""What some engines can do beyond generating (engine/base.py's Engine): tokenize with their
own tokenizer, embed text, hold a model in memory here. Callers test for them with isinstance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from vllm_service.engine.base import GenerationRequest


@runtime_checkable
class Tokenizing(Protocol):
    """An engine that owns its tokenizer (the embedded one): /tokenize and /detokenize."""

    async def tokenize(self, req: GenerationRequest, *, add_special: bool = True) -> list[int]:
        """The prompt's token ids as generation would see them (chat template applied)."""
        ...

    async def detokenize(self, tokens: list[int]) -> str: ...


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Embeddings of a request's texts, in order, and the tokens the model counted."""

    vectors: list[list[float]]
    prompt_tokens: int
    #: Each input's tokens, where the engine counts them (the embedded one; an upstream
    #: reports a total only). Cached embeddings need them to report usage.
    tokens: list[int] | None = None


@runtime_checkable
class EmbeddingEngine(Protocol):
    """An engine that also embeds text (/v1/embeddings): the embedded one (pooled), an
    upstream (its /embeddings)."""

    async def embed(
        self, texts: list[str], *, dimensions: int | None, max_total_tokens: int
    ) -> Embeddings:
        """Normalized vectors of ``texts``; InvalidRequestError for an input too long, more
        than ``max_total_tokens`` in all, or ``dimensions`` the model cannot give."""
        ...


@runtime_checkable
class Resident(Protocol):
    """An engine that holds its model in memory here and can say how much (the manager's
    loader keeps the loaded models within loading.memory_budget)."""

    def memory_bytes(self) -> int | None:
        """Bytes it holds once loaded: measured after a load, estimated before; None when
        unknown."""
        ...
