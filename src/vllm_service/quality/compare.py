"""A paired comparison of two endpoints on the same items: the weighted score's mean
difference with a paired bootstrap interval and a Wilcoxon signed-rank test, and BLEU's own
paired bootstrap resampling (sacrebleu's significance test)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vllm_service.quality.offline import EndpointReport, one_line
from vllm_service.quality.stats import Difference, paired

#: Bootstrap resamples (sacrebleu's default is 1000).
RESAMPLES = 1000


@dataclass(frozen=True, slots=True)
class Comparison:
    baseline: str
    candidate: str
    overall: Difference
    bleu_baseline: float
    bleu_candidate: float
    #: sacrebleu's paired bootstrap p-value for BLEU (candidate vs baseline), and its signature.
    bleu_p_value: float
    bleu_signature: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(a: EndpointReport, b: EndpointReport, references: list[str]) -> Comparison:
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.significance import PairedTest

    overall = paired(a.overall, b.overall, resamples=2 * RESAMPLES)
    hyps_a = [one_line(r.text) for r in a.replies]
    hyps_b = [one_line(r.text) for r in b.replies]
    test = PairedTest(
        [(a.endpoint.name, hyps_a), (b.endpoint.name, hyps_b)],
        {"BLEU": BLEU()},
        references=[[one_line(r) for r in references]],
        test_type="bs",
        n_samples=RESAMPLES,
    )
    signatures, results = test()
    base: Any
    cand: Any
    base, cand = results["BLEU"]
    p_value = float(cand.p_value)
    if hyps_a == hyps_b:
        # sacrebleu counts resamples strictly above the observed difference, so two identical
        # systems would get p = 1/(n+1), a "significant" difference of nothing.
        p_value = 1.0
    return Comparison(
        baseline=a.endpoint.name,
        candidate=b.endpoint.name,
        overall=overall,
        bleu_baseline=float(base.score),
        bleu_candidate=float(cand.score),
        bleu_p_value=p_value,
        bleu_signature=str(signatures["BLEU"]),
    )
