"""Prompts and answers in the audit trail (redacted; only with audit.log_content).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_content",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("completion", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_content_time", "audit_content", ["time"])


def downgrade() -> None:
    op.drop_index("ix_audit_content_time", "audit_content")
    op.drop_table("audit_content")
