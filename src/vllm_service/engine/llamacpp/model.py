"""A loaded GGUF model: weights, vocabulary, tokenizer and metadata (llama.cpp's C API)."""

from __future__ import annotations

import ctypes
import math
import threading
from pathlib import Path
from typing import Any

import llama_cpp

from vllm_service.engine.llamacpp.device import DevicePlacement
from vllm_service.engine.llamacpp.native_log import use_default_log

#: Sampling knob -> the GGUF metadata key where a model file recommends its value.
GGUF_SAMPLING_KEYS = {
    "temperature": "general.sampling.temp",
    "top_p": "general.sampling.top_p",
    "top_k": "general.sampling.top_k",
    "min_p": "general.sampling.min_p",
    "repetition_penalty": "general.sampling.penalty_repeat",
}

_backend_lock = threading.Lock()
_backend_ready = False


def ensure_backend() -> None:
    """Initialise llama.cpp's backends once per process."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            # No Python callback for C to call from its own threads (native_log.py).
            use_default_log()
            llama_cpp.llama_backend_init()
            _backend_ready = True


def gpu_offload_supported() -> bool:
    ensure_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())


def amx_built() -> bool:
    """Whether this llama.cpp's CPU backend was compiled with Intel AMX kernels (a native
    build on a CPU that reports AMX)."""
    ensure_backend()
    info = llama_cpp.llama_print_system_info() or b""
    return b"AMX_INT8 = 1" in info


#: DevicePlacement.flash_attention as llama.cpp's flash_attn_type.
FLASH_ATTENTION = {
    None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class ModelLoadError(Exception):
    """llama.cpp could not load the model file."""


class LlamaModel:
    """Owns a ``llama_model`` and answers tokenizer questions; thread-safe for reads."""

    def __init__(self, path: Path, placement: DevicePlacement) -> None:
        ensure_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = placement.n_gpu_layers
        params.use_extra_bufts = placement.extra_buffer_types
        self.path = path
        self._flash_attention = placement.flash_attention
        self._model: Any = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self._vocab: Any = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.bos_id: int = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos_id: int = llama_cpp.llama_vocab_eos(self._vocab)
        self._piece_cache: dict[int, bytes] = {}

    @property
    def handle(self) -> Any:
        return self._model

    @property
    def vocab(self) -> Any:
        return self._vocab

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def new_context(
        self, *, n_slots: int, slot_cells: int, batch_tokens: int, n_threads: int
    ) -> Any:
        """A llama context with one KV stream of ``slot_cells`` cells per slot (seq_id)."""
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slot_cells * n_slots
        params.n_batch = params.n_ubatch = batch_tokens
        params.n_seq_max = n_slots
        params.n_threads = params.n_threads_batch = n_threads
        params.flash_attn_type = FLASH_ATTENTION[self._flash_attention]
        # One KV stream per slot. Measured here: with a unified buffer a sequence's greedy
        # output changes with what runs beside it; with per-slot streams it is the same alone
        # and in a batch of 16. It also means a sequence that passed the context-length check
        # always has room: KV exhaustion cannot happen.
        params.kv_unified = False
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self.handle, params)
        if not ctx:
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        return ctx

    def metadata(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def kv_cache_bytes(self, cells: int) -> int:
        """Bytes of an f16 KV cache holding ``cells`` tokens (keys and values, every layer)."""
        n_head = max(1, llama_cpp.llama_model_n_head(self._model))
        head_dim = llama_cpp.llama_model_n_embd(self._model) // n_head
        kv_width = head_dim * llama_cpp.llama_model_n_head_kv(self._model)
        n_layer = int(llama_cpp.llama_model_n_layer(self._model))
        return cells * n_layer * 2 * int(kv_width) * 2

    def chat_template(self) -> str | None:
        return self.metadata("tokenizer.chat_template")

    def recommended_sampling(self) -> dict[str, float]:
        """The sampling values the file recommends (llama.cpp's ``general.sampling.*`` keys)."""
        out: dict[str, float] = {}
        for knob, key in GGUF_SAMPLING_KEYS.items():
            text = self.metadata(key)
            if text is None:
                continue
            try:
                value = float(text)
            except ValueError:
                continue  # a malformed key is ignored, as llama.cpp does
            if math.isfinite(value):
                out[knob] = value
        return out

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), tokens, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), tokens, capacity, add_special, parse_special
            )
        return list(tokens[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as nothing)."""
        cached = self._piece_cache.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        piece = buf.raw[:n]
        self._piece_cache[token] = piece
        return piece

    def token_bytes(self, token: int) -> bytes:
        """A token's own bytes for logprobs (special tokens spelled by name): part of a
        UTF-8 character when the token is, as OpenAI's ``bytes`` field reports it."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        """A token as text for logprobs (special tokens shown by name)."""
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def is_control(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_control(self._vocab, token))

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.token_text(token)
