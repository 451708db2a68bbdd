"""Sampling every running sequence of a step together, over a [sequences x vocabulary] array.

A sequence without a grammar (most requests) is sampled here, with the step's other such
sequences: one pass of numpy over their logits rows instead of
one llama.cpp sampler chain each. A chain builds and sorts a vocabulary-sized candidate array per
sequence and per token (~0.7 ms here for the bundled model's 49k tokens), so sampling grew
linearly with the batch; the array form costs a fraction of that per row.

OpenAI's semantics are kept exactly, as the chain had them: logit_bias is added, the penalties
(repetition as llama.cpp/vLLM define it, frequency and presence as OpenAI does) count the tokens
generated so far, temperature scales the logits, then top_k, top_p (over what top_k kept,
renormalized) and min_p (relative to the most likely token) cut the tempered distribution, and
the token is drawn from what is left. No hidden top-k: the whole vocabulary takes part.
Temperature 0 is the argmax (the first, on ties).

Determinism: a seeded sequence draws from its own generator (numpy's PCG64, seeded from the
request's seed and choice), one draw per token, and every operation on a row depends on that row
alone (elementwise, or a reduction along the row): its tokens are the same alone and in any batch.

A grammar (response_format) keeps the llama.cpp chain (sampling.py): it checks candidates
against the grammar's state.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

#: top_p's nucleus is looked for among the tokens at least this likely relative to the most
#: likely one (a handful to a few hundred); a whole-row sort only when they hold too little.
_NUCLEUS_FLOOR = 1e-4
#: Tokens summed together when looking for a drawn token: a row's block sums, then one block.
_BLOCK = 512


@dataclass(slots=True)
class RowSampling:
    """How one sequence samples, when the array form can do it, and what it generated."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    rng: np.random.Generator
    repetition: float = 1.0
    frequency: float = 0.0
    presence: float = 0.0
    bias_tokens: np.ndarray | None = None
    bias_values: np.ndarray | None = None
    #: Generated tokens and how often each came: what the penalties count.
    counts: dict[int, int] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        return (self.repetition, self.frequency, self.presence) != (1.0, 0.0, 0.0)

    def adjust(self, row: np.ndarray) -> None:
        """Add the logit bias and apply the penalties to a copied logits row (in place)."""
        if self.bias_tokens is not None and self.bias_values is not None:
            np.add.at(row, self.bias_tokens, self.bias_values)  # '1' and '01' both count
        if self.penalized and self.counts:
            seen = np.fromiter(self.counts, dtype=np.intp, count=len(self.counts))
            times = np.fromiter(self.counts.values(), dtype=np.float32, count=len(self.counts))
            values = row[seen]
            values = np.where(
                values <= 0,
                values * np.float32(self.repetition),
                values / np.float32(self.repetition),
            )
            row[seen] = values - (times * np.float32(self.frequency) + np.float32(self.presence))

    def generated(self, token: int) -> None:
        if self.penalized:
            self.counts[token] = self.counts.get(token, 0) + 1


def logits_rows(ctx: Any, n_vocab: int, batch_indices: list[int]) -> tuple[np.ndarray, list[int]]:
    """The context's output logits as an array, and the row of each batch position."""
    base = ctypes.cast(llama_cpp.llama_get_logits(ctx), ctypes.c_void_p).value or 0
    row_bytes = 4 * n_vocab
    rows = []
    for index in batch_indices:
        address = ctypes.cast(llama_cpp.llama_get_logits_ith(ctx, index), ctypes.c_void_p).value
        if not address:
            raise RuntimeError(f"llama.cpp has no logits for batch position {index}")
        rows.append((address - base) // row_bytes)
    pointer = ctypes.cast(base, ctypes.POINTER(ctypes.c_float))
    array = np.ctypeslib.as_array(pointer, shape=(max(rows) + 1, n_vocab))
    return array, rows


def sample_rows(logits: np.ndarray, rows: list[int], plans: list[RowSampling]) -> list[int]:
    """One token for each ``rows[i]`` of ``logits``, sampled as ``plans[i]`` says (and counted
    as generated)."""
    x = logits[rows]  # a copy: llama.cpp's buffer is only read
    for i, plan in enumerate(plans):
        plan.adjust(x[i])
    tokens = [0] * len(rows)
    greedy = [i for i, p in enumerate(plans) if p.greedy]
    if greedy:
        best = np.argmax(x[greedy], axis=1)
        for i, token in zip(greedy, best.tolist(), strict=True):
            tokens[i] = token
    drawn = [i for i, p in enumerate(plans) if not p.greedy]
    if drawn:
        picks = _draw(x[drawn] if len(drawn) < len(plans) else x, [plans[i] for i in drawn])
        for i, token in zip(drawn, picks, strict=True):
            tokens[i] = token
    for plan, token in zip(plans, tokens, strict=True):
        plan.generated(token)
    return tokens


def _draw(logits: np.ndarray, plans: list[RowSampling]) -> list[int]:
    """Draw from each row's distribution after its cuts: one uniform number per row, found in
    the row's cumulative weights (by blocks of 512: a whole-row cumulative sum in float64 was
    most of the sampling time)."""
    weights = cut_weights(logits, plans)
    n_rows, n_vocab = weights.shape
    whole = n_vocab // _BLOCK * _BLOCK
    blocks = weights[:, :whole].reshape(n_rows, -1, _BLOCK).sum(axis=2, dtype=np.float64)
    if whole < n_vocab:
        tail = weights[:, whole:].sum(axis=1, dtype=np.float64)
        blocks = np.concatenate([blocks, tail[:, None]], axis=1)
    running = np.cumsum(blocks, axis=1)
    picks = []
    for i, plan in enumerate(plans):
        target = plan.rng.random() * running[i, -1]
        block = min(int(np.searchsorted(running[i], target, side="right")), blocks.shape[1] - 1)
        start = block * _BLOCK
        row = weights[i, start : start + _BLOCK]
        within = np.cumsum(row, dtype=np.float64)
        before = running[i, block - 1] if block else 0.0
        j = min(int(np.searchsorted(within, target - before, side="right")), len(row) - 1)
        if row[j] == 0.0:  # rounding at the very end of a block or row: the last kept token
            kept = np.flatnonzero(weights[i, : start + j + 1])
            j = int(kept[-1]) - start if len(kept) else int(np.argmax(weights[i])) - start
        picks.append(start + j)
    return picks


def cut_weights(logits: np.ndarray, plans: list[RowSampling]) -> np.ndarray:
    """Each row's unnormalized probabilities after temperature, top_k, top_p and min_p (zero
    for the tokens cut), in llama.cpp's order and arithmetic; ``logits`` (n x vocabulary, a
    copy) is overwritten."""
    n_vocab = logits.shape[1]
    x = logits
    x /= np.array([[p.temperature] for p in plans], dtype=np.float32)
    x -= x.max(axis=1, keepdims=True)  # the most likely token of each row is at 0
    floors = {}
    for i, plan in enumerate(plans):
        if 0 < plan.top_k < n_vocab:  # exactly k tokens stay
            x[i][np.argpartition(x[i], n_vocab - plan.top_k)[: n_vocab - plan.top_k]] = -np.inf
        if plan.min_p > 0.0:  # relative to the most likely token, in logits as llama.cpp does
            floors[i] = x[i] < np.log(np.float32(plan.min_p))
    weights: np.ndarray = np.exp(x, out=x)  # each row's maximum is 1
    for i, plan in enumerate(plans):
        if plan.top_p < 1.0:
            _nucleus(weights[i], plan.top_p)
        if i in floors:  # min_p comes after top_p; its cut does not depend on it
            weights[i][floors[i]] = 0.0
    return weights


def _nucleus(weights: np.ndarray, top_p: float) -> None:
    """Keep the most likely tokens whose mass first reaches ``top_p`` of the row's; zero the
    rest (in place)."""
    total = float(weights.sum(dtype=np.float64))
    need = top_p * total
    candidates = np.flatnonzero(weights >= _NUCLEUS_FLOOR)
    if float(weights[candidates].sum(dtype=np.float64)) < need:
        candidates = np.arange(weights.shape[0])
    order = candidates[np.argsort(-weights[candidates], kind="stable")]
    mass = np.cumsum(weights[order], dtype=np.float64)
    last = min(int(np.searchsorted(mass, need, side="left")), len(order) - 1)
    kept = order[: last + 1]
    values = weights[kept]
    weights[:] = 0.0
    weights[kept] = values
