"""A worker that knows only job-service's address: its data directory is
empty and separate from job-service's, and every pipeline works, reading its
input and writing its outputs through BlobService."""

from __future__ import annotations

import json
import os

import grpc
import pytest

from videojobs.storage import StorageKey, open_blob_store
from videojobs.v1 import blob_service_pb2 as bs
from videojobs.v1 import blob_service_pb2_grpc, job_pb2

from support.attacks import files_under
from support.drawn import draw_video
from support.sync_api import Api

pytestmark = pytest.mark.e2e


def test_a_worker_without_shared_storage_runs_every_pipeline(stack, tmp_path):
    drawn = draw_video(tmp_path / "drawn.mp4", frames=60, cuts=(30,), text_frames=range(0, 30))
    worker_dir = tmp_path / "worker-only"
    worker_dir.mkdir()
    stack.start_server()
    # Its own, empty data directory; no storage URL: everything goes through
    # job-service.
    stack.start_worker("remote", VIDEOJOBS_DATA_DIR=str(worker_dir))
    api = Api(stack.address)
    pipelines = ["detect", "ocr", "probe", "scenes", "thumbnails"]
    job = api.submit_pipelines(
        drawn.path.read_bytes(),
        pipelines,
        {"target_fps": 5, "detect": {"classes": "qr_code"}, "thumbnails": {"max_width": 160}},
    )
    done = api.wait_terminal(job.job_id, timeout=180)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    # The result is in job-service's storage (the worker wrote it remotely)
    # and fetchable over gRPC.
    with grpc.insecure_channel(stack.address) as channel:
        blobs = blob_service_pb2_grpc.BlobServiceStub(channel)
        raw = b"".join(r.data for r in blobs.Read(bs.ReadRequest(key=done.output_key), timeout=30))
    document = json.loads(raw)
    assert sorted(document["sections"]) == pipelines
    assert document["sections"]["probe"]["container"]["format"] == "mp4"
    texts = {track["text"] for track in document["sections"]["ocr"]["tracks"]}
    assert drawn.text in texts
    assert [c["frame"] for c in document["sections"]["scenes"]["cuts"]] == list(drawn.cuts)
    assert document["sections"]["detect"]["tracks"][0]["payload"] == drawn.qr_payload
    store = open_blob_store(str(stack.data_dir / "storage"))
    assert len(done.artifacts) == len(drawn.cuts) + 1
    for artifact in done.artifacts:
        assert store.stat(StorageKey(artifact.key)).size_bytes == artifact.size_bytes
    # The worker kept nothing: its directory holds no file (spooled inputs are gone).
    assert files_under(worker_dir) == []
    assert not os.path.exists(worker_dir / "storage")
    api.close()
