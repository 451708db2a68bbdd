"""The array sampler against llama.cpp's own samplers, on logits made here (no model needed)."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np
import pytest

from vllm_service.engine.llamacpp.batch_sampling import RowSampling, cut_weights, sample_rows

VOCAB = 2000


def plan(
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    seed: int | None = 0,
    **penalties: float,
) -> RowSampling:
    return RowSampling(temperature, top_k, top_p, min_p, np.random.default_rng(seed), **penalties)


def logits_like_a_model(rng: np.random.Generator, spread: float) -> np.ndarray:
    """A few likely tokens over a long tail, as a language model's logits look."""
    row = rng.normal(0.0, 2.0, VOCAB).astype(np.float32)
    row[rng.choice(VOCAB, 5, replace=False)] += spread
    return row


def llama_cpp_kept(row: np.ndarray, samplers: list[Any]) -> dict[int, float]:
    """Token -> logit of what a llama.cpp chain of ``samplers`` leaves of ``row``."""
    params = llama_cpp.llama_sampler_chain_default_params()
    chain = llama_cpp.llama_sampler_chain_init(params)
    for sampler in samplers:
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    data = (llama_cpp.llama_token_data * VOCAB)()
    for token, logit in enumerate(row.tolist()):
        data[token] = llama_cpp.llama_token_data(token, logit, 0.0)
    array = llama_cpp.llama_token_data_array(data, VOCAB, -1, False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
    kept = {data[i].id: data[i].logit for i in range(array.size)}
    llama_cpp.llama_sampler_free(chain)
    return kept


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [
        (0.8, 0, 0.95, 0.0),
        (0.8, 40, 0.95, 0.0),
        (1.0, 0, 0.5, 0.0),
        (0.7, 0, 1.0, 0.05),
        (1.3, 100, 0.9, 0.02),
        (0.5, 7, 1.0, 0.0),
        (2.0, 0, 0.99, 0.0),  # a flat distribution: the nucleus is most of the vocabulary
    ],
)
@pytest.mark.parametrize("spread", [2.0, 8.0])
def test_cuts_keep_what_llama_cpp_keeps(
    temperature: float, top_k: int, top_p: float, min_p: float, spread: float
) -> None:
    rng = np.random.default_rng(7)
    rows = np.stack([logits_like_a_model(rng, spread) for _ in range(4)])
    samplers = [lambda: llama_cpp.llama_sampler_init_temp(temperature)]
    if top_k:
        samplers.append(lambda: llama_cpp.llama_sampler_init_top_k(top_k))
    if top_p < 1.0:
        samplers.append(lambda: llama_cpp.llama_sampler_init_top_p(top_p, 1))
    if min_p:
        samplers.append(lambda: llama_cpp.llama_sampler_init_min_p(min_p, 1))
    plans = [plan(temperature, top_k, top_p, min_p) for _ in rows]
    weights = cut_weights(rows.copy(), plans)
    for row, ours in zip(rows, weights, strict=True):
        theirs = llama_cpp_kept(row, [make() for make in samplers])
        kept = set(np.flatnonzero(ours).tolist())
        assert kept == set(theirs)
        # The same distribution over what is left.
        tokens = sorted(kept)
        expected = np.exp(np.array([theirs[t] for t in tokens], dtype=np.float64))
        expected /= expected.sum()
        np.testing.assert_allclose(ours[tokens] / ours[tokens].sum(), expected, rtol=1e-5)


def test_penalties_match_llama_cpp() -> None:
    rng = np.random.default_rng(3)
    row = logits_like_a_model(rng, 4.0)
    generated = [int(t) for t in rng.choice(50, 30)]
    repetition, frequency, presence = 1.3, 0.4, 0.7
    penalties = llama_cpp.llama_sampler_init_penalties(VOCAB, 64, repetition, frequency, presence)
    for token in generated:
        llama_cpp.llama_sampler_accept(penalties, token)
    theirs = llama_cpp_kept(row, [penalties])
    ours = plan(repetition=repetition, frequency=frequency, presence=presence)
    for token in generated:
        ours.generated(token)
    adjusted = row.copy()
    ours.adjust(adjusted)
    assert np.array_equal(adjusted, np.array([theirs[t] for t in range(VOCAB)], np.float32))


def test_a_row_draws_the_same_alone_and_in_any_batch() -> None:
    rng = np.random.default_rng(11)
    steps = [np.stack([logits_like_a_model(rng, 3.0) for _ in range(6)]) for _ in range(40)]

    def run(rows: list[int], plans: list[RowSampling]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in plans]
        for step in steps:
            for i, token in enumerate(sample_rows(step, rows, plans)):
                out[i].append(token)
        return out

    def mine() -> RowSampling:
        return plan(0.9, 0, 0.95, 0.0, seed=1234, repetition=1.1)

    alone = run([2], [mine()])[0]
    others = [plan(0.7, 40, 1.0, 0.0, seed=s) for s in range(4)] + [plan(0.0)]
    together = run([0, 1, 2, 3, 4, 5], [*others[:2], mine(), *others[2:]])
    assert together[2] == alone
    assert len(set(alone)) > 5  # it did sample, not always the same token
    assert run([2], [mine()])[0] == alone  # and a seed repeats


def test_draws_follow_the_distribution() -> None:
    row = np.log(np.array([[0.5, 0.25, 0.15, 0.06, 0.04]], dtype=np.float32))
    sampler = plan(1.0, top_p=0.85)  # the nucleus: the first three (0.9 >= 0.85)
    counts = np.zeros(5)
    for _ in range(20000):
        counts[sample_rows(row, [0], [sampler])[0]] += 1
    share = counts / counts.sum()
    np.testing.assert_allclose(share[:3], np.array([0.5, 0.25, 0.15]) / 0.9, atol=0.015)
    assert share[3:].sum() == 0


def test_greedy_takes_the_first_of_equal_maxima_and_counts_penalties() -> None:
    row = np.array([[0.0, 3.0, 1.0, 3.0]], dtype=np.float32)
    greedy = plan(0.0, repetition=2.0)
    assert sample_rows(row, [0], [greedy]) == [1]
    # Token 1 was generated: its logit halves, token 3 wins.
    assert sample_rows(row, [0], [greedy]) == [3]


def test_draws_find_tokens_in_every_block_of_a_long_row() -> None:
    row = np.full((1, VOCAB), -np.inf, dtype=np.float32)  # blocks of 512 and a shorter tail
    likely = {3: 0.5, 700: 0.3, 1999: 0.2}
    for token, p in likely.items():
        row[0, token] = np.log(p)
    sampler = plan(1.0)
    counts: dict[int, int] = {}
    for _ in range(20000):
        token = sample_rows(row, [0], [sampler])[0]
        counts[token] = counts.get(token, 0) + 1
    assert set(counts) == set(likely)
    for token, p in likely.items():
        assert abs(counts[token] / 20000 - p) < 0.015
