"""The quality gate: opens under the threshold after the minimum sample, closes only above
the recovery threshold, and holds the model when routing is on."""

from __future__ import annotations

from vllm_service.config.quality import GateConfig
from vllm_service.quality.evaluator import QualityScore
from vllm_service.quality.monitor import QualityCollector, QualityMonitor


def score(overall: float, cls: str = "technical") -> QualityScore:
    return QualityScore(
        content_class=cls,  # type: ignore[arg-type]
        dimensions={"coherence_score": overall},
        attainment={"coherence_score": overall},
        overall=overall,
        weighted=overall,
        sentence_bleu=None,
        sentence_chrf=None,
        rouge_l=None,
        seconds=0.001,
    )


def test_the_gate_waits_for_the_minimum_sample_then_opens_and_recovers_with_hysteresis() -> None:
    calls: list[tuple[str, bool]] = []
    gate = GateConfig(threshold=0.85, recover_threshold=0.9, min_samples=3, window=4,
                      route_to_fallback=True)  # fmt: skip
    monitor = QualityMonitor(gate, lambda m, held: calls.append((m, held)))
    for _ in range(2):
        monitor.add("m", score(0.2))
    assert not monitor.is_open("m")  # two samples: not enough to decide
    monitor.add("m", score(0.2))
    assert monitor.is_open("m")
    assert calls == [("m", True)]
    for _ in range(3):
        monitor.add("m", score(1.0))  # window: 0.2, 1, 1, 1 -> 0.8: still open
    assert monitor.is_open("m")
    monitor.add("m", score(0.88))  # 1, 1, 1, 0.88 -> 0.97: closes
    assert not monitor.is_open("m")
    assert calls == [("m", True), ("m", False)]
    assert monitor.gates["m"].opened_total == 1


def test_between_the_thresholds_the_gate_keeps_its_state() -> None:
    monitor = QualityMonitor(GateConfig(min_samples=2, window=2))
    monitor.add("m", score(0.87))
    monitor.add("m", score(0.87))
    assert not monitor.is_open("m")  # 0.87 >= 0.85: never opened


def test_without_routing_the_model_is_not_held() -> None:
    calls: list[tuple[str, bool]] = []
    monitor = QualityMonitor(GateConfig(min_samples=1, window=2), lambda m, h: calls.append((m, h)))
    monitor.add("m", score(0.1))
    assert monitor.is_open("m")
    assert calls == []


def test_snapshot_and_series_per_model_and_class() -> None:
    monitor = QualityMonitor(GateConfig(min_samples=2, window=10))
    monitor.add("m", score(0.5, "code"))
    monitor.add("m", score(0.7, "technical"))
    monitor.count("m", "scored")
    monitor.spend("m", "reference", 10, 20)
    snap = monitor.snapshot()["m"]
    classes = snap["classes"]
    assert isinstance(classes, dict)
    assert classes["all"]["overall"].n == 2
    assert abs(classes["all"]["overall"].mean - 0.6) < 1e-9
    assert classes["code"]["overall"].n == 1
    series = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in QualityCollector(monitor).collect()
        for s in f.samples
    }
    key = ("vllm_quality_score", (("class", "all"), ("dimension", "overall"), ("model", "m")))
    assert abs(series[key] - 0.6) < 1e-9
    assert series[("vllm_quality_gate_open", (("model", "m"),))] == 1.0
    assert series[("vllm_quality_shadow_total", (("model", "m"), ("outcome", "scored")))] == 1
    tokens = (
        "vllm_quality_shadow_tokens_total",
        (("kind", "reference_completion"), ("model", "m")),
    )
    assert series[tokens] == 20
