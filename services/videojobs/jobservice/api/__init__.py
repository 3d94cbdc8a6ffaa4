"""gRPC servicers of job-service: unpack, call the application service, pack.
Error mapping lives in one decorator (videojobs.common.grpc_errors)."""
