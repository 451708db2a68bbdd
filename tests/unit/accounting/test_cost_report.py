"""Reports from a real SQLite ledger: a period's hardware cost apportioned over its tokens,
hosted costs summed at each row's price version, projections, break-even, ROI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from vllm_service.accounting.cost import HOURS_PER_MONTH, HardwareCost, HostedPrice, PriceTable
from vllm_service.accounting.cost_report import CostReport, cost_report
from vllm_service.accounting.ledger import Ledger, LedgerSettings, purge

T0 = 1_800_000_000.0


def row(
    rid: str, at: float, model: str, prompt: int, completion: int, hosted: float
) -> dict[str, Any]:
    return {
        "id": rid,
        "time": at,
        "request_id": rid,
        "route": "/v1/chat/completions",
        "model": model,
        "status": 200,
        "stream": False,
        "fallback": False,
        "choices": 1,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": 0,
        "usage_estimated": False,
        "hosted": {"api": ["api@2025-01-01", hosted]},
    }


def report(tmp_path: Path, hardware: HardwareCost, **window: float) -> CostReport:
    async def scenario() -> CostReport:
        settings = LedgerSettings(url=f"sqlite+aiosqlite:///{tmp_path}/l.db", journal_dir=tmp_path)
        ledger = Ledger(settings, PriceTable([HostedPrice("api")]), hardware)
        await ledger.db.upgrade()
        rows = [
            row("a", T0, "big", 200, 100, 0.30),
            row("b", T0 + 60, "big", 0, 0, 0.0),
            row("c", T0 + 120, "small", 50, 50, 0.10),
            row("old", T0 - 86400, "big", 1000, 1000, 9.0),
        ]
        await ledger._commit(rows)
        await ledger._commit(rows)  # a replay changes nothing
        try:
            return await cost_report(ledger.db, hardware, **window)
        finally:
            await ledger.db.close()

    return asyncio.run(scenario())


def test_the_period_cost_is_shared_out_over_its_tokens(tmp_path: Path) -> None:
    # Two hours covered (from the first row in the window to its end) at $1/hour: $2.
    rep = report(tmp_path, HardwareCost(hourly=1.0), since=T0 - 3600, until=T0 + 7200)
    assert rep.covered_hours == pytest.approx(2.0)
    o = rep.overall
    assert (o.requests, o.prompt_tokens, o.completion_tokens) == (3, 250, 150)
    assert o.local_cost_usd == pytest.approx(2.0)
    assert rep.models["big"].local_cost_usd == pytest.approx(2.0 * 300 / 400)
    assert rep.models["small"].local_cost_usd == pytest.approx(2.0 * 100 / 400)
    assert o.hosted_cost_usd == {"api": pytest.approx(0.40)}
    assert o.savings()["api"]["usd"] == pytest.approx(0.40 - 2.0)
    # The busiest minute served 300 tokens: 18,000 an hour is the measured capacity.
    assert rep.peak_tokens_per_hour == pytest.approx(18_000)
    per_1k = rep.cost_per_1k()
    assert per_1k["at_current_utilization"] == pytest.approx(2.0 / 400 * 1000)
    assert per_1k["at_measured_capacity"] == pytest.approx(1.0 / 18_000 * 1000)


def test_projection_break_even_and_roi(tmp_path: Path) -> None:
    hw = HardwareCost(purchase_price=7300, amortize_months=10)  # $1 an hour, owned
    rep = report(tmp_path, hw, since=T0 - 3600, until=T0 + 7200)
    projection = rep.projection()
    # 400 tokens and $0.40 hosted in 2 hours, projected to a month.
    assert projection["monthly_tokens"] == pytest.approx(400 * HOURS_PER_MONTH / 2)
    assert projection["monthly_hosted_usd"]["api"] == pytest.approx(0.40 * HOURS_PER_MONTH / 2)
    assert projection["monthly_local_usd"] == pytest.approx(HOURS_PER_MONTH)
    # Break-even: $730 a month at $0.001 per token hosted.
    assert rep.break_even()["api"] == pytest.approx(730_000)
    annual_saved = 0.40 * HOURS_PER_MONTH / 2 * 12 - HOURS_PER_MONTH * 12
    assert rep.roi()["api"] == pytest.approx(annual_saved / 7300)
    tco = rep.tco_monthly()
    assert tco["infrastructure"]["local"] == pytest.approx(HOURS_PER_MONTH)
    assert tco["total"]["api"] == pytest.approx(0.40 * HOURS_PER_MONTH / 2)


def test_without_a_hardware_cost_local_is_unknown(tmp_path: Path) -> None:
    rep = report(tmp_path, HardwareCost(), since=T0 - 3600, until=T0 + 7200)
    assert rep.overall.local_cost_usd is None
    assert rep.overall.savings()["api"] == {"usd": None, "percent": None}
    body = rep.as_dict()
    assert "hardware" in body["local_cost_unknown"]
    assert body["break_even_tokens_per_month"] == {"api": None}


def test_purge_removes_old_rows_and_their_costs(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, CostReport]:
        settings = LedgerSettings(url=f"sqlite+aiosqlite:///{tmp_path}/p.db", journal_dir=tmp_path)
        ledger = Ledger(settings, PriceTable([HostedPrice("api")]), HardwareCost())
        await ledger.db.upgrade()
        await ledger._commit(
            [row("old", T0 - 86400, "m", 1, 1, 1.0), row("new", T0, "m", 1, 1, 2.0)]
        )
        removed = await purge(ledger.db, T0 - 3600)
        rep = await cost_report(ledger.db, HardwareCost(), since=0, until=T0 + 1)
        await ledger.db.close()
        return removed, rep

    removed, rep = asyncio.run(scenario())
    assert removed == 1
    assert rep.overall.requests == 1
    assert rep.overall.hosted_cost_usd == {"api": pytest.approx(2.0)}
