"""BLEU and chrF are sacrebleu's; ROUGE-L reads every script."""

from __future__ import annotations

import pytest
from sacrebleu.metrics import BLEU

from vllm_service.quality.scores import (
    corpus_bleu,
    corpus_chrf,
    rouge_l,
    sentence_bleu,
    tokens,
)

HYP = ["the cat sat on the mat", "a quick brown fox jumps"]
REF = ["the cat is on the mat", "the quick brown fox jumps over the dog"]


def test_corpus_bleu_is_sacrebleus_with_its_signature() -> None:
    score = corpus_bleu(HYP, REF)
    assert score.score == pytest.approx(BLEU().corpus_score(HYP, [REF]).score)
    assert score.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert 0 < score.score < 100


def test_identical_corpus_scores_100_and_disjoint_scores_0() -> None:
    assert corpus_bleu(REF, REF).score == pytest.approx(100.0)
    assert corpus_chrf(REF, REF).score == pytest.approx(100.0)
    assert corpus_bleu(["zzz qqq"], ["the cat"]).score == 0.0


def test_sentence_bleu_uses_effective_order() -> None:
    # Two words share no 3-gram or 4-gram: plain BLEU is 0, effective order is not.
    assert BLEU().corpus_score(["hello world"], [["hello world again"]]).score == 0.0
    assert sentence_bleu("hello world", "hello world again") > 0


def test_rouge_l_on_non_latin_text_is_not_zero() -> None:
    assert rouge_l("Кошка сидит на ковре", "Кошка сидела на ковре") == pytest.approx(0.75)
    assert rouge_l("猫坐在垫子上", "猫在垫子上") > 0.8
    assert rouge_l("η γάτα κάθεται", "η γάτα κοιμάται") > 0


def test_rouge_l_is_the_lcs_f_measure() -> None:
    # LCS of (a b c d) and (a c d e) is a c d: P = R = 3/4.
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("", "a b") == 0.0
    assert rouge_l("x y", "a b") == 0.0


def test_tokens_split_cjk_per_character_and_keep_other_scripts_whole() -> None:
    words = ["hello", "мир", "日", "本", "語", "test", "case"]
    assert tokens("Hello, Мир! 日本語 test_case") == words
