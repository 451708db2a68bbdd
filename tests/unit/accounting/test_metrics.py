"""The savings metrics: the hosted price of what was answered, minus the hardware's time."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllm_service.accounting.cost import HardwareCost, HostedPrice
from vllm_service.accounting.metrics import Metrics
from vllm_service.accounting.request_log import RequestRecord
from vllm_service.engine.base import Usage


def scrape(metrics: Metrics) -> dict[str, float]:
    text = metrics.exposition().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_savings_are_the_hosted_price_of_the_tokens_minus_the_hardware_time() -> None:
    now = [100.0]
    metrics = Metrics(
        latency_target=0.05,
        hosted=HostedPrice("api", input_per_million=1.0, output_per_million=2.0),
        hardware=HardwareCost(hourly=3.6),
        clock=lambda: now[0],
    )
    rec = RequestRecord("r", "/v1/chat/completions", "POST", started=0.0)
    rec.status, rec.model, rec.latency = 200, "m", 0.5
    rec.usage.add(0, Usage(prompt_tokens=1000, completion_tokens=500))
    metrics.observe(rec)
    failed = RequestRecord("f", "/v1/chat/completions", "POST", started=0.0)
    failed.status, failed.model = 503, "m"
    failed.usage.add(0, Usage(prompt_tokens=1000, completion_tokens=0))
    metrics.observe(failed)  # nothing answered: nothing saved
    now[0] += 1.0  # one second of hardware at 3.6 $/h = 0.001 $
    values = scrape(metrics)
    # 1000 * 1 / 1e6 + 500 * 2 / 1e6 = 0.002 $
    assert values["vllm_hosted_equivalent_cost_usd_total"] == pytest.approx(0.002)
    assert values["vllm_hardware_cost_usd_per_hour"] == pytest.approx(3.6)
    assert values["vllm_cost_savings_usd"] == pytest.approx(0.001)
    now[0] += 10.0  # idle hardware still costs: savings turn negative
    assert scrape(metrics)["vllm_cost_savings_usd"] == pytest.approx(0.002 - 0.011)


def test_savings_and_roi_per_hosted_reference() -> None:
    now = [0.0]
    cheap = HostedPrice("cheap", input_per_million=1.0, output_per_million=1.0)
    dear = HostedPrice("dear", input_per_million=10.0, output_per_million=10.0)
    metrics = Metrics(
        latency_target=0.05,
        hosted=cheap,
        references=[cheap, dear],
        # Owned: $8,760 over 12 months is $1 per hour.
        hardware=HardwareCost(purchase_price=8760, amortize_months=12),
        clock=lambda: now[0],
    )
    rec = RequestRecord("r", "/v1/chat/completions", "POST", started=0.0)
    rec.status, rec.model, rec.latency = 200, "m", 0.5
    rec.usage.add(0, Usage(prompt_tokens=500_000, completion_tokens=500_000))
    metrics.observe(rec)
    now[0] = 3600.0  # an hour: $1 of hardware; $1 hosted at cheap, $10 at dear
    text = metrics.exposition().decode()
    samples = {
        (s.name, s.labels.get("reference")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples["vllm_cost_savings_by_reference_usd", "cheap"] == pytest.approx(0.0)
    assert samples["vllm_cost_savings_by_reference_usd", "dear"] == pytest.approx(9.0)
    # $9 an hour saved is $78,840 a year: 9x the purchase price.
    assert samples["vllm_cost_roi_annual", "dear"] == pytest.approx(9.0 * 8760 / 8760)
