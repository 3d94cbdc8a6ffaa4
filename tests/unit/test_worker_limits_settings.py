"""The worker's limits for its pipeline children: flags, environment, the
automatic memory limit, and how a child classifies running out of memory."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from videojobs.pipelines.media import DEFAULT_MAX_FRAME_PIXELS
from videojobs.worker.child import is_out_of_memory, memory_failure
from videojobs.worker.settings import (
    AUTO_CHILD_MEMORY_MAX_MIB,
    AUTO_CHILD_MEMORY_MIN_MIB,
    MIB,
    auto_child_memory_limit_mib,
    parse_settings,
    physical_memory_bytes,
)

GIB = 1024 * MIB


@pytest.fixture(autouse=True)
def _no_videojobs_environment(monkeypatch):
    for name in ("VIDEOJOBS_WORKER_MAX_FRAME_PIXELS", "VIDEOJOBS_WORKER_CHILD_MEMORY_LIMIT_MIB"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("physical", "concurrency", "expected_mib"),
    [
        (24 * GIB, 1, 8192),  # 18 GiB share: the ceiling
        (24 * GIB, 2, 8192),  # 9 GiB share: the ceiling
        (24 * GIB, 4, 4608),  # 75% of 24 GiB / 4
        (24 * GIB, 16, 2048),  # 1152 MiB share: the floor
        (4 * GIB, 1, 3072),
        (2 * GIB, 1, 2048),  # the floor, even above physical memory's share
    ],
)
def test_auto_memory_limit(physical, concurrency, expected_mib):
    assert auto_child_memory_limit_mib(concurrency, physical) == expected_mib


def test_defaults_are_auto_and_8k(tmp_path):
    settings = parse_settings(["--data-dir", str(tmp_path)])
    assert settings.max_frame_pixels == DEFAULT_MAX_FRAME_PIXELS == 7680 * 4320
    expected = auto_child_memory_limit_mib(1, physical_memory_bytes())
    assert settings.child_memory_limit_mib == expected
    assert AUTO_CHILD_MEMORY_MIN_MIB <= expected <= AUTO_CHILD_MEMORY_MAX_MIB
    assert settings.child_memory_limit_bytes == expected * MIB


def test_auto_limit_follows_concurrency(tmp_path):
    one = parse_settings(["--data-dir", str(tmp_path)])
    many = parse_settings(["--data-dir", str(tmp_path), "--concurrency", "64"])
    assert many.child_memory_limit_mib == auto_child_memory_limit_mib(64)
    assert many.child_memory_limit_mib <= one.child_memory_limit_mib


def test_flags_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOJOBS_WORKER_MAX_FRAME_PIXELS", "2073600")
    monkeypatch.setenv("VIDEOJOBS_WORKER_CHILD_MEMORY_LIMIT_MIB", "3000")
    from_env = parse_settings(["--data-dir", str(tmp_path)])
    assert (from_env.max_frame_pixels, from_env.child_memory_limit_mib) == (2073600, 3000)
    from_flags = parse_settings(
        ["--data-dir", str(tmp_path), "--max-frame-pixels", "100", "--child-memory-limit-mib", "5"]
    )
    assert (from_flags.max_frame_pixels, from_flags.child_memory_limit_mib) == (100, 5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--child-memory-limit-mib", "-1"],
        ["--max-frame-pixels", "0"],
        ["--max-frame-pixels", "-5"],
        ["--child-memory-limit-mib", "lots"],
    ],
)
def test_bad_values_are_refused(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--data-dir", str(tmp_path), *argv])
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_out_of_memory_is_recognised_in_every_form():
    with pytest.raises(MemoryError) as numpy_error:
        # More than any address space: NumPy refuses before touching memory.
        np.empty(2**62, np.uint8)
    assert is_out_of_memory(numpy_error.value)
    opencv_error = cv2.error("Failed to allocate")
    opencv_error.code = cv2.Error.StsNoMem
    assert is_out_of_memory(opencv_error)
    other_opencv_error = cv2.error("bad argument")
    other_opencv_error.code = cv2.Error.StsBadArg
    assert not is_out_of_memory(other_opencv_error)
    assert not is_out_of_memory(ValueError("no"))


def test_memory_failure_names_the_limit():
    line = memory_failure(3000 * MIB)
    assert line == {
        "type": "failed",
        "code": "RESOURCE_EXHAUSTED",
        "message": "the job needs more memory than the 3000 MiB the worker allows one job",
        "reason": "MEMORY_LIMIT_EXCEEDED",
        "retryable": False,
    }
    assert "no per-job limit" in memory_failure(0)["message"]
