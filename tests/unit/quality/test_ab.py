"""A/B tests: sticky weighted assignment, and a winner only when there is one, at the planned
sample size."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from vllm_service.config.quality import AbTestConfig
from vllm_service.quality.ab import AbTest, AbTests
from vllm_service.quality.stats import paired, unpaired

REPETITIONS = 1000
ALPHA = 0.05


def config(**fields: object) -> AbTestConfig:
    return AbTestConfig.model_validate(
        {"name": "assistant", "arms": [{"model": "a"}, {"model": "b"}], **fields}
    )


def filled(seed: int, shift: float, planned: int = 200, n: int = 200) -> AbTest:
    rng = np.random.default_rng(seed)
    test = AbTest(config(planned_samples=planned, alpha=ALPHA))
    for arm, mean in zip(test.arms, (0.80, 0.80 + shift), strict=True):
        for value in np.clip(rng.normal(mean, 0.1, n), 0, 1):
            arm.record("quality", float(value))
    return test


def test_assignment_is_sticky_and_follows_the_weights() -> None:
    tests = AbTests([config(arms=[{"model": "a", "weight": 3.0}, {"model": "b", "weight": 1.0}])])
    first = {f"key-{i}": tests.route("assistant", f"key-{i}") for i in range(4000)}
    again = {k: tests.route("assistant", k) for k in first}
    assert all(first[k].arm is again[k].arm for k in first)  # type: ignore[union-attr]
    shares = Counter(a.arm.model for a in first.values() if a is not None)
    assert abs(shares["a"] / 4000 - 0.75) < 0.03
    assert tests.route("another-model", "key-1") is None


def test_a_known_difference_declares_the_right_winner() -> None:
    wins = Counter(filled(seed, shift=0.05).decide()["winner"] for seed in range(200))
    assert wins["b"] >= 190
    assert wins["a"] == 0
    # Lower is better for latency: arm b slower loses.
    test = AbTest(config(metric="latency", planned_samples=50))
    rng = np.random.default_rng(1)
    for arm, mean in zip(test.arms, (0.5, 0.7), strict=True):
        for v in rng.normal(mean, 0.05, 50):
            arm.record("latency", float(v))
    assert test.decide()["winner"] == "a"


def test_no_difference_declares_no_winner_at_the_planned_rate() -> None:
    none = sum(filled(seed, shift=0.0).decide()["winner"] is None for seed in range(REPETITIONS))
    share = none / REPETITIONS
    # The false-winner rate is alpha by design; allow three binomial standard errors.
    assert share >= 1 - ALPHA - 3 * math.sqrt(ALPHA * (1 - ALPHA) / REPETITIONS)


def test_no_winner_before_the_planned_sample_size() -> None:
    early = filled(seed=3, shift=0.2, planned=200, n=50).decide()
    assert early["status"] == "collecting"
    assert early["winner"] is None
    assert early["difference"]["p_value"] < 1e-6  # significant, but not yet time to say
    done = filled(seed=3, shift=0.2).decide()
    assert done["status"] == "significant"
    assert done["winner"] == "b"


def test_report_shape() -> None:
    report = filled(seed=5, shift=0.0).report()
    assert [a["model"] for a in report["arms"]] == ["a", "b"]
    assert report["arms"][0]["samples"]["quality"] == 200
    assert report["difference"]["ci_low"] < report["difference"]["b_minus_a"]
    assert AbTest(config()).report()["status"] == "collecting"


def test_paired_statistics() -> None:
    a = [0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.65, 0.75]
    same = paired(a, a)
    assert same.difference == 0
    assert same.p_value == 1.0
    better = paired(a, [x + 0.1 for x in a])
    assert better.difference > 0
    assert better.low > 0
    assert better.p_value < 0.05
    flat = unpaired([1.0, 1.0], [1.0, 1.0])
    assert flat.p_value == 1.0
