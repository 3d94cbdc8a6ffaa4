"""`videojobs --print-completion bash` prints a script that completes the
commands and their options in a real bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VIDEOJOBS = Path(sys.executable).parent / "videojobs"


def _complete(words: list[str]) -> list[str]:
    line = " ".join(words)
    script = (
        f"source <({VIDEOJOBS} --print-completion bash)\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}\n'
        "_shtab_videojobs\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    return sorted(result.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_and_options():
    assert _complete(["videojobs", "wa"]) == ["watch"]
    assert _complete(["videojobs", "st"]) == ["stats", "status"]
    assert _complete(["videojobs", "submit", "--pri"]) == ["--priority"]
    assert "--follow" in _complete(["videojobs", "results", "--f"])


def test_zsh_script_is_printed():
    result = subprocess.run(
        [str(VIDEOJOBS), "--print-completion", "zsh"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "#compdef videojobs" in result.stdout
