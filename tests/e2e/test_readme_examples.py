"""Every CLI, grpcurl and `buf curl` example in README's "Using it" section,
and the token commands of "Running on a network", run as written against a
live pair: README stays true.

Placeholders are filled in the way a reader would: `JOB_ID` with a job of
theirs, `clip.mp4` with a video, `[--option]` with the option, `N`,
`SECONDS`, `DIR`, `TEXT`, `NAME` with values; the addresses with the pair's.
`DrainWorker` runs last, as it stops the worker (README says so).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from videojobs.v1 import job_pb2

from support.processes import BIN
from support.sync_api import Api
from support.videos import write_sample_video

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
RUNNABLE = ("videojobs ", "grpcurl ", "buf curl ", "videojobs-server tokens ")


def readme_commands(section: str) -> list[tuple[int, str]]:
    """(line number, command) of each example in the sh blocks of `section`
    (a `## ` heading), continuation lines joined, comments dropped."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    commands = []
    for block in re.finditer(r"```sh\n(.*?)```", text[start:end], re.S):
        first_line = text[: start + block.start()].count("\n") + 2
        pending, pending_line = "", 0
        for offset, line in enumerate(block.group(1).splitlines()):
            stripped = line.strip()
            if not pending:
                pending_line = first_line + offset
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            command = _without_comment(pending + stripped)
            pending = ""
            if command.startswith(RUNNABLE):
                commands.append((pending_line, command))
    return commands


def _without_comment(line: str) -> str:
    # A comment is a '#' after whitespace (no example quotes one).
    return re.sub(r"(^|\s)#(\s.*)?$", "", line).strip()


def fill(command: str, values: dict[str, str]) -> str:
    """The command with its optional `[...]` parts taken and placeholders filled."""
    command = re.sub(r"\[([^\]]+)\]", r"\1", command)
    for placeholder, value in values.items():
        command = re.sub(rf"\b{placeholder}\b", value, command)
    return command


def run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**env, "PATH": f"{BIN}:{env.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def workdir(tmp_path) -> Path:
    """Where a reader runs the examples, with their clip.mp4."""
    directory = tmp_path / "reader"
    directory.mkdir()
    write_sample_video(directory / "clip.mp4", width=160, height=120, fps=10, frames=20)
    return directory


def test_the_examples_of_using_it_run_as_written(stack, workdir):
    stack.start_server()
    # thumbnails is left out, so a job of it stays queued for the cancel example.
    worker = stack.start_worker(
        "readme",
        VIDEOJOBS_WORKER_PIPELINES="probe,scenes,ocr,detect",
        VIDEOJOBS_WORKER_LISTEN="127.0.0.1:0",
    )
    env = stack.env()
    api = Api(stack.address)
    done = api.submit_with((workdir / "clip.mp4").read_bytes())
    assert api.wait_terminal(done.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    waiting = api.submit_with((workdir / "clip.mp4").read_bytes(), pipeline="thumbnails")
    api.close()

    commands = readme_commands("Using it")
    kinds = {command.split()[0] for _, command in commands}
    assert kinds >= {"videojobs", "grpcurl", "buf"}, kinds
    assert len(commands) >= 25, commands
    drain = [c for c in commands if "DrainWorker" in c[1]]
    ordered = [c for c in commands if c not in drain] + drain
    for line, written in ordered:
        job_id = (
            waiting.job_id if re.match(r"videojobs (cancel|delete)\b", written) else done.job_id
        )
        command = fill(
            written,
            {
                "JOB_ID": job_id,
                "N": "5",
                "SECONDS": "600",
                "DIR": str(workdir / "fetched"),
                "TEXT": "from-readme",
                "NAME": "probe",
            },
        )
        command = command.replace("127.0.0.1:50051", stack.address).replace(
            "127.0.0.1:50052", worker.address
        )
        result = run(command, env, workdir)
        assert result.returncode == 0, (
            f"README line {line}: {written}\nran: {command}\n"
            f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
        assert "Traceback" not in result.stderr, (line, result.stderr)
    # DrainWorker stopped the worker, as README warns.
    worker.process.wait(timeout=60)
    assert worker.process.returncode == 0


def test_the_token_commands_run_as_written(tmp_path):
    commands = readme_commands("Security model") + readme_commands("Running on a network")
    token_commands = [c for c in commands if c[1].startswith("videojobs-server tokens ")]
    assert len(token_commands) >= 6, commands
    auth_file = tmp_path / "auth.json"
    env = {"VIDEOJOBS_AUTH_FILE": str(auth_file), "PATH": "/usr/bin:/bin"}
    for line, written in token_commands:
        result = run(written, env, tmp_path)
        assert result.returncode == 0, (line, written, result.stdout, result.stderr)
    listed = {
        line.split()[0]: line.split()[-1]
        for line in run("videojobs-server tokens list", env, tmp_path).stdout.splitlines()[1:]
    }
    assert set(listed) == {"alice", "ops", "worker-1", "worker-2"}
    # The last example revoked alice: the REVOKED column has a time, the others none.
    assert listed["alice"] != "-" and listed["ops"] == listed["worker-1"] == "-"
    assert (tmp_path / "alice.token").read_text().strip()
