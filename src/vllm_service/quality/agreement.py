"""How well the heuristic scorers and the classifier agree with hand labels.

The labelled set (quality/data/labelled.jsonl) holds answers across the four content classes,
each judged good or poor per dimension by reading it. A scorer agrees with a label when its
attainment (quality/evaluator.py) is at least ``GOOD_AT`` for a good answer and below it for a
poor one; balanced accuracy (the mean of the two recalls) is 0.5 by chance whatever the mix,
and AUC (the chance that a good answer outscores a poor one) needs no threshold at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vllm_service.config.quality import DIMENSIONS, Dimension
from vllm_service.quality.dimensions import Case
from vllm_service.quality.evaluator import Evaluator

#: Attainment at or above which a scorer calls an answer good on a dimension.
GOOD_AT = 0.85


@dataclass(frozen=True, slots=True)
class Agreement:
    dimension: Dimension
    good: int
    poor: int
    balanced_accuracy: float
    auc: float


def labelled_items(path: Path | None = None) -> list[dict[str, Any]]:
    if path is None:
        text = resources.files("vllm_service.quality").joinpath("data/labelled.jsonl").read_text()
    else:
        text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def case_of(item: dict[str, Any], *, with_class: bool = True) -> Case:
    return Case(
        prompt=item["prompt"],
        answer=item["answer"],
        reference=item.get("reference"),
        finish_reason=item.get("finish_reason", "stop"),
        content_class=item["class"] if with_class else None,
        json_requested=bool(item.get("json_requested")),
        json_schema=item.get("json_schema"),
    )


def _auc(good: list[float], poor: list[float]) -> float:
    pairs = [(g > p) + 0.5 * (g == p) for g in good for p in poor]
    return sum(pairs) / len(pairs) if pairs else 0.5


def agreement(evaluator: Evaluator, items: list[dict[str, Any]]) -> list[Agreement]:
    """Each dimension's agreement with the labels of ``items``."""
    scored = [(item["labels"], evaluator.score(case_of(item)).attainment) for item in items]
    out = []
    for dim in DIMENSIONS:
        good = [att[dim] for labels, att in scored if labels.get(dim) == "good" and dim in att]
        poor = [att[dim] for labels, att in scored if labels.get(dim) == "poor" and dim in att]
        if not good or not poor:
            continue
        recall_good = sum(v >= GOOD_AT for v in good) / len(good)
        recall_poor = sum(v < GOOD_AT for v in poor) / len(poor)
        out.append(
            Agreement(dim, len(good), len(poor), (recall_good + recall_poor) / 2, _auc(good, poor))
        )
    return out


def classifier_accuracy(evaluator: Evaluator, items: list[dict[str, Any]]) -> float:
    prompts = {item["prompt"]: item["class"] for item in items}
    right = sum(1 for prompt, cls in prompts.items() if evaluator.classify(prompt) == cls)
    return right / len(prompts)
