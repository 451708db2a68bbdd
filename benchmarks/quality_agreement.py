"""How the quality scorers agree with the hand-labelled set, the classifier's accuracy, and
what scoring one answer costs. Prints numbers; asserts nothing (the test suite holds the
scorers above chance).

    python benchmarks/quality_agreement.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

from vllm_service.config.quality import QualityConfig
from vllm_service.quality.agreement import (
    GOOD_AT,
    agreement,
    case_of,
    classifier_accuracy,
    labelled_items,
)
from vllm_service.quality.embeddings import build_embed
from vllm_service.quality.evaluator import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="Scoring passes to time.")
    args = parser.parse_args()
    config = QualityConfig()
    evaluator = Evaluator(config, build_embed(config))
    items = labelled_items()
    classes = sorted({i["class"] for i in items})
    print(f"labelled set: {len(items)} items, classes {classes}; good = attainment >= {GOOD_AT}")
    print(f"{'dimension':<22}{'good':>6}{'poor':>6}{'balanced acc.':>15}{'AUC':>8}")
    for a in agreement(evaluator, items):
        print(f"{a.dimension:<22}{a.good:>6}{a.poor:>6}{a.balanced_accuracy:>15.3f}{a.auc:>8.3f}")
    prompts = len({i["prompt"] for i in items})
    accuracy = classifier_accuracy(evaluator, items)
    print(f"classifier accuracy: {accuracy:.3f} on {prompts} distinct prompts (chance 0.25)")
    cases = [case_of(i, with_class=False) for i in items]
    wall, cpu = [], []
    for _ in range(args.repeat):
        w, c = time.perf_counter(), time.process_time()
        for case in cases:
            evaluator.score(case)
        wall.append((time.perf_counter() - w) / len(cases) * 1e3)
        cpu.append((time.process_time() - c) / len(cases) * 1e3)
    print(
        f"scoring one answer (with its reference, classified): median {statistics.median(wall):.2f}"
        f" ms wall, {statistics.median(cpu):.2f} ms CPU ({args.repeat} passes of {len(cases)})"
    )


if __name__ == "__main__":
    main()
