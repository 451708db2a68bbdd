"""A/B tests: one public model name split between two models by weight, sticky per caller.

A caller (its API key, else the request's ``user``, else its address) is hashed with the test's
name into [0, 1) and lands in the arm whose share of the weights covers that point, the same
arm on every request and every replica. Each arm records its requests' latency and cost and,
for the requests the shadow scores, their quality. The report compares the arms on the test's
metric with Welch's t-test and a confidence interval, and names a winner only once both arms
have the planned number of samples and the difference is significant: no peeking, so the
false-winner rate stays at the planned alpha.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_service.config.quality import AbTestConfig
from vllm_service.quality.stats import unpaired

#: Samples kept per arm and metric (a test is decided long before).
MAX_SAMPLES = 100_000
#: The direction in which each metric is better.
HIGHER_IS_BETTER = {"quality": True, "latency": False, "cost": False}


@dataclass
class Arm:
    model: str
    weight: float
    requests: int = 0
    samples: dict[str, list[float]] = field(
        default_factory=lambda: {"quality": [], "latency": [], "cost": []}
    )

    def record(self, metric: str, value: float) -> None:
        values = self.samples[metric]
        if len(values) < MAX_SAMPLES:
            values.append(value)


@dataclass(frozen=True, slots=True)
class Assignment:
    test: AbTest
    arm: Arm


class AbTest:
    def __init__(self, config: AbTestConfig) -> None:
        self.config = config
        self.arms = [Arm(a.model, a.weight) for a in config.arms]

    def assign(self, identity: str) -> Arm:
        digest = hashlib.sha256(f"{self.config.name}\0{identity}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        total = sum(a.weight for a in self.arms)
        edge = 0.0
        for arm in self.arms:
            edge += arm.weight / total
            if point < edge:
                return arm
        return self.arms[-1]

    def decide(self) -> dict[str, Any]:
        """The comparison on the test's metric: B minus A, and a winner when it is time."""
        metric = self.config.metric
        a, b = (arm.samples[metric] for arm in self.arms)
        planned = self.config.planned_samples
        report: dict[str, Any] = {"metric": metric, "planned_samples": planned}
        if len(a) < 2 or len(b) < 2:
            return {**report, "status": "collecting", "difference": None, "winner": None}
        diff = unpaired(a, b, confidence=1 - self.config.alpha)
        ready = len(a) >= planned and len(b) >= planned
        winner = None
        if ready and diff.p_value < self.config.alpha:
            b_better = (diff.difference > 0) == HIGHER_IS_BETTER[metric]
            winner = self.arms[1 if b_better else 0].model
        status = ("significant" if winner else "no_difference") if ready else "collecting"
        return {
            **report,
            "status": status,
            "difference": {
                "b_minus_a": diff.difference,
                "ci_low": diff.low,
                "ci_high": diff.high,
                "confidence": 1 - self.config.alpha,
                "p_value": diff.p_value,
                "test": diff.test,
            },
            "winner": winner,
        }

    def report(self) -> dict[str, Any]:
        arms = []
        for label, arm in zip("ab", self.arms, strict=True):
            means = {
                metric: (sum(values) / len(values) if values else None)
                for metric, values in arm.samples.items()
            }
            counts = {metric: len(values) for metric, values in arm.samples.items()}
            arms.append(
                {"arm": label, "model": arm.model, "weight": arm.weight,
                 "requests": arm.requests, "means": means, "samples": counts}
            )  # fmt: skip
        return {"name": self.config.name, "arms": arms, **self.decide()}


class AbTests:
    def __init__(self, configs: list[AbTestConfig]) -> None:
        self.tests = {c.name: AbTest(c) for c in configs}

    def route(self, name: str, identity: str) -> Assignment | None:
        """The arm a caller of public model ``name`` is served by; None when no test."""
        test = self.tests.get(name)
        if test is None:
            return None
        arm = test.assign(identity)
        arm.requests += 1
        return Assignment(test, arm)


class AbCollector(Collector):
    """Each arm's requests and running means, read at scrape time."""

    def __init__(self, tests: AbTests | None) -> None:
        self.tests = tests

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "vllm_ab_requests", "Requests routed to each A/B arm.", labels=["test", "arm", "model"]
        )
        means = GaugeMetricFamily(
            "vllm_ab_arm_mean",
            "An A/B arm's mean quality (shadow-scored answers), latency (s) or cost ($).",
            labels=["test", "arm", "model", "metric"],
        )
        samples = GaugeMetricFamily(
            "vllm_ab_arm_samples",
            "Samples behind each mean.",
            labels=["test", "arm", "model", "metric"],
        )
        for name, test in (self.tests.tests if self.tests else {}).items():
            for label, arm in zip("ab", test.arms, strict=True):
                requests.add_metric([name, label, arm.model], arm.requests)
                for metric, values in arm.samples.items():
                    samples.add_metric([name, label, arm.model, metric], len(values))
                    if values:
                        means.add_metric(
                            [name, label, arm.model, metric], sum(values) / len(values)
                        )
        yield requests
        yield means
        yield samples
