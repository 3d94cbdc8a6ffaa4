"""The `videojobs` commands end to end over a fake JobClient: what they print,
where, and their exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from videojobs.cli import main as cli_main
from videojobs.client import UploadFile, VideoJobsError
from videojobs.v1 import job_pb2

JOB_ID = "0123456789abcdef" * 2


def job(state: int = job_pb2.JOB_STATE_QUEUED, **fields) -> job_pb2.Job:
    return job_pb2.Job(job_id=JOB_ID, state=state, pipeline="probe", attempt=1, **fields)


def events(count: int, *, terminal: str | None = None) -> list[job_pb2.JobEvent]:
    made = [
        job_pb2.JobEvent(job_id=JOB_ID, sequence=n, progress=job_pb2.Progress(fraction=n / 10))
        for n in range(1, count + 1)
    ]
    if terminal == "completed":
        made.append(
            job_pb2.JobEvent(
                job_id=JOB_ID, sequence=count + 1, completed=job_pb2.JobCompleted(output_key="o")
            )
        )
    elif terminal == "failed":
        made.append(
            job_pb2.JobEvent(
                job_id=JOB_ID,
                sequence=count + 1,
                failed=job_pb2.JobFailed(error=status_pb2.Status(code=2, message="boom")),
            )
        )
    elif terminal == "cancelled":
        made.append(
            job_pb2.JobEvent(
                job_id=JOB_ID, sequence=count + 1, cancelled=job_pb2.JobCancelled(reason="stop")
            )
        )
    return made


class FakeJobClient:
    """Plays the part of JobClient; `script` says what each call returns."""

    script: dict = {}
    instances: list[FakeJobClient] = []

    def __init__(self, address: str, *, timeout: float | None = None, **credentials) -> None:
        self.address, self.timeout = address, timeout
        self.credentials = credentials
        self.calls: list[tuple] = []
        self.follow_closed = False
        FakeJobClient.instances.append(self)

    def __enter__(self) -> FakeJobClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def _answer(self, name: str, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        answer = self.script[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def submit(self, path, **kwargs) -> job_pb2.Job:
        UploadFile.describe(path)  # like the real client: an unreadable file fails here
        on_progress = kwargs["on_upload_progress"]
        on_progress(0, 10)
        on_progress(10, 10)
        return self._answer("submit", path, **kwargs)

    def get_status(self, job_id: str) -> job_pb2.Job:
        return self._answer("get_status", job_id)

    def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        return self._answer("cancel", job_id, reason=reason)

    def list_jobs(self, **kwargs):
        return self._answer("list_jobs", **kwargs)

    def iter_jobs(self, **kwargs) -> Iterator[job_pb2.Job]:
        return iter(self._answer("iter_jobs", **kwargs))

    def follow(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        reconnect_timeout: float = 60.0,
        on_reconnect=None,
    ) -> Iterator[job_pb2.JobEvent]:
        self.calls.append(
            ("follow", (job_id,), {"after_sequence": after_sequence, "timeout": reconnect_timeout})
        )
        try:
            for reason in self.script.get("reconnects", []):
                on_reconnect(reason, 0.5)
            for event in self.script["follow"]:
                if isinstance(event, BaseException):
                    raise event
                if event.sequence > after_sequence:
                    yield event
        finally:
            self.follow_closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeJobClient]:
    FakeJobClient.script = {}
    FakeJobClient.instances = []
    monkeypatch.setattr(cli_main, "JobClient", FakeJobClient)
    return FakeJobClient


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"0123456789")
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_submit_prints_the_job_id_and_state(fake, video, capsys) -> None:
    fake.script = {"submit": job()}
    argv = ["submit", str(video), "--pipeline", "probe", "--param", "n=3", "--request-id", "r1"]
    code, out, err = run(argv, capsys)
    assert (code, out) == (0, f"{JOB_ID} QUEUED\n")
    _, _, kwargs = fake.instances[0].calls[0]
    assert kwargs["parameters"] == {"n": 3}
    assert (kwargs["pipeline"], kwargs["request_id"]) == ("probe", "r1")
    # Off a terminal, progress is plain lines on stderr, never on stdout.
    assert "uploading clip.mp4" in err
    assert "uploaded 10 B" in err


def test_submit_json_prints_the_proto_json_mapping(fake, video, capsys) -> None:
    fake.script = {"submit": job()}
    code, out, _ = run(["submit", str(video), "--json"], capsys)
    assert code == 0
    assert json.loads(out) == {
        "jobId": JOB_ID,
        "state": "JOB_STATE_QUEUED",
        "pipeline": "probe",
        "attempt": 1,
    }


@pytest.mark.parametrize(
    ("final_state", "exit_code"),
    [
        (job_pb2.JOB_STATE_SUCCEEDED, 0),
        (job_pb2.JOB_STATE_FAILED, 1),
        (job_pb2.JOB_STATE_CANCELLED, 3),
    ],
)
def test_submit_wait_exit_code_follows_the_outcome(
    fake, video, capsys, final_state: int, exit_code: int
) -> None:
    fake.script = {
        "submit": job(),
        "follow": events(3, terminal="completed"),
        "get_status": job(final_state, last_event_sequence=4),
    }
    code, out, err = run(["submit", str(video), "--wait"], capsys)
    assert code == exit_code
    assert out.startswith(f"job:      {JOB_ID}\n")
    assert f"submitted job {JOB_ID}" in err
    assert "completed output o" in err


def test_submit_missing_file_exits_2_without_calling(fake, tmp_path, capsys) -> None:
    code, out, err = run(["submit", str(tmp_path / "nope.mp4")], capsys)
    assert (code, out) == (2, "")
    assert "cannot read" in err and "No such file or directory" in err
    assert "Traceback" not in err
    assert fake.instances[0].calls == []


def test_failed_call_prints_every_detail_to_stderr_and_exits_1(fake, video, capsys) -> None:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="invalid upload header")
    for detail in [
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="header.pipeline", description="unknown pipeline 'x'"
                )
            ]
        ),
        error_details_pb2.ErrorInfo(reason="UNKNOWN_PIPELINE", domain="videojobs.dev"),
        error_details_pb2.RetryInfo(),
    ]:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    fake.script = {"submit": VideoJobsError.from_status(status)}
    code, out, err = run(["submit", str(video), "--pipeline", "x"], capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[-4:] == [
        "error: INVALID_ARGUMENT: invalid upload header",
        "  header.pipeline: unknown pipeline 'x'",
        "  reason: UNKNOWN_PIPELINE (domain videojobs.dev)",
        "  retry after: 0s",
    ]


def test_status_prints_a_summary_or_json(fake, capsys) -> None:
    fake.script = {"get_status": job(job_pb2.JOB_STATE_RUNNING, last_event_sequence=5)}
    code, out, _ = run(["status", JOB_ID], capsys)
    assert code == 0
    assert "state:    RUNNING" in out.splitlines()
    code, out, _ = run(["status", JOB_ID, "--json"], capsys)
    assert json.loads(out)["lastEventSequence"] == "5"


def test_address_and_timeout_reach_the_client(fake, capsys) -> None:
    fake.script = {"get_status": job()}
    run(["--address", "h:1", "status", JOB_ID, "--timeout", "1.5"], capsys)
    assert (fake.instances[0].address, fake.instances[0].timeout) == ("h:1", 1.5)


def test_results_without_follow_stops_at_the_events_stored_so_far(fake, capsys) -> None:
    # The job is still running: by the time the stream opens, event 4 exists too.
    fake.script = {"get_status": job(last_event_sequence=3), "follow": events(6)}
    code, out, _ = run(["results", JOB_ID], capsys)
    assert code == 0
    assert [int(line.split()[0]) for line in out.splitlines()] == [1, 2, 3]
    assert fake.instances[0].follow_closed


def test_results_after_n_with_nothing_new_prints_nothing(fake, capsys) -> None:
    fake.script = {"get_status": job(last_event_sequence=3), "follow": events(3)}
    code, out, _ = run(["results", JOB_ID, "--after", "3"], capsys)
    assert (code, out) == (0, "")
    assert [name for name, *_ in fake.instances[0].calls] == ["get_status"]


def test_results_json_prints_one_object_per_line(fake, capsys) -> None:
    fake.script = {"get_status": job(last_event_sequence=3), "follow": events(3)}
    code, out, _ = run(["results", JOB_ID, "--json", "--after", "1"], capsys)
    assert code == 0
    assert [json.loads(line)["sequence"] for line in out.splitlines()] == ["2", "3"]


def test_results_follow_prints_to_the_terminal_event(fake, capsys) -> None:
    fake.script = {"follow": events(2, terminal="completed")}
    code, out, _ = run(["results", JOB_ID, "--follow"], capsys)
    assert code == 0
    assert out.splitlines()[-1].split()[2] == "completed"
    assert [name for name, *_ in fake.instances[0].calls] == ["follow"]


@pytest.mark.parametrize(
    ("terminal", "exit_code"), [("completed", 0), ("failed", 1), ("cancelled", 3)]
)
def test_results_follow_exit_code_says_how_the_job_ended(
    fake, capsys, terminal: str, exit_code: int
) -> None:
    fake.script = {"follow": events(2, terminal=terminal)}
    code, out, _ = run(["results", JOB_ID, "--follow"], capsys)
    assert code == exit_code
    assert out.splitlines()[-1].split()[2] == terminal


def test_results_without_follow_exits_0_for_a_failed_job(fake, capsys) -> None:
    fake.script = {
        "get_status": job(job_pb2.JOB_STATE_FAILED, last_event_sequence=3),
        "follow": events(2, terminal="failed"),
    }
    code, out, _ = run(["results", JOB_ID], capsys)
    assert code == 0
    assert len(out.splitlines()) == 3


def test_results_follow_says_it_is_reconnecting_and_honours_timeout(fake, capsys) -> None:
    fake.script = {
        "reconnects": ["UNAVAILABLE: failed to connect to all addresses"],
        "follow": [VideoJobsError(grpc.StatusCode.UNAVAILABLE, "job-service unreachable")],
    }
    code, out, err = run(
        ["--address", "h:9", "results", JOB_ID, "--follow", "--timeout", "7"], capsys
    )
    assert (code, out) == (1, "")
    assert (
        "videojobs: job-service at h:9 did not answer (UNAVAILABLE: failed to connect to all "
        "addresses); reconnecting in 0.5 s (gives up after 7 s; see --timeout)"
    ) in err.splitlines()
    assert "UNAVAILABLE" in err.splitlines()[-1]
    assert fake.instances[0].calls[0][2]["timeout"] == 7.0


def test_ctrl_c_during_submit_wait_says_the_job_keeps_running(fake, video, capsys) -> None:
    fake.script = {"submit": job(), "follow": [KeyboardInterrupt()]}
    code, _, err = run(["submit", str(video), "--wait"], capsys)
    assert code == 130
    assert f"interrupted: job {JOB_ID} keeps running; follow it with" in err
    assert f"  videojobs results {JOB_ID} --follow" in err.splitlines()


def test_version_prints_the_installed_version(capsys) -> None:
    from importlib import metadata

    code, out, _ = run(["--version"], capsys)
    assert (code, out) == (0, f"videojobs {metadata.version('videojobs')}\n")


def test_list_prints_a_table_and_the_next_page_hint(fake, capsys) -> None:
    fake.script = {"list_jobs": ([job(), job(job_pb2.JOB_STATE_RUNNING)], "next-token")}
    code, out, err = run(["list", "--state", "queued", "--pipeline", "probe"], capsys)
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["ID", "STATE", "PIPELINE", "ATTEMPT", "PROGRESS", "CREATED"]
    assert [row.split()[1] for row in rows[2:]] == ["QUEUED", "RUNNING"]
    assert "--page-token next-token" in err
    _, _, kwargs = fake.instances[0].calls[0]
    assert kwargs["states"] == [job_pb2.JOB_STATE_QUEUED]
    assert kwargs["pipeline"] == "probe"


def test_list_all_json_walks_every_page(fake, capsys) -> None:
    fake.script = {"iter_jobs": [job(), job()]}
    code, out, _ = run(["list", "--all", "--json", "--page-size", "1"], capsys)
    assert code == 0
    assert len(json.loads(out)["jobs"]) == 2
    assert fake.instances[0].calls[0][2]["page_size"] == 1


def test_cancel_prints_the_cancelled_job(fake, capsys) -> None:
    fake.script = {"cancel": job(job_pb2.JOB_STATE_CANCELLED)}
    code, out, _ = run(["cancel", JOB_ID, "--reason", "not needed"], capsys)
    assert (code, out) == (0, f"{JOB_ID} CANCELLED\n")
    assert fake.instances[0].calls[0][2] == {"reason": "not needed"}


def test_cancel_of_an_ended_job_exits_1(fake, capsys) -> None:
    fake.script = {
        "cancel": VideoJobsError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "job already ended",
            reason="JOB_ALREADY_ENDED",
            metadata={"state": "JOB_STATE_SUCCEEDED"},
        )
    }
    code, _, err = run(["cancel", JOB_ID], capsys)
    assert code == 1
    assert "error: FAILED_PRECONDITION: job already ended" in err
    assert "reason: JOB_ALREADY_ENDED (state=JOB_STATE_SUCCEEDED)" in err


def test_ctrl_c_exits_130_without_a_traceback(fake, capsys) -> None:
    fake.script = {"get_status": KeyboardInterrupt()}
    code, _, err = run(["status", JOB_ID], capsys)
    assert code == 130
    assert "Traceback" not in err


@pytest.fixture
def no_credentials_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "VIDEOJOBS_TOKEN",
        "VIDEOJOBS_TOKEN_FILE",
        "VIDEOJOBS_TLS_CA",
        "VIDEOJOBS_TLS_CLIENT_CERT",
        "VIDEOJOBS_TLS_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


def test_credential_options_reach_the_client(
    fake, no_credentials_in_the_environment, tmp_path, capsys
) -> None:
    fake.script = {"get_status": job()}
    token_file = tmp_path / "token"
    token_file.write_text("vj_secret\n")
    argv = ["--token-file", str(token_file), "--tls-ca", "ca.pem", "status", JOB_ID]
    assert run([*argv, "--tls-cert", "me.pem", "--tls-key", "me.key"], capsys)[0] == 0
    assert fake.instances[0].credentials == {
        "token": "vj_secret",
        "tls_ca": "ca.pem",
        "tls_cert": "me.pem",
        "tls_key": "me.key",
    }
    # Nothing given: no TLS, and the client reads $VIDEOJOBS_TOKEN itself.
    assert run(["status", JOB_ID], capsys)[0] == 0
    assert fake.instances[1].credentials == {
        "token": None,
        "tls_ca": None,
        "tls_cert": None,
        "tls_key": None,
    }


def test_credential_options_default_to_the_environment(
    fake, no_credentials_in_the_environment, monkeypatch, tmp_path, capsys
) -> None:
    fake.script = {"get_status": job()}
    token_file = tmp_path / "token"
    token_file.write_text("vj_from_file")
    monkeypatch.setenv("VIDEOJOBS_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("VIDEOJOBS_TLS_CA", "env-ca.pem")
    monkeypatch.setenv("VIDEOJOBS_TLS_CLIENT_CERT", "env.pem")
    monkeypatch.setenv("VIDEOJOBS_TLS_CLIENT_KEY", "env.key")
    assert run(["status", JOB_ID, "--tls-ca", "flag-ca.pem"], capsys)[0] == 0
    assert fake.instances[0].credentials == {
        "token": "vj_from_file",
        "tls_ca": "flag-ca.pem",
        "tls_cert": "env.pem",
        "tls_key": "env.key",
    }


@pytest.mark.parametrize("content", [None, "", "two\nlines"])
def test_an_unusable_token_file_is_a_usage_error(
    fake, no_credentials_in_the_environment, tmp_path, capsys, content
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    code, out, err = run(["list", "--token-file", str(token_file)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("videojobs list: error: ")
    assert str(token_file) in err
    assert fake.instances == []  # refused before any client exists


def test_an_unreadable_tls_file_is_a_usage_error(
    no_credentials_in_the_environment, tmp_path, capsys
) -> None:
    # The real client: it reads the files when it is made, before any call.
    code, _, err = run(["status", JOB_ID, "--tls-ca", str(tmp_path / "missing.pem")], capsys)
    assert code == 2
    assert "cannot read the TLS CA" in err
    code, _, err = run(["status", JOB_ID, "--tls-cert", str(tmp_path / "c.pem")], capsys)
    assert code == 2
    assert "needs its key" in err


def test_list_tenant_reaches_the_client(fake, capsys) -> None:
    fake.script = {"list_jobs": ([job(tenant="acme")], "")}
    code, out, _ = run(["list", "--tenant", "acme"], capsys)
    assert code == 0
    assert fake.instances[0].calls[0][2]["tenant"] == "acme"
    assert out.splitlines()[0].split()[-1] == "TENANT"


def test_watch_exits_1_when_a_job_cannot_be_followed(fake, capsys) -> None:
    fake.script = {"follow": [VideoJobsError(grpc.StatusCode.NOT_FOUND, "no such job")]}
    code, out, err = run(["watch", JOB_ID], capsys)
    assert code == 1
    assert out == f"{JOB_ID} UNKNOWN\n"
    assert f"job {JOB_ID}: cannot follow it: NOT_FOUND: no such job" in err


def test_watch_reports_each_job_and_exits_by_the_worst_outcome(fake, capsys) -> None:
    fake.script = {"follow": events(2, terminal="completed")}
    code, out, _ = run(["watch", JOB_ID, JOB_ID], capsys)
    assert (code, out) == (0, f"{JOB_ID} SUCCEEDED\n")  # one id given twice is watched once


def test_watch_refuses_more_jobs_than_it_can_follow(fake, capsys) -> None:
    ids = [f"{n:032x}" for n in range(65)]
    code, _, err = run(["watch", *ids], capsys)
    assert code == 2 and "at most 64 jobs" in err


def test_submit_help_lists_the_builtin_pipelines_and_their_parameters(capsys) -> None:
    code, out, _ = run(["submit", "--help"], capsys)
    assert code == 0
    lines = out.splitlines()
    probe = next(line for line in lines if line.strip().startswith("probe "))
    assert probe.split()[1:] == ["count_frames,", "verify_frames"]
    assert any(line.strip().startswith("(sampling)") and "target_fps" in line for line in lines)
    assert "`videojobs pipelines NAME` shows types, defaults and meanings" in out
