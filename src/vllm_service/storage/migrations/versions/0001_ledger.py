"""The cost ledger: one row per request, and its hosted-equivalent costs per reference.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("deployment", sa.String(256)),
        sa.Column("engine", sa.String(32)),
        sa.Column("device", sa.String(32)),
        sa.Column("key_id", sa.String(64)),
        sa.Column("user", sa.String(256)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_type", sa.String(64)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("cache", sa.String(16)),
        sa.Column("fallback", sa.Boolean, nullable=False),
        sa.Column("choices", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("usage_estimated", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Double),
        sa.Column("ttft_ms", sa.Double),
        sa.Column("local_cost_usd", sa.Double),
    )
    op.create_index("ix_ledger_time", "ledger", ["time"])
    op.create_index("ix_ledger_model_time", "ledger", ["model", "time"])
    op.create_table(
        "ledger_costs",
        sa.Column(
            "ledger_id",
            sa.String(32),
            sa.ForeignKey("ledger.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("reference", sa.String(128), primary_key=True),
        sa.Column("price_version", sa.String(160), nullable=False),
        sa.Column("cost_usd", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_costs")
    op.drop_index("ix_ledger_model_time", "ledger")
    op.drop_index("ix_ledger_time", "ledger")
    op.drop_table("ledger")
