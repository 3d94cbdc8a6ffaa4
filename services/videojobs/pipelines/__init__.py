"""Analysis pipelines: their declared specs (shared by job-service, which
validates parameters at submit) and their implementations (run by workers).

Importing this package is cheap, and so are the catalogue's specs and
`plan.plan_job`: every built-in spec lives in `specs`, which imports no PyAV,
OpenCV, NumPy or ONNX Runtime. The implementation modules (and those
libraries) load only through `PipelineCatalogue.get`, in the worker's pipeline
children. `media` (PyAV) is imported by job-service only inside the function
that checks a finished upload; `containers` recognises a format from its
first bytes without it.
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
