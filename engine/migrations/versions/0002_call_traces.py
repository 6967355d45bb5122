"""Call traces and feedback on calls.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "call_traces",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=True),
        sa.Column("feature", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    # Lookups by request id, listings per tenant or feature (newest first), retention.
    op.create_index("ix_call_traces_request", "call_traces", ["request_id"])
    op.create_index("ix_call_traces_tenant", "call_traces", ["tenant", "id"])
    op.create_index("ix_call_traces_feature", "call_traces", ["feature", "id"])
    op.create_index("ix_call_traces_expires", "call_traces", ["expires_at"])
    op.create_table(
        "call_feedback",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=True),
        sa.Column("feature", sa.String(64), nullable=False),
        sa.Column("override_version", sa.Integer, nullable=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("correction", sa.Text, nullable=True),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_call_feedback_request", "call_feedback", ["request_id"])


def downgrade() -> None:
    op.drop_table("call_feedback")
    op.drop_table("call_traces")
