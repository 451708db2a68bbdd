"""The weighted score: self-comparison is 1, degraded answers fall clearly below, weights and
targets come from the configuration; the scorers agree with the hand labels."""

from __future__ import annotations

import dataclasses

import pytest

from vllm_service.config.quality import (
    DIMENSIONS,
    DimensionConfig,
    DimensionsConfig,
    QualityConfig,
)
from vllm_service.manager.semantic import WordLlamaEmbedder
from vllm_service.quality.agreement import (
    agreement,
    case_of,
    classifier_accuracy,
    labelled_items,
)
from vllm_service.quality.dimensions import Case
from vllm_service.quality.evaluator import Evaluator


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(QualityConfig(), WordLlamaEmbedder().embed)


def test_every_labelled_reference_compared_with_itself_scores_1(evaluator: Evaluator) -> None:
    for item in labelled_items():
        case = Case(item["prompt"], item["reference"], reference=item["reference"])
        assert evaluator.score(case).overall == pytest.approx(1.0), item["id"]


def test_garbage_scores_far_below_the_gate(evaluator: Evaluator) -> None:
    for item in labelled_items():
        case = Case(item["prompt"], "lorem ipsum " * 30, reference=item["reference"])
        assert evaluator.score(case).overall < 0.5, item["id"]


def test_the_class_picks_the_weights(evaluator: Evaluator) -> None:
    case = Case("Write a viral tweet about tea", "Tea is a drink.", reference="Tea? 🍵 Try it!")
    as_hook = evaluator.score(case)
    as_code = evaluator.score(dataclasses.replace(case, content_class="code"))
    assert as_hook.content_class == "viral_hook"
    assert as_hook.overall != as_code.overall


def test_weights_and_targets_are_configurable() -> None:
    only_coherence = {d: DimensionConfig(weight=0.0, target=0.5) for d in DIMENSIONS}
    only_coherence["coherence_score"] = DimensionConfig(weight=1.0, target=0.5)
    config = QualityConfig(dimensions=DimensionsConfig(**only_coherence), class_weights={})
    score = Evaluator(config, None).score(Case("q", "fine words here today", reference="x y"))
    assert score.overall == 1.0
    assert "semantic_similarity" not in score.dimensions  # no embedder: not scored


def test_partial_dimension_config_keeps_the_other_defaults() -> None:
    config = QualityConfig.model_validate(
        {"dimensions": {"completeness": {"weight": 0.5, "target": 0.5}}}
    )
    assert config.dimensions.semantic_similarity.weight == 0.20
    assert config.dimensions.completeness.target == 0.5


def test_each_scorer_agrees_with_the_hand_labels(evaluator: Evaluator) -> None:
    items = labelled_items()
    assert len(items) >= 40
    assert {item["class"] for item in items} == {"viral_hook", "technical", "code", "creative"}
    results = {a.dimension: a for a in agreement(evaluator, items)}
    assert set(results) == set(DIMENSIONS)
    for result in results.values():
        # Chance is 0.5 for both; every scorer must clearly beat it.
        assert result.balanced_accuracy >= 0.75, result
        assert result.auc >= 0.8, result
    assert classifier_accuracy(evaluator, items) >= 0.8


def test_an_answer_and_its_sentence_scores(evaluator: Evaluator) -> None:
    item = labelled_items()[0]
    score = evaluator.score(case_of(item))
    assert score.sentence_bleu is not None
    assert 0 < score.sentence_bleu < 100
    assert score.rouge_l is not None
    assert 0 < score.rouge_l < 1
    assert score.seconds > 0


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        # Inputs that made a naive regex backtrack for minutes, a megabyte each.
        ("write " * 200_000, "show " * 200_000),
        ("List the items\n" + "\n" * 1_000_000, "**" + " " * 1_000_000),
        ("Write code", "```python\n" + "def f(:\n" * 100_000),
        ("Explain", "\ud800 lone surrogate \udfff " * 10_000),
    ],
)
def test_hostile_texts_are_scored_within_bounds(
    evaluator: Evaluator, prompt: str, answer: str
) -> None:
    score = evaluator.score(Case(prompt, answer, reference=answer[:5000]))
    assert 0.0 <= score.overall <= 1.0
    assert all(0.0 <= v <= 1.0 for v in score.dimensions.values())
