"""The cost model against hand-computed cases: amortization, power, monthly lines, dated
prices, and the two business scenarios from explicit inputs."""

from __future__ import annotations

from datetime import date

import pytest

from vllm_service.accounting.cost import (
    HOURS_PER_MONTH,
    HardwareCost,
    HostedPrice,
    PriceTable,
    projection,
)


def test_owned_hardware_is_amortized_with_its_power_and_monthly_lines() -> None:
    # $7,300 over 10 months = $730/month = $1/hour; 500 W at $0.20/kWh = $0.10/hour.
    hw = HardwareCost(purchase_price=7300, amortize_months=10, power_watts=500, kwh_price=0.2)
    assert hw.infrastructure_per_hour == pytest.approx(1.10)
    with_lines = HardwareCost(hourly=1.0, ops_monthly=365, development_monthly=365)
    assert with_lines.infrastructure_per_hour == pytest.approx(1.0)
    assert with_lines.per_hour == pytest.approx(1.0 + 730 / HOURS_PER_MONTH)


def test_a_price_change_is_a_new_version_and_history_keeps_the_old_one() -> None:
    old = HostedPrice("api", 1.0, 2.0, effective_from=date(2025, 1, 1))
    new = HostedPrice("api", 0.5, 1.0, effective_from=date(2026, 6, 1))
    other = HostedPrice("other", 3.0, 4.0, effective_from=date(2025, 1, 1))
    table = PriceTable([new, other, old])
    assert table.references == ["api", "other"]
    assert table.at("api", date(2026, 5, 31)) == old
    assert table.at("api", date(2026, 6, 1)) == new
    assert table.at("api", date(2024, 1, 1)) == old  # before any: the earliest
    assert [p.version for p in table.on(date(2026, 7, 1))] == ["api@2026-06-01", "other@2025-01-01"]
    assert old.cost(1_000_000, 500_000) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("monthly_tokens", "hosted", "break_even"),
    [
        # A startup agency: 300K tokens a month, half of them output, on a $0.50/hour machine
        # ($365 a month) against $2.50 / $10.00 per million (a frontier model's list price):
        # 150K x 2.5e-6 + 150K x 10e-6 = $1.875; break-even 365 / (1.875 / 300K) = 58.4M.
        (300_000, 1.875, 58_400_000),
        # An enterprise: 2M tokens a month: $12.50 hosted; the same break-even volume.
        (2_000_000, 12.5, 58_400_000),
    ],
)
def test_the_scenarios_from_explicit_inputs(
    monthly_tokens: float, hosted: float, break_even: float
) -> None:
    hw = HardwareCost(hourly=0.5)
    prices = PriceTable([HostedPrice("frontier", 2.5, 10.0)])
    out = projection(hw, prices, monthly_tokens, output_share=0.5, tokens_per_request=600)
    ref = out["references"]["frontier"]
    assert out["local_monthly_usd"] == pytest.approx(365.0)
    assert ref["hosted_monthly_usd"] == pytest.approx(hosted)
    assert ref["savings_monthly_usd"] == pytest.approx(hosted - 365.0)
    assert ref["break_even_tokens_per_month"] == pytest.approx(break_even)
    # Cost per request (a 600-token post): hosted is per token; local is the month shared out.
    assert ref["hosted_per_request_usd"] == pytest.approx(hosted / (monthly_tokens / 600))
    assert ref["local_per_request_usd"] == pytest.approx(365.0 / (monthly_tokens / 600))


def test_without_a_hardware_cost_local_is_unknown_not_zero() -> None:
    out = projection(HardwareCost(), PriceTable([HostedPrice()]), 1e6, output_share=0.5)
    ref = out["references"]["gpt-4o-mini"]
    assert out["local_monthly_usd"] is None
    assert ref["savings_monthly_usd"] is None
    assert ref["break_even_tokens_per_month"] is None
