"""Composition root of job-service: builds every part from one settings object."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

import grpc

from videojobs.common.auth import AuthRegistry
from videojobs.common.auth_interceptor import AuthInterceptor
from videojobs.common.grpc_server import (
    SERVER_OPTIONS,
    add_health_and_reflection,
    bind,
    mark_not_serving,
    mark_serving,
)
from videojobs.common.metrics import MetricsEndpoint, MetricsInterceptor, serve_metrics
from videojobs.common.security import ServerTls, check_exposure, server_tls
from videojobs.jobservice import metrics as job_metrics
from videojobs.jobservice.api.access import JOB_SERVICE_POLICY
from videojobs.jobservice.api.blob_servicer import BlobServicer
from videojobs.jobservice.api.dispatch_servicer import DispatchServicer
from videojobs.jobservice.api.job_servicer import JobServicer
from videojobs.jobservice.blobs import BlobAccess
from videojobs.jobservice.cancel import CancelService
from videojobs.jobservice.discovery import Discovery
from videojobs.jobservice.dispatch import DispatchCoordinator
from videojobs.jobservice.events import EventFeed, EventHub
from videojobs.jobservice.metrics import QueueDepthRefresher
from videojobs.jobservice.notifier import default_notifier
from videojobs.jobservice.queries import JobQueries, PageTokens
from videojobs.jobservice.retention import JobDeletion
from videojobs.jobservice.settings import JobServiceSettings
from videojobs.jobservice.store import Database
from videojobs.jobservice.submit import SubmitService
from videojobs.jobservice.sweeper import OrphanSweeper
from videojobs.pipelines import builtin_catalogue
from videojobs.storage import open_blob_store
from videojobs.v1 import (
    blob_service_pb2,
    blob_service_pb2_grpc,
    dispatch_service_pb2,
    dispatch_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    dispatch_service_pb2.DESCRIPTOR.services_by_name["DispatchService"].full_name,
    blob_service_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
]


@dataclass
class JobServiceApp:
    """A built, not yet started, job-service."""

    settings: JobServiceSettings
    server: grpc.aio.Server
    database: Database
    coordinator: DispatchCoordinator
    job_servicer: JobServicer
    dispatch_servicer: DispatchServicer
    health: object
    page_tokens: PageTokens
    sweeper: OrphanSweeper
    deletion: JobDeletion
    blob_store: object
    tls: ServerTls | None = None
    address: str = ""
    metrics_address: str = ""
    _metrics_endpoint: MetricsEndpoint | None = None
    _queue_depth: QueueDepthRefresher | None = None

    async def start(self) -> str:
        """Migrates the database, binds, starts serving; returns the bound address.

        Raises:
            SingleReplicaError: another job-service runs on this SQLite database.
        """
        self.database.hold_single_replica_lock()
        await self.database.migrate()
        await self.database.notifier.start()
        await self.page_tokens.load_key(self.database)
        credentials = self.tls.credentials() if self.tls is not None else None
        self.address = bind(self.server, self.settings.listen, credentials)
        await self.server.start()
        await self.coordinator.start()
        self.sweeper.start()
        self.deletion.start(self.settings.retention_interval)
        if self.settings.metrics_listen:
            self._metrics_endpoint = serve_metrics(self.settings.metrics_listen)
            self.metrics_address = self._metrics_endpoint.address
            self._queue_depth = QueueDepthRefresher(self.database)
            self._queue_depth.start()
        await mark_serving(self.health, SERVICE_NAMES)
        log.info("job-service listening on %s", self.address)
        return self.address

    async def stop(self) -> None:
        """Graceful stop: no new submits or workers, in-flight calls get the
        grace period, leases stay in the database for the next start."""
        self.job_servicer.accepting_submits = False
        self.dispatch_servicer.shutting_down = True
        await mark_not_serving(self.health, SERVICE_NAMES)
        await self.server.stop(self.settings.shutdown_grace)
        await self.sweeper.stop()
        await self.deletion.stop()
        if self._queue_depth is not None:
            await self._queue_depth.stop()
        if self._metrics_endpoint is not None:
            await asyncio.to_thread(self._metrics_endpoint.stop)
        await self.coordinator.stop()
        await self.database.notifier.close()
        await self.database.dispose()
        await asyncio.to_thread(self.blob_store.close)
        log.info("job-service stopped")


def build_job_service(settings: JobServiceSettings) -> JobServiceApp:
    """Wires database, storage, application services and servicers together.

    Raises SecurityConfigError for TLS settings that cannot work, or for a
    listen address beyond loopback without an auth file and TLS (unless
    `insecure`)."""
    tls = server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    warning = check_exposure(
        settings.listen,
        authenticated=bool(settings.auth_file),
        tls=tls is not None,
        insecure=settings.insecure,
        service="job-service",
    )
    if warning:
        log.warning(warning)
        print(warning, file=sys.stderr, flush=True)
    registry = AuthRegistry(settings.auth_file) if settings.auth_file else None
    # Notices reach this process, and on PostgreSQL every other replica too.
    database = Database(settings.database_url, notifier=default_notifier(settings.database_url))
    blob_store = open_blob_store(settings.storage_url)
    hub = EventHub()
    database.notifier.subscribe(hub.on_notice)
    coordinator = DispatchCoordinator(
        database, settings.dispatch_settings, blob_store, settings.report_limits
    )
    catalogue = builtin_catalogue()
    submit = SubmitService(database, blob_store, catalogue, settings.submit_limits)
    page_tokens = PageTokens()
    deletion = JobDeletion(database, blob_store, settings.retention_policy)
    job_servicer = JobServicer(
        submit,
        JobQueries(database, page_tokens, catalogue.names),
        EventFeed(database, hub, resync_seconds=settings.resync_interval),
        CancelService(database),
        deletion,
        Discovery(database, catalogue, settings.lease_duration),
    )
    dispatch_servicer = DispatchServicer(coordinator)
    blob_servicer = BlobServicer(
        BlobAccess(
            database,
            blob_store,
            max_upload_bytes=settings.max_upload_bytes,
            admission=submit.admission,
            budget=submit.budget,
            held_assignment=coordinator.held_assignment,
        ),
        settings.upload_idle_timeout,
    )
    database.notifier.subscribe(job_metrics.record)
    job_metrics.watch_sessions(lambda: coordinator.sessions)
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[MetricsInterceptor(), AuthInterceptor(registry, JOB_SERVICE_POLICY)],
    )
    job_service_pb2_grpc.add_JobServiceServicer_to_server(job_servicer, server)
    dispatch_service_pb2_grpc.add_DispatchServiceServicer_to_server(dispatch_servicer, server)
    blob_service_pb2_grpc.add_BlobServiceServicer_to_server(blob_servicer, server)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    return JobServiceApp(
        settings=settings,
        server=server,
        database=database,
        coordinator=coordinator,
        job_servicer=job_servicer,
        dispatch_servicer=dispatch_servicer,
        health=health,
        page_tokens=page_tokens,
        deletion=deletion,
        blob_store=blob_store,
        tls=tls,
        sweeper=OrphanSweeper(database, blob_store, settings.sweep_interval, settings.orphan_grace),
    )


async def serve(settings: JobServiceSettings, stop_event: asyncio.Event) -> None:
    """Runs job-service until `stop_event` is set."""
    app = build_job_service(settings)
    address = await app.start()
    if app.metrics_address:
        print(f"videojobs-server: metrics on http://{app.metrics_address}/metrics", flush=True)
    print(f"videojobs-server: listening on {address}", flush=True)
    try:
        await stop_event.wait()
    finally:
        await app.stop()
