"""`videojobs-worker`: one worker process. SIGTERM, SIGINT or DrainWorker drain
it (finish or hand back jobs within the grace period) and it exits 0."""

from __future__ import annotations

import asyncio
import logging
import sys

import grpc

from videojobs.common.auth import AuthFileError, AuthRegistry, Role
from videojobs.common.auth_interceptor import AuthInterceptor
from videojobs.common.config import run_until_signalled, setup_logging
from videojobs.common.grpc_server import (
    SERVER_OPTIONS,
    ListenError,
    add_health_and_reflection,
    bind,
    mark_serving,
)
from videojobs.common.logs import bind_log_fields
from videojobs.common.metrics import MetricsInterceptor, serve_metrics
from videojobs.common.security import SecurityConfigError, check_exposure
from videojobs.common.tracing import setup_tracing
from videojobs.pipelines import builtin_catalogue
from videojobs.v1 import worker_service_pb2, worker_service_pb2_grpc
from videojobs.worker.agent import WorkerAgent
from videojobs.worker.metrics import watch_agent
from videojobs.worker.servicer import WorkerServicer
from videojobs.worker.settings import WorkerSettings, parse_settings

log = logging.getLogger(__name__)

SERVICE_NAMES = [worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name]
# WorkerService (status, drain) is for administrators only.
WORKER_SERVICE_POLICY = {
    f"/{SERVICE_NAMES[0]}/{method.name}": frozenset({Role.ADMIN})
    for method in worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].methods
}


def resolve_pipelines(settings: WorkerSettings) -> list[str]:
    """The pipelines this worker announces: the configured ones (each must be
    installed) or every installed pipeline."""
    catalogue = builtin_catalogue()
    if not settings.pipelines:
        return catalogue.names
    unknown = sorted(set(settings.pipelines) - set(catalogue.names))
    if unknown:
        raise SystemExit(
            f"unknown pipeline(s) {', '.join(unknown)}; installed: {', '.join(catalogue.names)}"
        )
    return list(settings.pipelines)


async def serve(settings: WorkerSettings, stop_requested: asyncio.Event) -> None:
    """Runs the worker until drained."""
    bind_log_fields(worker_id=settings.worker_id)
    warning = check_exposure(
        settings.listen,
        authenticated=bool(settings.auth_file),
        tls=settings.tls is not None,
        insecure=settings.insecure,
        service="worker-service",
    )
    if warning:
        log.warning(warning)
        print(warning, file=sys.stderr, flush=True)
    registry = AuthRegistry(settings.auth_file) if settings.auth_file else None
    agent = WorkerAgent(settings, resolve_pipelines(settings), on_replaced=stop_requested.set)
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=[MetricsInterceptor(), AuthInterceptor(registry, WORKER_SERVICE_POLICY)],
    )
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
        WorkerServicer(agent, stop_requested), server
    )
    health = add_health_and_reflection(server, SERVICE_NAMES)
    credentials = settings.tls.credentials() if settings.tls is not None else None
    address = bind(server, settings.listen, credentials)
    agent.status_address = address
    metrics_endpoint = None
    if settings.metrics_listen:
        watch_agent(lambda: len(agent.jobs), settings.concurrency, lambda: agent.connected)
        metrics_endpoint = serve_metrics(settings.metrics_listen)
        print(f"videojobs-worker: metrics on http://{metrics_endpoint.address}/metrics", flush=True)
    await server.start()
    await mark_serving(health, SERVICE_NAMES)
    print(f"videojobs-worker: listening on {address}", flush=True)
    log.info(
        "worker %s serving on %s, connecting to %s (pipelines %s, concurrency %d)",
        settings.worker_id,
        address,
        settings.address,
        ",".join(agent.pipelines),
        settings.concurrency,
    )
    await agent.start_pool()
    session = asyncio.create_task(agent.run(), name="dispatch-session")
    await stop_requested.wait()
    await agent.drain(settings.drain_grace)
    await session
    await server.stop(1.0)
    if metrics_endpoint is not None:
        await asyncio.to_thread(metrics_endpoint.stop)
    log.info("worker %s stopped", settings.worker_id)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `videojobs-worker` command."""
    settings = parse_settings(argv)
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing("videojobs-worker", settings.tracing)
    try:
        run_until_signalled(lambda stop: serve(settings, stop))
    except (SecurityConfigError, AuthFileError, ListenError) as exc:
        print(f"videojobs-worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
