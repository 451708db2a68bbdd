"""One answer's quality: the six dimensions, reference-based text scores, and the weighted
overall score on the gate's scale.

The overall score is target attainment: each dimension's score divided by what is expected of
it, capped at 1, averaged with the content class's weights. What is expected is the dimension's
target, or what the reference itself reaches on it when that is lower (a reference explanation
has no hook to match; a post's reference rarely reaches every engagement feature). So an answer
that matches its reference scores 1, and the gate's 0.85 means "15% short of the reference or
of the targets, whichever asks less".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from vllm_service.config.quality import DIMENSIONS, ContentClass, Dimension, QualityConfig
from vllm_service.quality import dimensions as dims
from vllm_service.quality.classify import Classifier
from vllm_service.quality.dimensions import Case, Embed
from vllm_service.quality.scores import rouge_l, sentence_bleu, sentence_chrf


@dataclass(frozen=True, slots=True)
class QualityScore:
    content_class: ContentClass
    #: Each applicable dimension's score in [0, 1].
    dimensions: dict[Dimension, float]
    #: Each dimension's score over what is expected of it, capped at 1.
    attainment: dict[Dimension, float]
    #: The weighted attainment: the gate's score (1 = the reference's or the targets' level).
    overall: float
    #: The weighted mean of the raw dimension scores.
    weighted: float
    #: Sentence BLEU (effective order) and chrF, 0-100; ROUGE-L F1 in [0, 1]. None without a
    #: reference.
    sentence_bleu: float | None
    sentence_chrf: float | None
    rouge_l: float | None
    seconds: float


#: What is scored of a text, at most (characters): every scorer is linear in it but ROUGE-L,
#: and a hostile request must not make scoring cost more than serving it did.
MAX_PROMPT_CHARS = 8_000
MAX_TEXT_CHARS = 16_000


def _clean(text: str, limit: int) -> str:
    # A lone surrogate (an upstream can send one, escaped in JSON) is not text a tokenizer
    # takes: it becomes "?".
    return text[:limit].encode("utf-8", "replace").decode("utf-8", "replace")


def bounded(case: Case) -> Case:
    """The case with its prompt, answer and reference cut to what is scored, and valid
    Unicode."""
    return dataclasses.replace(
        case,
        prompt=_clean(case.prompt, MAX_PROMPT_CHARS),
        answer=_clean(case.answer, MAX_TEXT_CHARS),
        reference=None if case.reference is None else _clean(case.reference, MAX_TEXT_CHARS),
    )


class Evaluator:
    """Scores answers with the configured weights, targets and content classes."""

    def __init__(self, config: QualityConfig, embed: Embed | None) -> None:
        self.config = config
        self.classifier = Classifier(config.class_keywords)
        self._embed = embed
        self._targets = config.targets()

    def classify(self, prompt: str) -> ContentClass:
        return self.classifier.classify(prompt)

    def dimension_scores(self, case: Case) -> dict[Dimension, float]:
        scorers: dict[Dimension, Callable[[Case], float | None]] = {
            "structure_quality": dims.structure_quality,
            "engagement_score": dims.engagement_score,
            "technical_accuracy": dims.technical_accuracy,
            "coherence_score": dims.coherence_score,
            "completeness": dims.completeness,
        }
        if self._embed is not None:
            embed = self._embed
            scorers["semantic_similarity"] = lambda c: dims.semantic_similarity(c, embed)
        out: dict[Dimension, float] = {}
        for name in DIMENSIONS:
            scorer = scorers.get(name)
            value = scorer(case) if scorer is not None else None
            if value is not None:
                out[name] = value
        return out

    def score(self, case: Case) -> QualityScore:
        started = time.perf_counter()
        case = bounded(case)
        if case.content_class is None:
            case = dataclasses.replace(case, content_class=self.classify(case.prompt))
        cls: ContentClass = case.content_class  # type: ignore[assignment]
        got = self.dimension_scores(case)
        expected = dict(self._targets)
        if case.reference is not None:
            own = self.dimension_scores(
                dataclasses.replace(
                    case, answer=case.reference, finish_reason=case.reference_finish_reason
                )
            )
            for name, level in own.items():
                expected[name] = min(expected[name], level)
        attainment = {
            name: 1.0 if expected[name] <= 0 else min(1.0, value / expected[name])
            for name, value in got.items()
        }
        weights = self.config.weights_for(cls)
        total = sum(weights[d] for d in got)
        overall = sum(weights[d] * attainment[d] for d in got) / total if total else 0.0
        weighted = sum(weights[d] * got[d] for d in got) / total if total else 0.0
        bleu = chrf = rl = None
        if case.reference is not None:
            bleu = sentence_bleu(case.answer, case.reference)
            chrf = sentence_chrf(case.answer, case.reference)
            rl = rouge_l(case.answer, case.reference)
        return QualityScore(
            content_class=cls,
            dimensions=got,
            attainment=attainment,
            overall=overall,
            weighted=weighted,
            sentence_bleu=bleu,
            sentence_chrf=chrf,
            rouge_l=rl,
            seconds=time.perf_counter() - started,
        )
