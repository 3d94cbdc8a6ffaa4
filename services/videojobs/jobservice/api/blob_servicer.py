"""BlobService servicer: bytes by relative key, in and out of job-service's storage."""

from __future__ import annotations

from collections.abc import AsyncIterator

from videojobs.common.auth import current_principal
from videojobs.common.grpc_errors import maps_service_errors
from videojobs.jobservice.api import convert
from videojobs.jobservice.blobs import BlobAccess, WriteChunk
from videojobs.jobservice.metrics import SERVED_BYTES
from videojobs.jobservice.upload_admission import with_idle_timeout
from videojobs.v1 import blob_service_pb2 as pb
from videojobs.v1 import blob_service_pb2_grpc

# A worker proves it holds a job's current lease with this metadata entry.
LEASE_METADATA_KEY = "videojobs-lease-token"


def lease_token_of(context) -> str:
    """The lease token a caller sent in its metadata, or ""."""
    for key, value in context.invocation_metadata() or ():
        if key == LEASE_METADATA_KEY:
            return value if isinstance(value, str) else ""
    return ""


class BlobServicer(blob_service_pb2_grpc.BlobServiceServicer):
    """Translates BlobService calls to BlobAccess."""

    def __init__(self, access: BlobAccess, idle_timeout_seconds: float) -> None:
        self._access = access
        self._idle_timeout_seconds = idle_timeout_seconds

    @maps_service_errors
    async def Read(self, request, context) -> AsyncIterator[pb.ReadResponse]:
        first = True
        async for chunk, size in self._access.read(
            request.key,
            request.read_offset,
            request.read_limit,
            current_principal(),
            lease_token_of(context),
        ):
            yield pb.ReadResponse(data=chunk, size_bytes=size if first else 0)
            SERVED_BYTES.inc(len(chunk))
            first = False

    @maps_service_errors
    async def Write(self, request_iterator, context) -> pb.WriteResponse:
        async def chunks():
            async for message in with_idle_timeout(request_iterator, self._idle_timeout_seconds):
                yield WriteChunk(
                    message.key, message.write_offset, message.data, message.finish_write
                )

        status = await self._access.write(
            chunks(), current_principal(), lease_token_of(context), context.peer()
        )
        return pb.WriteResponse(committed_size=status.committed_size, complete=status.complete)

    @maps_service_errors
    async def QueryWriteStatus(self, request, context) -> pb.QueryWriteStatusResponse:
        status = await self._access.status(
            request.key, current_principal(), lease_token_of(context)
        )
        return pb.QueryWriteStatusResponse(
            committed_size=status.committed_size, complete=status.complete
        )

    @maps_service_errors
    async def GetBlobInfo(self, request, context) -> pb.GetBlobInfoResponse:
        info = await self._access.info(request.key, current_principal(), lease_token_of(context))
        return pb.GetBlobInfoResponse(
            key=info.key.value,
            size_bytes=info.size_bytes,
            update_time=convert.timestamp(info.modified_at),
        )
