"""The embedded llama.cpp engine: the Engine contract over the continuous-batching scheduler."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import ValidationError

from vllm_service.engine.base import (
    ContextLengthExceededError,
    EngineHealth,
    EngineState,
    EngineUnavailableError,
    GenerationRequest,
    InvalidRequestError,
    ModelCard,
    SamplingDefaults,
    TokenDelta,
)
from vllm_service.engine.capabilities import Embeddings
from vllm_service.engine.llamacpp.chat_template import CHATML_TEMPLATE, ChatTemplate
from vllm_service.engine.llamacpp.device import DevicePlacement, available_memory_bytes, place
from vllm_service.engine.llamacpp.embedder import PooledEmbedder
from vllm_service.engine.llamacpp.grammar import GrammarBuilder, SchemaLimits
from vllm_service.engine.llamacpp.host_cache import host_cache_budget
from vllm_service.engine.llamacpp.model import (
    LlamaModel,
    ModelLoadError,
    amx_built,
    gpu_offload_supported,
)
from vllm_service.engine.llamacpp.model_files import (
    BUNDLED_SAMPLING,
    BUNDLED_SAMPLING_SOURCE,
    BUNDLED_TUNING,
    BUNDLED_TUNING_SOURCE,
    resolve_model_path,
)
from vllm_service.engine.llamacpp.native_log import NativeOutput, native_stderr_captured
from vllm_service.engine.llamacpp.options import BUNDLED_MODEL, LlamaCppOptions
from vllm_service.engine.llamacpp.prompt import PromptTokenizer
from vllm_service.engine.llamacpp.sampling import NEUTRAL_SAMPLING, SamplerChain
from vllm_service.engine.llamacpp.scheduler import Post, Scheduler
from vllm_service.engine.llamacpp.sequence import Sequence
from vllm_service.engine.llamacpp.text_output import TextOutput
from vllm_service.engine.options import SamplingDefaultsConfig

logger = logging.getLogger(__name__)


def _valid_recommendations(model: LlamaModel) -> dict[str, float | None]:
    """The file's recommended sampling values that are in range (others are logged, unused)."""
    out: dict[str, float | None] = {}
    for knob, value in model.recommended_sampling().items():
        try:
            SamplingDefaultsConfig.model_validate({knob: int(value) if knob == "top_k" else value})
        except ValidationError:
            logger.warning(
                "ignoring the model file's %s recommendation %r: out of range", knob, value
            )
            continue
        out[knob] = value
    return out


class LlamaCppEngine:
    """Serves one GGUF model in-process; weights load in ``start()``, off the event loop."""

    def __init__(
        self,
        name: str,
        options: LlamaCppOptions,
        defaults: SamplingDefaultsConfig | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self._configured_defaults = defaults or SamplingDefaultsConfig()
        #: Until the file's metadata is read: the configured values and OpenAI's neutral ones.
        self.sampling_defaults = self._layer_defaults({})
        # Resolved now so a bad path or device fails at start-up, before the server listens.
        self.model_path: Path = resolve_model_path(options.model)
        self._file_bytes = self.model_path.stat().st_size
        self.placement: DevicePlacement = place(
            options, gpu_offload_supported=gpu_offload_supported(), amx_built=amx_built()
        )
        self._model: LlamaModel | None = None
        self._prompts: PromptTokenizer | None = None
        self._grammars = GrammarBuilder(
            SchemaLimits(
                max_bytes=options.max_schema_bytes,
                max_depth=options.max_schema_depth,
                max_properties=options.max_schema_properties,
                max_repeat=options.max_schema_repeat,
                max_grammar_bytes=options.max_grammar_bytes,
                max_tokens=options.max_model_len,
            )
        )
        self._scheduler: Scheduler | None = None
        self._template: ChatTemplate | None = None
        self._state: EngineState = "starting"
        self._created = int(time.time())
        #: The KV cache's bytes, known once the model has been loaded.
        self._kv_bytes: int | None = None
        self._host_bytes = 0
        #: The embedding context (/v1/embeddings), made on the first request.
        self._embedder: PooledEmbedder | None = None
        self._embedder_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model; also after ``stop()`` (the manager unloads and reloads it)."""
        loop = asyncio.get_running_loop()
        self._state = "starting"
        try:
            await asyncio.to_thread(self._load_quietly, loop.call_soon_threadsafe)
        except BaseException:
            self._state = "failed"
            raise
        self._state = "ready"

    def _layer_defaults(self, from_file: dict[str, float | None]) -> SamplingDefaults:
        """Request first (applied per request), then config, file metadata, the bundled
        model's card and our tuning of it, and OpenAI's neutral values last."""
        bundled = self.options.model == BUNDLED_MODEL
        return SamplingDefaults.layered(
            ("config", self._configured_defaults.model_dump()),
            ("gguf metadata", from_file),
            (BUNDLED_SAMPLING_SOURCE, BUNDLED_SAMPLING if bundled else {}),
            (BUNDLED_TUNING_SOURCE, BUNDLED_TUNING if bundled else {}),
            ("openai default", NEUTRAL_SAMPLING),
        )

    def _load_quietly(self, post: Post) -> None:
        """Load with llama.cpp's output captured: logged at debug level, and the reason given
        in the error when the load fails."""
        native = NativeOutput()
        try:
            with native_stderr_captured() as native:
                self._load(post)
        except Exception as exc:
            said = native.errors()
            detail = f" (llama.cpp: {said})" if said else ""
            raise ModelLoadError(f"{self.model_path.name}: {exc}{detail}") from exc

    def _check_kv_fits(self, model: LlamaModel) -> None:
        """On the CPU, refuse a KV cache larger than the memory available: llama.cpp would
        allocate it (the kernel overcommits) and the process would be killed when it is
        touched. A GPU allocation fails cleanly by itself."""
        if self.placement.device != "cpu":
            return
        cells = self.options.max_model_len * self.options.max_num_seqs
        needed = model.kv_cache_bytes(cells)
        available = available_memory_bytes()
        if available is not None and needed > available:
            gib = 1024**3
            raise ModelLoadError(
                f"the KV cache for max_model_len {self.options.max_model_len} x max_num_seqs "
                f"{self.options.max_num_seqs} needs {needed / gib:.1f} GiB, more than the "
                f"{available / gib:.1f} GiB of memory available: lower either"
            )

    def _load(self, post: Post) -> None:
        model = LlamaModel(self.model_path, self.placement)
        self._model = model
        self.sampling_defaults = self._layer_defaults(_valid_recommendations(model))
        template_source = self.options.chat_template or model.chat_template() or CHATML_TEMPLATE
        self._template = ChatTemplate(
            template_source,
            bos_token=model.special_text(model.bos_id),
            eos_token=model.special_text(model.eos_id),
        )
        self._prompts = PromptTokenizer(model, self._template, self.options.max_model_len)
        self._check_kv_fits(model)
        self._kv_bytes = model.kv_cache_bytes(
            self.options.max_model_len * self.options.max_num_seqs
        )
        self._host_bytes = host_cache_budget(self.options)
        scheduler = Scheduler(
            model,
            n_threads=self.placement.n_threads,
            max_num_seqs=self.options.max_num_seqs,
            max_num_batched_tokens=self.options.max_num_batched_tokens,
            max_model_len=self.options.max_model_len,
            max_waiting_seqs=self.options.max_waiting_seqs,
            max_waiting_tokens=self.options.max_waiting_tokens,
            queue_timeout=self.options.queue_timeout,
            enable_prefix_caching=self.options.enable_prefix_caching,
            prefix_cache_host_bytes=self._host_bytes,
            post=post,
        )
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self) -> None:
        failed = self._state == "failed"
        self._state = "stopping"
        scheduler, model = self._scheduler, self._model
        self._scheduler = None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if model is not None:
            model.close()
        self._model = None
        self._prompts = None
        self._state = "failed" if failed else "unloaded"

    def memory_bytes(self) -> int:
        """The weights (the file's size: llama.cpp maps it), the KV cache and the prefix cache's
        host-RAM budget (once known)."""
        if self._kv_bytes is None:
            return self._file_bytes
        return self._file_bytes + self._kv_bytes + self._host_bytes

    # -- the contract -------------------------------------------------------------------------

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(
                owned_by="vllm-service",
                created=self._created,
                max_model_len=self.options.max_model_len,
                sampling_defaults=self.sampling_defaults,
            )
        ]

    async def health(self) -> EngineHealth:
        return EngineHealth(
            state=self._state,
            device=self.placement.device,
            info={
                "model_path": str(self.model_path),
                "n_gpu_layers": self.placement.n_gpu_layers,
                "n_threads": self.placement.n_threads,
                "extra_buffer_types": int(self.placement.extra_buffer_types),
                "flash_attention": self.placement.flash_attention_mode,
                "max_model_len": self.options.max_model_len,
                "max_num_seqs": self.options.max_num_seqs,
                "prefix_cache_host_budget": self._host_bytes,
                "grammar_conversions": self._grammars.conversions,
                "grammar_cache_hits": self._grammars.cache_hits,
                "grammar_refusals": self._grammars.refused,
            },
            scheduler=self._scheduler.stats() if self._scheduler is not None else None,
        )

    def _check(self, model: LlamaModel, req: GenerationRequest, prompt: list[int]) -> int:
        """Validate against the model; returns the completion budget."""
        limit = self.options.max_model_len
        wanted = req.sampling.max_tokens
        if not prompt:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if any(t < 0 or t >= model.n_vocab for t in prompt):
            raise InvalidRequestError(
                f"prompt token ids must be in [0, {model.n_vocab})", param="prompt"
            )
        if len(prompt) + (wanted or 1) > limit:
            raise ContextLengthExceededError(
                max_model_len=limit,
                prompt_tokens=len(prompt),
                max_tokens=wanted,
                param="messages" if req.messages is not None else "prompt",
            )
        for token, _ in req.sampling.logit_bias:
            if token >= model.n_vocab:
                raise InvalidRequestError(
                    f"logit_bias token id {token} is out of range: the vocabulary has "
                    f"{model.n_vocab} tokens",
                    param="logit_bias",
                )
        return wanted if wanted is not None else limit - len(prompt)

    def _prepare(self, req: GenerationRequest) -> tuple[list[int], int, SamplerChain]:
        model = self._model
        if model is None:
            raise EngineUnavailableError("the model is not loaded yet", retry_after=1.0)
        assert self._prompts is not None
        prompt = self._prompts.for_generation(req)
        max_tokens = self._check(model, req, prompt)
        grammar = self._grammars.for_params(req.sampling)
        sampler = SamplerChain(model, req.sampling, penalty_window=max_tokens, grammar=grammar)
        return prompt, max_tokens, sampler

    # -- tokenizing (engine/base.py's Tokenizing) -----------------------------------------

    def _loaded_prompts(self) -> PromptTokenizer:
        if self._prompts is None or self._state != "ready":
            raise EngineUnavailableError("the model is not loaded yet", retry_after=1.0)
        return self._prompts

    async def tokenize(self, req: GenerationRequest, *, add_special: bool = True) -> list[int]:
        prompts = self._loaded_prompts()
        return await asyncio.to_thread(prompts.tokens, req, add_special=add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        return await asyncio.to_thread(self._loaded_prompts().text, tokens)

    # -- embedding (engine/base.py's EmbeddingEngine) -----------------------------------------

    async def embed(
        self, texts: list[str], *, dimensions: int | None, max_total_tokens: int
    ) -> Embeddings:
        self._loaded_prompts()
        model = self._model
        assert model is not None
        return await asyncio.to_thread(self._embed, model, texts, dimensions, max_total_tokens)

    def _embed(
        self, model: LlamaModel, texts: list[str], dimensions: int | None, max_total_tokens: int
    ) -> Embeddings:
        limit = self.options.max_model_len
        tokens = [model.tokenize(t, add_special=True, parse_special=False) for t in texts]
        for i, ids in enumerate(tokens):
            if len(ids) > limit:
                raise InvalidRequestError(
                    f"'input[{i}]' has {len(ids)} tokens; this model takes at most {limit}.",
                    param="input",
                )
        total = sum(map(len, tokens))
        max_total_tokens = min(max_total_tokens, self.options.max_embedding_tokens)
        if total > max_total_tokens:
            raise InvalidRequestError(
                f"'input' has {total} tokens in all; at most {max_total_tokens}.", param="input"
            )
        with self._embedder_lock:
            if self._embedder is None:
                with native_stderr_captured():
                    self._embedder = PooledEmbedder(
                        model,
                        n_ctx=limit,
                        n_threads=self.placement.n_threads,
                        pooling=self.options.pooling,
                    )
            embedder = self._embedder
        if dimensions is not None and dimensions != embedder.dimensions:
            raise InvalidRequestError(
                f"This model's embeddings have {embedder.dimensions} dimensions and cannot be "
                "shortened: leave 'dimensions' out.",
                param="dimensions",
            )
        return Embeddings(embedder.embed(tokens), total, [len(ids) for ids in tokens])

    async def generate(self, req: GenerationRequest) -> AsyncIterator[TokenDelta]:
        scheduler = self._scheduler
        if scheduler is None or self._state != "ready":
            raise EngineUnavailableError("the engine is not ready", retry_after=1.0)
        req = dataclasses.replace(req, sampling=self.sampling_defaults.fill(req.sampling))
        prompt, max_tokens, sampler = await asyncio.to_thread(self._prepare, req)
        queue: asyncio.Queue[TokenDelta | BaseException] = asyncio.Queue()
        seq = Sequence(
            request_id=req.request_id,
            prompt=prompt,
            max_tokens=max_tokens,
            params=req.sampling,
            sampler=sampler,
            deliver=queue.put_nowait,
            text=TextOutput(req.sampling.stop),
        )
        try:
            scheduler.submit(seq)
        except BaseException:
            sampler.free()
            raise
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                scheduler.abort(seq)
