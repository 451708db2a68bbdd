"""The tables, as SQLAlchemy Core; migrations/ creates and evolves them."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: One row per request the service answered or failed, keyed by an id the service made.
ledger = Table(
    "ledger",
    metadata,
    Column("id", String(32), primary_key=True),
    #: The X-Request-ID the client saw (a client may reuse one; the id above is ours).
    Column("request_id", String(128), nullable=False),
    #: Seconds since the epoch (UTC) when the response ended.
    Column("time", Double, nullable=False),
    Column("route", String(64), nullable=False),
    Column("model", String(256)),
    Column("deployment", String(256)),
    Column("engine", String(32)),
    Column("device", String(32)),
    Column("key_id", String(64)),
    Column("user", String(256)),
    #: The client's address (through trusted proxies).
    Column("client", String(64)),
    Column("status", Integer, nullable=False),
    Column("error_type", String(64)),
    Column("stream", Boolean, nullable=False, default=False),
    Column("cache", String(16)),
    Column("fallback", Boolean, nullable=False, default=False),
    Column("choices", Integer, nullable=False, default=0),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("usage_estimated", Boolean, nullable=False, default=False),
    Column("latency_ms", Double),
    Column("ttft_ms", Double),
    #: The local cost at the rolling rate when it was answered; null when no hardware cost is
    #: configured (unknown, never 0). Reports apportion each period's cost over its tokens.
    Column("local_cost_usd", Double),
    Index("ix_ledger_time", "time"),
    Index("ix_ledger_model_time", "model", "time"),
)

#: What each request would have cost at each hosted reference, and at which price version.
ledger_costs = Table(
    "ledger_costs",
    metadata,
    Column(
        "ledger_id",
        String(32),
        ForeignKey("ledger.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("reference", String(128), primary_key=True),
    #: "<reference>@<effective_from>": the price the cost was computed at.
    Column("price_version", String(160), nullable=False),
    Column("cost_usd", Double, nullable=False),
)


#: API keys: only a keyed hash of each key is stored (HMAC-SHA256 with the server's secret).
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    #: The key's first characters, to tell keys apart in listings (not enough to use it).
    Column("prefix", String(16), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    #: Comma-separated model names it may use; empty: every model.
    Column("models", String(2048), nullable=False, default=""),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_parallel", Integer),
    Column("budget_usd", Double),
    Column("budget_period", String(8)),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double),
    Column("revoked_at", Double),
    Column("last_used_at", Double),
)

#: Who changed what: key management and cache purges.
admin_audit = Table(
    "admin_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Double, nullable=False),
    #: Who: a key id, "cli" (a local command), or "anonymous" (auth off).
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256)),
    #: What changed, as JSON text (never a key or a secret).
    Column("detail", String(4096)),
    Column("client", String(64)),
    Index("ix_admin_audit_time", "time"),
)


#: Prompts and answers (redacted), kept only with audit.log_content.
audit_content = Table(
    "audit_content",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Double, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("key_id", String(64)),
    Column("route", String(64), nullable=False),
    Column("model", String(256)),
    Column("prompt", Text, nullable=False),
    Column("completion", Text, nullable=False),
    Index("ix_audit_content_time", "time"),
)
