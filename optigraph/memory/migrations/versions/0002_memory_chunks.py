"""memory_chunks: conversation memory of the `memory` plugin

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "memory_chunks",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("conversation", sa.String(256), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_memory_chunks"),
    )
    op.create_index("ix_memory_chunks_conversation", "memory_chunks", ["conversation", "tenant"])
    op.create_index("ix_memory_chunks_run_id", "memory_chunks", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_memory_chunks_run_id", table_name="memory_chunks")
    op.drop_index("ix_memory_chunks_conversation", table_name="memory_chunks")
    op.drop_table("memory_chunks")
