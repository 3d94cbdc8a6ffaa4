"""Typed pipeline parameters (`ParameterSpec.coerce`, `PipelineSpec.validate`)
and the pipeline catalogue."""

from __future__ import annotations

import math

import pytest

from videojobs.pipelines.base import ParameterError, ParameterSpec, PipelineSpec
from videojobs.pipelines.probe import SPEC
from videojobs.pipelines.registry import PipelineCatalogue, UnknownPipeline, builtin_catalogue

DEFAULTS = {p.name: p.default for p in SPEC.parameters}
VERIFY = next(p for p in SPEC.parameters if p.name == "verify_frames")


def _violations(given: dict, **kwargs: str) -> dict[str, str]:
    with pytest.raises(ParameterError) as caught:
        SPEC.validate(given, **kwargs)
    fields = [f for f, _ in caught.value.violations]
    assert len(fields) == len(set(fields)), "one violation per field"
    return dict(caught.value.violations)


def test_probe_declares_its_parameters() -> None:
    """probe takes count_frames (bool) and verify_frames (int with a range)."""
    assert SPEC.name == "probe"
    assert {p.name: p.type for p in SPEC.parameters} == {
        "count_frames": "bool",
        "verify_frames": "int",
    }
    assert VERIFY.minimum is not None and VERIFY.maximum is not None


def test_validate_fills_defaults() -> None:
    """With nothing given, every declared parameter gets its default."""
    assert SPEC.validate({}) == DEFAULTS
    assert set(DEFAULTS) == {"count_frames", "verify_frames"}


def test_validate_keeps_given_values_and_defaults_the_rest() -> None:
    """Given values win; missing ones are defaulted; the input is not modified."""
    given = {"count_frames": not DEFAULTS["count_frames"]}
    snapshot = dict(given)
    clean = SPEC.validate(given)
    assert clean == {**DEFAULTS, **given}
    assert given == snapshot
    assert SPEC.validate({"verify_frames": 7}) == {**DEFAULTS, "verify_frames": 7}


def test_unknown_parameter_is_refused_by_name() -> None:
    """An undeclared name is a violation under `parameters.<name>` that lists the
    accepted names."""
    violations = _violations({"count_frame": True})
    assert list(violations) == ["parameters.count_frame"]
    for declared in DEFAULTS:
        assert declared in violations["parameters.count_frame"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("count_frames", "true"),
        ("count_frames", 1),
        ("count_frames", 0.0),
        ("count_frames", None),
        ("verify_frames", True),
        ("verify_frames", False),
        ("verify_frames", 2.5),
        ("verify_frames", "3"),
        ("verify_frames", None),
        ("verify_frames", [3]),
        ("verify_frames", {"n": 3}),
    ],
    ids=repr,
)
def test_wrong_type_is_refused(name: str, value: object) -> None:
    """A value of the wrong JSON type is a violation under `parameters.<name>`."""
    violations = _violations({name: value})
    assert list(violations) == [f"parameters.{name}"]
    assert violations[f"parameters.{name}"]


@pytest.mark.parametrize("delta", [-1, +1])
def test_out_of_range_is_refused(delta: int) -> None:
    """verify_frames one below the minimum or one above the maximum is refused;
    the bounds themselves are accepted."""
    outside = (VERIFY.minimum - 1) if delta < 0 else (VERIFY.maximum + 1)
    violations = _violations({"verify_frames": int(outside)})
    assert list(violations) == ["parameters.verify_frames"]
    bound = VERIFY.minimum if delta < 0 else VERIFY.maximum
    assert f"{bound:g}" in violations["parameters.verify_frames"]
    assert SPEC.validate({"verify_frames": int(bound)})["verify_frames"] == int(bound)


def test_documented_range_edges() -> None:
    """-1 and 1001 are refused, 0 and 1000 accepted (the documented range)."""
    for bad in (-1, 1001, -1.0, 1001.0):
        assert "parameters.verify_frames" in _violations({"verify_frames": bad})
    for good in (0, 1000):
        assert SPEC.validate({"verify_frames": good})["verify_frames"] == good


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value: float) -> None:
    """NaN and infinities are not numbers a parameter can hold."""
    violations = _violations({"verify_frames": value})
    assert list(violations) == ["parameters.verify_frames"]


def test_integral_float_is_accepted_as_int() -> None:
    """JSON numbers arrive as doubles: 3.0 for an int parameter becomes int 3."""
    for value in (3.0, 0.0, 1000.0):
        clean = SPEC.validate({"verify_frames": value})["verify_frames"]
        assert clean == int(value)
        assert type(clean) is int


def test_several_violations_are_collected() -> None:
    """Every problem is reported at once, not just the first."""
    violations = _violations(
        {"count_frames": "yes", "verify_frames": 2.5, "bogus": 1, "also_bogus": None}
    )
    assert set(violations) == {
        "parameters.count_frames",
        "parameters.verify_frames",
        "parameters.bogus",
        "parameters.also_bogus",
    }


def test_error_message_joins_all_violations() -> None:
    """str(ParameterError) mentions each violating field."""
    with pytest.raises(ParameterError) as caught:
        SPEC.validate({"count_frames": "yes", "extra": 1})
    for field, _ in caught.value.violations:
        assert field in str(caught.value)


def test_custom_field_prefix() -> None:
    """The field path uses the prefix the caller gives."""
    prefix = "jobs[2].parameters"
    violations = _violations({"verify_frames": -1, "nope": 1}, field_prefix=prefix)
    assert set(violations) == {f"{prefix}.verify_frames", f"{prefix}.nope"}


def test_float_and_string_parameters() -> None:
    """A float parameter turns ints into floats and checks its range; a string
    parameter accepts only strings."""
    spec = PipelineSpec(
        name="t",
        version="0",
        description="",
        parameters=(
            ParameterSpec("ratio", "float", "", default=0.5, minimum=0.0, maximum=1.0),
            ParameterSpec("label", "string", "", default="x"),
        ),
    )
    clean = spec.validate({"ratio": 1, "label": ""})
    assert clean == {"ratio": 1.0, "label": ""}
    assert type(clean["ratio"]) is float
    with pytest.raises(ParameterError) as caught:
        spec.validate({"ratio": 1.5, "label": 5})
    assert {f for f, _ in caught.value.violations} == {"parameters.ratio", "parameters.label"}


def test_spec_without_parameters_refuses_any() -> None:
    """A pipeline that declares no parameter refuses every given one."""
    spec = PipelineSpec(name="bare", version="0", description="")
    assert spec.validate({}) == {}
    with pytest.raises(ParameterError) as caught:
        spec.validate({"x": 1})
    assert [f for f, _ in caught.value.violations] == ["parameters.x"]


def test_builtin_catalogue_has_probe() -> None:
    """The built-in catalogue lists probe and hands out its pipeline and spec."""
    catalogue = builtin_catalogue()
    assert "probe" in catalogue.names
    assert catalogue.names == sorted(catalogue.names)
    assert catalogue.spec("probe") is SPEC
    assert catalogue.get("probe").spec is SPEC
    assert "probe" in builtin_catalogue(include_entry_points=False).names


def test_unknown_pipeline_lists_known_names() -> None:
    """get() of an unknown name raises UnknownPipeline (a KeyError) whose text
    names the request and every known pipeline."""
    catalogue = builtin_catalogue()
    with pytest.raises(UnknownPipeline) as caught:
        catalogue.get("nope")
    assert isinstance(caught.value, KeyError)
    assert caught.value.name == "nope"
    text = str(caught.value)
    assert "nope" in text
    for name in catalogue.names:
        assert name in text
    with pytest.raises(UnknownPipeline):
        catalogue.spec("nope")


def test_catalogue_lists_without_importing_targets() -> None:
    """Names come from the targets alone; a target is imported only on get()."""
    catalogue = PipelineCatalogue(
        {"b": "no.such.module:X", "a": "videojobs.pipelines.probe:PIPELINE"}
    )
    assert catalogue.names == ["a", "b"]
    assert catalogue.get("a").spec is SPEC
    with pytest.raises(ModuleNotFoundError):
        catalogue.get("b")
