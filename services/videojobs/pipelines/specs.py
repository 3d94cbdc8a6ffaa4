"""The declared specs of the built-in pipelines and of frame sampling: names,
versions, descriptions, typed parameters with their defaults and checks, and
default execution timeouts.

Everything job-service needs to accept a job (submit validation, `plan_job`,
the catalogue) lives here, and this module imports nothing but `base`: no
PyAV, OpenCV, NumPy, ONNX Runtime or RapidOCR. The implementation modules
(`probe`, `ocr`, `detect`, `scenes`, `thumbnails`, `frames`) import their spec
from here and re-export it as `SPEC` (`SAMPLING_SPEC`), so both sides always
see the same object. Only the worker's pipeline children load the
implementations (`PipelineCatalogue.get`).
"""

from __future__ import annotations

from videojobs.pipelines.base import ParameterSpec, PipelineSpec

# -- frame sampling (shared by every frame pipeline of a job) -----------------

SAMPLING_PARAMETERS = (
    ParameterSpec("frame_stride", "int", "Analyse every n-th decoded frame.", 1, 1, 10_000),
    ParameterSpec("max_frames", "int", "Stop after this many samples (0: no limit).", 0, 0, 1e7),
    ParameterSpec("start_time", "float", "Skip frames before this time (seconds).", 0.0, 0, 1e7),
    ParameterSpec("end_time", "float", "Stop at this time in seconds (0: the end).", 0.0, 0, 1e7),
    ParameterSpec(
        "target_fps", "float", "At most this many samples per second (0: all).", 0.0, 0, 1000
    ),
)
SAMPLING_SPEC = PipelineSpec(
    name="sampling", version="1", description="frame sampling", parameters=SAMPLING_PARAMETERS
)

# -- probe ---------------------------------------------------------------------

PROBE_SPEC = PipelineSpec(
    name="probe",
    version="1.0.0",
    description="Container and stream metadata (format, duration, codecs, sizes, frame counts).",
    parameters=(
        ParameterSpec(
            name="count_frames",
            type="bool",
            default=False,
            description="Count video frames by demuxing even when the header states a count.",
        ),
        ParameterSpec(
            name="verify_frames",
            type="int",
            default=3,
            minimum=0,
            maximum=1000,
            description="How many frames of the first video stream to decode to prove it decodes.",
        ),
    ),
    analyses_frames=False,
)

# -- ocr -----------------------------------------------------------------------

OCR_SPEC = PipelineSpec(
    name="ocr",
    version="1.0.0",
    description="Text in frames (RapidOCR) merged into text tracks with the time span they are visible.",
    parameters=(
        ParameterSpec(
            name="min_confidence",
            type="float",
            default=0.5,
            minimum=0.0,
            maximum=1.0,
            description="Drop text read with a lower recognition confidence (0..1).",
        ),
        ParameterSpec(
            name="max_side",
            type="int",
            default=960,
            minimum=0,
            maximum=16_384,
            description="Downscale frames so the longer side is at most this before OCR (0: never).",
        ),
        ParameterSpec(
            name="merge_gap_seconds",
            type="float",
            default=1.0,
            minimum=0.0,
            maximum=86_400.0,
            description="Longest time text may go unseen and still continue the same track.",
        ),
    ),
    # About 0.1-0.5 s of CPU per 640x360 frame: long videos need sparse sampling or time.
    default_execution_timeout_seconds=1800.0,
    analyses_frames=True,
)

# -- detect --------------------------------------------------------------------

DETECT_CLASSES = ("qr_code", "face", "person")


def parse_classes(value: str) -> tuple[str, ...]:
    """The classes named in a comma-separated list, in DETECT_CLASSES order;
    raises ValueError for an unknown name or an empty list."""
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = sorted(names - set(DETECT_CLASSES))
    if unknown:
        raise ValueError(
            f"unknown class {', '.join(unknown)} (accepted: {', '.join(DETECT_CLASSES)})"
        )
    if not names:
        raise ValueError(f"must name at least one of: {', '.join(DETECT_CLASSES)}")
    return tuple(c for c in DETECT_CLASSES if c in names)


DETECT_SPEC = PipelineSpec(
    name="detect",
    version="1.0.0",
    description="QR codes (decoded), faces and people per frame with OpenCV, tracked over time.",
    parameters=(
        ParameterSpec(
            "classes",
            "string",
            "Comma-separated classes to detect: any of qr_code, face, person.",
            ",".join(DETECT_CLASSES),
            check=parse_classes,
        ),
        ParameterSpec(
            "min_confidence", "float", "Drop detections below this confidence (0..1).", 0.3, 0, 1
        ),
        ParameterSpec(
            "max_side",
            "int",
            "Scale frames down to at most this many pixels on the longer side for detection.",
            960,
            64,
            8192,
        ),
        ParameterSpec(
            "iou_threshold",
            "float",
            "Least box overlap (IoU) for a detection to continue a track.",
            0.3,
            0.01,
            1,
        ),
        ParameterSpec(
            "max_missed_seconds",
            "float",
            "A track ends when its object is unseen for longer than this (seconds).",
            1.0,
            0,
            3600,
        ),
    ),
    analyses_frames=True,
)

# -- scenes --------------------------------------------------------------------

# Hard cuts between real shots score about 0.3 to 0.8; steady camera pans and
# moving objects stay near 0.05 to 0.15 (measured on synthetic textures).
DEFAULT_THRESHOLD = 0.25
DEFAULT_MIN_SHOT_SECONDS = 0.5

THRESHOLD_PARAMETER = ParameterSpec(
    name="threshold",
    type="float",
    default=DEFAULT_THRESHOLD,
    minimum=0.0,
    maximum=1.0,
    description=(
        "Content change (0: identical, 1: nothing in common) above which a sample starts a "
        "new shot. Lower finds subtler cuts and risks splitting shots on fast motion."
    ),
)
MIN_SHOT_SECONDS_PARAMETER = ParameterSpec(
    name="min_shot_seconds",
    type="float",
    default=DEFAULT_MIN_SHOT_SECONDS,
    minimum=0.0,
    maximum=3600.0,
    description="Shortest shot in seconds: a cut sooner than this after the last one is ignored.",
)

SCENES_SPEC = PipelineSpec(
    name="scenes",
    version="1.0.0",
    description="Shot boundaries (hard cuts) by content change between sampled frames.",
    parameters=(THRESHOLD_PARAMETER, MIN_SHOT_SECONDS_PARAMETER),
    analyses_frames=True,
)

# -- thumbnails ----------------------------------------------------------------

THUMBNAIL_MODES = ("shot", "interval")
# File names have four digits: the cap keeps them sortable as text.
MAX_THUMBNAILS_LIMIT = 10_000


def check_mode(value: str) -> None:
    """Raises ValueError unless `value` is one of THUMBNAIL_MODES."""
    if value not in THUMBNAIL_MODES:
        raise ValueError(f"must be one of: {', '.join(THUMBNAIL_MODES)}")


THUMBNAILS_SPEC = PipelineSpec(
    name="thumbnails",
    version="1.0.0",
    description="JPEG thumbnails, one per shot or one per time interval, stored as artifacts.",
    parameters=(
        ParameterSpec(
            name="mode",
            type="string",
            default="shot",
            description=(
                "'shot': one image per shot (its first sampled frame); "
                "'interval': one image every interval_seconds of video time."
            ),
            check=check_mode,
        ),
        ParameterSpec(
            name="interval_seconds",
            type="float",
            default=5.0,
            minimum=0.001,
            maximum=86_400.0,
            description="Seconds of video time between images in 'interval' mode.",
        ),
        ParameterSpec(
            name="max_width",
            type="int",
            default=320,
            minimum=16,
            maximum=8192,
            description="Widest image in pixels; larger frames are scaled down, aspect kept.",
        ),
        ParameterSpec(
            name="quality",
            type="int",
            default=85,
            minimum=1,
            maximum=100,
            description="JPEG quality, 1 (smallest) to 100 (best).",
        ),
        ParameterSpec(
            name="max_thumbnails",
            type="int",
            default=100,
            minimum=1,
            maximum=MAX_THUMBNAILS_LIMIT,
            description="Most images to make; later frames are skipped.",
        ),
        THRESHOLD_PARAMETER,
        MIN_SHOT_SECONDS_PARAMETER,
    ),
    analyses_frames=True,
)

# Every built-in pipeline's spec by name (the catalogue's light side).
BUILTIN_SPECS: dict[str, PipelineSpec] = {
    spec.name: spec for spec in (DETECT_SPEC, OCR_SPEC, PROBE_SPEC, SCENES_SPEC, THUMBNAILS_SPEC)
}
