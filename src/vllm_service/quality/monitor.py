"""Live quality: rolling windows of scored answers per model and content class, the quality
gate, and their Prometheus series.

A model's gate opens (degraded) when the mean overall score of its last ``gate.window`` scored
answers falls below ``gate.threshold`` with at least ``gate.min_samples`` of them, and closes
again once the mean is back above ``gate.recover_threshold`` (hysteresis: a score hovering at
the threshold does not flap). With ``gate.route_to_fallback``, an open gate holds the model:
the manager sends its traffic to its fallbacks, while shadow probes keep scoring the model
itself so that the gate can see it recover.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_service.config.quality import DIMENSIONS, GateConfig
from vllm_service.quality.evaluator import QualityScore

ALL = "all"
#: The "dimension" label of the overall (weighted) score.
OVERALL = "overall"


@dataclass(frozen=True, slots=True)
class Rolling:
    """A window's mean with its 95% confidence interval (normal approximation)."""

    n: int
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Rolling:
        n = len(values)
        mean = statistics.fmean(values)
        half = 1.96 * statistics.stdev(values) / math.sqrt(n) if n > 1 else math.inf
        return cls(n, mean, max(0.0, mean - half), min(1.0, mean + half))


@dataclass
class _Window:
    size: int
    scores: deque[QualityScore] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = deque(maxlen=self.size)

    def rolling(self, value: Callable[[QualityScore], float | None]) -> Rolling | None:
        values = [v for s in self.scores if (v := value(s)) is not None]
        return Rolling.of(values) if values else None


@dataclass
class GateState:
    open: bool = False
    opened_total: int = 0


class QualityMonitor:
    """Scores per model and class, the gate of each model, and what the shadow did."""

    def __init__(self, gate: GateConfig, hold: Callable[[str, bool], None] | None = None) -> None:
        self.gate = gate
        self._hold = hold
        self._windows: dict[tuple[str, str], _Window] = {}
        self.gates: dict[str, GateState] = {}
        #: Shadow outcomes per (model, outcome): scored, reference_failed, dropped, ...
        self.outcomes: dict[tuple[str, str], int] = {}
        #: Tokens the shadow spent per (model, kind): reference and probe calls.
        self.tokens: dict[tuple[str, str], int] = {}

    def count(self, model: str, outcome: str) -> None:
        self.outcomes[(model, outcome)] = self.outcomes.get((model, outcome), 0) + 1

    def spend(self, model: str, kind: str, prompt: int, completion: int) -> None:
        """Tokens a shadow call of ``kind`` (reference, probe) used for ``model``."""
        for part, n in (("prompt", prompt), ("completion", completion)):
            key = (model, f"{kind}_{part}")
            self.tokens[key] = self.tokens.get(key, 0) + n

    def add(self, model: str, score: QualityScore) -> None:
        for cls in (ALL, score.content_class):
            window = self._windows.get((model, cls))
            if window is None:
                window = self._windows[(model, cls)] = _Window(self.gate.window)
            window.scores.append(score)
        self._decide(model)

    def overall(self, model: str, cls: str = ALL) -> Rolling | None:
        window = self._windows.get((model, cls))
        return None if window is None else window.rolling(lambda s: s.overall)

    def _decide(self, model: str) -> None:
        state = self.gates.setdefault(model, GateState())
        now = self.overall(model)
        if now is None or now.n < self.gate.min_samples:
            return
        if not state.open and now.mean < self.gate.threshold:
            state.open = True
            state.opened_total += 1
        elif state.open and now.mean >= self.gate.recover_threshold:
            state.open = False
        else:
            return
        if self.gate.route_to_fallback and self._hold is not None:
            self._hold(model, state.open)

    def is_open(self, model: str) -> bool:
        state = self.gates.get(model)
        return state is not None and state.open

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per model: the gate and, per class, the overall and dimension rolling means."""
        out: dict[str, dict[str, object]] = {}
        for (model, cls), window in sorted(self._windows.items()):
            entry = out.setdefault(model, {"gate": self._gate_view(model), "classes": {}})
            row: dict[str, object] = {}
            overall = window.rolling(lambda s: s.overall)
            row[OVERALL] = overall
            for dim in DIMENSIONS:
                row[dim] = window.rolling(lambda s, d=dim: s.dimensions.get(d))  # type: ignore[misc]
            classes = entry["classes"]
            assert isinstance(classes, dict)
            classes[cls] = row
        return out

    def _gate_view(self, model: str) -> dict[str, object]:
        state = self.gates.get(model, GateState())
        overall = self.overall(model)
        n = overall.n if overall else 0
        decided = n >= self.gate.min_samples
        return {
            "state": ("degraded" if state.open else "ok") if decided else "collecting",
            "open": state.open,
            "samples": n,
            "min_samples": self.gate.min_samples,
            "threshold": self.gate.threshold,
            "recover_threshold": self.gate.recover_threshold,
            "routing_to_fallback": state.open and self.gate.route_to_fallback,
            "opened_total": state.opened_total,
        }


class QualityCollector(Collector):
    """The monitor's series, read at scrape time."""

    def __init__(self, monitor: QualityMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        score = GaugeMetricFamily(
            "vllm_quality_score",
            "Rolling mean quality score of shadow-scored answers (dimension=overall: the "
            "weighted score the gate uses).",
            labels=["model", "dimension", "class"],
        )
        samples = GaugeMetricFamily(
            "vllm_quality_window_samples",
            "Scored answers in the rolling window.",
            labels=["model", "class"],
        )
        for model, entry in m.snapshot().items():
            classes = entry["classes"]
            assert isinstance(classes, dict)
            for cls, row in classes.items():
                for dim, rolling in row.items():
                    if isinstance(rolling, Rolling):
                        score.add_metric([model, dim, cls], rolling.mean)
                        if dim == OVERALL:
                            samples.add_metric([model, cls], rolling.n)
        yield score
        yield samples
        yield from self._gate_series()
        shadow = CounterMetricFamily(
            "vllm_quality_shadow",
            "Shadow jobs by outcome (scored, sampled_out, rate_limited, dropped, "
            "reference_failed, probe_failed, skipped).",
            labels=["model", "outcome"],
        )
        for (model, outcome), n in sorted(m.outcomes.items()):
            shadow.add_metric([model, outcome], n)
        yield shadow
        tokens = CounterMetricFamily(
            "vllm_quality_shadow_tokens",
            "Tokens spent by shadow calls (never billed as traffic): reference or probe, "
            "prompt or completion.",
            labels=["model", "kind"],
        )
        for (model, kind), n in sorted(m.tokens.items()):
            tokens.add_metric([model, kind], n)
        yield tokens

    def _gate_series(self) -> Iterator[Metric]:
        m = self.monitor
        gate = m.gate
        opened = GaugeMetricFamily(
            "vllm_quality_gate_open", "1 while the model's quality gate is open.", labels=["model"]
        )
        threshold = GaugeMetricFamily(
            "vllm_quality_gate_threshold", "The gate's threshold.", labels=["model"]
        )
        minimum = GaugeMetricFamily(
            "vllm_quality_gate_min_samples", "Samples before the gate decides.", labels=["model"]
        )
        for model, state in sorted(m.gates.items()):
            opened.add_metric([model], 1.0 if state.open else 0.0)
            threshold.add_metric([model], gate.threshold)
            minimum.add_metric([model], gate.min_samples)
        yield opened
        yield threshold
        yield minimum
