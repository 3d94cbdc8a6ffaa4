"""job-service: accepts videos, keeps jobs and their events, dispatches to workers.

Layers: `api/` (servicers: proto <-> domain, error mapping), the application
services in this package (`submit`, `queries`, `cancel`, `dispatch`,
`events`: no grpc import), and `store/` (SQLAlchemy adapter).
"""
