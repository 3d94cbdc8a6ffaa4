"""Building SubmitVideo streams in tests."""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf import struct_pb2

from videojobs.v1 import job_service_pb2 as js


def header(
    file_name: str = "clip.mp4",
    pipeline: str = "probe",
    parameters: dict | None = None,
    data: bytes | None = None,
    **fields: Any,
) -> js.SubmitVideoRequest:
    """A header message; with `data`, states its size and SHA-256."""
    params = struct_pb2.Struct()
    params.update(parameters or {})
    if data is not None:
        fields.setdefault("expected_size_bytes", len(data))
        fields.setdefault("expected_sha256", hashlib.sha256(data).hexdigest())
    return js.SubmitVideoRequest(
        header=js.UploadHeader(file_name=file_name, pipeline=pipeline, parameters=params, **fields)
    )


def chunks(data: bytes, size: int = 64 * 1024) -> list[js.SubmitVideoRequest]:
    """`data` as chunk messages."""
    return [js.SubmitVideoRequest(chunk=data[i : i + size]) for i in range(0, len(data), size)]


async def submit(stub, data: bytes, **header_fields: Any):
    """Uploads `data` with a header describing it; returns the Job."""
    messages = [header(data=data, **header_fields), *chunks(data)]

    async def stream():
        for message in messages:
            yield message

    return (await stub.SubmitVideo(stream())).job
