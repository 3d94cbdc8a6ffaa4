"""Tasks for a warm pipeline process, as the worker would hand them over."""

from __future__ import annotations

from videojobs.pipelines.media import DEFAULT_MAX_FRAME_PIXELS
from videojobs.worker.protocol import ChildTask


def probe_task(storage_url: str, job_id: str, attempt: int = 1) -> ChildTask:
    """A `probe` of `jobs/{job_id}/input/source.mp4` (an MP4) in `storage_url`,
    writing under the attempt's prefix."""
    return ChildTask(
        storage_url=storage_url,
        job_id=job_id,
        attempt=attempt,
        input_key=f"jobs/{job_id}/input/source.mp4",
        pipeline="probe",
        parameters={},
        output_prefix=f"jobs/{job_id}/attempts/{attempt}",
        input_format="mp4",
        max_frame_pixels=DEFAULT_MAX_FRAME_PIXELS,
        memory_limit_bytes=0,
    )
