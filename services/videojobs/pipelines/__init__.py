"""Analysis pipelines: their declared specs (shared by job-service, which
validates parameters at submit) and their implementations (run by workers).

Importing this package is cheap: heavy libraries (PyAV) load only when a
pipeline runs.
"""

from videojobs.pipelines.base import (
    ParameterError,
    ParameterSpec,
    Pipeline,
    PipelineFailure,
    PipelineOutput,
    PipelineReporter,
    PipelineSpec,
)
from videojobs.pipelines.registry import PipelineCatalogue, UnknownPipeline, builtin_catalogue

__all__ = [
    "ParameterError",
    "ParameterSpec",
    "Pipeline",
    "PipelineCatalogue",
    "PipelineFailure",
    "PipelineOutput",
    "PipelineReporter",
    "PipelineSpec",
    "UnknownPipeline",
    "builtin_catalogue",
]
