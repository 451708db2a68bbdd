"""Sentence embeddings from a GGUF model: a llama.cpp context of its own with pooling.

Embedding models declare their pooling in their metadata (CLS, mean, last); a model that
declares none (a chat model, such as the bundled one) is mean-pooled: the average of its last
hidden states over the text's tokens. Vectors are L2-normalized, as OpenAI's are. The context
is made on the first request. Each text gets a forward pass of its own, so that its vector
does not depend on what it was sent with (packing 64 short texts into shared passes changed
components by up to 4e-3, and was no faster here: a chat model's cost is its output layer,
computed for every token). It runs beside the generation scheduler (the weights are shared;
llama.cpp allows a context per thread), its calls serialized by a lock.
"""

from __future__ import annotations

import ctypes
import math
import threading
from typing import Any

import llama_cpp

from vllm_service.engine.llamacpp.model import LlamaModel, ModelLoadError

#: ``options.pooling`` names -> llama.cpp's pooling types.
POOLING = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}


class PooledEmbedder:
    """One context with ``embeddings`` on; ``embed`` is thread-safe."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_threads: int, pooling: str | None):
        self._model = model
        self._lock = threading.Lock()
        self.n_ctx = n_ctx
        self._ctx = self._context(n_threads, POOLING[pooling] if pooling else None)
        self.dimensions = int(llama_cpp.llama_model_n_embd(model.handle))
        self._batch: Any = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def _context(self, n_threads: int, pooling: int | None) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = n_threads
        params.embeddings = True
        params.no_perf = True
        params.pooling_type = (
            llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if pooling is None else pooling
        )
        ctx = llama_cpp.llama_init_from_model(self._model.handle, params)
        if not ctx:
            raise ModelLoadError("llama.cpp could not create an embedding context")
        if llama_cpp.llama_pooling_type(ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            # The model declares no pooling (a chat model): mean over its tokens.
            llama_cpp.llama_free(ctx)
            return self._context(n_threads, llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        return ctx

    @property
    def pooling(self) -> str:
        kind = llama_cpp.llama_pooling_type(self._ctx)
        return next((name for name, value in POOLING.items() if value == kind), str(kind))

    def embed(self, texts: list[list[int]]) -> list[list[float]]:
        """The normalized embeddings of tokenized texts (each at most ``n_ctx`` tokens)."""
        for tokens in texts:
            assert 0 < len(tokens) <= self.n_ctx
        return [self._pass([tokens])[0] for tokens in texts]

    def _pass(self, group: list[list[int]]) -> list[list[float]]:
        """One forward pass over a few texts, one sequence each."""
        with self._lock:
            if self._ctx is None:
                raise RuntimeError("the embedder is closed")
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
            batch, n = self._batch, 0
            for seq_id, tokens in enumerate(group):
                for pos, token in enumerate(tokens):
                    batch.token[n] = token
                    batch.pos[n] = pos
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq_id
                    batch.logits[n] = 1
                    n += 1
            batch.n_tokens = n
            if llama_cpp.llama_decode(self._ctx, batch) != 0:
                raise RuntimeError("llama.cpp could not compute the embeddings")
            vectors = []
            for seq_id in range(len(group)):
                pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq_id)
                if not pointer:
                    raise RuntimeError("llama.cpp returned no pooled embedding")
                floats = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))
                vectors.append(list(floats[: self.dimensions]))
        return [_normalized(v) for v in vectors]

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                llama_cpp.llama_batch_free(self._batch)
                llama_cpp.llama_free(self._ctx)
                self._ctx = None


def _normalized(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
