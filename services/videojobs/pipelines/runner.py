"""Runs a job's plan over one input: container pipelines read the file, frame
pipelines share one decode; findings stream out in batches as they come.

Used by the worker's pipeline child process; it knows storage keys and PyAV,
nothing about gRPC or the database. The input is only ever opened with the
container format recorded for the job and the worker's pixel cap
(`media.open_media`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from videojobs.pipelines.base import PipelineReporter
from videojobs.pipelines.frames import (
    SAMPLING_SPEC,
    AnalysisContext,
    ArtifactOut,
    SamplingReport,
    sample_frames,
    video_info,
)
from videojobs.pipelines.media import (
    DEFAULT_MAX_FRAME_PIXELS,
    MediaSource,
    allowed_container,
    open_media,
)
from videojobs.pipelines.plan import SAMPLING, is_frame_pipeline, parameters_of
from videojobs.pipelines.registry import PipelineCatalogue
from videojobs.storage import BlobStore, StorageKey

# Findings go out at most this often (plus progress at most every 0.1 s), so a
# long job sends a handful of events a second, not one per frame.
PARTIAL_FLUSH_SECONDS = 0.25
PARTIAL_MAX_ENTRIES = 500
# job-service refuses a partial result over 256 KiB (serialized) and more than
# 10 a second per job: batches stay at half that size (as JSON), and a burst of
# findings is sent at most 8 times a second (the pipeline waits, briefly).
PARTIAL_MAX_JSON_BYTES = 128 * 1024
PARTIAL_MIN_INTERVAL_SECONDS = 0.125
RESULT_VERSION = 1


@dataclass
class JobOutput:
    """The result document, the job summary and the files written."""

    document: dict[str, Any]
    summary: dict[str, Any]
    artifacts: list[ArtifactOut] = field(default_factory=list)


class ScaledReporter:
    """Maps a pipeline's 0..1 progress into a slice of the job's progress."""

    def __init__(self, reporter: PipelineReporter, low: float, high: float) -> None:
        self._reporter, self._low, self._high = reporter, low, high

    def progress(self, fraction: float, stage: str) -> None:
        """Progress within the slice."""
        scaled = self._low + (self._high - self._low) * min(1.0, max(0.0, fraction))
        self._reporter.progress(min(scaled, 0.99), stage)

    def partial_result(self, data: dict) -> None:
        """Passed through."""
        self._reporter.partial_result(data)


class FrameBatcher:
    """Collects per-frame entries and sends them as one partial result at most
    every PARTIAL_FLUSH_SECONDS, or sooner when a batch reaches
    PARTIAL_MAX_ENTRIES entries or PARTIAL_MAX_JSON_BYTES, but never more often
    than every PARTIAL_MIN_INTERVAL_SECONDS: the live stream stays within what
    job-service accepts however many findings a video holds. An entry too big
    for a batch on its own goes out without its findings (counted instead);
    the result document always holds them all."""

    def __init__(self, reporter: PipelineReporter) -> None:
        self._reporter = reporter
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._last_flush = time.monotonic()

    def add(self, entry: dict[str, Any]) -> None:
        """Queues an entry; flushes when due."""
        size = len(json.dumps(entry, separators=(",", ":")))
        if size > PARTIAL_MAX_JSON_BYTES:
            entry = _without_findings(entry)
            size = len(json.dumps(entry, separators=(",", ":")))
        if self._pending_bytes + size > PARTIAL_MAX_JSON_BYTES:
            self.flush()
        self._pending.append(entry)
        self._pending_bytes += size
        now = time.monotonic()
        if (
            now - self._last_flush >= PARTIAL_FLUSH_SECONDS
            or len(self._pending) >= PARTIAL_MAX_ENTRIES
        ):
            self.flush()

    def flush(self) -> None:
        """Sends what is pending (waiting out the minimum interval first)."""
        if self._pending:
            wait = PARTIAL_MIN_INTERVAL_SECONDS - (time.monotonic() - self._last_flush)
            if wait > 0:
                time.sleep(wait)  # backpressure: job-service limits the rate
            self._reporter.partial_result({"frames": self._pending})
            self._pending = []
            self._pending_bytes = 0
        self._last_flush = time.monotonic()


def _without_findings(entry: dict[str, Any]) -> dict[str, Any]:
    """A frame entry with each pipeline's findings replaced by their count."""
    slim: dict[str, Any] = {"index": entry.get("index"), "time": entry.get("time")}
    slim["truncated"] = {
        name: len(found) for name, found in entry.items() if isinstance(found, list)
    }
    return slim


def run_job(
    catalogue: PipelineCatalogue,
    names: tuple[str, ...],
    parameters: dict[str, Any],
    store: BlobStore,
    input_key: StorageKey,
    output_prefix: StorageKey,
    reporter: PipelineReporter,
    *,
    input_format: str,
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
) -> JobOutput:
    """Runs every pipeline of the job; see the module docstring.

    `input_format` names the input's container in `containers.ALLOWED_FORMATS`
    (the demuxer forced on every open); `max_frame_pixels` is the largest
    picture decoded. Container pipelines get the input as a `MediaSource`
    carrying both. Raises PipelineFailure (UNSUPPORTED_CONTAINER for an
    unknown format, FRAME_TOO_LARGE, the pipelines' own failures).
    """
    allowed_container(input_format)  # refuse an unknown format before any work
    single = len(names) == 1
    pipelines = {name: catalogue.get(name) for name in names}
    # Validated again here: parameters cross the wire as JSON (every number a
    # double), and this restores their declared types and defaults.
    parameters = {
        name: pipeline.spec.validate(parameters_of(parameters, name, single))
        for name, pipeline in pipelines.items()
    } | (
        {SAMPLING: SAMPLING_SPEC.validate(parameters.get(SAMPLING) or {})}
        if any(is_frame_pipeline(p) for p in pipelines.values())
        else {}
    )
    container_names = [n for n in names if not is_frame_pipeline(pipelines[n])]
    frame_names = [n for n in names if is_frame_pipeline(pipelines[n])]
    sections: dict[str, Any] = {}
    summaries: dict[str, Any] = {}
    artifacts: list[ArtifactOut] = []
    warnings: list[str] = []
    document: dict[str, Any] = {"version": RESULT_VERSION, "pipelines": list(names)}

    container_share = 0.1 if frame_names else 1.0
    for position, name in enumerate(container_names):
        low = container_share * position / len(container_names)
        high = container_share * (position + 1) / len(container_names)
        with store.open_read(input_key) as raw:
            source = MediaSource(raw, input_format, max_frame_pixels)
            output = pipelines[name].run(
                source, parameters[name], ScaledReporter(reporter, low, high)
            )
        sections[name] = output.result
        summaries[name] = output.summary

    if frame_names:
        sampling = parameters[SAMPLING]
        with (
            store.open_read(input_key) as source,
            open_media(source, input_format, max_frame_pixels=max_frame_pixels) as container,
        ):
            stream, info = video_info(container)
            context = AnalysisContext(store=store, output_prefix=output_prefix, video=info)
            analyzers = {
                name: pipelines[name].analyzer(parameters[name], context) for name in frame_names
            }
            report = SamplingReport()
            batcher = FrameBatcher(reporter)
            entries: list[dict[str, Any]] = []
            low = container_share if container_names else 0.0
            start = sampling["start_time"]
            end = sampling["end_time"] or info.duration or 0.0
            span = max(end - start, 1e-6)
            last_time = None
            reporter.progress(low, "decoding")
            for frame in sample_frames(container, stream, sampling, report):
                entry: dict[str, Any] | None = None
                for name, analyzer in analyzers.items():
                    found = analyzer.process(frame)
                    if found:
                        entry = entry or {"index": frame.index, "time": frame.time}
                        entry[name] = found
                if entry is not None:
                    entries.append(entry)
                    batcher.add(entry)
                last_time = frame.time
                done = low + (1.0 - low) * (frame.time - start) / span
                reporter.progress(min(done, 0.99), "analysing frames")
            batcher.flush()
            for name, analyzer in analyzers.items():
                outcome = analyzer.finish()
                sections[name] = outcome.section
                summaries[name] = outcome.summary
                artifacts.extend(outcome.artifacts)
        warnings.extend(_sampling_warnings(report, info, sampling, last_time))
        document["video"] = {
            "width": info.width,
            "height": info.height,
            "fps": round(info.fps, 6),
            "duration_seconds": None if info.duration is None else round(info.duration, 6),
            "frame_count": info.frame_count,
            "codec": info.codec,
        }
        document["sampling"] = {
            **sampling,
            "decoded_frames": report.decoded_frames,
            "sampled_frames": report.sampled_frames,
            "decode_errors": report.decode_errors,
        }
        document["frames"] = entries

    document["sections"] = sections
    document["warnings"] = warnings
    summary = summaries[names[0]] if single else summaries
    if warnings:
        summary = {**summary, "warnings": len(warnings)}
    return JobOutput(document=document, summary=summary, artifacts=artifacts)


def _sampling_warnings(report: SamplingReport, info, sampling, last_time) -> list[str]:
    warnings = []
    if report.decode_errors:
        warnings.append(
            f"{report.decode_errors} corrupt packet(s) could not be decoded and were skipped; "
            f"the results cover the {report.decoded_frames} frame(s) that decoded"
        )
    expected_end = sampling["end_time"] or info.duration
    frame_time = 1.0 / info.fps if info.fps else 0.0
    stopped_early = sampling["max_frames"] and report.sampled_frames >= sampling["max_frames"]
    if (
        expected_end
        and last_time is not None
        and not stopped_early
        and last_time
        + max(
            2 * frame_time,
            sampling["frame_stride"] * frame_time,
            1.0 / sampling["target_fps"] if sampling["target_fps"] else 0.0,
            0.5,
        )
        < expected_end
    ):
        warnings.append(
            f"the video stream ends at {last_time:.2f}s, before the {expected_end:.2f}s "
            "its header announces (truncated?); results cover what was there"
        )
    return warnings
