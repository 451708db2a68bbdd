"""/v1/embeddings: the embedding model that ships in a package, and the request bounds."""

from __future__ import annotations

from pydantic import Field

from vllm_service.config.models import _Strict


class EmbeddingsConfig(_Strict):
    """The shipped embedding model (WordLlama l2_supercat, inside the ``wordllama`` wheel)."""

    enabled: bool = Field(
        default=True,
        description="Serve it on /v1/embeddings when the wordllama package is installed.",
    )
    max_inputs: int = Field(default=2048, ge=1, le=100_000, description="Inputs per request.")
    max_input_tokens: int = Field(
        default=8192, ge=1, description="Tokens one input may have (then 400)."
    )
    max_total_tokens: int = Field(
        default=300_000, ge=1, description="Tokens all inputs of a request may have together."
    )
