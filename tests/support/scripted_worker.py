"""A worker driven step by step by a test, over the real DispatchService stream.

It is a client of the API under test, not a stand-in for it: it lets a test
decide exactly when progress, partial results, completion or failure arrive.
Like a real worker it writes the outputs it reports (into `store`, the
storage job-service checks completions against) unless told not to.

Against a job-service with an auth file it needs credentials like any
worker: `metadata` (e.g. `authorization: Bearer <token>`) goes with its
stream, `credentials` make its channel TLS (with a client certificate for
mutual TLS), or `channel` is used as it is (and left open for its owner).
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from google.protobuf import struct_pb2

from videojobs.v1 import dispatch_service_pb2 as pb
from videojobs.v1 import dispatch_service_pb2_grpc, job_pb2

_CLOSE = object()


def struct(value: dict) -> struct_pb2.Struct:
    """A Struct from a dict."""
    message = struct_pb2.Struct()
    message.update(value)
    return message


class ScriptedWorker:
    """Connects, says hello, then sends what the test asks and records replies."""

    def __init__(
        self,
        address: str,
        worker_id: str = "scripted-1",
        pipelines: tuple[str, ...] = ("probe",),
        capacity: int = 1,
        held: list[pb.HeldLease] | None = None,
        store=None,
        metadata: tuple[tuple[str, str], ...] = (),
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.address = address
        self.store = store
        self.metadata = tuple(metadata)
        self.credentials = credentials
        self._given_channel = channel
        self.hello = pb.WorkerHello(
            worker_id=worker_id,
            pipelines=list(pipelines),
            max_concurrent_jobs=capacity,
            held_leases=held or [],
        )
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self.responses: asyncio.Queue = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._call = None
        self._reader: asyncio.Task | None = None
        self.error: grpc.aio.AioRpcError | None = None

    async def __aenter__(self) -> ScriptedWorker:
        if self._given_channel is not None:
            channel = self._given_channel
        elif self.credentials is not None:
            channel = self._channel = grpc.aio.secure_channel(self.address, self.credentials)
        else:
            channel = self._channel = grpc.aio.insecure_channel(self.address)
        stub = dispatch_service_pb2_grpc.DispatchServiceStub(channel)
        self._call = stub.Connect(self._requests(), metadata=self.metadata or None)
        self._reader = asyncio.create_task(self._read())
        welcome = await self.next("welcome")
        assert welcome.heartbeat_interval.ToTimedelta().total_seconds() > 0
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.disconnect()

    async def disconnect(self) -> None:
        """Breaks the stream the way a dying worker does."""
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _requests(self):
        yield pb.ConnectRequest(hello=self.hello)
        while True:
            message = await self._outgoing.get()
            if message is _CLOSE:
                return
            yield message

    async def _read(self) -> None:
        try:
            async for response in self._call:
                await self.responses.put(response)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            await self.responses.put(None)

    async def next(self, kind: str, timeout: float = 10.0):
        """The next response, which must be of `kind` (welcome, assignment, stop_job)."""
        response = await asyncio.wait_for(self.responses.get(), timeout)
        assert response is not None, f"stream ended while waiting for {kind}: {self.error}"
        assert response.WhichOneof("payload") == kind, response
        return getattr(response, kind)

    async def ended(self, timeout: float = 10.0) -> grpc.aio.AioRpcError | None:
        """Waits for the stream to end; returns the error it ended with."""
        while True:
            response = await asyncio.wait_for(self.responses.get(), timeout)
            if response is None:
                return self.error

    def send(self, **payload) -> None:
        """Queues one ConnectRequest, e.g. send(progress=pb.JobProgressReport(...))."""
        self._outgoing.put_nowait(pb.ConnectRequest(**payload))

    def close_stream(self) -> None:
        """Half-closes: the worker says goodbye."""
        self._outgoing.put_nowait(_CLOSE)

    # conveniences ------------------------------------------------------------

    def progress(self, assignment: pb.Assignment, fraction: float, stage: str = "working") -> None:
        """Reports progress of `assignment`."""
        self.send(
            progress=pb.JobProgressReport(
                job_id=assignment.job_id,
                lease_token=assignment.lease_token,
                progress=job_pb2.Progress(fraction=fraction, stage=stage),
            )
        )

    def partial(self, assignment: pb.Assignment, data: dict) -> None:
        """Reports a partial result of `assignment`."""
        self.send(
            partial_result=pb.JobPartialResultReport(
                job_id=assignment.job_id,
                lease_token=assignment.lease_token,
                partial_result=job_pb2.PartialResult(
                    pipeline=assignment.pipeline, data=struct(data)
                ),
            )
        )

    def complete(
        self,
        assignment: pb.Assignment,
        output_key: str | None = None,
        summary: dict | None = None,
        artifacts: list[job_pb2.Artifact] | None = None,
        write_outputs: bool = True,
    ) -> None:
        """Reports completion of `assignment` (output under its attempt prefix by
        default), first writing the outputs it names under the attempt's prefix."""
        output_key = output_key or f"{assignment.output_prefix}/results.json"
        if write_outputs and self.store is not None:
            self._write(assignment, output_key, b'{"ok": true}')
            for artifact in artifacts or []:
                self._write(assignment, artifact.key, b"a" * artifact.size_bytes)
        self.send(
            completion=pb.JobCompletionReport(
                job_id=assignment.job_id,
                lease_token=assignment.lease_token,
                output_key=output_key,
                summary=struct(summary or {"ok": True}),
                artifacts=artifacts or [],
            )
        )

    def _write(self, assignment: pb.Assignment, key: str, data: bytes) -> None:
        from videojobs.storage import StorageKey
        from videojobs.storage.blobstore import put_bytes

        if key.startswith(assignment.output_prefix + "/"):
            put_bytes(self.store, StorageKey(key), data)

    def heartbeat(self, *assignments: pb.Assignment, draining: bool = False) -> None:
        """Sends a heartbeat naming `assignments` as running."""
        self.send(
            heartbeat=pb.Heartbeat(
                running=[
                    pb.HeldLease(job_id=a.job_id, lease_token=a.lease_token) for a in assignments
                ],
                draining=draining,
            )
        )
