"""Optional OpenTelemetry tracing, off unless `VIDEOJOBS_TRACING` says where
spans go:

- `otlp`: to an OpenTelemetry collector, configured by the standard
  `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, TLS);
- `console`: each span as JSON on stderr;
- `jsonl:PATH`: each span as one JSON line appended to PATH.

When on, gRPC's own instrumentation traces every call each service serves
and makes, and a job's spans form one trace from its submit: the SubmitVideo
call's context is stored with the job (`jobs.trace_parent`, a W3C
traceparent), the assignment carries it to the worker, and job-service's
dispatch and result spans and the worker's run span are its children. When
off, nothing of OpenTelemetry is imported and every helper here is a no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

TRACING_MODES = ("", "otlp", "console", "jsonl:PATH")

_tracer: Any = None  # an opentelemetry Tracer once `setup_tracing` turned tracing on


class TracingConfigError(ValueError):
    """`VIDEOJOBS_TRACING` names no known destination."""


def check_tracing_mode(mode: str) -> str:
    """Returns `mode` if it is one this module understands.

    Raises:
        TracingConfigError: it is not.
    """
    if mode in ("", "otlp", "console") or (mode.startswith("jsonl:") and len(mode) > 6):
        return mode
    raise TracingConfigError(
        f"VIDEOJOBS_TRACING={mode!r}: use otlp, console or jsonl:PATH (or leave it empty)"
    )


def setup_tracing(service_name: str, mode: str) -> None:
    """Turns tracing on for this process (call before any gRPC server or
    channel is made); `mode` empty leaves it off."""
    global _tracer
    if not check_tracing_mode(mode):
        return
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
        GrpcInstrumentorClient,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    else:
        path = mode.removeprefix("jsonl:")
        provider.add_span_processor(SimpleSpanProcessor(_JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
    GrpcInstrumentorClient().instrument()
    _tracer = trace.get_tracer("videojobs")
    log.info("tracing on (%s) as service %s", mode, service_name)


def tracing_on() -> bool:
    """Whether this process traces."""
    return _tracer is not None


def current_trace_parent() -> str | None:
    """The W3C traceparent of the current span (the call being served), or
    None when tracing is off or there is no span."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def job_span(
    name: str,
    trace_parent: str | None,
    attributes: Mapping[str, Any],
    *,
    start: datetime | None = None,
) -> Iterator[None]:
    """A span of a job's trace: a child of the context `trace_parent`
    names (a new trace when it is empty), from `start` (default now) to the
    end of the block. No-op when tracing is off."""
    if _tracer is None:
        yield
        return
    from opentelemetry.propagate import extract

    context = extract({"traceparent": trace_parent}) if trace_parent else None
    start_ns = int(start.timestamp() * 1e9) if start is not None else None
    with _tracer.start_as_current_span(
        name,
        context=context,
        attributes={k: v for k, v in attributes.items() if v is not None},
        start_time=start_ns,
    ):
        yield


class _JsonLinesExporter:
    """Appends each finished span to a file as one JSON line."""

    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        with open(self._path, "a", encoding="utf-8") as out:
            for span in spans:
                out.write(span.to_json(indent=None) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
