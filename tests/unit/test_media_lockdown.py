"""The attacks on the demuxer and the decoder, performed on real files.

An HLS playlist whose entries name a local HTTP server (that counts requests)
and another job's input, followed by a real MPEG-TS body: opened the old way
(PyAV guessing, the file's name visible) it reads the other job's video and
sends a GET. Through the pipeline code path it never does: with the format
recorded as `mpegts` only the TS body is read, and a legacy job (no recorded
format) is identified from its bytes and refused.

A video over the pixel cap fails with FRAME_TOO_LARGE before any of its
frames is decoded, in frame sampling and in probe; one real 8192x4608 case
with the default cap runs in a separate process whose peak memory is checked.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest

from videojobs.pipelines import builtin_catalogue
from videojobs.pipelines.base import PipelineFailure
from videojobs.pipelines.frames import SAMPLING_SPEC, SamplingReport, sample_frames, video_info
from videojobs.pipelines.media import (
    DEFAULT_MAX_FRAME_PIXELS,
    MediaSource,
    open_media,
    refuse_nested_open,
)
from videojobs.pipelines.probe import PIPELINE as PROBE
from videojobs.pipelines.probe import SPEC as PROBE_SPEC
from videojobs.pipelines.runner import run_job
from videojobs.stack.sample_video import write_sample_video
from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.blobstore import put_bytes
from videojobs.worker.child import LineReporter
from videojobs.worker.child import run as run_child_task
from videojobs.worker.protocol import ChildTask

# The attack's own TS body and the other job's video differ in every number.
BODY_SIZE, BODY_FRAMES = (64, 48), 10
OTHER_SIZE, OTHER_FRAMES = (320, 240), 30
ATTACK_KEY = "jobs/evil/input/source.m3u8"
OTHER_KEY = "jobs/other/input/source.mp4"


class QuietReporter:
    """Keeps progress and partial results."""

    def __init__(self) -> None:
        self.partials: list[dict] = []

    def progress(self, fraction: float, stage: str) -> None:
        pass

    def partial_result(self, data: dict) -> None:
        self.partials.append(data)


class CountingHttpServer:
    """An HTTP server on 127.0.0.1:0 that serves `body` and records every request."""

    def __init__(self, body: bytes) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                requests.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _video(*, size: tuple[int, int], frames: int, container_format: str = "mp4") -> bytes:
    target = io.BytesIO()
    write_sample_video(
        target, width=size[0], height=size[1], frames=frames, container_format=container_format
    )
    return target.getvalue()


@pytest.fixture(scope="module")
def other_video() -> bytes:
    return _video(size=OTHER_SIZE, frames=OTHER_FRAMES)


@pytest.fixture
def http_server(other_video) -> Iterator[CountingHttpServer]:
    server = CountingHttpServer(other_video)
    yield server
    server.stop()


@pytest.fixture
def attack(tmp_path, http_server, other_video):
    """A storage root holding another job's video and the attack upload."""
    store = open_blob_store(str(tmp_path / "storage"))
    put_bytes(store, StorageKey(OTHER_KEY), other_video)
    # Relative entries resolve against the playlist's own location:
    # jobs/evil/input/ + ../../other/input/source.mp4 = the other job's input.
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.2,\nhttp://127.0.0.1:{http_server.port}/segment.mp4\n"
        "#EXTINF:1.2,\n../../other/input/source.mp4\n#EXT-X-ENDLIST\n"
    ).encode()
    body = _video(size=BODY_SIZE, frames=BODY_FRAMES, container_format="mpegts")
    put_bytes(store, StorageKey(ATTACK_KEY), playlist + body)
    return store, tmp_path / "storage" / ATTACK_KEY


def _frame_sizes(container) -> list[tuple[int, int]]:
    return [(f.width, f.height) for f in container.decode(video=0)]


def test_the_attack_works_on_an_unlocked_open(attack, http_server):
    """The control: the file really is an attack for PyAV left to guess with
    the file's name in view (what workers did), so the tests below would see
    a request and foreign frames if the lockdown failed."""
    _, path = attack
    with open(path, "rb") as source, av.open(source) as container:
        assert container.format.name == "hls"
        sizes = _frame_sizes(container)
    assert http_server.requests, "the unlocked open never reached the HTTP server"
    assert OTHER_SIZE in set(sizes) and len(sizes) >= OTHER_FRAMES


def test_recorded_mpegts_reads_only_the_ts_body(attack, http_server):
    store, _ = attack
    output = run_job(
        builtin_catalogue(),
        ("probe", "scenes"),
        {},
        store,
        StorageKey(ATTACK_KEY),
        StorageKey("jobs/evil/attempts/1"),
        QuietReporter(),
        input_format="mpegts",
    )
    document = output.document
    (video,) = [s for s in document["sections"]["probe"]["streams"] if s["type"] == "video"]
    assert (video["width"], video["height"]) == BODY_SIZE
    assert video["frame_count"] == BODY_FRAMES
    assert document["sections"]["probe"]["container"]["format"] == "mpegts"
    assert (document["video"]["width"], document["video"]["height"]) == BODY_SIZE
    assert document["sampling"]["decoded_frames"] == BODY_FRAMES
    # FFmpeg's HTTP client waits for the answer, so any request it made was
    # recorded before run_job returned.
    assert http_server.requests == []


def test_open_media_with_recorded_format_decodes_only_the_body(attack, http_server):
    _, path = attack
    with open(path, "rb") as source, open_media(source, "mpegts") as container:
        assert str(path) not in container.name and "source.m3u8" not in container.name
        sizes = _frame_sizes(container)
    assert sizes == [BODY_SIZE] * BODY_FRAMES
    assert http_server.requests == []


def test_legacy_job_is_identified_from_its_bytes_and_refused(attack, http_server, tmp_path):
    task = ChildTask(
        storage_url=str(tmp_path / "storage"),
        job_id="evil",
        attempt=1,
        input_key=ATTACK_KEY,
        pipeline="probe",
        parameters={},
        output_prefix="jobs/evil/attempts/1",
        input_format="",
        max_frame_pixels=DEFAULT_MAX_FRAME_PIXELS,
        memory_limit_bytes=0,
    )
    lines = io.StringIO()
    with pytest.raises(PipelineFailure) as caught:
        run_child_task(task, LineReporter(lines, "probe"))
    assert caught.value.reason == "UNSUPPORTED_CONTAINER"
    assert "HLS playlist" in caught.value.message
    assert not caught.value.retryable
    assert lines.getvalue() == ""
    assert http_server.requests == []


def test_every_nested_open_is_refused_and_logged(attack, http_server, caplog):
    """Defence in depth: even the HLS demuxer itself, which no job can select,
    opens nothing through the `io_open` every open uses."""
    _, path = attack
    with open(path, "rb") as raw, pytest.raises(PipelineFailure) as caught:
        av.open(
            MediaSource(raw, "mpegts"),
            format="hls",
            io_open=refuse_nested_open,
            options={"protocol_whitelist": "file"},
        )
    assert caught.value.reason == "UNSUPPORTED_CONTAINER"
    refused = [r.getMessage() for r in caplog.records if "refused a nested open" in r.getMessage()]
    assert any("/segment.mp4" in message for message in refused), refused
    assert http_server.requests == []


@pytest.mark.parametrize(
    ("input_format", "reason"),
    [("mp4", "INPUT_NOT_MEDIA"), ("hls", "UNSUPPORTED_CONTAINER")],
)
def test_other_formats_forced_on_the_attack_fail(attack, http_server, input_format, reason):
    store, _ = attack
    with pytest.raises(PipelineFailure) as caught:
        run_job(
            builtin_catalogue(),
            ("probe",),
            {},
            store,
            StorageKey(ATTACK_KEY),
            StorageKey("jobs/evil/attempts/1"),
            QuietReporter(),
            input_format=input_format,
        )
    assert caught.value.reason == reason
    assert http_server.requests == []


# -- the pixel cap ------------------------------------------------------------


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "small.mp4"
    write_sample_video(path, width=320, height=240, frames=10)
    return path


CAP_BELOW = 320 * 240 - 1


def _assert_too_large(failure: PipelineFailure) -> None:
    assert failure.reason == "FRAME_TOO_LARGE"
    assert failure.code == "INVALID_ARGUMENT"
    assert not failure.retryable
    assert "320x240" in failure.message and "76,800" in failure.message
    assert f"{CAP_BELOW:,}" in failure.message


def test_frame_pipelines_refuse_a_stream_over_the_cap(tmp_path, small_video):
    store = open_blob_store(str(tmp_path / "storage"))
    put_bytes(store, StorageKey("jobs/j/input/source.mp4"), small_video.read_bytes())
    with pytest.raises(PipelineFailure) as caught:
        run_job(
            builtin_catalogue(),
            ("scenes", "thumbnails"),
            {},
            store,
            StorageKey("jobs/j/input/source.mp4"),
            StorageKey("jobs/j/attempts/1"),
            QuietReporter(),
            input_format="mp4",
            max_frame_pixels=CAP_BELOW,
        )
    _assert_too_large(caught.value)
    assert list(store.list(StorageKey("jobs/j/attempts"))) == []


def test_the_cap_holds_exactly(tmp_path, small_video):
    with (
        open(small_video, "rb") as source,
        open_media(source, "mp4", max_frame_pixels=320 * 240) as c,
    ):
        stream, info = video_info(c)
        frames = list(sample_frames(c, stream, SAMPLING_SPEC.validate({}), SamplingReport()))
    assert (info.width, info.height) == (320, 240) and len(frames) == 10


def test_sampling_refuses_before_decoding_even_without_video_info(small_video):
    report = SamplingReport()
    with (
        open(small_video, "rb") as source,
        open_media(source, "mp4", max_frame_pixels=CAP_BELOW) as c,
    ):
        with pytest.raises(PipelineFailure) as caught:
            next(sample_frames(c, c.streams.video[0], SAMPLING_SPEC.validate({}), report))
    _assert_too_large(caught.value)
    assert report.decoded_frames == 0


def test_probe_refuses_to_verify_a_stream_over_the_cap(small_video):
    with open(small_video, "rb") as raw, pytest.raises(PipelineFailure) as caught:
        PROBE.run(MediaSource(raw, "mp4", CAP_BELOW), PROBE_SPEC.validate({}), QuietReporter())
    _assert_too_large(caught.value)


def test_probe_without_verification_describes_a_stream_over_the_cap(small_video):
    """Reading headers allocates no picture, and the size is what the client
    wants to know: probe reports it (and counts frames by demuxing)."""
    parameters = PROBE_SPEC.validate({"verify_frames": 0, "count_frames": True})
    with open(small_video, "rb") as raw:
        output = PROBE.run(MediaSource(raw, "mp4", CAP_BELOW), parameters, QuietReporter())
    assert (output.summary["width"], output.summary["height"]) == (320, 240)
    assert output.summary["frame_count"] == 10


def test_a_stream_that_grows_past_the_cap_never_yields_a_large_frame():
    """Two H.264 streams back to back in one TS: 160x120, then 640x480. The
    decoder is told the cap, so the large pictures are refused (and counted
    as corrupt packets), never allocated."""
    small = _video(size=(160, 120), frames=10, container_format="mpegts")
    large = _video(size=(640, 480), frames=10, container_format="mpegts")
    report = SamplingReport()
    with open_media(io.BytesIO(small + large), "mpegts", max_frame_pixels=160 * 120 * 2) as c:
        stream, _ = video_info(c)
        frames = list(sample_frames(c, stream, SAMPLING_SPEC.validate({}), report))
    assert {(f.width, f.height) for f in frames} == {(160, 120)}
    assert report.decoded_frames == 10
    assert report.decode_errors > 0


# One real over-8K input with the default cap, in its own process so that its
# peak memory is its own. Decoding one 8192x4608 picture takes 54 MiB (4:2:0),
# the decoder holds several; opening and refusing must take far less.
_OVER_8K_SCRIPT = r"""
import json, sys
from videojobs.pipelines import builtin_catalogue
from videojobs.pipelines.base import PipelineFailure
from videojobs.pipelines.runner import run_job
from videojobs.storage import StorageKey, open_blob_store

class Quiet:
    def progress(self, fraction, stage): pass
    def partial_result(self, data): pass

def peak_resident_kib():
    # VmHWM, not getrusage: ru_maxrss survives fork and exec, so it would
    # start at the pytest process's size.
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))

store = open_blob_store(sys.argv[1])
before = peak_resident_kib()
outcomes = []
for key, input_format in (("jobs/a/input/source.mp4", "mp4"), ("jobs/b/input/source.ts", "mpegts")):
    for names, parameters in ((("scenes",), {}), (("probe",), {}), (("probe",), {"verify_frames": 0})):
        try:
            output = run_job(builtin_catalogue(), names, parameters, store, StorageKey(key),
                             StorageKey("jobs/x/attempts/1"), Quiet(), input_format=input_format)
            outcomes.append({"summary": output.summary})
        except PipelineFailure as exc:
            outcomes.append({"reason": exc.reason, "message": exc.message})
peak = peak_resident_kib()
print(json.dumps({"before_kib": before, "peak_kib": peak, "outcomes": outcomes}))
"""


def _write_large(target, width: int, height: int, container_format: str) -> None:
    """Two black frames, encoded as fast as x264 can."""
    with av.open(target, mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for index in range(2):
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_real_over_8k_video_is_refused_without_decoding(tmp_path):
    store = open_blob_store(str(tmp_path / "storage"))
    for key, container_format in (
        ("jobs/a/input/source.mp4", "mp4"),
        ("jobs/b/input/source.ts", "mpegts"),
    ):
        target = io.BytesIO()
        _write_large(target, 8192, 4608, container_format)
        put_bytes(store, StorageKey(key), target.getvalue())
    finished = subprocess.run(
        [sys.executable, "-c", _OVER_8K_SCRIPT, str(tmp_path / "storage")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    scenes_mp4, probe_mp4, header_mp4, scenes_ts, probe_ts, header_ts = report["outcomes"]
    for refused in (scenes_mp4, probe_mp4, scenes_ts, probe_ts):
        assert refused["reason"] == "FRAME_TOO_LARGE"
        assert "8192x4608" in refused["message"]
        assert f"{DEFAULT_MAX_FRAME_PIXELS:,}" in refused["message"]
    for described in (header_mp4, header_ts):
        assert (described["summary"]["width"], described["summary"]["height"]) == (8192, 4608)
    grown_mib = (report["peak_kib"] - report["before_kib"]) / 1024
    assert grown_mib < 32, f"refusing the 8K input took {grown_mib:.0f} MiB: frames were decoded"
