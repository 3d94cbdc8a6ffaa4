"""The pipeline catalogue: which pipelines exist, by name.

Catalogue rule: job-service accepts a job for any pipeline in its catalogue
(the built-in pipelines plus those installed through the
`videojobs.pipelines` entry-point group), whether or not a worker that runs it
is connected right now; the job waits QUEUED until such a worker connects.
A name outside the catalogue is refused at submit with INVALID_ARGUMENT.

Specs and implementations load separately. `spec(name)` and
`analyses_frames(name)` of a built-in pipeline read its spec from the light
module `videojobs.pipelines.specs`, which imports no PyAV, OpenCV, NumPy or
ONNX Runtime: job-service validates and plans jobs with those alone. `get(name)`
imports the implementation module (and its heavy libraries) on first use;
only the worker's pipeline children call it. A third-party pipeline
(entry-point group `videojobs.pipelines`, value `module:attribute` naming the
pipeline object) has no separate spec: its `spec(name)` imports the entry
point's module, so job-service loads whatever that module imports. A
third-party package that wants a lean job-service keeps its module light and
imports its heavy libraries inside the analyzer or `run`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from videojobs.pipelines.base import Pipeline, PipelineSpec, is_frame_pipeline

ENTRY_POINT_GROUP = "videojobs.pipelines"

# Built-in pipelines as "module:attribute" so that the catalogue can be listed
# without importing their heavy dependencies.
_BUILTIN = {
    "detect": "videojobs.pipelines.detect:PIPELINE",
    "ocr": "videojobs.pipelines.ocr:PIPELINE",
    "probe": "videojobs.pipelines.probe:PIPELINE",
    "scenes": "videojobs.pipelines.scenes:PIPELINE",
    "thumbnails": "videojobs.pipelines.thumbnails:PIPELINE",
}
# Their specs, from the light module (the implementation modules re-export
# the same objects as `SPEC`).
_BUILTIN_SPECS = {
    "detect": "videojobs.pipelines.specs:DETECT_SPEC",
    "ocr": "videojobs.pipelines.specs:OCR_SPEC",
    "probe": "videojobs.pipelines.specs:PROBE_SPEC",
    "scenes": "videojobs.pipelines.specs:SCENES_SPEC",
    "thumbnails": "videojobs.pipelines.specs:THUMBNAILS_SPEC",
}


class UnknownPipeline(KeyError):
    """No pipeline of that name is in the catalogue."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = sorted(known)

    def __str__(self) -> str:
        return f"unknown pipeline {self.name!r} (known: {', '.join(self.known)})"


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


class PipelineCatalogue:
    """Pipelines by name. Built-ins first; entry points may add, not replace.

    `targets` maps each name to its implementation ("module:attribute" of the
    pipeline object); `spec_targets` optionally maps some of those names to a
    light "module:attribute" of their PipelineSpec, read by `spec` and
    `analyses_frames` instead of importing the implementation. A spec target
    must be the very object the implementation carries as `.spec`.
    """

    def __init__(self, targets: dict[str, str], spec_targets: dict[str, str] | None = None) -> None:
        self._targets = dict(targets)
        self._spec_targets = {n: t for n, t in (spec_targets or {}).items() if n in self._targets}
        self._loaded: dict[str, Pipeline] = {}
        self._specs: dict[str, PipelineSpec] = {}

    @property
    def names(self) -> list[str]:
        """Every pipeline name, sorted."""
        return sorted(self._targets)

    def get(self, name: str) -> Pipeline:
        """The pipeline called `name`. Raises UnknownPipeline."""
        if name not in self._targets:
            raise UnknownPipeline(name, self._targets)
        if name not in self._loaded:
            self._loaded[name] = _load(self._targets[name])
        return self._loaded[name]

    def spec(self, name: str) -> PipelineSpec:
        """The declared spec of `name`, from its light spec target when it has
        one (no implementation import), else from `get(name).spec`. Raises
        UnknownPipeline."""
        if name not in self._targets:
            raise UnknownPipeline(name, self._targets)
        if name not in self._specs:
            target = self._spec_targets.get(name)
            self._specs[name] = _load(target) if target else self.get(name).spec
        return self._specs[name]

    def analyses_frames(self, name: str) -> bool:
        """Whether `name` analyses sampled frames (and so takes the sampling
        parameters): as its spec declares it, or, when the spec leaves it
        undeclared, from the implementation (`is_frame_pipeline`). Raises
        UnknownPipeline."""
        declared = self.spec(name).analyses_frames
        if declared is None:
            return is_frame_pipeline(self.get(name))
        return declared


def builtin_catalogue(include_entry_points: bool = True) -> PipelineCatalogue:
    """The catalogue of built-in pipelines plus installed third-party ones."""
    targets = dict(_BUILTIN)
    if include_entry_points:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            targets.setdefault(entry.name, entry.value)
    return PipelineCatalogue(targets, _BUILTIN_SPECS)
