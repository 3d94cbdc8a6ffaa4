"""worker-service: pulls jobs from job-service over DispatchService.Connect and
runs pipelines in child processes; serves WorkerService, health and reflection.

Workers never touch the database; they read inputs and write outputs through
the BlobStore by relative key.
"""
