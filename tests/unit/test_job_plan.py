"""Job plans: pipelines and parameters validated together, stored normalised;
third-party pipelines through the entry-point group."""

from __future__ import annotations

import textwrap

import pytest

from videojobs.pipelines import ParameterError, builtin_catalogue
from videojobs.pipelines.plan import parameters_of, plan_job


@pytest.fixture(scope="module")
def catalogue():
    return builtin_catalogue()


def test_one_pipeline_accepts_flat_or_nested_parameters(catalogue):
    flat = plan_job(catalogue, ["probe"], {"count_frames": True})
    nested = plan_job(catalogue, ["probe"], {"probe": {"count_frames": True}})
    assert flat == nested
    assert flat.key == "probe" and not flat.has_frame_pipelines
    assert flat.parameters == {"probe": {"count_frames": True, "verify_frames": 3}}


def test_several_pipelines_are_sorted_and_get_sampling(catalogue):
    plan = plan_job(catalogue, ["scenes", "ocr"], {"target_fps": 2, "ocr": {"min_confidence": 0.7}})
    assert plan.pipelines == ("ocr", "scenes") and plan.key == "ocr+scenes"
    assert plan.parameters["ocr"]["min_confidence"] == 0.7
    assert plan.parameters["sampling"]["target_fps"] == 2.0
    assert plan.parameters["sampling"]["frame_stride"] == 1
    assert plan.parameters["scenes"]["threshold"] == pytest.approx(0.25)


def test_a_flat_parameter_goes_to_the_one_pipeline_that_has_it(catalogue):
    flat = plan_job(catalogue, ["ocr", "scenes"], {"min_confidence": 0.7, "threshold": 0.4})
    nested = plan_job(
        catalogue, ["ocr", "scenes"], {"ocr": {"min_confidence": 0.7}, "scenes": {"threshold": 0.4}}
    )
    assert flat == nested
    assert flat.parameters["ocr"]["min_confidence"] == 0.7
    assert flat.parameters["scenes"]["threshold"] == pytest.approx(0.4)


def test_a_flat_parameter_several_pipelines_have_must_name_one(catalogue):
    with pytest.raises(ParameterError) as caught:
        plan_job(catalogue, ["detect", "ocr"], {"min_confidence": 0.5})
    [(field, description)] = caught.value.violations
    assert field == "parameters.min_confidence"
    assert "detect, ocr" in description and '{"detect": {"min_confidence": ...}}' in description


@pytest.mark.parametrize(
    ("names", "given", "fields"),
    [
        (["nope"], {}, {"pipelines"}),
        (["ocr", "ocr"], {}, {"pipelines"}),
        ([], {}, {"pipelines"}),
        (["ocr", "scenes"], {"nope": 0.5}, {"parameters.nope"}),
        (["detect", "ocr"], {"min_confidence": 0.5}, {"parameters.min_confidence"}),
        (["ocr", "scenes"], {"ocr": 3}, {"parameters.ocr"}),
        (["ocr", "scenes"], {"ocr": {"min_confidence": 2}}, {"parameters.ocr.min_confidence"}),
        (["scenes"], {"frame_stride": 0}, {"parameters.frame_stride"}),
        (["scenes"], {"start_time": 5, "end_time": 2}, {"parameters.end_time"}),
        (["probe"], {"target_fps": 2}, {"parameters.target_fps"}),
    ],
)
def test_violations_name_their_fields(catalogue, names, given, fields):
    with pytest.raises(ParameterError) as caught:
        plan_job(catalogue, names, given)
    assert {field for field, _ in caught.value.violations} == fields


def test_stored_parameters_from_before_plans_still_work():
    assert parameters_of({"count_frames": True}, "probe", single=True) == {"count_frames": True}
    assert parameters_of({"probe": {"count_frames": True}}, "probe", single=True) == {
        "count_frames": True
    }


def test_third_party_pipeline_through_entry_points(tmp_path, monkeypatch):
    package = tmp_path / "acme_pipelines"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from videojobs.pipelines.base import ParameterSpec, PipelineSpec
            from videojobs.pipelines.frames import SectionResult

            class _Counter:
                def __init__(self, parameters):
                    self.seen = 0
                    self.every = parameters["every"]

                def process(self, frame):
                    self.seen += 1
                    return [{"n": self.seen}] if self.seen % self.every == 0 else []

                def finish(self):
                    return SectionResult({"frames": self.seen}, {"frames": self.seen}, [])

            class _Pipeline:
                spec = PipelineSpec(
                    "acme-count", "0.1", "counts frames",
                    (ParameterSpec("every", "int", "report every n", 10, 1, 100),),
                )

                def analyzer(self, parameters, context):
                    return _Counter(parameters)

            PIPELINE = _Pipeline()
            """
        )
    )
    dist = tmp_path / "acme_pipelines-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-pipelines\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[videojobs.pipelines]\nacme-count = acme_pipelines:PIPELINE\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    catalogue = builtin_catalogue()
    assert "acme-count" in catalogue.names
    plan = plan_job(catalogue, ["acme-count", "scenes"], {"acme-count": {"every": 5}})
    assert plan.parameters["acme-count"] == {"every": 5}
    with pytest.raises(ParameterError) as caught:
        plan_job(catalogue, ["acme-count"], {"every": 500})
    assert caught.value.violations[0][0] == "parameters.every"
