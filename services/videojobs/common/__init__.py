"""Code shared by job-service and worker-service: error model, gRPC server helpers, logging."""
