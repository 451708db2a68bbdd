"""The cost model: what serving tokens on your own hardware costs, next to a hosted API's price.

Hardware costs money by the hour, either rented (``hourly``) or owned: its purchase price spread
over ``amortize_months`` plus the power it draws. Tokens cost that hour divided by the tokens it
serves at the measured throughput, which assumes the hardware is kept busy at that rate.
A hosted API charges per token, input and output priced apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True, slots=True)
class HardwareCost:
    """What running the service costs: one machine (or GPU node), and the monthly lines of
    running it (monitoring and operations, development time)."""

    #: Rented: the price of one hour. Owned: leave at 0 and give the purchase price instead.
    hourly: float = 0.0
    purchase_price: float = 0.0
    amortize_months: float = 36.0
    power_watts: float = 0.0
    kwh_price: float = 0.15
    #: Monitoring and operations, $ a month (0: not counted).
    ops_monthly: float = 0.0
    #: Development and maintenance time, $ a month (0: not counted).
    development_monthly: float = 0.0

    @property
    def infrastructure_per_hour(self) -> float:
        """The machine: rent, or purchase price amortized, plus the power it draws."""
        owned = self.purchase_price / (self.amortize_months * HOURS_PER_MONTH)
        power = self.power_watts / 1000.0 * self.kwh_price
        return self.hourly + owned + power

    @property
    def per_hour(self) -> float:
        """Fully loaded: the machine plus the monthly lines, per hour."""
        monthly = self.ops_monthly + self.development_monthly
        return self.infrastructure_per_hour + monthly / HOURS_PER_MONTH


@dataclass(frozen=True, slots=True)
class HostedPrice:
    """A hosted API's list price, in dollars per million tokens, from a date on."""

    name: str = "gpt-4o-mini"
    input_per_million: float = 0.15
    output_per_million: float = 0.60
    #: When the price took effect (OpenAI's list price as of this date).
    effective_from: date = date(2024, 7, 18)

    @property
    def version(self) -> str:
        """Which price this is: the reference's name and its effective date."""
        return f"{self.name}@{self.effective_from.isoformat()}"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1e6


@dataclass(frozen=True, slots=True)
class CostComparison:
    """Dollars per 1K tokens (prompt + completion) served, here and at the hosted API."""

    local_per_1k: float
    hosted_per_1k: float
    hardware_per_hour: float

    @property
    def savings_ratio(self) -> float | None:
        """Hosted price over local cost: 10 means self-hosting is ten times cheaper."""
        return self.hosted_per_1k / self.local_per_1k if self.local_per_1k > 0 else None


def compare_costs(
    hardware: HardwareCost,
    hosted: HostedPrice,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    seconds: float,
) -> CostComparison | None:
    """Cost per 1K tokens of a measured run (its tokens over its wall time); None if empty."""
    tokens = prompt_tokens + completion_tokens
    if tokens == 0 or seconds <= 0:
        return None
    local = hardware.per_hour * seconds / 3600.0
    return CostComparison(
        local_per_1k=local / tokens * 1000.0,
        hosted_per_1k=hosted.cost(prompt_tokens, completion_tokens) / tokens * 1000.0,
        hardware_per_hour=hardware.per_hour,
    )


#: A starting table of hosted list prices ($ per 1M input / output tokens), each with the day
#: it took effect, as OpenAI published them. Prices change: check the provider's page, and add
#: an entry with a later effective_from (cost.hosted) rather than editing one in place.
KNOWN_PRICES: dict[str, HostedPrice] = {
    p.name: p
    for p in (
        HostedPrice("gpt-4o-mini", 0.15, 0.60, date(2024, 7, 18)),
        HostedPrice("gpt-4o", 2.50, 10.00, date(2024, 8, 6)),
        HostedPrice("gpt-4.1", 2.00, 8.00, date(2025, 4, 14)),
        HostedPrice("gpt-4.1-mini", 0.40, 1.60, date(2025, 4, 14)),
        HostedPrice("gpt-4.1-nano", 0.10, 0.40, date(2025, 4, 14)),
        HostedPrice("gpt-3.5-turbo", 0.50, 1.50, date(2024, 1, 25)),
    )
}


class PriceTable:
    """The hosted references' prices, each with its history (one entry per effective date)."""

    def __init__(self, prices: list[HostedPrice]) -> None:
        self._prices = sorted(prices, key=lambda p: p.effective_from)
        #: Reference names, in the configuration's order (the first is the metrics' one).
        self.references = list(dict.fromkeys(p.name for p in prices))
        #: ``on``'s answer for the last day asked (asked per request).
        self._day: tuple[date, list[HostedPrice]] | None = None

    def at(self, name: str, day: date) -> HostedPrice:
        """The price of ``name`` in effect on ``day`` (its earliest one before any took effect)."""
        history = [p for p in self._prices if p.name == name]
        if not history:
            raise KeyError(name)
        effective = [p for p in history if p.effective_from <= day]
        return effective[-1] if effective else history[0]

    def on(self, day: date) -> list[HostedPrice]:
        """Every reference's price in effect on ``day``, in the configuration's order."""
        if self._day is None or self._day[0] != day:
            self._day = (day, [self.at(name, day) for name in self.references])
        return self._day[1]


def projection(
    hardware: HardwareCost,
    prices: PriceTable,
    monthly_tokens: float,
    output_share: float,
    tokens_per_request: float | None = None,
) -> dict[str, Any]:
    """A month at a stated volume: local cost (the hardware, whatever the volume) against each
    hosted reference's list price for those tokens, the break-even volume and cost/request."""
    local = hardware.per_hour * HOURS_PER_MONTH if hardware.per_hour > 0 else None
    today = datetime.now(UTC).date()
    out: dict[str, Any] = {"monthly_tokens": monthly_tokens, "local_monthly_usd": local}
    references = {}
    for price in prices.on(today):
        prompt = monthly_tokens * (1 - output_share)
        hosted = price.cost(round(prompt), round(monthly_tokens - prompt))
        per_token = hosted / monthly_tokens
        entry: dict[str, Any] = {
            "price_version": price.version,
            "hosted_monthly_usd": hosted,
            "savings_monthly_usd": None if local is None else hosted - local,
            "break_even_tokens_per_month": None if local is None else local / per_token,
        }
        if tokens_per_request:
            requests = monthly_tokens / tokens_per_request
            entry["hosted_per_request_usd"] = hosted / requests
            entry["local_per_request_usd"] = None if local is None else local / requests
        references[price.name] = entry
    out["references"] = references
    return out
