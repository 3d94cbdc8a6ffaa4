"""Which roles may call which job-service RPC (applied by the AuthInterceptor).

Finer rules live with the data they protect: tenants in the application
services (another tenant's job is NOT_FOUND), leases in BlobService.
"""

from __future__ import annotations

from videojobs.common.auth import Role
from videojobs.v1 import blob_service_pb2, dispatch_service_pb2, job_service_pb2

_BY_SERVICE = {
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"]: frozenset({Role.CLIENT, Role.ADMIN}),
    blob_service_pb2.DESCRIPTOR.services_by_name["BlobService"]: frozenset(
        {Role.CLIENT, Role.WORKER, Role.ADMIN}
    ),
    dispatch_service_pb2.DESCRIPTOR.services_by_name["DispatchService"]: frozenset(
        {Role.WORKER, Role.ADMIN}
    ),
}

# Full method name (`/videojobs.v1.JobService/GetStatus`) -> roles allowed.
JOB_SERVICE_POLICY: dict[str, frozenset[Role]] = {
    f"/{service.full_name}/{method.name}": roles
    for service, roles in _BY_SERVICE.items()
    for method in service.methods
}
