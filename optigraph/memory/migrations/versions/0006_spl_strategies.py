"""spl_strategies: what the `spl` plugin learns

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "spl_strategies",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("problem_type", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("uses", sa.Integer(), server_default="0", nullable=False),
        sa.Column("successes", sa.Integer(), server_default="0", nullable=False),
        sa.Column("refinements", sa.Integer(), server_default="0", nullable=False),
        sa.Column("example", sa.Text(), nullable=True),
        sa.Column("source_run", sa.String(128), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_spl_strategies"),
    )
    op.create_index("ix_spl_strategies_problem_type", "spl_strategies", ["problem_type", "tenant"])


def downgrade() -> None:
    op.drop_index("ix_spl_strategies_problem_type", table_name="spl_strategies")
    op.drop_table("spl_strategies")
