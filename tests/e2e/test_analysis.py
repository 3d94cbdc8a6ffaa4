"""Frame analysis through the real processes: a multi-pipeline job over one
decode, live partial results, the result document against its JSON Schema,
and the documented outcome of every kind of bad video."""

from __future__ import annotations

import json
import random
from importlib import resources

import av
import cv2
import grpc
import jsonschema
import numpy as np
import pytest
from google.protobuf import json_format

from videojobs.storage import StorageKey, open_blob_store
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.drawn import draw_video
from support.sync_api import Api
from support.videos import write_audio_only, write_sample_video

pytestmark = pytest.mark.e2e

SCHEMA = json.loads(
    resources.files("videojobs.pipelines").joinpath("schemas/result.schema.json").read_text()
)


def _document(stack, job) -> dict:
    store = open_blob_store(str(stack.data_dir / "storage"))
    with store.open_read(StorageKey(job.output_key)) as handle:
        document = json.load(handle)
    jsonschema.validate(document, SCHEMA)
    return document


def test_multi_pipeline_job_over_one_decode(stack, tmp_path):
    drawn = draw_video(tmp_path / "drawn.mp4")
    stack.start_server()
    stack.start_worker("analyst")
    api = Api(stack.address)
    job = api.submit_pipelines(
        drawn.path.read_bytes(),
        ["scenes", "detect", "thumbnails"],
        {"detect": {"classes": "qr_code"}, "thumbnails": {"max_width": 160}},
    )
    assert list(job.pipelines) == ["detect", "scenes", "thumbnails"]
    assert job.pipeline == "detect+scenes+thumbnails"
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    document = _document(stack, done)
    assert document["sampling"]["decoded_frames"] == drawn.frames  # decoded once
    assert document["sampling"]["sampled_frames"] == drawn.frames

    # scenes: the cut at exactly the drawn frame.
    cuts = document["sections"]["scenes"]["cuts"]
    assert [c["frame"] for c in cuts] == list(drawn.cuts)
    assert cuts[0]["time"] == pytest.approx(drawn.cuts[0] / drawn.fps, abs=1e-3)
    # detect: the moving QR code found in every frame, decoded, one track.
    qr_tracks = document["sections"]["detect"]["tracks"]
    assert len(qr_tracks) == 1
    assert qr_tracks[0]["payload"] == drawn.qr_payload
    assert qr_tracks[0]["samples"] == drawn.frames
    per_frame = {entry["index"]: entry for entry in document["frames"]}
    for index, (x, y, width, height) in enumerate(drawn.qr_boxes):
        (found,) = per_frame[index]["detect"]
        assert found["track_id"] == qr_tracks[0]["track_id"]
        box = found["box"]
        drawn_box = (x, y, width, height)
        got = (box["x"], box["y"], box["width"], box["height"])
        assert all(abs(a - b) <= 4 for a, b in zip(got, drawn_box, strict=True)), (index, got)
    # thumbnails: one per shot, stored, decodable, sizes as stated.
    store = open_blob_store(str(stack.data_dir / "storage"))
    images = document["sections"]["thumbnails"]["images"]
    assert len(images) == len(drawn.cuts) + 1
    # One per shot, taken at each shot's first frame.
    assert [image["frame"] for image in images] == [0, *drawn.cuts]
    artifacts = {a.key: a for a in done.artifacts}
    for image in images:
        with store.open_read(StorageKey(image["key"])) as handle:
            data = handle.read()
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape[1] == image["width"] == 160
        assert decoded.shape[0] == image["height"] == 90
        assert artifacts[image["key"]].size_bytes == len(data) == image["size_bytes"]
        artifact = artifacts[image["key"]]
        assert artifact.media_type == "image/jpeg"
        assert (artifact.width, artifact.height) == (image["width"], image["height"])
        assert artifact.index == image["index"] and artifact.frame_index == image["frame"]
        assert artifact.time_seconds == pytest.approx(image["time"])
        assert image["key"].startswith(f"jobs/{job.job_id}/attempts/1/")
    assert json_format.MessageToDict(done.summary)["scenes"]["shots"] == 2
    api.close()


def test_partial_results_arrive_while_the_job_runs(stack, tmp_path):
    drawn = draw_video(tmp_path / "long.mp4", frames=200, cuts=(60, 140))
    stack.start_server()
    stack.start_worker("streamer")
    api = Api(stack.address)
    job = api.submit_pipelines(drawn.path.read_bytes(), ["detect"], {"classes": "qr_code"})
    states_at_partials = []
    events = []
    for response in api.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id), timeout=120):
        events.append(response.event)
        if response.event.WhichOneof("payload") == "partial_result" and not states_at_partials:
            states_at_partials.append(api.job(job.job_id).state)
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[-1] == "completed"
    assert states_at_partials == [job_pb2.JOB_STATE_RUNNING]
    partial_frames = [
        entry["index"]
        for e in events
        if e.WhichOneof("payload") == "partial_result"
        for entry in json_format.MessageToDict(e.partial_result.data)["frames"]
    ]
    assert sorted(partial_frames) == list(range(drawn.frames))  # every finding, once
    # Batched: far fewer events than frames, about 20 a second at most.
    running = [e for e in events if e.job_state == job_pb2.JOB_STATE_RUNNING]
    seconds = (
        events[-1].create_time.ToDatetime() - running[0].create_time.ToDatetime()
    ).total_seconds()
    print(f"\n{len(events)} events for {drawn.frames} frames over {seconds:.2f}s")
    assert len(events) < drawn.frames / 4
    assert len(running) / max(seconds, 0.5) <= 25
    fractions = [e.progress.fraction for e in events if e.WhichOneof("payload") == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    api.close()


def _bad_videos(tmp_path) -> dict[str, bytes]:
    good = tmp_path / "good.mp4"
    write_sample_video(good, width=320, height=240, fps=25, frames=100)
    data = good.read_bytes()
    faststart = tmp_path / "faststart.mp4"
    _remux_faststart(good, faststart)
    front = faststart.read_bytes()
    mkv = tmp_path / "real.mkv"
    write_sample_video(mkv, container_format="matroska", frames=30)
    audio = tmp_path / "audio.mp4"
    write_audio_only(audio, seconds=1.0)
    box = data.index(b"mdat") - 4
    size = int.from_bytes(data[box : box + 4], "big")
    corrupt = bytearray(data)
    noise = random.Random(3)
    middle = box + 8 + size // 2
    for offset in range(middle, middle + min(20000, size // 4)):
        corrupt[offset] = noise.randrange(256)
    return {
        "truncated_index_at_end": data[: len(data) * 6 // 10],
        "truncated_index_at_front": front[: len(front) * 6 // 10],
        "zero_length": b"",
        "matroska_named_mp4": mkv.read_bytes(),
        "audio_only": audio.read_bytes(),
        "corrupt_mid_stream": bytes(corrupt),
        "unsupported_codec": data.replace(b"avc1", b"zzzz"),
    }


def _remux_faststart(source, target) -> None:
    with (
        av.open(str(source)) as src,
        av.open(str(target), "w", format="mp4", options={"movflags": "faststart"}) as dst,
    ):
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)


EXPECTED = {
    # name: (refused at submit with, or (final state, error reason, has warning))
    "truncated_index_at_end": ("NOT_A_VIDEO", None, None),
    "zero_length": ("INVALID_ARGUMENT", None, None),
    "truncated_index_at_front": (None, job_pb2.JOB_STATE_SUCCEEDED, True),
    "matroska_named_mp4": (None, job_pb2.JOB_STATE_SUCCEEDED, False),
    "corrupt_mid_stream": (None, job_pb2.JOB_STATE_SUCCEEDED, True),
    "audio_only": (None, job_pb2.JOB_STATE_FAILED, "NO_VIDEO_STREAM"),
    "unsupported_codec": (None, job_pb2.JOB_STATE_FAILED, "UNSUPPORTED_CODEC"),
}


def test_every_bad_video_has_its_documented_outcome(stack, tmp_path):
    videos = _bad_videos(tmp_path)
    stack.start_server()
    worker = stack.start_worker("sturdy")
    api = Api(stack.address)
    for name, data in videos.items():
        refused_reason, state, detail = EXPECTED[name]
        try:
            job = api.submit_pipelines(data, ["scenes"], {}, file_name="clip.mp4")
        except grpc.RpcError as exc:
            assert refused_reason is not None, f"{name} was refused: {exc.details()}"
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            continue
        assert refused_reason is None, f"{name} should have been refused"
        done = api.wait_terminal(job.job_id)
        assert done.state == state, (name, done.error.message)
        assert done.attempt == 1, f"{name}: a bad video is never retried"
        if state == job_pb2.JOB_STATE_FAILED:
            assert done.error.code == 3, name  # INVALID_ARGUMENT
            assert detail in str(done.error.details[0].value), (name, done.error)
        else:
            assert bool(done.warnings) == detail, (name, list(done.warnings))
            _document(stack, done)
    # The worker survived all of them and takes the next job.
    assert worker.running()
    good = tmp_path / "good.mp4"
    assert api.wait_terminal(api.submit(good.read_bytes()).job_id).state == (
        job_pb2.JOB_STATE_SUCCEEDED
    )
    api.close()


# Readings the OCR model confuses on this font, mapped explicitly for the
# comparison (and nothing else is loosened): O/0, I/1/l.
_CONFUSABLE = str.maketrans({"0": "O", "1": "I", "l": "I"})


def _same_text(read: str, drawn: str) -> bool:
    def canonical(text: str) -> str:
        return "".join(text.split()).translate(_CONFUSABLE).upper()

    return canonical(read) == canonical(drawn)


def test_ocr_reads_drawn_text_as_one_track_alongside_scenes(stack, tmp_path):
    drawn = draw_video(tmp_path / "text.mp4", frames=100, cuts=(50,), text_frames=range(0, 50))
    stack.start_server()
    stack.start_worker("reader")
    api = Api(stack.address)
    job = api.submit_pipelines(drawn.path.read_bytes(), ["ocr", "scenes"], {"target_fps": 5})
    done = api.wait_terminal(job.job_id, timeout=180)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    document = _document(stack, done)
    assert document["sampling"]["sampled_frames"] == 20  # 4 s at 5 samples a second
    tracks = [t for t in document["sections"]["ocr"]["tracks"] if _same_text(t["text"], drawn.text)]
    assert len(tracks) == 1, document["sections"]["ocr"]["tracks"]
    (track,) = tracks
    assert track["start_time"] == 0.0
    # The text is on screen until frame 49 (1.96 s); samples are 0.2 s apart.
    assert 1.96 - 0.2 <= track["end_time"] <= 1.96
    # The same decode fed scenes: the cut at frame 50 lands on the first sample after it.
    assert [c["frame"] for c in document["sections"]["scenes"]["cuts"]] == [50]
    api.close()
