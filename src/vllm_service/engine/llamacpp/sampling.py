"""Per-sequence sampling: a llama.cpp sampler chain built from OpenAI parameters, and logprobs."""

from __future__ import annotations

import ctypes
import random
from typing import Any

import llama_cpp
import numpy as np

from vllm_service.engine.base import (
    InvalidRequestError,
    SamplingDefaults,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    choice_seed,
)
from vllm_service.engine.llamacpp.batch_sampling import RowSampling, logits_rows, sample_rows
from vllm_service.engine.llamacpp.model import LlamaModel

#: OpenAI's values for knobs a request leaves out, where neither config nor model recommends one.
NEUTRAL_SAMPLING: dict[str, float | None] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}

_NEUTRAL = SamplingDefaults.layered(("openai default", NEUTRAL_SAMPLING))

#: llama.cpp reads this seed as "pick one at random"; a request's own seed never maps to it.
_RANDOM_SEED = 0xFFFFFFFF


def request_seed(seed: int | None, choice: int = 0) -> int:
    """A 32-bit seed for llama.cpp's dist sampler: derived from the request's seed and the
    choice's index, or a random one."""
    if seed is None:
        return random.getrandbits(32) % _RANDOM_SEED
    return (choice_seed(seed, choice) & 0xFFFFFFFF) % _RANDOM_SEED


class SamplerChain:
    """A sequence's sampler: a row of the step's array sampling (batch_sampling.py) when its
    parameters allow, else its own llama.cpp sampler chain (penalties, logit bias, grammar);
    freed exactly once."""

    def __init__(
        self,
        model: LlamaModel,
        params: SamplingParams,
        *,
        penalty_window: int,
        grammar: str | None = None,
    ) -> None:
        self._chain: Any = None
        # The engine fills unset knobs before this; a caller that did not gets OpenAI's values.
        knobs = _NEUTRAL.fill(params)
        assert knobs.temperature is not None
        assert knobs.top_p is not None
        assert knobs.top_k is not None
        assert knobs.min_p is not None
        presence, frequency = knobs.presence_penalty or 0.0, knobs.frequency_penalty or 0.0
        repetition = 1.0 if knobs.repetition_penalty is None else knobs.repetition_penalty
        penalties = (repetition, frequency, presence)
        #: Set when the step's array sampling draws this sequence's tokens.
        self.row: RowSampling | None = None
        if grammar is None:
            seed = None if params.seed is None else choice_seed(params.seed, params.choice)
            self.row = RowSampling(
                knobs.temperature,
                knobs.top_k,
                knobs.top_p,
                knobs.min_p,
                np.random.default_rng(seed),
                *penalties,
            )
            if params.logit_bias:
                tokens, values = zip(*params.logit_bias, strict=True)
                self.row.bias_tokens = np.array(tokens, dtype=np.intp)
                self.row.bias_values = np.array(values, dtype=np.float32)
            return
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        try:
            self._build(model, params, knobs, penalties, penalty_window, grammar)
        except BaseException:
            self.free()
            raise

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(
        self,
        model: LlamaModel,
        params: SamplingParams,
        knobs: SamplingParams,
        penalties: tuple[float, float, float],
        penalty_window: int,
        grammar_text: str | None,
    ) -> None:
        if grammar_text is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, grammar_text.encode(), b"root"
            )
            if not grammar:
                raise InvalidRequestError(
                    "the response_format could not be turned into a grammar",
                    param="response_format",
                )
            self._add(grammar)
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias):
                biases[i] = llama_cpp.llama_logit_bias(token, bias)
            self._add(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(biases), biases))
        repetition, frequency, presence = penalties
        if penalties != (1.0, 0.0, 0.0):
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab, penalty_window, repetition, frequency, presence
                )
            )
        assert knobs.temperature is not None
        assert knobs.top_k is not None
        assert knobs.top_p is not None
        assert knobs.min_p is not None
        if knobs.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        # As OpenAI and vLLM define them: temperature scales the logits first, then top_k,
        # top_p and min_p cut the tempered distribution. (A sharper distribution also lets
        # top_p find its nucleus among the top 256 tokens instead of sorting the vocabulary.)
        self._add(llama_cpp.llama_sampler_init_temp(knobs.temperature))
        if knobs.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(knobs.top_k))
        if knobs.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(knobs.top_p, 1))
        if knobs.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(knobs.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_dist(request_seed(params.seed, params.choice)))

    def sample(self, ctx: Any, batch_index: int) -> int:
        """Pick (and accept into the chain's state) the next token from one output row."""
        assert self._chain is not None, "a row-sampled sequence is sampled by sample_step"
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))

    def free(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


def sample_step(
    ctx: Any, n_vocab: int, samplers: list[SamplerChain], batch_indices: list[int]
) -> list[int]:
    """The next token of each sequence of a step: the row-sampled ones together, then each
    chain on its own row."""
    tokens = [0] * len(samplers)
    together = [i for i, s in enumerate(samplers) if s.row is not None]
    if together:
        logits, rows = logits_rows(ctx, n_vocab, [batch_indices[i] for i in together])
        plans = [row for i in together if (row := samplers[i].row) is not None]
        for i, token in zip(together, sample_rows(logits, rows, plans), strict=True):
            tokens[i] = token
    for i, sampler in enumerate(samplers):
        if sampler.row is None:
            tokens[i] = sampler.sample(ctx, batch_indices[i])
    return tokens


def token_logprob(
    model: LlamaModel, ctx: Any, batch_index: int, token: int, n_top: int
) -> TokenLogprob:
    """Log-probability of ``token`` under the model's raw distribution, plus the top ``n_top``."""
    pointer = llama_cpp.llama_get_logits_ith(ctx, batch_index)
    logits = np.ctypeslib.as_array(
        ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(model.n_vocab,)
    ).astype(np.float64)
    peak = float(logits.max())
    log_norm = peak + float(np.log(np.exp(logits - peak).sum()))
    top: tuple[TopLogprob, ...] = ()
    if n_top > 0:
        best = np.argpartition(logits, -n_top)[-n_top:]
        best = best[np.argsort(logits[best])[::-1]]
        top = tuple(
            TopLogprob(
                token=model.token_text(int(t)),
                logprob=float(logits[t]) - log_norm,
                token_bytes=model.token_bytes(int(t)),
            )
            for t in best
        )
    return TokenLogprob(
        token=model.token_text(token),
        logprob=float(logits[token]) - log_norm,
        token_bytes=model.token_bytes(token),
        top=top,
    )
