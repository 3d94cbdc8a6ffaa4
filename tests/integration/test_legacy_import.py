"""`videojobs-server import-legacy`: legacy records (JSON lines, a SQLite
table, a CSV export) become terminal jobs that a real job-service then serves
over its API, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from videojobs.jobservice.legacy_import import (
    ImportOptions,
    ImportRequest,
    legacy_job_id,
    run_import,
)
from videojobs.storage import StorageKey, open_blob_store
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.uploads import submit
from support.videos import write_sample_video

SYSTEM = "oldvideo"
SERVER = Path(sys.executable).parent / "videojobs-server"
# Recent times: far inside any retention period a server may apply.
BASE = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)


@dataclass
class Legacy:
    """A legacy tree in tmp_path: the root, its records, and what each should become."""

    root: Path
    records: list[dict]
    originals: dict[str, bytes]  # legacy id -> input bytes (output bytes under "<id>:out")
    importable: dict[str, int]  # legacy id -> the job_pb2.JobState it must end in
    refused: dict[str, str]  # legacy id -> part of the reason


def _times(index: int) -> tuple[datetime, datetime, datetime]:
    created = BASE + timedelta(minutes=10 * index)
    return created, created + timedelta(seconds=30), created + timedelta(seconds=95)


def build_legacy_tree(tmp_path: Path) -> Legacy:
    """Real small videos and result files below `.../srv/app/data/video_jobs`,
    named in every path form the old system wrote, plus the cases it must refuse."""
    root = tmp_path / "srv" / "app" / "data" / "video_jobs"
    (root / "output").mkdir(parents=True)
    (root / "failed").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_sample_video(root / "ok1.mp4", width=64, height=48, frames=6)
    write_sample_video(root / "failed" / "ok2.mp4", width=64, height=48, frames=4)
    # Matroska behind an .mp4 name: the content decides the key's extension.
    write_sample_video(root / "ok3.mp4", width=64, height=48, frames=3, container_format="matroska")
    (root / "output" / "ok-1.json").write_text(json.dumps({"legacy": True, "faces": 3}))
    write_sample_video(elsewhere / "x.mp4", width=64, height=48, frames=2)
    (root / "link.mp4").symlink_to(elsewhere / "x.mp4")
    (root / "notes.mp4").write_text("these are notes, not a video\n" * 10)

    def times(index: int) -> dict:
        created, started, finished = _times(index)
        return {"created": created, "started": started, "finished": finished}

    records = [
        dict(
            id="vj-ok-1",
            state="completed",
            input=str(root / "ok1.mp4"),
            output="data/video_jobs/output/ok-1.json",
            **times(0),
        ),
        dict(
            id="vj-ok-2",
            state="failed",
            input="./data/video_jobs/failed/ok2.mp4",
            error="decoder crashed on /srv/app/data/video_jobs/failed/ok2.mp4\nsecond line",
            **times(1),
        ),
        dict(id="vj-ok-3", state="canceled", input="video_jobs/./ok3.mp4", **times(2)),
        dict(
            id="vj-missing",
            state="done",
            input="data/video_jobs/gone.mp4",
            output="data/video_jobs/output/ok-1.json",
            **times(3),
        ),
        dict(id="vj-outside", state="failed", input=str(elsewhere / "x.mp4"), **times(4)),
        dict(
            id="vj-escape",
            state="succeeded",
            input=str(root / "ok1.mp4"),
            output="data/video_jobs/../../secret.json",
            **times(5),
        ),
        dict(id="vj-link", state="cancelled", input="data/video_jobs/link.mp4", **times(6)),
        dict(id="vj-live", state="running", input=str(root / "ok1.mp4"), **times(7)),
        dict(id="vj-text", state="failed", input="data/video_jobs/notes.mp4", **times(8)),
    ]
    originals = {
        "vj-ok-1": (root / "ok1.mp4").read_bytes(),
        "vj-ok-1:out": (root / "output" / "ok-1.json").read_bytes(),
        "vj-ok-2": (root / "failed" / "ok2.mp4").read_bytes(),
        "vj-ok-3": (root / "ok3.mp4").read_bytes(),
    }
    return Legacy(
        root=root,
        records=records,
        originals=originals,
        importable={
            "vj-ok-1": job_pb2.JOB_STATE_SUCCEEDED,
            "vj-ok-2": job_pb2.JOB_STATE_FAILED,
            "vj-ok-3": job_pb2.JOB_STATE_CANCELLED,
        },
        refused={
            "vj-missing": "no such file",
            "vj-outside": "outside the root",
            "vj-escape": "'..' leads outside the root",
            "vj-link": "resolves outside the root",
            "vj-live": "not final",
            "vj-text": "video container",
        },
    )


# -- the three legacy formats, each with other field names and time styles ----


def write_jsonl(legacy: Legacy, path: Path) -> Path:
    lines = []
    for r in legacy.records:
        record = {
            "id": r["id"],
            "status": r["state"],
            "input_path": r["input"],
            "created_at": r["created"].isoformat().replace("+00:00", "Z"),
            "started_at": r["started"].timestamp(),
            "finished_at": r["finished"].isoformat(),
            "unrelated": {"kept": "out"},
        }
        if "output" in r:
            record["output_path"] = r["output"]
        if "error" in r:
            record["error"] = r["error"]
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n\n")
    return path


def write_sqlite(legacy: Legacy, path: Path) -> Path:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE settings (name TEXT, value TEXT)")
    connection.execute(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, state TEXT, source TEXT, result_path TEXT,"
        " submitted_at TEXT, started_at INTEGER, completed_at TEXT, error_message TEXT)"
    )
    for r in legacy.records:
        connection.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r["id"],
                r["state"].upper(),
                r["input"],
                r.get("output"),
                r["created"].strftime("%Y-%m-%d %H:%M:%S"),  # naive: UTC
                int(r["started"].timestamp()),
                r["finished"].isoformat(),
                r.get("error"),
            ),
        )
    connection.commit()
    connection.close()
    return path


def write_csv(legacy: Legacy, path: Path) -> Path:
    """What DuckDB's `COPY jobs TO 'jobs.csv'` writes: a header, commas, quotes
    only where needed, NULL as an empty field, TIMESTAMPTZ as `... +00`."""
    with open(path, "w", newline="") as target:
        writer = csv.writer(target, lineterminator="\n")
        writer.writerow(
            ["uuid", "status", "video_path", "output", "created", "started_at", "ended_at", "error"]
        )
        for r in legacy.records:
            writer.writerow(
                [
                    r["id"],
                    r["state"],
                    r["input"],
                    r.get("output", ""),
                    r["created"].strftime("%Y-%m-%d %H:%M:%S+00"),
                    r["started"].strftime("%Y-%m-%d %H:%M:%S+00"),
                    r["finished"].strftime("%Y-%m-%d %H:%M:%S+00"),
                    r.get("error", ""),
                ]
            )
    return path


WRITERS = {
    "jsonl": (write_jsonl, "jobs.jsonl"),
    "sqlite": (write_sqlite, "jobs.db"),
    "csv": (write_csv, "jobs_export.csv"),
}


# -- helpers ------------------------------------------------------------------


def _request(legacy, file, database_url, data_dir, *, dry_run=False) -> ImportRequest:
    return ImportRequest(
        file=file,
        options=ImportOptions(root=legacy.root, system=SYSTEM, dry_run=dry_run),
        database_url=database_url,
        storage_url=str(data_dir / "storage"),
    )


def _stored(data_dir: Path) -> dict[str, str]:
    """Every object in the storage root: key -> SHA-256 (empty when there is no root)."""
    if not (data_dir / "storage").exists():
        return {}
    store = open_blob_store(str(data_dir / "storage"))
    found = {}
    for info in store.list():
        with store.open_read(info.key) as source:
            found[info.key.value] = hashlib.sha256(source.read()).hexdigest()
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _by_id(report) -> dict[str, object]:
    return {outcome.legacy_id: outcome for outcome in report.outcomes}


async def _events(stub, job_id: str) -> list:
    call = stub.StreamResults(js.StreamResultsRequest(job_id=job_id))
    return [response.event async for response in call]


async def _check_served(service, legacy: Legacy) -> None:
    """What job-service serves for the imported jobs, and the stored bytes."""
    stub = service.stub
    listed = await stub.ListJobs(js.ListJobsRequest(page_size=100))
    assert {job.job_id for job in listed.jobs} == {
        legacy_job_id(legacy_id) for legacy_id in legacy.importable
    }
    by_legacy = {r["id"]: r for r in legacy.records}
    store = service.storage
    for legacy_id, state in sorted(legacy.importable.items()):
        job_id = legacy_job_id(legacy_id)
        record = by_legacy[legacy_id]
        job = (await stub.GetStatus(js.GetStatusRequest(job_id=job_id))).job
        assert job.state == state
        assert job.request_id == f"legacy:{legacy_id}"
        assert job.pipeline == "probe"
        assert job.attempt == 1
        assert job.last_event_sequence == 2
        assert job.create_time.ToDatetime(tzinfo=UTC) == record["created"]
        assert job.start_time.ToDatetime(tzinfo=UTC) == record["started"]
        assert job.end_time.ToDatetime(tzinfo=UTC) == record["finished"]
        original = legacy.originals[legacy_id]
        assert job.input_size_bytes == len(original)
        assert job.input_sha256 == _sha(original)
        with store.open_read(StorageKey(job.input_key)) as stored:
            assert _sha(stored.read()) == _sha(original)
        extension = ".mkv" if legacy_id == "vj-ok-3" else ".mp4"
        assert job.input_key == f"jobs/{job_id}/input/source{extension}"
        assert job.input_format == ("matroska" if legacy_id == "vj-ok-3" else "mp4")
        assert job.file_name == Path(record["input"]).name

        events = await _events(stub, job_id)
        assert [e.sequence for e in events] == [1, 2]
        first, last = events
        assert first.WhichOneof("payload") == "state_changed"
        assert first.state_changed.to_state == job_pb2.JOB_STATE_QUEUED
        assert first.state_changed.reason == f"imported from {SYSTEM}"
        assert first.job_state == job_pb2.JOB_STATE_QUEUED
        assert first.create_time.ToDatetime(tzinfo=UTC) == record["created"]
        assert last.job_state == state
        assert last.create_time.ToDatetime(tzinfo=UTC) == record["finished"]
        if state == job_pb2.JOB_STATE_SUCCEEDED:
            assert last.WhichOneof("payload") == "completed"
            assert job.output_key == f"jobs/{job_id}/attempts/1/results.json"
            assert last.completed.output_key == job.output_key
            with store.open_read(StorageKey(job.output_key)) as stored:
                assert stored.read() == legacy.originals[f"{legacy_id}:out"]
        elif state == job_pb2.JOB_STATE_FAILED:
            assert last.WhichOneof("payload") == "failed"
            assert job.output_key == ""
            # One line, and no host path leaves through the API.
            assert job.error.message == "decoder crashed on <path>"
            assert last.failed.error.message == job.error.message
        else:
            assert last.WhichOneof("payload") == "cancelled"
            assert last.cancelled.reason == f"cancelled in {SYSTEM}"


# -- the tests ------------------------------------------------------------------


@pytest.mark.parametrize("legacy_format", sorted(WRITERS))
async def test_import_serve_rerun_and_dry_run(
    legacy_format, tmp_path, database_url, start_job_service
):
    legacy = build_legacy_tree(tmp_path)
    writer, name = WRITERS[legacy_format]
    file = writer(legacy, tmp_path / name)
    data_dir = tmp_path / "data"
    refused_ids = {legacy_job_id(legacy_id) for legacy_id in legacy.refused}

    # A dry run first: every decision, nothing written (not even storage or
    # a SQLite file).
    source, dry = await run_import(_request(legacy, file, database_url, data_dir, dry_run=True))
    assert source.format == legacy_format
    if legacy_format == "sqlite":
        assert source.table == "jobs"  # two tables: `jobs` is chosen
    assert (dry.imported, dry.skipped, dry.refused) == (3, 0, 6)
    assert dry.exit_code == 1
    assert _stored(data_dir) == {}
    if database_url.startswith("sqlite"):
        assert not (tmp_path / "videojobs.db").exists()
    outcomes = _by_id(dry)
    assert outcomes["vj-ok-1"].status == "would import"
    assert outcomes["vj-ok-1"].job_id == legacy_job_id("vj-ok-1")
    assert outcomes["vj-ok-3"].input_key.endswith("/input/source.mkv")

    # The import: the good records in, every other one refused with its reason.
    _, report = await run_import(_request(legacy, file, database_url, data_dir))
    assert (report.imported, report.skipped, report.refused) == (3, 0, 6)
    assert report.exit_code == 1
    outcomes = _by_id(report)
    for legacy_id, reason in legacy.refused.items():
        assert outcomes[legacy_id].status == "refused"
        assert reason in outcomes[legacy_id].reason, outcomes[legacy_id]
    for legacy_id in legacy.importable:
        assert outcomes[legacy_id].status == "imported"
    stored = _stored(data_dir)
    # Nothing of a refused record is stored.
    assert not any(key.split("/")[1] in refused_ids for key in stored)
    assert len(stored) == 4  # three inputs and one result file
    assert "summary: 3 imported, 0 skipped (already imported), 6 refused" in report.summary()

    # A second run imports nothing new and says so; a dry run now changes nothing either.
    for dry_run in (False, True):
        _, again = await run_import(_request(legacy, file, database_url, data_dir, dry_run=dry_run))
        assert (again.imported, again.skipped, again.refused) == (0, 3, 6)
        assert {o.legacy_id for o in again.outcomes if o.status == "skipped"} == set(
            legacy.importable
        )
        assert _stored(data_dir) == stored

    # job-service on the same database and storage serves the jobs.
    service = await start_job_service(data_dir=data_dir)
    await _check_served(service, legacy)


async def test_the_real_command(tmp_path, database_url, start_job_service):
    legacy = build_legacy_tree(tmp_path)
    data_dir = tmp_path / "data"
    everything = write_jsonl(legacy, tmp_path / "all.jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(
            line + "\n"
            for line in everything.read_text().splitlines()
            if line and json.loads(line)["id"] in legacy.importable
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOJOBS_")}
    storage = data_dir / "storage"

    def command(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(SERVER),
                "import-legacy",
                *arguments,
                "--system",
                SYSTEM,
                "--database-url",
                database_url,
                "--storage-url",
                str(storage),
                "--data-dir",
                str(data_dir),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def run(*arguments: str) -> subprocess.CompletedProcess:
        return asyncio.to_thread(command, *arguments)

    dry = await run(str(good), "--root", str(legacy.root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "vj-ok-1 -> " + legacy_job_id("vj-ok-1") in dry.stdout
    assert "would import" in dry.stdout
    assert dry.stdout.strip().splitlines()[-1] == (
        "summary (dry run, nothing changed): 3 would be imported, "
        "0 skipped (already imported), 0 refused"
    )
    assert _stored(data_dir) == {}

    # Some records refused: the rest is imported, exit status 1.
    mixed = await run(str(everything), "--root", str(legacy.root))
    assert mixed.returncode == 1, mixed.stderr
    lines = mixed.stdout.strip().splitlines()
    assert lines[-1] == "summary: 3 imported, 0 skipped (already imported), 6 refused"
    assert any("vj-missing" in line and "refused" in line for line in lines)
    assert any("vj-outside" in line and "outside the root" in line for line in lines)
    # The legacy paths may be printed; the target storage's host path never is.
    assert str(storage) not in mixed.stdout + mixed.stderr
    assert "jobs/" + legacy_job_id("vj-ok-1") + "/input/source.mp4" in mixed.stdout

    # Everything left is imported already: exit status 0, all skipped.
    rerun = await run(str(good), "--root", str(legacy.root))
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == (
        "summary: 0 imported, 3 skipped (already imported), 0 refused"
    )

    # Usage errors: exit status 2, nothing done.
    for arguments in (
        [str(tmp_path / "no-such-file.jsonl"), "--root", str(legacy.root)],
        [str(good), "--root", str(tmp_path / "no-such-root")],
        [str(good), "--root", "/"],
        [str(good), "--root", str(legacy.root), "--table", "jobs"],
        [str(good), "--root", str(legacy.root), "--pipeline", "nonesuch"],
        [str(good)],
    ):
        failed = await run(*arguments)
        assert failed.returncode == 2, (arguments, failed.stdout, failed.stderr)
        assert "error" in failed.stderr

    service = await start_job_service(data_dir=data_dir)
    await _check_served(service, legacy)


async def test_ids_that_clash_are_refused_not_skipped(
    tmp_path, database_url, start_job_service, sample_mp4
):
    """Clients may not take a `legacy:` request_id; one legacy id twice in a
    file is refused with the reason, never reported as already imported."""
    legacy = build_legacy_tree(tmp_path)
    data_dir = tmp_path / "data"
    service = await start_job_service(data_dir=data_dir)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await submit(service.stub, sample_mp4, request_id="legacy:vj-taken")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.request_id" in rich_error(raised.value).violations
    created, _, finished = _times(0)
    record = {
        "state": "done",
        "input": str(legacy.root / "ok1.mp4"),
        "output": "data/video_jobs/output/ok-1.json",
        "created_at": created.isoformat(),
        "finished_at": finished.isoformat(),
    }
    file = tmp_path / "clash.jsonl"
    file.write_text(
        "\n".join(json.dumps({"id": legacy_id, **record}) for legacy_id in ("vj-twice", "vj-twice"))
    )
    before = _stored(data_dir)
    _, report = await run_import(_request(legacy, file, database_url, data_dir))
    first, second = report.outcomes
    assert first.status == "imported"
    assert second.status == "refused"
    assert "also on line 1" in second.reason
    assert report.exit_code == 1
    # Only the one imported job added objects.
    added = set(_stored(data_dir)) - set(before)
    assert {key.split("/")[1] for key in added} == {legacy_job_id("vj-twice")}
