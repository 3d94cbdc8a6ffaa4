"""What a job runs: its pipelines and their validated parameters.

A job names one pipeline or several (run over one decode). Parameters are
JSON-shaped:

- a key that names one of the job's pipelines holds that pipeline's parameters
  (an object): `{"ocr": {"min_confidence": 0.7}}`;
- the sampling parameters (`frame_stride`, `max_frames`, `start_time`,
  `end_time`, `target_fps`) sit at the top level and are shared by the job's
  frame pipelines;
- any other top-level key is a parameter of the one pipeline of the job that
  has it: `{"count_frames": true}`, or `{"min_confidence": 0.7}` on an
  ocr+scenes job; a name several of the job's pipelines share must go under
  one of them.

The plan is stored normalised: `{"<pipeline>": {...}, ..., "sampling": {...}}`
(the sampling entry only when a frame pipeline is present).

Planning reads specs only (`PipelineCatalogue.spec` / `analyses_frames`), so
for the built-in pipelines it imports none of their heavy libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from videojobs.pipelines.base import ParameterError, PipelineSpec, is_frame_pipeline
from videojobs.pipelines.registry import PipelineCatalogue, UnknownPipeline
from videojobs.pipelines.specs import SAMPLING_SPEC

__all__ = [
    "KEY_SEPARATOR",
    "SAMPLING",
    "JobPlan",
    "is_frame_pipeline",
    "parameters_of",
    "plan_job",
    "split_key",
]

KEY_SEPARATOR = "+"
SAMPLING = "sampling"


@dataclass(frozen=True)
class JobPlan:
    """Pipelines (sorted, unique) and their normalised parameters."""

    pipelines: tuple[str, ...]
    parameters: dict[str, Any]

    @property
    def key(self) -> str:
        """The canonical name of the pipeline set, e.g. `ocr+scenes`."""
        return KEY_SEPARATOR.join(self.pipelines)

    @property
    def has_frame_pipelines(self) -> bool:
        """Whether any pipeline analyses frames (needs the sampling parameters)."""
        return SAMPLING in self.parameters


def split_key(key: str) -> tuple[str, ...]:
    """The pipeline names of a canonical key."""
    return tuple(key.split(KEY_SEPARATOR))


def plan_job(
    catalogue: PipelineCatalogue,
    names: list[str],
    given: dict[str, Any],
    field_prefix: str = "parameters",
    names_field: str = "pipelines",
) -> JobPlan:
    """Validates pipelines and parameters together; raises ParameterError with
    every violation (field paths under `field_prefix` / `names_field`)."""
    violations: list[tuple[str, str]] = []
    unique = sorted(set(names))
    if not unique:
        raise ParameterError([(names_field, "name at least one pipeline")])
    if len(unique) != len(names):
        violations.append((names_field, "names a pipeline twice"))
    specs: dict[str, PipelineSpec] = {}
    for name in unique:
        try:
            specs[name] = catalogue.spec(name)
        except UnknownPipeline as exc:
            violations.append((names_field, str(exc)))
    if violations:
        raise ParameterError(violations)

    frame = any(catalogue.analyses_frames(name) for name in specs)
    sampling_names = {p.name for p in SAMPLING_SPEC.parameters}
    per_pipeline: dict[str, dict[str, Any]] = {name: {} for name in unique}
    sampling: dict[str, Any] = {}
    for key, value in given.items():
        if key in per_pipeline:
            if not isinstance(value, dict):
                violations.append((f"{field_prefix}.{key}", "must be an object of parameters"))
            else:
                per_pipeline[key].update(value)
        elif frame and key in sampling_names:
            sampling[key] = value
        elif len(unique) == 1:
            per_pipeline[unique[0]][key] = value
        else:
            # A flat parameter of a several-pipeline job goes to the one
            # pipeline that has it; where none or several do, it must be
            # put under a pipeline's name.
            owners = [name for name in unique if key in _parameter_names(specs[name])]
            if len(owners) == 1:
                per_pipeline[owners[0]][key] = value
            elif owners:
                violations.append(
                    (
                        f"{field_prefix}.{key}",
                        f"is a parameter of {', '.join(owners)}: put it under the one it is "
                        f'for, e.g. {{"{owners[0]}": {{"{key}": ...}}}}',
                    )
                )
            else:
                violations.append(
                    (
                        f"{field_prefix}.{key}",
                        f"unknown: none of {', '.join(unique)} has this parameter",
                    )
                )
    parameters: dict[str, Any] = {}
    for name, spec in specs.items():
        # For one pipeline, flat parameters are reported under the flat path.
        prefix = f"{field_prefix}.{name}" if name in given or len(unique) > 1 else field_prefix
        try:
            parameters[name] = spec.validate(per_pipeline[name], field_prefix=prefix)
        except ParameterError as exc:
            violations.extend(exc.violations)
    if frame:
        try:
            parameters[SAMPLING] = SAMPLING_SPEC.validate(sampling, field_prefix=field_prefix)
        except ParameterError as exc:
            violations.extend(exc.violations)
        if not violations:
            end, start = parameters[SAMPLING]["end_time"], parameters[SAMPLING]["start_time"]
            if end and end <= start:
                violations.append((f"{field_prefix}.end_time", "must be after start_time"))
    if violations:
        raise ParameterError(violations)
    return JobPlan(pipelines=tuple(unique), parameters=parameters)


def _parameter_names(spec: PipelineSpec) -> frozenset[str]:
    return frozenset(parameter.name for parameter in spec.parameters)


def parameters_of(plan_parameters: dict[str, Any], name: str, single: bool) -> dict[str, Any]:
    """One pipeline's parameters from stored parameters (also from rows stored
    before plans existed, when a single pipeline's parameters were flat)."""
    value = plan_parameters.get(name)
    if isinstance(value, dict):
        return value
    return dict(plan_parameters) if single else {}
