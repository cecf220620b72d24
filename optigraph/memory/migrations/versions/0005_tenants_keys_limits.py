"""tenants: runs.tenant, API keys, per-tenant limits, request windows and run slots

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Runs and memory stored before tenants existed were made under the single server key, whose
# callers are now the tenant "default".
DEFAULT_TENANT = "default"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(128), nullable=True))
        batch.create_index("ix_runs_tenant_created_at", ["tenant", "created_at"])
    op.execute(sa.text("UPDATE runs SET tenant = :t WHERE tenant IS NULL").bindparams(t=DEFAULT_TENANT))
    op.execute(sa.text("UPDATE memory_chunks SET tenant = :t WHERE tenant IS NULL").bindparams(t=DEFAULT_TENANT))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("concurrent_runs", sa.Integer(), nullable=True),
        sa.Column("tokens_per_day", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("name", name="uq_api_keys_name"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "tenant_limits",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("concurrent_runs", sa.Integer(), nullable=True),
        sa.Column("tokens_per_day", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("tenant", name="pk_tenant_limits"),
    )
    op.create_table(
        "tenant_usage",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_requests", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_tenant_usage"),
    )
    op.create_table(
        "run_slots",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_run_slots"),
    )
    op.create_index("ix_run_slots_tenant", "run_slots", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_run_slots_tenant", table_name="run_slots")
    op.drop_table("run_slots")
    op.drop_table("tenant_usage")
    op.drop_table("tenant_limits")
    op.drop_table("api_keys")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_tenant_created_at")
        batch.drop_column("tenant")
