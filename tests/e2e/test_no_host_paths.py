"""Regression test: no absolute or host path leaks anywhere.

A realistic mix of work runs through the real videojobs-server and
videojobs-worker (successful probes, one input that opens but does not decode,
a job cancelled while queued, a refused upload, calls about unknown jobs).
Then everything the system stored or said is collected (every database row,
every RPC response and event, the error messages and details of refused
calls, every stored result document, the worker's status, the CLI's output)
and every string in it is checked: no host path, no absolute path, no drive,
no `file:` URL; and every storage-key-like field holds a valid relative key.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2, status_pb2

from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.keys import InvalidStorageKey
from videojobs.storage.local import PARTIAL_DIR
from videojobs.v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

from support.sync_api import Api
from support.videos import write_sample_video

pytestmark = pytest.mark.e2e

UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
KEY_NAME = re.compile(r"^(key|.+_key|.+Key)$")
HOST_DIRS = ("/tmp/", "/root/", "/home/")
TRIM = "\"'`()[]{}<>,;"


# -- collecting ---------------------------------------------------------------


def _message(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=False)


def _refusal(call) -> dict:
    """Runs `call` (which must fail) and returns what the failure said, with its
    rich status details decoded."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    said: dict[str, Any] = {"code": error.code().name, "message": error.details() or ""}
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            said.setdefault("metadata", {})[key] = value
            continue
        status = status_pb2.Status.FromString(value)
        said["status"] = _message(status)
        for detail in status.details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                said.setdefault("error_info", []).append(_message(info))
            elif detail.Unpack(bad):
                said.setdefault("bad_request", []).append(_message(bad))
    assert "status" in said, f"no grpc-status-details-bin on {said}"
    return said


def _database(path: Path) -> dict[str, list[dict]]:
    """Every row of every table, JSON columns decoded."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        dump: dict[str, list[dict]] = {}
        for table in tables:
            info = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
            json_columns = {column[1] for column in info if column[2].upper() == "JSON"}
            cursor = connection.execute(f'SELECT * FROM "{table}"')
            names = [description[0] for description in cursor.description]
            rows = []
            for values in cursor.fetchall():
                row = dict(zip(names, values, strict=True))
                for column in json_columns:
                    if isinstance(row[column], str):
                        row[column] = json.loads(row[column])
                rows.append(row)
            dump[table] = rows
        return dump
    finally:
        connection.close()


def _storage(root: Path) -> dict[str, Any]:
    """Every object in storage by key; JSON documents decoded."""
    store = open_blob_store(str(root))
    objects: dict[str, Any] = {}
    for info in store.list():
        if info.key.name.endswith(".json"):
            with store.open_read(info.key) as handle:
                objects[info.key.value] = json.load(handle)
        else:
            objects[info.key.value] = f"<{info.size_bytes} bytes>"
    return objects


# -- checking -------------------------------------------------------------------


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(where, string) for every string in `value`, dict keys included."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, bytes):
        yield where, value.decode("utf-8", errors="replace")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, f"{where} (key {key!r})")
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def _key_fields(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(where, value) for every value under a key named like a storage key."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and KEY_NAME.match(key) and item is not None:
                yield f"{where}.{key}", item
            yield from _key_fields(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _key_fields(item, f"{where}[{index}]")


def _path_problems(text: str, forbidden: list[str]) -> list[str]:
    """What is wrong with one string value as a whole."""
    problems = [f"contains {needle!r}" for needle in forbidden if needle in text]
    problems += [f"contains {d!r}" for d in HOST_DIRS if d in text]
    if text.startswith("/"):
        problems.append("starts with '/'")
    if WINDOWS_DRIVE.match(text):
        problems.append("starts with a drive")
    if text.lower().startswith("file:"):
        problems.append("starts with 'file:'")
    return problems


def _word_problems(text: str) -> list[str]:
    """Paths inside text meant for people (`output /srv/x`, `see file:///x`). A
    lone `/` (as in `QuickTime / MOV`) and labels like `file:` are words, not paths."""
    problems = []
    for raw in text.split():
        word = raw.strip(TRIM)
        if len(word) > 1 and word.startswith("/"):
            problems.append(f"has the absolute path {word!r}")
        if WINDOWS_DRIVE.match(word):
            problems.append(f"has the drive path {word!r}")
        if word.lower().startswith("file:/"):
            problems.append(f"has the file URL {word!r}")
    return problems


def _check(collected: dict[str, Any], tmp_path: Path) -> list[str]:
    forbidden = {str(tmp_path), str(tmp_path.resolve())}
    home = str(Path.home())
    if home != "/":
        forbidden.add(home)
    problems = []
    for where, text in _strings(collected, "collected"):
        for problem in _path_problems(text, sorted(forbidden)) + _word_problems(text):
            problems.append(f"{where}: {problem}: {text!r}")
    for where, value in _key_fields(collected, "collected"):
        if not isinstance(value, str):
            problems.append(f"{where}: a key that is not a string: {value!r}")
            continue
        try:
            StorageKey(value)
        except InvalidStorageKey as exc:
            problems.append(f"{where}: not a valid storage key ({exc.reason}): {value!r}")
    return sorted(set(problems))


# -- the test -----------------------------------------------------------------------


def test_no_host_path_anywhere_after_a_realistic_mix(stack, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    specs = {
        "with-audio.mp4": dict(width=160, height=120, fps=10, frames=20, audio_sample_rate=44100),
        "silent.mp4": dict(width=128, height=96, fps=8, frames=16),
        "from-cli.mp4": dict(width=176, height=144, fps=15, frames=15, audio_sample_rate=22050),
    }
    for name, spec in specs.items():
        write_sample_video(videos / name, **spec)
    with_audio = (videos / "with-audio.mp4").read_bytes()
    silent = (videos / "silent.mp4").read_bytes()
    # The container intact, the coded frames zeroed: it opens but does not decode.
    box = with_audio.index(b"mdat") - 4
    size = int.from_bytes(with_audio[box : box + 4], "big")
    undecodable = with_audio[: box + 8] + bytes(size - 8) + with_audio[box + size :]
    text_file = videos / "notes.txt"
    text_file.write_text("Not a video at all, only words.\n" * 50)

    stack.start_server()
    api = Api(stack.address)
    refusals: dict[str, dict] = {}
    collected: dict[str, Any] = {"refusals": refusals}
    try:
        # While no worker is connected: a job that is cancelled while queued.
        queued = api.submit(with_audio, file_name="to-cancel.mp4", count_frames=True)
        cancelled = api.stub.CancelJob(
            js.CancelJobRequest(job_id=queued.job_id, reason="changed my mind"), timeout=10
        ).job
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
        collected["cancel_response"] = _message(cancelled)

        # Refused calls.
        refusals["upload_of_text"] = _refusal(
            lambda: api.submit(text_file.read_bytes(), file_name=text_file.name)
        )
        assert refusals["upload_of_text"]["code"] == "INVALID_ARGUMENT"
        refusals["get_unknown"] = _refusal(lambda: api.job(UNKNOWN_JOB))
        assert refusals["get_unknown"]["code"] == "NOT_FOUND"
        refusals["stream_unknown"] = _refusal(lambda: api.events(UNKNOWN_JOB))
        refusals["cancel_unknown"] = _refusal(
            lambda: api.stub.CancelJob(js.CancelJobRequest(job_id=UNKNOWN_JOB), timeout=10)
        )
        refusals["get_malformed"] = _refusal(lambda: api.job("../../etc/passwd"))
        assert refusals["get_malformed"]["code"] == "INVALID_ARGUMENT"
        refusals["cancel_ended"] = _refusal(
            lambda: api.stub.CancelJob(js.CancelJobRequest(job_id=queued.job_id), timeout=10)
        )
        assert refusals["cancel_ended"]["code"] == "FAILED_PRECONDITION"

        # Only now a worker: the cancelled job must stay cancelled.
        worker = stack.start_worker("paths-worker")
        jobs = [
            api.submit(with_audio, file_name="with-audio.mp4", count_frames=True),
            api.submit(silent, file_name="silent.mp4", count_frames=True, verify_frames=5),
            api.submit(undecodable, file_name="undecodable.mp4", count_frames=True),
            # Every frame pipeline at once: thumbnails add artifact keys, a
            # corrupt stream adds warnings.
            api.submit_pipelines(
                with_audio,
                ["detect", "ocr", "scenes", "thumbnails"],
                {"target_fps": 5, "thumbnails": {"mode": "interval", "interval_seconds": 0.5}},
                file_name="analysed.mp4",
            ),
        ]
        cli_submit = stack.cli(
            "submit", str(videos / "from-cli.mp4"), "--param", "count_frames=true", "--wait"
        )
        cli_submit_json = stack.cli(
            "submit", str(videos / "from-cli.mp4"), "--param", "count_frames=true", "--json"
        )
        collected["cli_submit"] = {"stdout": cli_submit.stdout, "stderr": cli_submit.stderr}
        collected["cli_submit_json"] = json.loads(cli_submit_json.stdout)
        cli_job_ids = [
            re.search(r"^job:\s+([0-9a-f]{32})$", cli_submit.stdout, re.MULTILINE).group(1),
            collected["cli_submit_json"]["jobId"],
        ]
        done = {job.job_id: api.wait_terminal(job.job_id) for job in jobs}
        done.update({job_id: api.wait_terminal(job_id) for job_id in cli_job_ids})
        failed = jobs[2].job_id
        assert done[jobs[3].job_id].artifacts, "the analysed job stored no thumbnails"
        for job_id in [jobs[0].job_id, jobs[1].job_id, jobs[3].job_id, *cli_job_ids]:
            assert done[job_id].state == job_pb2.JOB_STATE_SUCCEEDED, done[job_id].error
        assert done[failed].state == job_pb2.JOB_STATE_FAILED
        assert done[failed].error.message, "the failed job says nothing"
        assert api.job(queued.job_id).state == job_pb2.JOB_STATE_CANCELLED
        all_ids = [queued.job_id, *done]

        # Every RPC response: ListJobs page by page, GetStatus, every event.
        pages, token = [], ""
        while True:
            page = api.stub.ListJobs(js.ListJobsRequest(page_size=2, page_token=token), timeout=10)
            pages.append(_message(page))
            token = page.next_page_token
            if not token:
                break
        assert len(pages) >= 3, "ListJobs should have needed several pages"
        listed = [job["jobId"] for page in pages for job in page.get("jobs", [])]
        assert sorted(listed) == sorted(all_ids)
        collected["list_pages"] = pages
        collected["statuses"] = {job_id: _message(api.job(job_id)) for job_id in all_ids}
        collected["events"] = {
            job_id: [_message(event) for event in api.events(job_id)] for job_id in all_ids
        }
        assert sum(len(events) for events in collected["events"].values()) >= 20

        with grpc.insecure_channel(worker.address) as channel:
            status = worker_service_pb2_grpc.WorkerServiceStub(channel).GetWorkerStatus(
                worker_service_pb2.GetWorkerStatusRequest(), timeout=10
            )
        assert status.worker_id == "paths-worker"
        collected["worker_status"] = _message(status)

        # What the CLI prints about each job.
        cli: dict[str, dict] = {}
        for job_id in all_ids:
            for args in (
                ("status", job_id, "--json"),
                ("results", job_id, "--json"),
                ("status", job_id),
                ("results", job_id),
            ):
                run = stack.cli(*args)
                cli[" ".join(args)] = {"stdout": run.stdout, "stderr": run.stderr}
            cli[f"status {job_id} --json"]["parsed"] = json.loads(
                cli[f"status {job_id} --json"]["stdout"]
            )
            cli[f"results {job_id} --json"]["parsed"] = [
                json.loads(line) for line in cli[f"results {job_id} --json"]["stdout"].splitlines()
            ]
        collected["cli"] = cli
    finally:
        api.close()

    # What was stored: every database row, every object in storage.
    database = _database(stack.data_dir / "videojobs.db")
    assert {"jobs", "job_events", "job_artifacts"} <= database.keys(), database.keys()
    assert sorted(row["job_id"] for row in database["jobs"]) == sorted(all_ids)
    assert len(database["job_events"]) == sum(len(e) for e in collected["events"].values())
    collected["database"] = database
    storage_root = stack.data_dir / "storage"
    storage = _storage(storage_root)
    results = [key for key in storage if key.endswith("/results.json")]
    assert len(results) == 5, sorted(storage)  # one per successful job
    assert any("/thumbnails/" in key for key in storage), sorted(storage)
    collected["storage"] = storage
    # No file in storage hides under a name that is not a key.
    on_disk = {
        str(Path(dirpath, name).relative_to(storage_root))
        for dirpath, dirnames, filenames in os.walk(storage_root)
        for name in filenames
        if Path(dirpath).relative_to(storage_root).parts[:1] != (PARTIAL_DIR,)
    }
    listed_keys = set(storage)
    assert on_disk - listed_keys == set(), f"files in storage that are not keys: {on_disk}"

    # The check must look at real material, including the paths it passed in.
    assert str(videos / "from-cli.mp4").startswith(str(tmp_path))
    problems = _check(collected, tmp_path)
    assert not problems, f"{len(problems)} host-path leak(s):\n" + "\n".join(problems[:60])
