"""The project's own tables: runs, the upstream calls they made, conversation memory and the strategies
the `spl` plugin learns."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC; SQLite, which keeps no offset, reads back UTC too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON()}


class Run(Base):
    """One client request served by an approach expression."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(String(128))
    expression: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any] | None]
    response: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    total_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    checkpointed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    user: Mapped[str | None] = mapped_column(String(256))
    # What a resume rebuilds the run from: expression aside, its routed model, cleaned messages,
    # forwarded fields, validated parameters and thread count (engine/runner.py run_spec).
    spec: Mapped[dict[str, Any] | None]
    # Who is executing the run (a runner's id) until when: a resume takes the lease only when it is
    # free or expired, so two servers sharing the database never run it at once (memory/leases.py).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    # Who the run belongs to (the caller's tenant, api/access.py); no other tenant sees it.
    tenant: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_runs_status", "status"),
        Index("ix_runs_created_at", "created_at"),
        Index("ix_runs_expression", "expression"),
        Index("ix_runs_tenant_created_at", "tenant", "created_at"),
    )


class UpstreamCall(Base):
    """One upstream request (one attempt) made by a node of a run.

    `run_id` has no foreign key: calls are written as they happen, possibly before their run row.
    """

    __tablename__ = "upstream_calls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(128))
    node: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime]
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any] | None]
    response: Mapped[dict[str, Any] | None]
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    __table_args__ = (Index("ix_upstream_calls_run_id", "run_id"),)


class MemoryChunk(Base):
    """One piece of an earlier turn of a conversation, kept for the `memory` plugin to retrieve.

    Rows are keyed by `conversation` (the client's id) and `tenant` (the run's tenant). A
    conversation's rows are in the order they were stored (`id`); `seq` is a chunk's place in the
    exchange of the run that stored it (`run_id`), so storing a run's exchange again (a resumed run)
    replaces its rows instead of adding copies.
    """

    __tablename__ = "memory_chunks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str | None] = mapped_column(String(128))
    conversation: Mapped[str] = mapped_column(String(256))
    run_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_memory_chunks_conversation", "conversation", "tenant"),
        Index("ix_memory_chunks_run_id", "run_id"),
    )


class ApiKey(Base):
    """A static API key (memory/keys.py): only a digest of the secret is kept, never the secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    tenant: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON())
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # Limits of the requests made with this key; None: the tenant's (memory/limits.py).
    rpm: Mapped[int | None] = mapped_column(Integer)
    concurrent_runs: Mapped[int | None] = mapped_column(Integer)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)


class TenantLimits(Base):
    """A tenant's own limits, overriding the server's defaults (None: the default)."""

    __tablename__ = "tenant_limits"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    concurrent_runs: Mapped[int | None] = mapped_column(Integer)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)


class TenantUsage(Base):
    """A tenant's request count in the current minute. Its row is also what admissions lock, so
    that the checks of one tenant's limits run one at a time across replicas (memory/limits.py)."""

    __tablename__ = "tenant_usage"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[datetime | None]
    window_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RunSlot(Base):
    """One run a tenant has in flight (a concurrent-runs slot), held by a server until it expires
    unless renewed: a server that dies frees its slots when they expire."""

    __tablename__ = "run_slots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_run_slots_tenant", "tenant"),)


class SplStrategy(Base):
    """One strategy of the `spl` plugin (system prompt learning): advice for one type of problem,
    added to the system prompt of requests of that type, with how often it was used and how often
    the answer it was used for succeeded. `tenant` is None until the server knows tenants."""

    __tablename__ = "spl_strategies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str | None] = mapped_column(String(128))
    problem_type: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    uses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    successes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    refinements: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    example: Mapped[str | None] = mapped_column(Text)  # the last problem it was used for (refining reads it)
    source_run: Mapped[str | None] = mapped_column(String(128))  # the run that created it (None: edited in)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_spl_strategies_problem_type", "problem_type", "tenant"),)


RUNS = Run.__table__
UPSTREAM_CALLS = UpstreamCall.__table__
MEMORY_CHUNKS = MemoryChunk.__table__
API_KEYS = ApiKey.__table__
TENANT_LIMITS = TenantLimits.__table__
TENANT_USAGE = TenantUsage.__table__
RUN_SLOTS = RunSlot.__table__
SPL_STRATEGIES = SplStrategy.__table__
