"""job-service validates submits without the pipelines' heavy libraries.

Issue 11 ("Lean job-service"): importing the server, listing the catalogue,
validating every pipeline's parameters and planning a job of several
pipelines must not load PyAV, OpenCV, NumPy, ONNX Runtime or RapidOCR; those
load only in the worker's pipeline children. Each check runs in a fresh
interpreter, since this test process has long imported them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

HEAVY = ("av", "cv2", "numpy", "onnxruntime", "rapidocr_onnxruntime")

SUBMIT_PATH = textwrap.dedent(
    """
    import json, sys

    import videojobs.jobservice.server  # noqa: F401
    from videojobs.jobservice import submit, upload_checks  # noqa: F401
    from videojobs.pipelines import builtin_catalogue
    from videojobs.pipelines.containers import sniff_container
    from videojobs.pipelines.plan import plan_job

    catalogue = builtin_catalogue()
    specs = {}
    for name in catalogue.names:
        spec = catalogue.spec(name)
        specs[name] = {
            "defaults": spec.validate({}),
            "timeout": spec.default_execution_timeout_seconds,
            "frames": catalogue.analyses_frames(name),
        }
    plan = plan_job(
        catalogue,
        ["probe", "ocr", "detect", "scenes", "thumbnails"],
        {"target_fps": 2, "ocr": {"min_confidence": 0.7}, "thumbnails": {"mode": "interval"}},
    )
    timeout = max(catalogue.spec(n).default_execution_timeout_seconds for n in plan.pipelines)
    container = sniff_container(b"\\x00\\x00\\x00\\x18ftypisom" + bytes(64)).name
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    print(json.dumps({
        "heavy": heavy, "specs": specs, "key": plan.key,
        "sampling": plan.parameters.get("sampling"), "timeout": timeout,
        "container": container,
    }))
    """
)


def _run(script: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{script}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_submit_path_loads_no_heavy_library() -> None:
    """Server import, catalogue specs, parameter validation, a five-pipeline
    plan and the container sniff: none of av, cv2, numpy, onnxruntime,
    rapidocr_onnxruntime is imported."""
    seen = _run(SUBMIT_PATH)
    assert seen["heavy"] == []
    # The work really happened, with the real specs.
    assert set(seen["specs"]) >= {"detect", "ocr", "probe", "scenes", "thumbnails"}
    assert seen["specs"]["probe"]["defaults"] == {"count_frames": False, "verify_frames": 3}
    assert seen["specs"]["ocr"]["timeout"] == 1800.0
    assert seen["specs"]["probe"]["frames"] is False
    assert seen["specs"]["scenes"]["frames"] is True
    assert seen["key"] == "detect+ocr+probe+scenes+thumbnails"
    assert seen["sampling"]["target_fps"] == 2.0
    assert seen["timeout"] == 1800.0
    assert seen["container"] == "mp4"


def test_the_check_sees_heavy_imports() -> None:
    """The check can fail: loading a pipeline implementation (what a worker
    child does) shows up in sys.modules."""
    seen = _run(
        "import json, sys\n"
        "from videojobs.pipelines import builtin_catalogue\n"
        "builtin_catalogue().get('scenes')\n"
        "print(json.dumps({'heavy': sorted(m for m in HEAVY if m in sys.modules)}))\n"
    )
    assert {"av", "cv2", "numpy"} <= set(seen["heavy"])


def test_light_specs_are_the_implementations_specs() -> None:
    """For every built-in pipeline the light spec is the very object its
    implementation carries, and the declared `analyses_frames` agrees with
    the implementation (an `analyzer` or a `run`)."""
    from videojobs.pipelines import builtin_catalogue
    from videojobs.pipelines.base import is_frame_pipeline
    from videojobs.pipelines.frames import SAMPLING_SPEC
    from videojobs.pipelines.specs import BUILTIN_SPECS
    from videojobs.pipelines.specs import SAMPLING_SPEC as LIGHT_SAMPLING_SPEC

    catalogue = builtin_catalogue(include_entry_points=False)
    assert sorted(BUILTIN_SPECS) == catalogue.names
    for name in catalogue.names:
        spec = catalogue.spec(name)
        assert spec is BUILTIN_SPECS[name]
        assert spec.name == name
        pipeline = catalogue.get(name)
        assert pipeline.spec is spec
        assert spec.analyses_frames is not None
        assert catalogue.analyses_frames(name) is is_frame_pipeline(pipeline)
    assert SAMPLING_SPEC is LIGHT_SAMPLING_SPEC


def test_undeclared_frame_use_is_read_from_the_implementation(monkeypatch) -> None:
    """A spec that leaves `analyses_frames` undeclared (as third-party
    pipelines' specs do) is answered from the implementation, loaded then."""
    from videojobs.pipelines import PipelineCatalogue, PipelineSpec

    class _Frames:
        spec = PipelineSpec("f", "0", "frames, undeclared")

        def analyzer(self, parameters, context):
            raise NotImplementedError

    class _Container:
        spec = PipelineSpec("c", "0", "container, undeclared")

        def run(self, source, parameters, reporter):
            raise NotImplementedError

    module = types.ModuleType("lean_imports_fake_pipelines")
    module.FRAMES, module.CONTAINER = _Frames(), _Container()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    catalogue = PipelineCatalogue(
        {"f": f"{module.__name__}:FRAMES", "c": f"{module.__name__}:CONTAINER"}
    )
    assert catalogue.spec("f").analyses_frames is None
    assert catalogue.analyses_frames("f") is True
    assert catalogue.analyses_frames("c") is False
