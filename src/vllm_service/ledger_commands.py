"""`vllm-service db` and `vllm-service cost`: the database's schema, and reports from the ledger."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from vllm_service.accounting.cost import HardwareCost, HostedPrice, PriceTable, projection
from vllm_service.accounting.cost_report import CostReport, cost_report
from vllm_service.accounting.ledger import purge as purge_rows
from vllm_service.command_options import ConfigOption, load_config, parse_time
from vllm_service.config import Settings
from vllm_service.storage import Database, DatabaseError

db_app = typer.Typer(help="The service's database (the cost ledger).", no_args_is_help=True)
cost_app = typer.Typer(help="Costs from the ledger, and projections.", no_args_is_help=True)


def _database(settings: Settings) -> Database:
    try:
        return Database(settings.ledger.database_url())
    except DatabaseError as exc:
        typer.echo(f"error: ledger.url: {exc}", err=True)
        raise typer.Exit(code=2) from exc


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the ledger's schema (serve does this at start too)."""
    db = _database(load_config(config))

    async def run() -> None:
        try:
            await db.upgrade()
        finally:
            await db.close()

    try:
        asyncio.run(run())
    except DatabaseError as exc:
        typer.echo(f"error: ledger.url: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"schema up to date: {db.safe_url}")


def _hardware(settings: Settings) -> HardwareCost:
    return HardwareCost(**settings.cost.hardware.model_dump())


async def _reports(
    db: Database, hardware: HardwareCost, since: float, until: float, by: str
) -> list[tuple[str, CostReport]]:
    try:
        if by in ("model", "key"):
            return [("all", await cost_report(db, hardware, since=since, until=until, by=by))]
        day = 86400.0
        start = since - since % day
        out = []
        while start < until:
            end = min(start + day, until)
            label = datetime.fromtimestamp(start, UTC).date().isoformat()
            out.append((label, await cost_report(db, hardware, since=start, until=end)))
            start += day
        return out
    finally:
        await db.close()


@cost_app.command("report")
def report(
    since: Annotated[str, typer.Option(help="30d, 12h, or an ISO date.")] = "30d",
    by: Annotated[str, typer.Option(help="model, day or key (API key id).")] = "model",
    output: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    plot: Annotated[
        Path | None, typer.Option(help="Also draw local and hosted cost per group (PNG).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Requests, tokens, local and hosted-equivalent cost from the ledger."""
    if by not in ("model", "day", "key"):
        raise typer.BadParameter("--by must be model, day or key")
    if output not in ("table", "json", "csv"):
        raise typer.BadParameter("--format must be table, json or csv")
    settings = load_config(config)
    now = time.time()
    reports = asyncio.run(
        _reports(_database(settings), _hardware(settings), parse_time(since, now), now, by)
    )
    rows = []
    for label, rep in reports:
        groups = rep.models.items() if by != "day" else [(label, rep.overall)]
        for name, totals in groups:
            body = totals.as_dict()
            rows.append({"group": name, **{k: body[k] for k in _COLUMNS[1:4]}, **_costs(body)})
    if output == "json":
        extra = reports[0][1].as_dict() if by != "day" else {}
        typer.echo(json.dumps({"since": since, "by": by, "rows": rows, **extra}, indent=2))
    elif output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else _COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    else:
        for row in rows:
            typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))
    if plot is not None:
        draw(rows, plot)


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    """Local and hosted-equivalent cost per group, as bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise typer.BadParameter(
            "--plot needs matplotlib: pip install 'vllm-service[bench]'"
        ) from exc
    series = [k for k in (rows[0] if rows else {}) if k.endswith("_usd")]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.6), 4))
    width = 0.8 / max(1, len(series))
    for i, key in enumerate(series):
        values = [row.get(key) or 0.0 for row in rows]
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=key)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
    ax.set_xticklabels([str(row["group"]) for row in rows], rotation=45, ha="right")
    ax.set_ylabel("USD")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    typer.echo(f"plot: {path}")


_COLUMNS = ["group", "requests", "prompt_tokens", "completion_tokens"]


def _costs(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"local_cost_usd": body["local_cost_usd"]}
    for ref, cost in body["hosted_cost_usd"].items():
        out[f"hosted_{ref}_usd"] = cost
    return out


@cost_app.command("purge")
def purge(
    before: Annotated[str, typer.Option(help="Delete rows older than this (30d or a date).")],
    config: ConfigOption = None,
) -> None:
    """Delete ledger rows older than a time."""
    settings = load_config(config)
    cutoff = parse_time(before, time.time())
    db = _database(settings)

    async def run() -> int:
        try:
            return await purge_rows(db, cutoff)
        finally:
            await db.close()

    typer.echo(f"purged {asyncio.run(run())} rows")


@cost_app.command("project")
def project(
    monthly_tokens: Annotated[float, typer.Option(min=1, help="Tokens served a month.")],
    tokens_per_request: Annotated[
        float | None, typer.Option(min=1, help="Tokens of one request (cost per request).")
    ] = None,
    output_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of the tokens that are completion.")
    ] = 0.5,
    config: ConfigOption = None,
) -> None:
    """Monthly cost here (the configured hardware) and at each hosted reference, break-even."""
    settings = load_config(config)
    hardware = _hardware(settings)
    prices = PriceTable([HostedPrice(**h.model_dump()) for h in settings.cost.hosted])
    result = projection(hardware, prices, monthly_tokens, output_share, tokens_per_request)
    typer.echo(json.dumps(result, indent=2))
