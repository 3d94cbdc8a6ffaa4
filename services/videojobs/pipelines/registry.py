"""The pipeline catalogue: which pipelines exist, by name.

Catalogue rule: job-service accepts a job for any pipeline in its catalogue
(the built-in pipelines plus those installed through the
`videojobs.pipelines` entry-point group), whether or not a worker that runs it
is connected right now; the job waits QUEUED until such a worker connects.
A name outside the catalogue is refused at submit with INVALID_ARGUMENT.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points

from videojobs.pipelines.base import Pipeline, PipelineSpec

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


class UnknownPipeline(KeyError):
    """No pipeline of that name is in the catalogue."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = sorted(known)

    def __str__(self) -> str:
        return f"unknown pipeline {self.name!r} (known: {', '.join(self.known)})"


def _load(target: str) -> Pipeline:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


class PipelineCatalogue:
    """Pipelines by name. Built-ins first; entry points may add, not replace."""

    def __init__(self, targets: dict[str, str]) -> None:
        self._targets = dict(targets)
        self._loaded: dict[str, Pipeline] = {}

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
        """The declared spec of `name`. Raises UnknownPipeline."""
        return self.get(name).spec


def builtin_catalogue(include_entry_points: bool = True) -> PipelineCatalogue:
    """The catalogue of built-in pipelines plus installed third-party ones."""
    targets = dict(_BUILTIN)
    if include_entry_points:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            targets.setdefault(entry.name, entry.value)
    return PipelineCatalogue(targets)
