"""job-service on S3-compatible storage (a real S3-protocol server, moto_server,
on a free loopback port): uploads stream into multipart uploads, a refused
upload leaves no object and no unfinished upload, a worker that knows only
job-service's address reads its input and writes its outputs through
BlobService into the bucket, and DeleteJob empties the job's prefix."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from videojobs.storage import StorageKey
from videojobs.storage.blobstore import put_bytes
from videojobs.storage.remote import RemoteBlobStore
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support import s3 as s3_support
from support.s3 import S3Server
from support.scripted_worker import ScriptedWorker
from support.uploads import chunks, header, submit
from support.waiting import eventually

s3_server = s3_support.s3_server
PREFIX = "videojobs"


@pytest.fixture
async def on_s3(start_job_service, s3_server: S3Server, monkeypatch):
    """A job-service whose storage is a fresh bucket (credentials and endpoint
    from the standard AWS variables, as in production)."""
    bucket = s3_server.create_bucket()
    arguments = s3_server.store_arguments()
    monkeypatch.setenv("AWS_ENDPOINT_URL", arguments["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", arguments["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", arguments["secret_access_key"])
    monkeypatch.setenv("AWS_REGION", arguments["region"])
    service = await start_job_service(storage_url=f"s3://{bucket}/{PREFIX}")
    return service, bucket


def _objects(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def _unfinished_uploads(server: S3Server, bucket: str) -> list[str]:
    return [
        u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    ]


async def test_a_job_lives_in_the_bucket_from_upload_to_deletion(on_s3, s3_server, sample_mp4):
    service, bucket = on_s3

    # A refused upload (a playlist) leaves nothing, not even an unfinished upload.
    async def playlist():
        yield header()
        for message in chunks(b"#EXTM3U\n" + b"#EXTINF:1,\nhttp://x/y.ts\n" * 400):
            yield message

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await service.stub.SubmitVideo(playlist())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _objects(s3_server, bucket) == []
    assert _unfinished_uploads(s3_server, bucket) == []

    job = await submit(service.stub, sample_mp4)
    assert _objects(s3_server, bucket) == [f"{PREFIX}/{job.input_key}"]
    assert _unfinished_uploads(s3_server, bucket) == []

    # The worker has job-service's address only: BlobService, backed by the bucket.
    async with ScriptedWorker(service.address) as worker:
        assignment = await worker.next("assignment")
        remote = RemoteBlobStore(service.address, lease_token=assignment.lease_token)
        output = StorageKey(f"{assignment.output_prefix}/results.json")

        def work_as_a_worker() -> bytes:
            # Blocking gRPC calls: in a thread, while the server runs on this loop.
            try:
                with remote.open_read(StorageKey(assignment.input_key)) as source:
                    data = source.read()
                put_bytes(remote, output, b'{"from": "the bucket"}')
                return data
            finally:
                remote.close()

        assert await asyncio.to_thread(work_as_a_worker) == sample_mp4
        worker.complete(assignment, write_outputs=False)

        async def succeeded():
            state = (await service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))).job
            return state.state == job_pb2.JOB_STATE_SUCCEEDED

        await eventually(succeeded, what="the job to succeed")
    assert f"{PREFIX}/{output.value}" in _objects(s3_server, bucket)

    deleted = await service.stub.DeleteJob(js.DeleteJobRequest(job_id=job.job_id))
    assert deleted.deleted_blobs == 2
    assert _objects(s3_server, bucket) == []
