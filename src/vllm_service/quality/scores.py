"""Reference-based text scores: BLEU and chrF exactly as sacrebleu computes them, ROUGE-L.

Corpus BLEU is sacrebleu's ``corpus_bleu`` (13a tokenizer, exponential smoothing), reported
with its signature so a number can be reproduced with the ``sacrebleu`` command line. A single
answer gets *sentence* BLEU with effective order (sacrebleu's own, labelled as such): plain
BLEU of one short sentence is zero whenever a 4-gram is missing. ROUGE-L is the LCS F-measure
over a Unicode-aware tokenization (words of any script; each CJK character a token): the
common ROUGE package keeps only ``[a-z0-9]`` and scores Greek, Cyrillic or Chinese as empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

INSTALL_HINT = "quality scores need the 'quality' extra: pip install 'vllm-service[quality]'"


@dataclass(frozen=True, slots=True)
class CorpusScore:
    """A corpus-level score with the signature that reproduces it."""

    name: str
    score: float
    signature: str
    detail: str


@cache
def _metrics() -> Any:
    try:
        from sacrebleu.metrics.bleu import BLEU
        from sacrebleu.metrics.chrf import CHRF
    except ImportError as exc:  # pragma: no cover - the extra is in every test install
        raise RuntimeError(INSTALL_HINT) from exc
    return BLEU, CHRF


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """sacrebleu's corpus BLEU with one reference stream (0-100)."""
    bleu_cls, _ = _metrics()
    metric = bleu_cls()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore("BLEU", result.score, str(metric.get_signature()), str(result))


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """sacrebleu's corpus chrF (character n-grams, beta 2; 0-100)."""
    _, chrf_cls = _metrics()
    metric = chrf_cls()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore("chrF", result.score, str(metric.get_signature()), str(result))


@cache
def _sentence_bleu() -> Any:
    bleu_cls, _ = _metrics()
    return bleu_cls(effective_order=True)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """Sentence BLEU with effective order (sacrebleu), 0-100: for one answer, not a corpus."""
    return float(_sentence_bleu().sentence_score(hypothesis, [reference]).score)


@cache
def _sentence_chrf() -> Any:
    _, chrf_cls = _metrics()
    return chrf_cls()


def sentence_chrf(hypothesis: str, reference: str) -> float:
    return float(_sentence_chrf().sentence_score(hypothesis, [reference]).score)


# A CJK ideograph, kana or hangul syllable is a token by itself; other tokens are runs of
# letters/digits of any script (\w is Unicode-aware for str patterns).
_TOKEN = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+",
)


def tokens(text: str) -> list[str]:
    """Lowercased word tokens of any script; CJK characters one by one."""
    return _TOKEN.findall(text.casefold())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


#: ROUGE-L looks at this many tokens of each text at most (the LCS is quadratic).
ROUGE_MAX_TOKENS = 1000


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (LCS-based, beta 1) in [0, 1]."""
    hyp = tokens(hypothesis)[:ROUGE_MAX_TOKENS]
    ref = tokens(reference)[:ROUGE_MAX_TOKENS]
    if not hyp or not ref:
        return 0.0
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
