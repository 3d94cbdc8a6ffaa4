"""What job-service can tell about itself: the pipelines it accepts
(ListPipelines), the workers connected to it through any replica
(ListWorkers), and counts and timings of recent jobs (GetStats)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from videojobs.common import errors
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.jobservice.domain import JobState, utc_now
from videojobs.jobservice.store import Database
from videojobs.pipelines import PipelineCatalogue, PipelineSpec
from videojobs.pipelines.specs import SAMPLING_SPEC

DEFAULT_STATS_WINDOW = timedelta(hours=1)
MAX_STATS_WINDOW = timedelta(days=30)
# Tenant names are stored in 64 characters (jobs.tenant).
MAX_TENANT_CHARS = 64


@dataclass(frozen=True)
class PipelineDescription:
    """One pipeline as ListPipelines shows it."""

    spec: PipelineSpec
    analyses_frames: bool


@dataclass(frozen=True)
class ConnectedWorker:
    """One open worker session, as ListWorkers shows it."""

    worker_id: str
    status_address: str
    version: str
    pipelines: list[str]
    slots: int
    slots_used: int
    draining: bool
    connected_at: datetime
    last_seen_at: datetime
    job_ids: list[str]


@dataclass
class JobFigures:
    """Counts and timings of a set of jobs (one pipeline set, or all)."""

    pipeline: str = ""
    counts: Counter = field(default_factory=Counter)  # JobState -> jobs
    durations: list[float] = field(default_factory=list)  # seconds, succeeded jobs
    queue_waits: list[float] = field(default_factory=list)  # seconds, started jobs

    @property
    def success_rate(self) -> float:
        """SUCCEEDED / (SUCCEEDED + FAILED); 0 when neither happened."""
        ended = self.counts[JobState.SUCCEEDED] + self.counts[JobState.FAILED]
        return self.counts[JobState.SUCCEEDED] / ended if ended else 0.0


@dataclass(frozen=True)
class JobStatistics:
    """GetStats: the window's start, the total and the figures per pipeline set."""

    window_start: datetime
    total: JobFigures
    pipelines: list[JobFigures]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class Discovery:
    """Answers ListPipelines, ListWorkers and GetStats."""

    def __init__(
        self, database: Database, catalogue: PipelineCatalogue, lease_duration: float
    ) -> None:
        self._database = database
        self._catalogue = catalogue
        # A session no heartbeat touched for a lease's duration is gone (its
        # replica died without closing it): ListWorkers leaves it out.
        self._silent_after = timedelta(seconds=lease_duration)

    def pipelines(self) -> list[PipelineDescription]:
        """Every pipeline the catalogue knows, by name (from specs only: no
        pipeline implementation is imported)."""
        return [
            PipelineDescription(self._catalogue.spec(name), self._catalogue.analyses_frames(name))
            for name in sorted(self._catalogue.names)
        ]

    @staticmethod
    def sampling_spec() -> PipelineSpec:
        """The sampling parameters every frame pipeline of a job shares."""
        return SAMPLING_SPEC

    async def workers(self, principal: Principal = LOCAL_PRINCIPAL) -> list[ConnectedWorker]:
        """The workers heard from within a lease's duration, by id; a client
        sees only its own tenant's job ids among what they run."""
        async with self._database.reading() as repository:
            sessions = await repository.worker_sessions(utc_now() - self._silent_after)
            running = await repository.running_jobs_by_session()
        used: Counter = Counter()
        visible: dict[str, list[str]] = defaultdict(list)
        for session_id, job_id, tenant in running:
            used[session_id] += 1
            if principal.sees_tenant(tenant):
                visible[session_id].append(job_id)
        return [
            ConnectedWorker(
                worker_id=row.worker_id,
                status_address=row.status_address,
                version=row.version,
                pipelines=list(row.pipelines),
                slots=row.slots,
                slots_used=used[row.session_id],
                draining=row.draining,
                connected_at=row.connected_at,
                last_seen_at=row.last_seen_at,
                job_ids=sorted(visible[row.session_id]),
            )
            for row in sessions
        ]

    async def statistics(
        self,
        window: timedelta | None,
        tenant: str = "",
        principal: Principal = LOCAL_PRINCIPAL,
    ) -> JobStatistics:
        """Counts and timings of the jobs created in the last `window` (1 hour
        when None or zero): a client's own tenant, an administrator's every
        tenant or the one named.

        Raises:
            ServiceError: INVALID_ARGUMENT for a negative window, one over 30
                days, or a tenant name longer than a tenant can be.
        """
        if window is None or window == timedelta(0):
            window = DEFAULT_STATS_WINDOW
        if window < timedelta(0) or window > MAX_STATS_WINDOW:
            raise errors.invalid_argument(
                "the window is out of range", [("window", "must be 0 (1 hour) to 30 days")]
            )
        if len(tenant) > MAX_TENANT_CHARS:
            raise errors.invalid_argument(
                "tenant is too long", [("tenant", f"at most {MAX_TENANT_CHARS} characters")]
            )
        scope = (tenant or None) if principal.is_admin else principal.tenant
        window_start = utc_now() - window
        async with self._database.reading() as repository:
            rows = await repository.job_timings(window_start, scope)
        total = JobFigures()
        by_pipeline: dict[str, JobFigures] = {}
        for pipeline, state_name, created, first_start, last_start, ended in rows:
            state = JobState(state_name)
            figures = by_pipeline.setdefault(pipeline, JobFigures(pipeline=pipeline))
            for target in (total, figures):
                target.counts[state] += 1
                if first_start is not None:
                    target.queue_waits.append((first_start - created).total_seconds())
                if state is JobState.SUCCEEDED and last_start is not None and ended is not None:
                    target.durations.append((ended - last_start).total_seconds())
        return JobStatistics(
            window_start=window_start,
            total=total,
            pipelines=[by_pipeline[name] for name in sorted(by_pipeline)],
        )
