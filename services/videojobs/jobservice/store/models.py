"""Tables of job-service. Alembic migrations in `migrations/` create them;
`tests/unit/test_migrations.py` proves the two agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator):
    """Stores UTC instants; always returns timezone-aware UTC datetimes.

    SQLite has no time zones, so values are stored as naive UTC everywhere.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (for migrations)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobRow(Base):
    """One job. `position` orders jobs by acceptance (dispatch and listing)."""

    __tablename__ = "jobs"

    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), unique=True)
    # The tenant the job belongs to (0007); idempotency keys are per tenant.
    tenant: Mapped[str] = mapped_column(String(64), server_default="default")
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The job's pipelines as one display name (`ocr+scenes`); the set itself
    # is in job_pipelines (0008), which dispatch and ListJobs match on.
    pipeline: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    file_name: Mapped[str] = mapped_column(String(255))
    input_key: Mapped[str] = mapped_column(String(1024))
    input_size_bytes: Mapped[int] = mapped_column(BigInteger)
    input_sha256: Mapped[str] = mapped_column(String(64))
    # Container format identified from the uploaded bytes (containers.py name);
    # NULL for jobs accepted before formats were recorded (migration 0005).
    input_format: Mapped[str | None] = mapped_column(String(16))
    # When retention removed the input of this FAILED/CANCELLED job (0006).
    input_removed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    output_key: Mapped[str | None] = mapped_column(String(1024))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    warnings: Mapped[list[str] | None] = mapped_column(JSON)
    progress_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    progress_stage: Mapped[str] = mapped_column(String(128), default="")
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    # The dispatch session (on whichever replica) holding the lease (0008): a
    # session that ends requeues only what it still holds, never a lease its
    # worker already took to a newer session elsewhere.
    lease_session: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # W3C traceparent of the SubmitVideo call (0010); None unless tracing was on.
    trace_parent: Mapped[str | None] = mapped_column(String(64))
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    # Dispatch order: accepted-at (epoch seconds) minus the priority head start.
    # Server defaults let a replica of the previous version insert rows during
    # a rolling upgrade (migration 0002).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    dispatch_rank: Mapped[float] = mapped_column(Float, server_default="0")
    # A job backing off after a failure is not dispatched before this.
    available_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    execution_timeout_seconds: Mapped[float] = mapped_column(Float, server_default="600.0")
    execution_deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    queue_timeout_seconds: Mapped[float | None] = mapped_column(Float)
    queue_deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Serialized bytes of partial results recorded so far (capped per job).
    partial_result_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_jobs_state_dispatch_rank", "state", "dispatch_rank", "position"),
        Index("ix_jobs_state_lease_expires_at", "state", "lease_expires_at"),
        Index("ix_jobs_state_execution_deadline_at", "state", "execution_deadline_at"),
        Index("ix_jobs_state_queue_deadline_at", "state", "queue_deadline_at"),
        Index("ix_jobs_state_updated_at", "state", "updated_at"),
        Index("ix_jobs_tenant_state", "tenant", "state"),
        Index("ix_jobs_tenant_position", "tenant", "position"),
        UniqueConstraint("tenant", "request_id", name="uq_jobs_tenant_request_id"),
    )


class JobPipelineRow(Base):
    """One pipeline of a job's set (0008): a job goes to a worker that runs
    every pipeline of its set, and ListJobs `pipeline` matches any of them."""

    __tablename__ = "job_pipelines"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_job_pipelines_pipeline_job_id", "pipeline", "job_id"),)


class AttemptRow(Base):
    """One attempt at running a job: who ran it, when, and how it ended."""

    __tablename__ = "job_attempts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_reason: Mapped[str | None] = mapped_column(String(64))


class ArtifactRow(Base):
    """A file the successful attempt of a job produced."""

    __tablename__ = "job_artifacts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(1024))
    media_type: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Image metadata (thumbnails); zero for other files.
    width: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    height: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    time_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    series_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    frame_index: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class EventRow(Base):
    """One event of a job; (job_id, sequence) without gaps from 1."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    job_state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class ServerSecretRow(Base):
    """A secret every replica of job-service shares (the page-token key).

    Kept in the database so it survives restarts and is the same on every
    replica; created at random on first use."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))


class StagedUploadRow(Base):
    """Who owns a staged upload (`uploads/{id}`): only its tenant may write,
    query, read or submit it. Once one stream wrote it whole from its first
    byte, also its size and SHA-256, hashed on the way (0011), so SubmitVideo
    need not read it again; both stay null for an upload resumed after a break."""

    __tablename__ = "staged_uploads"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class WorkerSessionRow(Base):
    """An open dispatch stream of a worker, on whichever replica holds it
    (0009): written when it opens, touched by each heartbeat, removed when it
    ends. ListWorkers reads these; a row no heartbeat touched for a lease's
    duration belongs to a replica that died and is left out."""

    __tablename__ = "worker_sessions"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(128))
    status_address: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(64))
    pipelines: Mapped[list[str]] = mapped_column(JSON)
    slots: Mapped[int] = mapped_column(Integer)
    draining: Mapped[bool] = mapped_column(Boolean)
    connected_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_worker_sessions_worker_id", "worker_id"),
        Index("ix_worker_sessions_last_seen_at", "last_seen_at"),
    )
