"""`vllm-service keys` and `vllm-service audit`: API keys, and the audit trail's export."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from vllm_service.auth import ROLES, KeyStore
from vllm_service.auth.audit import (
    actions_since,
    content_since,
    record_action,
    requests_since,
)
from vllm_service.auth.keys import load_secret
from vllm_service.command_options import ConfigOption, load_config, seconds
from vllm_service.storage import Database, DatabaseError

keys_app = typer.Typer(
    help="API keys (stored hashed in the ledger's database).", no_args_is_help=True
)
audit_app = typer.Typer(help="The audit trail of admin actions.", no_args_is_help=True)

T = TypeVar("T")


def _with_store(config: Path | None, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    settings = load_config(config)
    try:
        auth = settings.auth
        explicit = auth.secret.get_secret_value() if auth.secret is not None else None
        secret = load_secret(explicit, settings.ledger.data_dir / "auth-secret")
        db = Database(settings.ledger.database_url())
    except (DatabaseError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc

    async def run() -> T:
        try:
            await db.upgrade()
            return await work(KeyStore(db, secret))
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except DatabaseError as exc:
        typer.echo(f"error: ledger.url: {exc}", err=True)
        raise typer.Exit(code=1) from exc


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    role: Annotated[str, typer.Option(help="user, viewer or admin.")] = "user",
    models: Annotated[str, typer.Option(help="Comma-separated models it may use.")] = "",
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    max_parallel: Annotated[int | None, typer.Option(min=1, help="Requests at once.")] = None,
    budget_usd: Annotated[float | None, typer.Option(min=0, help="Budget per period, $.")] = None,
    budget_period: Annotated[str | None, typer.Option(help="day or month.")] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90d.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it (once: only its hash is kept)."""
    if role not in ROLES:
        raise typer.BadParameter(f"--role must be one of {', '.join(ROLES)}")
    if budget_period not in (None, "day", "month"):
        raise typer.BadParameter("--budget-period must be day or month")
    if not name.strip() or len(name) > 128:
        raise typer.BadParameter("--name must be 1 to 128 characters")
    allowed = [m for m in (part.strip() for part in models.split(",")) if m]
    limits: dict[str, Any] = {
        "rpm": rpm,
        "tpm": tpm,
        "max_parallel": max_parallel,
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "expires_at": None if expires is None else time.time() + seconds(expires),
    }

    async def work(store: KeyStore) -> str:
        new = await store.create(name, role, allowed, **limits)
        detail = {"name": name, "role": role, "models": allowed, **limits}
        await record_action(
            store.db, actor="cli", action="key.create", target=new.key_id, detail=detail
        )
        return f"{new.key}\nid: {new.key_id} (the key is shown once; keep it now)"

    typer.echo(_with_store(config, work))


@keys_app.command("list")
def listing(config: ConfigOption = None) -> None:
    """Every key: id, prefix, name, role, models, limits, last use (never the key)."""

    async def work(store: KeyStore) -> list[dict[str, object]]:
        return await store.listing()

    for row in _with_store(config, work):
        typer.echo(json.dumps(row, default=str))


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id.")], config: ConfigOption = None
) -> None:
    """Stop a key at once (every replica within a second)."""

    async def work(store: KeyStore) -> bool:
        done = await store.revoke(key_id)
        if done:
            await record_action(store.db, actor="cli", action="key.revoke", target=key_id)
        return done

    if not _with_store(config, work):
        typer.echo(f"error: no active key {key_id!r}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("rotate")
def rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    grace: Annotated[str, typer.Option(help="How long the old key keeps working.")] = "24h",
    config: ConfigOption = None,
) -> None:
    """A new key with the same name, role and limits; the old one works for --grace more."""
    grace_s = seconds(grace)

    async def work(store: KeyStore) -> str | None:
        new = await store.rotate(key_id, grace_s)
        if new is None:
            return None
        detail = {"new_key_id": new.key_id, "grace_seconds": grace_s}
        await record_action(
            store.db, actor="cli", action="key.rotate", target=key_id, detail=detail
        )
        return f"{new.key}\nid: {new.key_id} (replaces {key_id}; the key is shown once)"

    out = _with_store(config, work)
    if out is None:
        typer.echo(f"error: no active key {key_id!r}", err=True)
        raise typer.Exit(code=1)
    typer.echo(out)


@audit_app.command("export")
def export(
    since: Annotated[str, typer.Option(help="How far back, e.g. 30d.")] = "30d",
    what: Annotated[
        str, typer.Option(help="actions (admin), requests, all (both), or content.")
    ] = "all",
    output: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    config: ConfigOption = None,
) -> None:
    """The audit trail since a time: admin actions (key changes, cache purges: who, what,
    from where) and requests (key, client, route, model, status, tokens, cost)."""
    if output not in ("jsonl", "csv"):
        raise typer.BadParameter("--format must be jsonl or csv")
    if what not in ("actions", "requests", "all", "content"):
        raise typer.BadParameter("--what must be actions, requests, all or content")
    start = time.time() - seconds(since)

    async def work(store: KeyStore) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        if what in ("actions", "all"):
            rows += [{"kind": "action", **r} for r in await actions_since(store.db, start)]
        if what in ("requests", "all"):
            rows += [{"kind": "request", **r} for r in await requests_since(store.db, start)]
        if what == "content":
            rows += [{"kind": "content", **r} for r in await content_since(store.db, start)]
        return sorted(rows, key=lambda r: float(str(r["time"])))

    rows = _with_store(config, work)
    if output == "csv":
        fields = sorted({k for row in rows for k in row}) or ["kind"]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return
    for row in rows:
        typer.echo(json.dumps(row, default=str))
