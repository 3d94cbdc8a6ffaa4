"""Property-based fuzzing of every RPC job-service serves, against a real
grpc.aio job-service in this process (SQLite, a temp storage root).

Each test drives one server (started once per test function, see
`support.fuzzing.FuzzServer`) with a few hundred hypothesis examples of one
RPC's requests: arbitrary unicode (controls, bidirectional overrides,
invisible characters), strings up to ~100 KB, JSON-shaped parameters nested
up to 50 deep, integers at and beyond every bound, real job ids and lease
tokens next to forged ones, storage keys that are host paths, `..` and URLs,
and uploads that start like every container the server knows. Whatever was
sent, every call must (see `support.fuzzing.check_outcome`):

1. end OK or with a status code its .proto comment documents, never
   INTERNAL or UNKNOWN, with google.rpc.Status details for an error;
2. show the client no host path, Python traceback or SQL text;
3. keep its error details under 16 KiB;

and between and after examples the server stays well: health SERVING, a real
small upload succeeds, no file outside its storage root and database, every
stored file named by a valid StorageKey, no temporary upload file left. The
server runs in this process, so its log is watched too: an exception it
swallowed (a worker stream it dropped) fails the example that caused it.

Each misbehaviour the fuzzer found is also pinned by a deterministic test
with its minimal reproducer (`test_found_*`, at the end).

Strategies build plain "recipes" (dicts) in which `Ref` stands for what is
only known at run time (a real job id, the current lease token, the storage
root); the tests resolve them and build the protobuf messages.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, Phase, assume, configuration, event, given, settings
from hypothesis import strategies as st

from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.blobstore import put_bytes
from videojobs.storage.keys import is_valid_key
from videojobs.v1 import dispatch_service_pb2 as pb
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.fuzzing import (
    CALL_TIMEOUT,
    LEAK_MARKERS,
    STORED_KEY_LAYOUT,
    FuzzServer,
    Outcome,
    call_client_stream,
    call_server_stream,
    call_unary,
    client_text,
    server_bug,
    sync_outcome,
    tiny_video,
)
from support.scripted_worker import ScriptedWorker

Code = grpc.StatusCode
MIB = 1024 * 1024
# job-service receives messages of up to 4 MiB of payload plus an envelope;
# larger ones are refused by gRPC itself, before any videojobs code runs.
MAX_SENT_MESSAGE_BYTES = 4 * MIB + 32 * 1024
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
PIPELINES = ("probe", "ocr", "detect", "scenes", "thumbnails")

# Hypothesis settings shared by every test: no example database (nothing is
# written into the repository), no per-example deadline (calls cross a real
# network stack), and no complaint about the server fixture (one server per
# test function serves every example, by design) or about big examples.
FUZZ = settings(
    deadline=None,
    database=None,
    # No "explain" phase: re-running a failing example to explain it costs
    # minutes against a real server and says little the failure does not.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
# Even without an example database, hypothesis caches what it learns (the
# constants of the code under test, gathered while pytest collects; Unicode
# tables) in `.hypothesis` under the working directory: the repository. The
# collection hook runs before any fixture, so the caches are sent to a temp
# dir when this module is imported (unless the user chose a place).
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    _hypothesis_home = tempfile.mkdtemp(prefix="videojobs-hypothesis-")
    atexit.register(shutil.rmtree, _hypothesis_home, ignore_errors=True)
    configuration.set_hypothesis_home_dir(_hypothesis_home)

# Examples per test; the total is what CI runs (>= 2,000).
EXAMPLES = {
    "submit": 700,
    "get_status": 300,
    "stream_results": 300,
    "list_jobs": 350,
    "cancel": 250,
    "stats": 120,
    "connect_opening": 300,
    "connect_reports": 350,
}


# -- values known only at run time -----------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A placeholder in a recipe for a value known only at run time.

    kind: `job` (a seeded job's id, by index), `fresh` (the job submitted for
    this example), `assigned_job`, `assigned_token`, `assigned_key` (a key
    under the current assignment's output prefix, + suffix), `stale_job`,
    `stale_token` (of an earlier, lost assignment), `host_path` (the storage
    root + suffix: an absolute host path), `leak` (worker text that holds a
    host path or a traceback, by variant), `page_token` (one the server
    issued), `size` / `sha` (of the bytes uploaded).
    variant: how the value is altered (`exact`, `upper`, `short`, ...)."""

    kind: str
    index: int = 0
    variant: str = "exact"
    suffix: str = ""


VARIANTS = ("exact", "exact", "exact", "upper", "short", "long", "padded", "nul", "dotdot", "flip")


def _vary(value: str, variant: str) -> str:
    if variant == "upper":
        return value.upper()
    if variant == "short":
        return value[:-1]
    if variant == "long":
        return value + "0"
    if variant == "padded":
        return f" {value}"
    if variant == "nul":
        return value + "\x00"
    if variant == "dotdot":
        return f"../{value}"
    if variant == "flip" and value:
        middle = len(value) // 2
        return value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]
    return value


def _traceback_text(path: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        f'  File "{path}/worker/child.py", line 42, in run\n'
        "    frames = decode(source)\n"
        "ValueError: bad frame"
    )


def resolve(value: Any, context: dict[str, Any]) -> Any:
    """`value` with every Ref replaced by its run-time value."""
    if isinstance(value, Ref):
        return _resolve_ref(value, context)
    if isinstance(value, dict):
        return {resolve(k, context): resolve(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, context) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve(v, context) for v in value)
    return value


def _resolve_ref(ref: Ref, context: dict[str, Any]) -> Any:
    kind = ref.kind
    if kind in ("size", "sha"):
        return context[kind]
    if kind == "host_path":
        return f"{context['storage_root']}/{ref.suffix}".rstrip("/")
    if kind == "leak":
        path = f"{context['storage_root']}/jobs/{'0' * 32}/input/source.mp4"
        return {
            "path": f"cannot open {path}: No such file or directory",
            "traceback": _traceback_text(context["storage_root"]),
            "second_line": f"decoding failed\n{_traceback_text(context['storage_root'])}",
            "windows": f"cannot open C:\\videojobs\\storage\\jobs\\{'0' * 32}\\x.mp4",
            "sql": "(sqlite3.OperationalError) no such table: jobs [SQL: SELECT * FROM jobs]",
        }[ref.variant]
    if kind == "assigned_key":
        prefix = context.get("assigned_prefix") or f"jobs/{context['fallback_job']}/attempts/1"
        return f"{prefix}/{ref.suffix}" if ref.suffix else prefix
    if kind in ("assigned_job", "assigned_token", "stale_job", "stale_token"):
        value = context.get(kind) or context.get(kind.replace("assigned", "stale"))
        if not value:
            value = context["fallback_job"] if kind.endswith("job") else "f" * 32
        return _vary(value, ref.variant)
    if kind == "page_token":
        tokens = context.get("page_tokens") or [""]
        return _vary(tokens[ref.index % len(tokens)], ref.variant)
    if kind == "fresh" and context.get("fresh"):
        return _vary(context["fresh"], ref.variant)
    jobs = context["jobs"]
    return _vary(jobs[ref.index % len(jobs)], ref.variant)


# -- primitive strategies -----------------------------------------------------------------------

# Characters that have broken text handling somewhere: controls (C0, DEL, C1),
# bidirectional overrides and isolates, zero-width and other invisible
# characters, line/paragraph separators, private use, unassigned, path and
# format metacharacters and their Unicode look-alikes.
HOSTILE_CHARS = (
    "\x00\x01\x07\x08\t\n\r\x1b\x7f\x85\x9b\xa0\xad\u034f\u061c\u200b\u200c\u200d\u200e"
    "\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029\u2060\ufeff"
    "\ufff9\ufffd\ue000\U000f0000\U000e0001\U000e0041\u0378/\\.:%'\"`$;{}<>&|*?~#"
    "\uff0f\u2215\u2044\uff3c\uff0e\u2024\uff1a\uff05éß日𝕏\U0001f600"
)
HOSTILE_STRINGS = (
    "",
    " ",
    ".",
    "..",
    "...",
    "/",
    "\\",
    "a/b",
    "a\\b",
    "../../../../etc/passwd",
    "/etc/passwd",
    "/tmp/x",
    "/root/.ssh/id_rsa",
    "/work/main/README.md",
    "C:\\Windows\\win.ini",
    "C:/x",
    "file:///etc/passwd",
    "http://127.0.0.1:9/x",
    "s3://bucket/key",
    "%2e%2e%2f%2e%2e",
    "..%2f..%2f",
    "\u202egnp.mp4",
    "clip\u200b.mp4",
    "clip.mp4\x00.txt",
    "\uff0e\uff0e\uff0fx",
    "CON",
    "nul",
    "a" * 64,
    "a" * 65,
    "x" * 128,
    "x" * 129,
    "a" * 255,
    "a" * 256,
    "é" * 127,
    "é" * 128,
    "é" * 129,
    "日" * 85,
    "日" * 86,
    "'; DROP TABLE jobs; --",
    "SELECT * FROM jobs",
    "Robert'); DROP TABLE jobs;--",
    'Traceback (most recent call last):\n  File "x.py", line 1',
    "%s%s%s%n",
    "{0}{1}",
    "${jndi:ldap://127.0.0.1:9/x}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "\r\nX-Injected: 1",
    "-1",
    "0",
    "NaN",
    "null",
    "true",
    "[]",
    "{}",
    "9" * 40,
    "\ud7ff",
    "\U0010ffff",
    "probe",
    "ocr+scenes",
    "probe ",
    " probe",
    "PROBE",
)
BIG_SIZES = (64, 65, 128, 129, 255, 256, 257, 512, 1024, 1025, 4096, 16384, 16385, 65536, 100_000)

# UTF-8 encodable only: a lone surrogate cannot be sent in a protobuf string.
any_chars = st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters(codec="utf-8"))


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked in proportion to its weight (st.one_of
    flattens nested one_ofs and merges equal branches, so it cannot weight).
    Shrinks towards the first choice."""
    strategies = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(strategies) - 1).flatmap(lambda index: strategies[index])


@st.composite
def big_texts(draw, max_bytes: int = 100_000) -> str:
    """Long strings (up to ~100 KB of UTF-8), built by repeating a short piece:
    cheap to generate however long they are."""
    piece = draw(st.text(any_chars, min_size=1, max_size=8))
    target = draw(st.one_of(st.sampled_from(BIG_SIZES), st.integers(1, max_bytes)))
    return piece * max(1, target // len(piece.encode("utf-8")))


def short_texts(max_size: int = 64) -> st.SearchStrategy[str]:
    """Arbitrary text (no lone surrogates: protobuf strings are UTF-8) of at
    most `max_size` characters (or one of HOSTILE_STRINGS)."""
    return st.one_of(
        st.text(max_size=max_size),
        st.text(any_chars, max_size=max_size),
        st.sampled_from(HOSTILE_STRINGS),
    )


def texts(max_size: int = 64) -> st.SearchStrategy[str]:
    """`short_texts`, or a string of up to ~100 KB."""
    return st.one_of(short_texts(max_size), big_texts())


# Numbers that break arithmetic and JSON: not-a-number, infinities, negative
# zero, the extremes of a double, the first integer a double cannot hold.
SPECIAL_FLOATS = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    1.0,
    1.0000001,
    1e308,
    -1e308,
    5e-324,
    2.0**53 + 1,
)
floats = st.one_of(st.floats(), st.sampled_from(SPECIAL_FLOATS))
int32s = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([-(2**31), -11, -10, -1, 0, 1, 2, 10, 11, 20, 21, 64, 65, 2**31 - 1]),
)
int64s = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), -1, 0, 1, 2**20, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1]),
)
# Duration seconds and nanos, inside and far outside the range protobuf allows
# (+-315,576,000,000 s, nanos with the sign of seconds).
durations = st.builds(
    lambda seconds, nanos: duration_pb2.Duration(seconds=seconds, nanos=nanos),
    st.one_of(
        int64s,
        st.sampled_from([-315_576_000_001, -1, 0, 1, 86_400, 86_401, 315_576_000_000, 10**12]),
    ),
    st.one_of(int32s, st.sampled_from([-999_999_999, -1, 0, 1, 500_000_000, 999_999_999, 10**9])),
)
valid_durations = st.builds(
    lambda seconds: duration_pb2.Duration(seconds=seconds), st.integers(1, 86_400)
)
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)

# -- JSON-shaped values (protobuf Struct) ----------------------------------------------------------

PARAMETER_NAMES = (
    "count_frames",
    "verify_frames",
    "frame_stride",
    "max_frames",
    "start_time",
    "end_time",
    "target_fps",
    "probe",
    "ocr",
    "detect",
    "scenes",
    "thumbnails",
    "min_confidence",
    "classes",
    "threshold",
    "mode",
    "sampling",
)
json_keys = st.one_of(st.sampled_from(PARAMETER_NAMES), short_texts(80))
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    floats,
    st.integers(-(2**63), 2**63),
    short_texts(64),
)


@st.composite
def json_values(draw, depth: int = 3) -> Any:
    """A JSON-shaped value: a leaf, or a list or an object of up to 5 values,
    nested at most `depth` deep."""
    shape = draw(st.integers(0, 3)) if depth > 0 else 0
    if shape <= 1:
        return draw(json_leaves)
    items = draw(st.lists(json_values(depth - 1), max_size=5))
    if shape == 2:
        return items
    names = draw(st.lists(json_keys, min_size=len(items), max_size=len(items)))
    return dict(zip(names, items, strict=True))


@st.composite
def deep_json(draw, max_depth: int = 50) -> Any:
    """A value nested `depth` objects or lists deep (up to 50)."""
    depth = draw(st.integers(1, max_depth))
    shape = draw(st.lists(st.booleans(), min_size=depth, max_size=depth))
    key = draw(st.one_of(st.sampled_from(PARAMETER_NAMES), st.text(max_size=8)))
    value = draw(json_leaves)
    for is_object in shape:
        value = {key: value} if is_object else [value]
    return value


@st.composite
def wide_json(draw) -> dict[str, Any]:
    """An object with very many keys."""
    count = draw(st.sampled_from([100, 1000, 5000]))
    value = draw(json_leaves)
    return {f"k{index}": value for index in range(count)}


json_objects = weighted(
    (3, st.lists(st.tuples(json_keys, json_values()), max_size=8).map(dict)),
    (1, st.builds(lambda key, value: {key: value}, json_keys, deep_json())),
    (1, wide_json()),
    (1, st.builds(lambda text: {"blob": text}, big_texts())),
    # The numbers JSON cannot hold (NaN, infinities) and the extremes.
    (
        1,
        st.lists(st.tuples(json_keys, st.sampled_from(SPECIAL_FLOATS)), min_size=1, max_size=3).map(
            dict
        ),
    ),
)


def fill_struct(target: struct_pb2.Struct, value: dict[str, Any]) -> None:
    """Sets the Struct field `target` to a JSON-shaped dict, in place: upb
    copies a message by parsing it, which refuses deep nesting, so a deeply
    nested request could not even be built by copying one Struct into it."""
    target.Clear()
    target.update(value)


# -- SubmitVideo ----------------------------------------------------------------------------------

# Upload headers that pass validation, so the server reads the bytes, checks
# them and may create a job; each field can then be replaced by a hostile one.
VALID_JOBS = (
    {"pipeline": "probe", "parameters": {}},
    {"pipeline": "probe", "parameters": {"count_frames": True}},
    {"pipeline": "probe", "parameters": {"probe": {"count_frames": False, "verify_frames": 2}}},
    {"pipelines": ["probe"], "parameters": {}},
    {"pipelines": ["scenes", "ocr"], "parameters": {"target_fps": 1, "scenes": {"threshold": 0.3}}},
    {"pipeline": "thumbnails", "parameters": {"mode": "interval", "interval_seconds": 1.0}},
)
valid_file_names = st.text(
    st.one_of(st.characters(categories=["L", "N"]), st.sampled_from("._- ")),
    min_size=1,
    max_size=40,
).filter(lambda name: name not in (".", ".."))
valid_request_ids = st.one_of(
    # A few reused ones: a repeat is either the same upload (the first job
    # again) or a different one (ALREADY_EXISTS).
    st.sampled_from(["request-1", "request-2", "request-3"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128),
)


@st.composite
def corrupted(
    draw, valid: st.SearchStrategy[dict[str, Any]], hostile: dict[str, st.SearchStrategy]
) -> dict[str, Any]:
    """A valid recipe with some fields replaced by hostile values: usually one
    (so that the server gets past its other checks and looks at that field),
    sometimes two, sometimes any number of them."""
    recipe = dict(draw(valid))
    names = sorted(hostile)
    count = draw(weighted((6, st.just(1)), (3, st.just(2)), (1, st.integers(0, len(names)))))
    for name in draw(st.lists(st.sampled_from(names), min_size=count, max_size=count, unique=True)):
        recipe[name] = draw(hostile[name])
    return recipe


valid_headers = st.builds(
    lambda job, **fields: {**job, **fields},
    st.sampled_from(VALID_JOBS),
    file_name=valid_file_names,
    request_id=st.one_of(st.just(""), valid_request_ids),
    expected_size_bytes=st.sampled_from([Ref("size"), 0]),
    expected_sha256=st.sampled_from([Ref("sha"), ""]),
    max_attempts=st.integers(0, 20),
    priority=st.integers(-10, 10),
    execution_timeout=st.one_of(st.none(), valid_durations),
    queue_timeout=st.one_of(st.none(), valid_durations),
)
HOSTILE_HEADER_FIELDS = dict(
    {
        "file_name": texts(300),
        "pipeline": st.one_of(texts(80), st.sampled_from(PIPELINES)),
        "pipelines": st.one_of(
            st.lists(st.one_of(short_texts(80), st.sampled_from(PIPELINES)), max_size=20),
            st.lists(texts(80), max_size=2),
        ),
        "parameters": json_objects,
        "request_id": texts(200),
        "expected_size_bytes": st.one_of(int64s, st.just(Ref("size", variant="long"))),
        "expected_sha256": st.one_of(
            texts(80),
            st.text("0123456789abcdefABCDEF", min_size=63, max_size=65),
            st.just(Ref("sha", variant="upper")),
        ),
        "max_attempts": int32s,
        "priority": int32s,
        "execution_timeout": durations,
        "queue_timeout": durations,
    }
)
headers = corrupted(valid_headers, HOSTILE_HEADER_FIELDS)


def ts_packets(count: int, packet_size: int = 188, sync_offset: int = 0) -> bytes:
    """`count` MPEG-TS-looking packets: sync bytes where a demuxer looks for them."""
    packet = bytearray(b"\xff" * packet_size)
    packet[sync_offset] = 0x47
    return bytes(packet) * count


SIGNATURES = {
    "iso_bmff": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    "iso_bmff_size0": b"\x00\x00\x00\x00ftypmp42",
    "iso_bmff_size1": b"\x00\x00\x00\x01ftypmp42" + (2**40).to_bytes(8, "big"),
    "moov_first": b"\x00\x00\x00\x08moov",
    "matroska": b"\x1a\x45\xdf\xa3",
    "mpegts": ts_packets(12),
    "m2ts": ts_packets(12, 192, 4),
    "mpegts_fec": ts_packets(12, 204),
    "hls": b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:1.0,\n../../jobs/x/input/source.mp4\n",
    "hls_bom": b"\xef\xbb\xbf#EXTM3U\n#EXTINF:1.0,\nhttp://127.0.0.1:9/x.ts\n",
    "ffconcat": b"ffconcat version 1.0\nfile '/etc/passwd'\n",
    "concat": b"file 'clip.mp4'\n",
    "avi": b"RIFF\x00\x10\x00\x00AVI LIST",
    "wav": b"RIFF\x00\x10\x00\x00WAVEfmt ",
    "ogg": b"OggS\x00\x02\x00\x00",
    "flv": b"FLV\x01\x05\x00\x00\x00\x09",
    "asf": bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"),
    "mpeg_ps": b"\x00\x00\x01\xba\x44\x00\x04\x00\x04\x01",
    "dash": b'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011">',
    "png": b"\x89PNG\r\n\x1a\n",
    "sdp": b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n",
}
VIDEO_FORMATS = ("mp4", "matroska", "mpegts")

payloads = st.one_of(
    # A real video, maybe with bytes changed or cut off.
    st.fixed_dictionaries(
        {
            "kind": st.just("video"),
            "format": st.sampled_from(VIDEO_FORMATS),
            "flips": st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
            "cut": st.one_of(st.none(), st.floats(0, 1)),
        }
    ),
    # A container signature followed by arbitrary bytes.
    st.fixed_dictionaries(
        {
            "kind": st.just("signature"),
            "signature": st.sampled_from(sorted(SIGNATURES)),
            "tail": st.binary(max_size=5000),
        }
    ),
    st.fixed_dictionaries({"kind": st.just("random"), "data": st.binary(max_size=6000)}),
    # Many bytes cheaply: over the upload limit (1 MiB here) or one chunk over 4 MiB.
    st.fixed_dictionaries(
        {
            "kind": st.just("filler"),
            "size": st.sampled_from([5000, 200_000, MIB + 1, 4 * MIB + 1]),
            "signature": st.sampled_from(["mpegts", "iso_bmff", "matroska"]),
            "one_message": st.booleans(),
        }
    ),
)
# 0: the whole payload in one message (over 4 MiB, that chunk is too large).
chunk_sizes = st.one_of(
    st.integers(64, 65536), st.sampled_from([0, 1, 188, 4095, 4096, 4097, 65536, 4 * MIB])
)
# Messages slipped into the chunk stream: empty chunks, a message with no
# payload, a second header.
stream_extras = weighted(
    (3, st.just([])),
    (
        2,
        st.lists(
            st.tuples(
                st.floats(0, 1),
                weighted(
                    (2, st.just({"kind": "empty_chunk"})),
                    (2, st.just({"kind": "no_payload"})),
                    (
                        1,
                        st.builds(
                            lambda h: {"kind": "header", "header": h},
                            st.one_of(valid_headers, headers),
                        ),
                    ),
                ),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
)
uploads = st.fixed_dictionaries(
    {
        # How the stream starts: with the header (mostly), with nothing at all,
        # with a chunk, with an empty message.
        "start": weighted(
            (27, st.just("header")),
            (1, st.sampled_from(["nothing", "chunk_first", "no_payload"])),
        ),
        "header": st.one_of(valid_headers, headers),
        "payload": payloads,
        "chunk_size": chunk_sizes,
        "extras": stream_extras,
    }
)


def header_message(recipe: dict[str, Any]) -> js.SubmitVideoRequest:
    """A SubmitVideo header message from a resolved header recipe (built in
    place, see `fill_struct`)."""
    fields = dict(recipe)
    parameters = fields.pop("parameters", {})
    execution_timeout = fields.pop("execution_timeout", None)
    queue_timeout = fields.pop("queue_timeout", None)
    pipelines = fields.pop("pipelines", [])
    request = js.SubmitVideoRequest()
    header = request.header
    for name, value in fields.items():
        setattr(header, name, value)
    header.pipelines.extend(pipelines)
    fill_struct(header.parameters, parameters)
    if execution_timeout is not None:
        header.execution_timeout.CopyFrom(execution_timeout)
    if queue_timeout is not None:
        header.queue_timeout.CopyFrom(queue_timeout)
    return request


def payload_bytes(recipe: dict[str, Any], videos: dict[str, bytes]) -> bytes:
    """The bytes a payload recipe describes."""
    kind = recipe["kind"]
    if kind == "video":
        data = bytearray(videos[recipe["format"]])
        for where, value in recipe["flips"]:
            data[min(len(data) - 1, int(where * len(data)))] = value
        if recipe["cut"] is not None:
            data = data[: int(recipe["cut"] * len(data))]
        return bytes(data)
    if kind == "signature":
        return SIGNATURES[recipe["signature"]] + recipe["tail"]
    if kind == "random":
        return recipe["data"]
    head = SIGNATURES[recipe["signature"]]
    return head + ts_packets(recipe["size"] // 188 + 1)[: recipe["size"] - len(head)]


def upload_messages(
    upload: dict[str, Any], videos: dict[str, bytes], context: dict[str, Any]
) -> list[js.SubmitVideoRequest]:
    """The SubmitVideo messages of an upload recipe."""
    data = payload_bytes(upload["payload"], videos)
    context = {**context, "size": len(data), "sha": hashlib.sha256(data).hexdigest()}
    # Never more than ~300 messages: a 1-byte chunk size over 7 KB would only
    # make the example slow.
    size = max(upload["chunk_size"] or len(data), math.ceil(len(data) / 300), 1)
    if upload["payload"].get("one_message"):
        size = max(len(data), 1)
    messages = [js.SubmitVideoRequest(chunk=data[i : i + size]) for i in range(0, len(data), size)]
    for where, extra in sorted(upload["extras"], key=lambda item: item[0]):
        position = min(len(messages), int(where * (len(messages) + 1)))
        if extra["kind"] == "empty_chunk":
            message = js.SubmitVideoRequest(chunk=b"")
        elif extra["kind"] == "no_payload":
            message = js.SubmitVideoRequest()
        else:
            message = header_message(resolve(extra["header"], context))
        messages.insert(position, message)
    start = upload["start"]
    if start == "nothing":
        return []
    if start == "chunk_first":
        return messages or [js.SubmitVideoRequest(chunk=data[:1] or b"\x00")]
    if start == "no_payload":
        return [js.SubmitVideoRequest(), *messages]
    return [header_message(resolve(upload["header"], context)), *messages]


# -- the server fixture and its seeded jobs ---------------------------------------------------------


@functools.cache
def sample_videos() -> dict[str, bytes]:
    """Tiny valid videos (160x120, 10 frames) in each container the payloads
    use (not a fixture: hypothesis would print them with every failure)."""
    return {name: tiny_video(name) for name in VIDEO_FORMATS}


@pytest.fixture
def server(tmp_path):
    """One job-service for the whole test function (every example), checked
    after the last example and stopped."""
    harness = FuzzServer(tmp_path).start()
    try:
        yield harness
        harness.check_quiescent("the last example")
    finally:
        harness.stop()


async def submit(server: FuzzServer, data: bytes, **fields: Any) -> job_pb2.Job:
    """A valid upload of `data` (a probe job unless `fields` say otherwise)."""
    fields.setdefault("file_name", "clip.mp4")
    if "pipelines" not in fields:
        fields.setdefault("pipeline", "probe")
    header = js.UploadHeader(
        expected_size_bytes=len(data), expected_sha256=hashlib.sha256(data).hexdigest(), **fields
    )
    messages = [js.SubmitVideoRequest(header=header)] + [
        js.SubmitVideoRequest(chunk=data[i : i + 4096]) for i in range(0, len(data), 4096)
    ]
    response = await server.jobs.SubmitVideo(iter(messages), timeout=CALL_TIMEOUT)
    return response.job


async def get_job(server: FuzzServer, job_id: str) -> job_pb2.Job:
    """GetStatus."""
    reply = await server.jobs.GetStatus(js.GetStatusRequest(job_id=job_id), timeout=CALL_TIMEOUT)
    return reply.job


async def wait_for_state(server: FuzzServer, job_id: str, states: set[int]) -> job_pb2.Job:
    """Polls GetStatus until the job is in one of `states` (deadline 30 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        job = await get_job(server, job_id)
        if job.state in states:
            return job
        assert loop.time() < deadline, f"job {job_id} stayed {job.state}"
        await asyncio.sleep(0.02)


async def seed_jobs(server: FuzzServer, video: bytes) -> list[job_pb2.Job]:
    """Jobs in every state, with every kind of event: one SUCCEEDED (progress,
    partial result, artifact), one FAILED (queue timeout), CANCELLED ones and
    QUEUED ones of several pipelines. No worker stays connected, so the set
    does not change unless a test changes it."""
    store = open_blob_store(server.settings.storage_url)
    succeeded = await submit(server, video, file_name="succeeded.mp4")
    async with ScriptedWorker(server.address, worker_id="seeder", store=store) as worker:
        assignment = await worker.next("assignment")
        worker.progress(assignment, 0.5, "halfway")
        worker.partial(assignment, {"frames": [{"index": 1, "text": "hello"}]})
        artifact = job_pb2.Artifact(
            key=f"{assignment.output_prefix}/thumbnails/0000.jpg",
            media_type="image/jpeg",
            size_bytes=3,
            width=16,
            height=12,
        )
        worker.complete(assignment, summary={"frames": 10}, artifacts=[artifact])
        await wait_for_state(server, succeeded.job_id, {job_pb2.JOB_STATE_SUCCEEDED})
    timeout = duration_pb2.Duration(nanos=10_000_000)
    failed = await submit(server, video, file_name="failed.mp4", queue_timeout=timeout)
    await wait_for_state(server, failed.job_id, {job_pb2.JOB_STATE_FAILED})
    queued = [
        await submit(server, video, file_name="queued.mp4"),
        await submit(server, video, pipeline="scenes", request_id="seed-request-1"),
        await submit(server, video, pipelines=["ocr", "scenes"], priority=5),
        await submit(server, video, pipeline="thumbnails", max_attempts=5),
    ]
    cancelled = [await submit(server, video, file_name=f"cancelled-{i}.mp4") for i in range(2)]
    for job, reason in zip(cancelled, ["", "no longer needed"], strict=True):
        await server.jobs.CancelJob(js.CancelJobRequest(job_id=job.job_id, reason=reason))
    ids = [succeeded.job_id, failed.job_id, *(j.job_id for j in queued + cancelled)]
    return [await get_job(server, job_id) for job_id in ids]


def seeded(server: FuzzServer) -> list[job_pb2.Job]:
    """The seeded jobs of `server` (seeded on first use)."""
    if "seeded_jobs" not in server.memory:
        server.memory["seeded_jobs"] = server.run(seed_jobs(server, sample_videos()["mp4"]))
    return server.memory["seeded_jobs"]


def base_context(server: FuzzServer, jobs: list[job_pb2.Job]) -> dict[str, Any]:
    """What Refs resolve against."""
    return {
        "jobs": [job.job_id for job in jobs],
        "storage_root": str(server.storage_root),
        "fallback_job": "0" * 32,
        "page_tokens": server.memory.get("page_tokens", []),
    }


# Job ids: mostly real ones (so that the server looks the job up and answers
# about it), near misses of real ones, unknown well-formed ones, anything.
job_id_refs = weighted(
    (4, st.builds(Ref, st.just("job"), st.integers(0, 100))),
    (2, st.builds(Ref, st.just("job"), st.integers(0, 100), st.sampled_from(VARIANTS[3:]))),
    (1, hex32),
    (2, texts(80)),
)


# -- the tests --------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=EXAMPLES["submit"])
@given(upload=uploads)
def test_submit_video(server: FuzzServer, upload) -> None:
    """SubmitVideo with fuzzed headers and chunk streams: documented codes, no
    leaks, small details; a refused upload leaves no bytes behind, an accepted
    one stores exactly its input under its job."""
    context = base_context(server, [])
    messages = upload_messages(upload, sample_videos(), context)
    assume(all(message.ByteSize() <= MAX_SENT_MESSAGE_BYTES for message in messages))
    before = server.stored_files()
    mark = server.log.mark()
    outcome = call_client_stream("SubmitVideo", server.sync_jobs.SubmitVideo, messages)
    sent = client_text(messages)
    # A repeated request_id returns the job the first upload created, with
    # what that upload sent (its file name may differ): echoing it is fine.
    accepted: dict[str, str] = server.memory.setdefault("accepted_uploads", {})
    if outcome.code == Code.OK:
        sent += "\n" + accepted.get(outcome.responses[0].job.job_id, "")
    server.check(outcome, sent, mark)
    event(outcome.label)
    new_files = server.stored_files() - before
    if outcome.code == Code.OK:
        job = outcome.responses[0].job
        repeated = job.job_id in accepted
        accepted.setdefault(job.job_id, sent)
        assert re.fullmatch(r"[0-9a-f]{32}", job.job_id), job.job_id
        # A new job is queued; a repeated request_id returns the first job as
        # it is now (a tiny queue timeout may have failed it meanwhile).
        assert repeated or job.state == job_pb2.JOB_STATE_QUEUED, job
        assert is_valid_key(job.input_key) and job.input_key.startswith(f"jobs/{job.job_id}/")
        assert all(name.startswith(f"jobs/{job.job_id}/input/") for name in new_files), new_files
    else:
        assert not new_files, f"a refused upload left {sorted(new_files)}\n{outcome.summary()}"
    problems = server.storage_problems()
    assert not problems, f"after {outcome.summary()}:\n" + "\n".join(problems)
    server.check_log(mark, "SubmitVideo")
    server.tick()


@settings(FUZZ, max_examples=EXAMPLES["get_status"])
@given(job_id=job_id_refs)
def test_get_status(server: FuzzServer, job_id) -> None:
    """GetStatus of arbitrary job ids, real ones and near misses."""
    jobs = seeded(server)
    request = js.GetStatusRequest(job_id=resolve(job_id, base_context(server, jobs)))
    mark = server.log.mark()
    outcome = server.run(call_unary("GetStatus", server.jobs.GetStatus, request))
    server.check(outcome, client_text([request]), mark)
    event(outcome.label)
    if outcome.code == Code.OK:
        assert outcome.responses[0].job.job_id == request.job_id
    server.check_log(mark, "GetStatus")
    server.tick()


after_sequences = weighted(
    (4, st.integers(0, 12)),
    (1, st.sampled_from([-(2**63), -1, 2**31, 2**63 - 1])),
    (1, int64s),
)


@settings(FUZZ, max_examples=EXAMPLES["stream_results"])
@given(job_id=job_id_refs, after_sequence=after_sequences)
def test_stream_results(server: FuzzServer, job_id, after_sequence) -> None:
    """StreamResults of arbitrary job ids from arbitrary sequence numbers. The
    stream of a job that has not ended goes on forever by design: the test
    reads the stored events, then cancels (a client-side end it caused)."""
    jobs = seeded(server)
    known = {job.job_id: job for job in jobs}
    request = js.StreamResultsRequest(
        job_id=resolve(job_id, base_context(server, jobs)), after_sequence=after_sequence
    )
    job = known.get(request.job_id)
    caught_up = None
    if job is not None and job.state not in TERMINAL and after_sequence >= 0:
        last = job.last_event_sequence

        def caught_up(events) -> bool:
            return after_sequence >= last or (events and events[-1].event.sequence >= last)

    mark = server.log.mark()
    outcome = server.run(
        call_server_stream("StreamResults", server.jobs.StreamResults, request, caught_up=caught_up)
    )
    server.check(outcome, client_text([request]), mark)
    event(outcome.label)
    sequences = [response.event.sequence for response in outcome.responses]
    assert sequences == sorted(set(sequences)), sequences
    assert all(s > after_sequence for s in sequences), (after_sequence, sequences)
    assert all(r.event.job_id == request.job_id for r in outcome.responses)
    if job is not None and after_sequence >= 0:
        expected = list(range(after_sequence + 1, job.last_event_sequence + 1))
        assert sequences == expected, (job.state, after_sequence, sequences)
        if job.state in TERMINAL:
            assert outcome.code == Code.OK, outcome.summary()
    elif outcome.code == Code.OK:
        raise AssertionError(f"a stream of an unknown job ended OK: {request}")
    server.check_log(mark, "StreamResults")
    server.tick()


page_tokens = st.one_of(
    texts(120),
    st.builds(Ref, st.just("page_token"), st.integers(0, 20), st.sampled_from(VARIANTS)),
    # Forged tokens shaped like the server's: base64(JSON) "." base64(signature).
    st.builds(
        lambda payload, signature, padded: (
            base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
            + "."
            + base64.urlsafe_b64encode(signature).decode().rstrip("=" if not padded else "")
        ),
        st.one_of(
            st.fixed_dictionaries(
                {"p": st.one_of(int64s, json_values()), "f": st.one_of(texts(20), json_values())}
            ),
            json_values(),
        ),
        st.binary(max_size=32),
        st.booleans(),
    ),
    st.builds(
        lambda data: base64.b64encode(data).decode(),
        st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)),
    ),
)
state_lists = weighted(
    (2, st.just([])),
    (3, st.lists(st.integers(1, 5), min_size=1, max_size=5)),
    (
        2,
        st.lists(
            st.one_of(st.integers(0, 6), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)])),
            max_size=8,
        ),
    ),
)


@settings(FUZZ, max_examples=EXAMPLES["list_jobs"])
@given(
    page_size=weighted((3, st.integers(0, 4)), (1, int32s)),
    page_token=weighted(
        (3, st.just("")),
        (3, st.builds(Ref, st.just("page_token"), st.integers(0, 20))),
        (2, page_tokens),
    ),
    states=state_lists,
    pipeline=weighted(
        (3, st.just("")), (2, st.sampled_from(PIPELINES + ("ocr+scenes",))), (1, texts(80))
    ),
)
def test_list_jobs(server: FuzzServer, page_size, page_token, states, pipeline) -> None:
    """ListJobs with arbitrary page sizes, page tokens (forged, tampered, or
    real ones used with another filter), state lists and pipeline names. A
    page holds at most page_size jobs, newest first, matching the filter (an
    unknown pipeline name is INVALID_ARGUMENT)."""
    jobs = seeded(server)
    request = js.ListJobsRequest(
        page_size=page_size,
        page_token=resolve(page_token, base_context(server, jobs)),
        states=states,
        pipeline=pipeline,
    )
    mark = server.log.mark()
    outcome = server.run(call_unary("ListJobs", server.jobs.ListJobs, request))
    server.check(outcome, client_text([request]), mark)
    event(outcome.label)
    if outcome.code == Code.OK:
        page = outcome.responses[0]
        limit = min(page_size or 50, 1000)
        assert len(page.jobs) <= limit, (page_size, len(page.jobs))
        times = [job.create_time.ToNanoseconds() for job in page.jobs]
        assert times == sorted(times, reverse=True), "not newest first"
        if states:
            assert all(job.state in states for job in page.jobs), (states, page.jobs)
        if pipeline:
            # A filter lists the jobs whose set includes every pipeline it names.
            wanted = set(pipeline.split("+"))
            assert all(wanted <= set(job.pipelines) for job in page.jobs), pipeline
        if page.next_page_token:
            issued = server.memory.get("page_tokens", [])
            server.memory["page_tokens"] = [*issued[-19:], page.next_page_token]
    server.check_log(mark, "ListJobs")
    server.tick()


@settings(FUZZ, max_examples=EXAMPLES["stats"])
@given(
    seconds=weighted(
        (3, st.integers(0, 30 * 24 * 3600)),
        (1, st.integers(-(2**63), 2**63 - 1)),
        (1, st.sampled_from([-1, 30 * 24 * 3600 + 1, 315_576_000_000, 315_576_000_001])),
    ),
    nanos=weighted((3, st.just(0)), (1, st.integers(-(2**31), 2**31 - 1))),
    tenant=weighted((3, st.just("")), (1, texts(80))),
)
def test_get_stats(server: FuzzServer, seconds, nanos, tenant) -> None:
    """GetStats with arbitrary windows (negative, huge, not a valid Duration)
    and tenant names: OK with counts no larger than the jobs that exist, or
    INVALID_ARGUMENT naming `window`."""
    jobs = seeded(server)
    request = js.GetStatsRequest(tenant=tenant)
    request.window.seconds, request.window.nanos = seconds, nanos
    mark = server.log.mark()
    outcome = server.run(call_unary("GetStats", server.jobs.GetStats, request))
    server.check(outcome, client_text([request]), mark)
    event(outcome.label)
    if outcome.code == Code.OK:
        total = sum(count.count for count in outcome.responses[0].total.counts)
        assert total <= len(jobs) + 1000, total
    server.check_log(mark, "GetStats")
    server.tick()


@settings(FUZZ, max_examples=EXAMPLES["cancel"])
@given(
    # A job submitted for the example (`fresh`: one that can still be
    # cancelled), a seeded one (most have ended), or any id.
    job_id=weighted(
        (3, st.just(Ref("fresh"))),
        (1, st.builds(Ref, st.just("fresh"), st.just(0), st.sampled_from(VARIANTS[3:]))),
        (3, job_id_refs),
    ),
    reason=weighted((2, st.just("")), (2, st.text(max_size=40)), (3, texts(300))),
    fresh=weighted((2, st.just(True)), (1, st.just(False))),
)
def test_cancel_job(server: FuzzServer, job_id, reason, fresh) -> None:
    """CancelJob of arbitrary job ids with arbitrary reasons; a cancelled
    job's events (which carry the reason) are read back too."""
    jobs = seeded(server)
    context = base_context(server, jobs)
    if fresh:
        context["fresh"] = server.run(submit(server, sample_videos()["mp4"])).job_id
    request = js.CancelJobRequest(job_id=resolve(job_id, context), reason=reason)
    mark = server.log.mark()
    outcome = server.run(call_unary("CancelJob", server.jobs.CancelJob, request))
    sent = client_text([request])
    server.check(outcome, sent, mark)
    event(outcome.label)
    if outcome.code == Code.OK:
        job = outcome.responses[0].job
        assert job.job_id == request.job_id and job.state == job_pb2.JOB_STATE_CANCELLED, job
        events = server.run(
            call_server_stream(
                "StreamResults",
                server.jobs.StreamResults,
                js.StreamResultsRequest(job_id=job.job_id),
                caught_up=None,
            )
        )
        server.check(events, sent, mark)
        assert events.code == Code.OK and events.responses, events.summary()
        assert events.responses[-1].event.WhichOneof("payload") == "cancelled"
    elif outcome.code == Code.FAILED_PRECONDITION:
        assert "state" in outcome.error_info().metadata, outcome.summary()
    server.check_log(mark, "CancelJob")
    server.tick()


# -- DispatchService.Connect ---------------------------------------------------------------------------


def refs(kind: str) -> st.SearchStrategy[Ref]:
    """A Ref of `kind`, sometimes altered (see VARIANTS)."""
    return st.builds(Ref, st.just(kind), st.just(0), st.sampled_from(VARIANTS))


# The current assignment's values: what a well-behaved worker quotes.
ASSIGNED_JOB, ASSIGNED_TOKEN = Ref("assigned_job"), Ref("assigned_token")
ASSIGNED_LEASE = {"job_id": ASSIGNED_JOB, "lease_token": ASSIGNED_TOKEN}
ASSIGNED_IDS = {name: st.just(value) for name, value in ASSIGNED_LEASE.items()}
tokens = st.one_of(refs("assigned_token"), refs("stale_token"), texts(80))
short_tokens = st.one_of(refs("assigned_token"), refs("stale_token"), short_texts(80))
worker_job_ids = st.one_of(
    refs("assigned_job"),
    refs("stale_job"),
    st.builds(Ref, st.just("job"), st.integers(0, 100), st.sampled_from(VARIANTS)),
    hex32,
    texts(80),
)
short_job_ids = st.one_of(refs("assigned_job"), refs("stale_job"), hex32)
# Text a worker reports that a client will see: arbitrary, or holding the
# leaks the server promises to remove (host paths, tracebacks).
worker_texts = st.one_of(
    texts(200),
    st.builds(
        Ref,
        st.just("leak"),
        st.just(0),
        st.sampled_from(["path", "traceback", "second_line", "windows", "sql"]),
    ),
)
KEY_SUFFIXES = (
    "results.json",
    "thumbnails/0000.jpg",
    "../../../../etc/passwd",
    "../1/results.json",
    "./results.json",
    "a//b",
    "results.json/",
    "%2e%2e/x",
    "x\x00y",
    "\u202ex",
    "x\uff0fy",
    "results.json.",
    " results.json",
    ".partial/w-x.partial",
    "a" * 1100,
)
HOSTILE_KEYS = (
    "/etc/passwd",
    "../../etc/passwd",
    "jobs/../../x",
    "file:///etc/passwd",
    "http://127.0.0.1:9/x",
    "s3://bucket/key",
    "C:\\x",
    "C:/x",
    "jobs\\x",
    "jobs/x/",
    "/jobs/x",
    "jobs//x",
    "jobs/./x",
    ".partial/w-1.partial",
    "videojobs.db",
    "../videojobs.db",
    "",
)
keys = st.one_of(
    st.builds(Ref, st.just("assigned_key"), suffix=st.sampled_from(KEY_SUFFIXES)),
    st.builds(Ref, st.just("assigned_key"), suffix=texts(40)),
    st.builds(Ref, st.just("host_path"), suffix=st.sampled_from(KEY_SUFFIXES[:3])),
    st.sampled_from(HOSTILE_KEYS),
    texts(100),
)
leases = st.fixed_dictionaries({"job_id": worker_job_ids, "lease_token": tokens})
short_leases = st.fixed_dictionaries({"job_id": short_job_ids, "lease_token": short_tokens})


@st.composite
def lease_lists(draw) -> list[dict[str, Any]]:
    """0 to a few leases, or one (short) lease repeated up to past the 256 limit."""
    count = draw(st.one_of(st.integers(0, 3), st.sampled_from([255, 256, 257, 400])))
    if count <= 3:
        return draw(st.lists(leases, min_size=count, max_size=count))
    return [draw(short_leases)] * count


artifacts = st.fixed_dictionaries(
    {
        "key": keys,
        "media_type": texts(150),
        "size_bytes": st.one_of(st.integers(0, 100), int64s),
        "width": int32s,
        "height": int32s,
        "time_seconds": floats,
        "index": int32s,
        "frame_index": int64s,
    }
)
artifact_lists = st.one_of(
    st.lists(artifacts, max_size=4),
    # Over the 10,000 limit: small ones, so the report stays under 4 MiB.
    st.builds(
        lambda artifact, key: [{**artifact, "key": key, "media_type": "image/jpeg"}] * 10_001,
        artifacts,
        st.builds(Ref, st.just("assigned_key"), suffix=st.sampled_from(KEY_SUFFIXES[:2])),
    ),
)
error_details = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("error_info"),
            "reason": st.one_of(st.sampled_from(["INPUT_NOT_DECODABLE", "X" * 65]), texts(80)),
            "domain": texts(40),
            "metadata": st.lists(
                st.tuples(
                    st.one_of(st.sampled_from(["incident", "path"]), short_texts(80)),
                    st.one_of(worker_texts, texts(300)),
                ),
                max_size=12,
            ).map(dict),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("garbage"),
            "type_url": st.sampled_from(
                [
                    "type.googleapis.com/google.rpc.ErrorInfo",
                    "type.googleapis.com/google.rpc.BadRequest",
                    "type.googleapis.com/no.such.Type",
                    "",
                ]
            ),
            "value": st.binary(max_size=64),
        }
    ),
)


# What a report quotes to name its job and lease.
QUOTING_IDS = {"job_id": worker_job_ids, "lease_token": tokens}


def reports(
    valid: dict[str, st.SearchStrategy], hostile: dict[str, st.SearchStrategy]
) -> st.SearchStrategy[dict[str, Any]]:
    """Reports about the current assignment: as a well-behaved worker sends
    them, with hostile content (`hostile` fields), or quoting another job or
    lease. Content is corrupted most often: a report that quotes the wrong
    lease is refused before its content is looked at."""
    valid_reports = st.fixed_dictionaries(valid)
    choices = [(3, valid_reports), (2, corrupted(valid_reports, QUOTING_IDS))]
    if hostile:
        choices.append((4, corrupted(valid_reports, hostile)))
    return weighted(*choices)


progress_reports = reports(
    {
        "kind": st.just("progress"),
        **ASSIGNED_IDS,
        "fraction": st.floats(0, 1),
        "stage": st.text(max_size=20),
    },
    {"fraction": floats, "stage": worker_texts},
)

partial_result_reports = reports(
    {
        "kind": st.just("partial_result"),
        **ASSIGNED_IDS,
        "pipeline": st.just("probe"),
        "data": st.just({"frames": [{"index": 1}]}),
    },
    {
        "pipeline": texts(80),
        # Now and then over the 256 KiB a partial result may hold.
        "data": weighted((6, json_objects), (1, st.just({"blob": "x" * 300_000}))),
    },
)

completion_reports = reports(
    {
        "kind": st.just("completion"),
        **ASSIGNED_IDS,
        "output_key": st.just(Ref("assigned_key", suffix="results.json")),
        "artifacts": st.just([]),
        "summary": st.just({"frames": 10}),
        "warnings": st.just([]),
        "write_outputs": st.booleans(),
    },
    {
        "output_key": keys,
        "artifacts": artifact_lists,
        "summary": json_objects,
        "warnings": st.one_of(
            st.lists(worker_texts, max_size=5),
            st.builds(lambda warning: [warning] * 60, short_texts(200)),
        ),
    },
)

failure_reports = reports(
    {
        "kind": st.just("failure"),
        **ASSIGNED_IDS,
        "code": st.sampled_from([3, 13]),
        "message": st.just("the input does not decode"),
        "details": st.just([]),
        "retryable": st.booleans(),
    },
    {
        "code": st.one_of(st.integers(0, 17), int32s),
        "message": worker_texts,
        "details": st.lists(error_details, max_size=3),
    },
)

stopped_reports = reports({"kind": st.just("stopped"), **ASSIGNED_IDS}, {})

heartbeats = reports(
    {
        "kind": st.just("heartbeat"),
        "running": st.just([ASSIGNED_LEASE]),
        "draining": st.just(False),
    },
    {"running": lease_lists(), "draining": st.booleans()},
)
# Weighted towards the reports that carry the most (Structs, keys, statuses).
worker_messages = weighted(
    (2, progress_reports),
    (3, partial_result_reports),
    (3, completion_reports),
    (3, failure_reports),
    (1, stopped_reports),
    (2, heartbeats),
    (1, st.just({"kind": "no_payload"})),
)
valid_hellos = st.fixed_dictionaries(
    {
        "kind": st.just("hello"),
        "worker_id": st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True),
        "pipelines": st.lists(st.sampled_from(PIPELINES), max_size=4).map(
            lambda names: sorted(set(names) | {"probe"})
        ),
        "max_concurrent_jobs": st.integers(1, 4),
        "held_leases": st.just([]),
        "version": st.text(max_size=20),
        "draining": st.just(False),
    }
)
HOSTILE_HELLO_FIELDS = dict(
    {
        "worker_id": texts(200),
        "pipelines": st.lists(st.one_of(short_texts(80), st.sampled_from(PIPELINES)), max_size=70),
        "max_concurrent_jobs": int32s,
        "held_leases": lease_lists(),
        "version": texts(100),
        "draining": st.booleans(),
    }
)
hellos = corrupted(valid_hellos, HOSTILE_HELLO_FIELDS)
NOTHING = {"kind": "nothing"}
VALID_HELLO = {
    "kind": "hello",
    "worker_id": "fuzz-worker",
    "pipelines": ["probe"],
    "max_concurrent_jobs": 1,
    "held_leases": [],
    "version": "1",
    "draining": False,
}
# Sessions that test the opening: a hostile hello, a first message that is no
# hello, or nothing at all; then a few messages of any kind.
opening_sessions = st.fixed_dictionaries(
    {
        "first": weighted(
            (4, hellos), (1, valid_hellos), (2, worker_messages), (1, st.just(NOTHING))
        ),
        "with_job": st.just(False),
        "messages": st.lists(st.one_of(worker_messages, hellos), max_size=3),
    }
)
# Sessions that test reports: a valid hello and a real assignment (a job is
# submitted first), then reports about it, each valid or with a field or two
# hostile, and now and then a second hello.
report_sessions = st.fixed_dictionaries(
    {
        "first": valid_hellos,
        "with_job": st.just(True),
        "messages": st.lists(weighted((9, worker_messages), (1, hellos)), min_size=1, max_size=6),
    }
)


def worker_message(recipe: dict[str, Any], store) -> pb.ConnectRequest | None:
    """The ConnectRequest of a resolved worker-message recipe (None: send nothing)."""
    kind = recipe["kind"]
    if kind == "nothing":
        return None
    if kind == "no_payload":
        return pb.ConnectRequest()
    if kind == "hello":
        held = [pb.HeldLease(**lease) for lease in recipe["held_leases"]]
        fields = {k: v for k, v in recipe.items() if k not in ("kind", "held_leases")}
        return pb.ConnectRequest(hello=pb.WorkerHello(held_leases=held, **fields))
    if kind == "heartbeat":
        running = [pb.HeldLease(**lease) for lease in recipe["running"]]
        return pb.ConnectRequest(
            heartbeat=pb.Heartbeat(running=running, draining=recipe["draining"])
        )
    # Built in place (see `fill_struct`): reports carry deeply nested Structs.
    request = pb.ConnectRequest()
    report = getattr(request, kind)
    report.SetInParent()
    report.job_id, report.lease_token = recipe["job_id"], recipe["lease_token"]
    if kind == "progress":
        report.progress.fraction = recipe["fraction"]
        report.progress.stage = recipe["stage"]
    elif kind == "partial_result":
        report.partial_result.pipeline = recipe["pipeline"]
        fill_struct(report.partial_result.data, recipe["data"])
    elif kind == "completion":
        if recipe["write_outputs"]:
            _write_outputs(store, recipe["output_key"], recipe["artifacts"][:10])
        report.output_key = recipe["output_key"]
        report.artifacts.extend(job_pb2.Artifact(**a) for a in recipe["artifacts"])
        fill_struct(report.summary, recipe["summary"])
        report.warnings.extend(recipe["warnings"])
    elif kind == "failure":
        report.error.code = recipe["code"]
        report.error.message = recipe["message"]
        report.retryable = recipe["retryable"]
        for detail in recipe["details"]:
            packed = report.error.details.add()
            if detail["type"] == "error_info":
                packed.Pack(
                    error_details_pb2.ErrorInfo(
                        reason=detail["reason"],
                        domain=detail["domain"],
                        metadata=detail["metadata"],
                    )
                )
            else:
                packed.type_url, packed.value = detail["type_url"], detail["value"]
    return request


def _write_outputs(store, output_key: str, artifact_recipes: list[dict[str, Any]]) -> None:
    """Writes what a completion names, as a real worker does, when the names
    are keys a worker may write (below an attempt prefix), so that the server
    finds them. (Anything else it names must be refused, not written by us.)"""
    wanted = [(output_key, 12)] + [(a["key"], a["size_bytes"]) for a in artifact_recipes]
    for key, size in wanted:
        if is_valid_key(key) and STORED_KEY_LAYOUT.fullmatch(key) and 0 <= size <= 10_000:
            put_bytes(store, StorageKey(key), b"x" * size)


# Worker text a client sees, which the server must clean: no host path in a
# failure message (DispatchService's contract), a warning or a progress stage
# (design brief section 2: no API response or event carries one; the server
# already replaces them in warnings), no stack trace in a failure message.
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "')


def worker_text_leaks(server: FuzzServer, job: job_pb2.Job, events: list) -> list[str]:
    """Host paths and tracebacks in the worker-reported text a client sees of `job`."""
    found = []
    shown: list[tuple[str, str, bool]] = [
        ("job.error.message", job.error.message, True),
        ("job.progress.stage", job.progress.stage, False),
    ]
    shown += [(f"job.attempts[{a.number}].error", a.error.message, True) for a in job.attempts]
    shown += [(f"job.warnings[{i}]", w, False) for i, w in enumerate(job.warnings)]
    for response in events:
        event = response.event
        kind = event.WhichOneof("payload")
        if kind == "progress":
            shown.append((f"event {event.sequence} progress.stage", event.progress.stage, False))
        elif kind == "failed":
            shown.append((f"event {event.sequence} failed", event.failed.error.message, True))
        elif kind == "completed":
            shown += [
                (f"event {event.sequence} warning", w, False) for w in event.completed.warnings
            ]
    for where, text, is_failure_message in shown:
        markers = list(server.host_paths) + (list(TRACEBACK_MARKERS) if is_failure_message else [])
        found += [f"{where}: {text[:200]!r} holds {m!r}" for m in markers if m in text]
    return found


def run_session(
    server: FuzzServer, session: dict[str, Any], context: dict[str, Any], store
) -> tuple[Outcome, list[pb.ConnectRequest]]:
    """One worker stream: the first message, (an assignment, when one comes),
    the other messages, then a half-close. Returns the outcome and what was
    sent. Over the synchronous API (see `call_client_stream`): grpc runs the
    request generator in its own thread, which waits for what the responses
    read here say."""
    sent: list[pb.ConnectRequest] = []
    responses: list[pb.ConnectResponse] = []
    welcomed, assigned, ended = threading.Event(), threading.Event(), threading.Event()
    first_recipe = resolve(session["first"], context)

    def until(event: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (event.is_set() or ended.is_set()) and time.monotonic() < deadline:
            event.wait(0.01)

    def requests():
        first = worker_message(first_recipe, store)
        if first is None:
            return
        sent.append(first)  # before yielding: whatever the server read is listed
        yield first
        hello = first_recipe if first_recipe["kind"] == "hello" else None
        if hello is not None and session["with_job"]:
            until(welcomed, 10)
            may_get_job = (
                welcomed.is_set()
                and "probe" in sorted(set(hello["pipelines"]))[:10]
                and not hello["draining"]
            )
            if may_get_job:
                until(assigned, 2)
        for recipe in session["messages"]:
            message = worker_message(resolve(recipe, context), store)
            sent.append(message)
            yield message

    call = server.sync_dispatch.Connect(requests(), timeout=CALL_TIMEOUT)
    try:
        for response in call:
            responses.append(response)
            kind = response.WhichOneof("payload")
            if kind == "welcome":
                welcomed.set()
            elif kind == "assignment" and "assigned_job" not in context:
                assignment = response.assignment
                context.update(
                    assigned_job=assignment.job_id,
                    assigned_token=assignment.lease_token,
                    assigned_prefix=assignment.output_prefix,
                )
                assigned.set()
        outcome = sync_outcome("Connect", call, responses)
    except grpc.RpcError as exc:
        outcome = sync_outcome("Connect", exc, responses)
    finally:
        ended.set()
    return outcome, sent


def check_worker_session(server: FuzzServer, session: dict[str, Any]) -> None:
    """Runs one worker session and checks it. Besides the properties of every
    call: the server logged no exception it swallowed, assignments name valid
    keys, and what the worker said about a real job reaches clients without
    host paths or tracebacks (the failure message, warnings and stage, in the
    job and in its events)."""
    store = open_blob_store(server.settings.storage_url)
    context = base_context(server, [])
    context["jobs"] = server.memory.get("known_jobs") or ["0" * 32]
    context.update(server.memory.get("stale_lease", {}))
    if session["with_job"]:
        job = server.run(submit(server, sample_videos()["mp4"]))
        context["jobs"] = server.memory["known_jobs"] = [*context["jobs"][-20:], job.job_id]
    mark = server.log.mark()
    outcome, sent = run_session(server, session, context, store)
    sent_text = client_text(sent)
    # The leak markers any worker has sent so far: a job's events replay what
    # earlier sessions reported, which may be shown as it was sent (the texts
    # the server promises to clean are checked by worker_text_leaks).
    worker_markers: set[str] = server.memory.setdefault("worker_markers", set())
    worker_markers.update(m for m in (*LEAK_MARKERS, *server.host_paths) if m in sent_text)
    server.check(outcome, sent_text, mark)
    event(outcome.label)
    event("a real assignment" if "assigned_job" in context else "no assignment")
    for response in outcome.responses:
        if response.WhichOneof("payload") == "assignment":
            assignment = response.assignment
            assert is_valid_key(assignment.input_key), assignment
            assert is_valid_key(assignment.output_prefix), assignment
    server.check_log(mark, "Connect")
    if "assigned_job" in context:
        job_id = context["assigned_job"]
        server.memory["stale_lease"] = {
            "stale_job": job_id,
            "stale_token": context["assigned_token"],
        }
        job = server.run(get_job(server, job_id))
        events = server.run(
            call_server_stream(
                "StreamResults",
                server.jobs.StreamResults,
                js.StreamResultsRequest(job_id=job_id),
                # Only the stored events are wanted here: no wait for live ones.
                grace=0,
                caught_up=lambda seen: (
                    job.state not in TERMINAL
                    and bool(seen)
                    and seen[-1].event.sequence >= job.last_event_sequence
                ),
            )
        )
        server.check(events, "\n".join(worker_markers), mark)
        leaks = worker_text_leaks(server, job, events.responses)
        if leaks:
            raise server_bug(
                "worker_text_" + leaks[0].split(":", 1)[0].split("[")[0].split(" ")[-1],
                "worker text a client sees still holds host paths or tracebacks:\n"
                + "\n".join(leaks[:10]),
            )
    server.tick()


@settings(FUZZ, max_examples=EXAMPLES["connect_opening"])
@given(session=opening_sessions)
def test_dispatch_connect_opening(server: FuzzServer, session) -> None:
    """DispatchService.Connect opened by a hostile worker: a first message that
    is no hello (or none at all), hellos with fuzzed worker ids, pipelines,
    capacities, versions and held leases (forged, stale, past the limit of
    256), then messages of any kind."""
    if "stale_lease" not in server.memory:
        # A lease that was real once: held leases and heartbeats can quote it.
        check_worker_session(server, {"first": VALID_HELLO, "with_job": True, "messages": []})
    check_worker_session(server, session)


@settings(FUZZ, max_examples=EXAMPLES["connect_reports"])
@given(session=report_sessions)
def test_dispatch_connect_reports(server: FuzzServer, session) -> None:
    """DispatchService.Connect reports about a real assignment from a hostile
    worker: progress, partial results, completions, failures, stops and
    heartbeats with forged or stale job ids and lease tokens, storage keys
    that are host paths, `..` and URLs, arbitrary Structs, artifacts and
    statuses."""
    check_worker_session(server, session)


# -- misbehaviours the fuzzer found, each pinned by its minimal reproducer ------------------------
#
# The fuzz tests above find these at random (and fail until they are fixed);
# these tests perform each one deterministically. Each states the documented
# outcome and accepts any fix that reaches it (refusing the input, or
# handling it).


def _submit_outcome(server: FuzzServer, header: js.SubmitVideoRequest, *later) -> Outcome:
    data = sample_videos()["mp4"]
    messages = [header, *later, js.SubmitVideoRequest(chunk=data)]
    mark = server.log.mark()
    outcome = call_client_stream("SubmitVideo", server.sync_jobs.SubmitVideo, messages)
    server.check(outcome, client_text(messages), mark, allowed=frozenset({Code.INVALID_ARGUMENT}))
    return outcome


def _probe_header(**fields: Any) -> dict[str, Any]:
    return {"file_name": "clip.mp4", "pipeline": "probe", "parameters": {}, **fields}


@pytest.mark.parametrize("field", ["execution_timeout", "queue_timeout"])
@pytest.mark.parametrize("seconds", [10**14, -(2**63), 2**63 - 1])
def test_found_submit_duration_beyond_timedelta(server: FuzzServer, field, seconds) -> None:
    """A header timeout of 10**14 s (or int64's extremes) is outside the range
    protobuf allows and must be refused like any bad timeout (INVALID_ARGUMENT
    naming it). Found: INTERNAL, from OverflowError in Duration.ToTimedelta()
    (jobservice/api/job_servicer.py, _seconds_or_none)."""
    header = header_message(_probe_header(**{field: duration_pb2.Duration(seconds=seconds)}))
    outcome = _submit_outcome(server, header)
    fields = [v.field for v in outcome.bad_request().field_violations]
    assert f"header.{field}" in fields, outcome.summary()


def _nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_found_submit_parameters_nested_past_the_parse_limit(server: FuzzServer) -> None:
    """Parameters nested 40 objects deep (the documented bound is 4) must be
    refused with INVALID_ARGUMENT, in the first header or in a repeated one.
    Found: INTERNAL: the server cannot parse the message (protobuf's nesting
    limit, DecodeError in upload_admission.with_idle_timeout)."""
    _submit_outcome(server, header_message(_probe_header(parameters={"count_frames": _nested(40)})))
    deep_second = header_message(_probe_header(parameters={"count_frames": _nested(40)}))
    _submit_outcome(server, header_message(_probe_header()), deep_second)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_found_submit_parameters_holding_non_finite_numbers(server: FuzzServer, number) -> None:
    """A parameter that is NaN or infinite (a Struct can hold them, JSON
    cannot) must be refused with INVALID_ARGUMENT naming header.parameters.
    Found: INTERNAL, from ValueError in json_format.MessageToDict
    (jobservice/api/convert.py, struct_to_dict)."""
    for parameters in ({"count_frames": number}, {"probe": {"verify_frames": [number]}}):
        outcome = _submit_outcome(server, header_message(_probe_header(parameters=parameters)))
        fields = [v.field for v in outcome.bad_request().field_violations]
        assert any(f.startswith("header.parameters") for f in fields), outcome.summary()


def test_found_connect_first_message_nested_past_the_parse_limit(server: FuzzServer) -> None:
    """A worker stream whose first message is not a hello must end with
    INVALID_ARGUMENT, however deeply nested it is. Found: INTERNAL when it is
    nested past protobuf's parse limit (a partial result 40 objects deep):
    DecodeError while the Connect handler reads its first message."""
    first = {
        "kind": "partial_result",
        "job_id": "0" * 32,
        "lease_token": "t",
        "pipeline": "probe",
        "data": {"value": _nested(40)},
    }
    mark = server.log.mark()
    outcome, sent = run_session(
        server, {"first": first, "with_job": False, "messages": []}, {}, store=None
    )
    server.check(outcome, client_text(sent), mark, allowed=frozenset({Code.INVALID_ARGUMENT}))


AFTER_THE_REPORT = "after the report"


def _report_was_handled(server: FuzzServer, report: dict[str, Any]) -> tuple[Outcome, job_pb2.Job]:
    """A valid worker reports `report` about its real assignment, then a valid
    progress report, then closes. Per the contract a malformed report ends the
    stream with INVALID_ARGUMENT; any other report is applied: it ends or
    fails the attempt, or the stream goes on (the progress after it is
    recorded). A report that silently ends the stream OK is neither."""
    # Fraction 1.0: the server records it at once (progress reports closer
    # than 0.2 s apart are otherwise coalesced, and one still pending when the
    # stream closes belongs to an attempt that is lost anyway).
    after = {"kind": "progress", **ASSIGNED_LEASE, "fraction": 1.0, "stage": AFTER_THE_REPORT}
    session = {"first": VALID_HELLO, "with_job": True, "messages": [report, after]}
    store = open_blob_store(server.settings.storage_url)
    context = base_context(server, [])
    context["jobs"] = [server.run(submit(server, sample_videos()["mp4"])).job_id]
    mark = server.log.mark()
    outcome, sent = run_session(server, session, context, store)
    server.check(outcome, client_text(sent), mark)
    assert "assigned_job" in context, "the worker got no assignment"
    job = server.run(get_job(server, context["assigned_job"]))
    if outcome.code == Code.OK:
        events = server.run(
            call_server_stream(
                "StreamResults",
                server.jobs.StreamResults,
                js.StreamResultsRequest(job_id=job.job_id),
                grace=0,
                caught_up=lambda seen: (
                    job.state not in TERMINAL
                    and bool(seen)
                    and seen[-1].event.sequence >= job.last_event_sequence
                ),
            )
        )
        recorded_after = any(
            r.event.WhichOneof("payload") == "progress"
            and r.event.progress.stage == AFTER_THE_REPORT
            for r in events.responses
        )
        verdicts = {job_pb2.ATTEMPT_OUTCOME_FAILED, job_pb2.ATTEMPT_OUTCOME_RETRIED}
        judged = job.state in TERMINAL or any(a.outcome in verdicts for a in job.attempts)
        assert recorded_after or judged, (
            "the worker stream ended OK but neither the report nor the progress after it "
            "was applied: the server dropped the stream, swallowing a server-side exception\n"
            + "\n".join(str(p) for p in server.log.since(mark))
        )
    return outcome, job


MALFORMED_REPORTS = {
    "partial result holding NaN": {
        "kind": "partial_result",
        **ASSIGNED_LEASE,
        "pipeline": "probe",
        "data": {"value": math.nan},
    },
    "completion summary holding Infinity": {
        "kind": "completion",
        **ASSIGNED_LEASE,
        "output_key": Ref("assigned_key", suffix="results.json"),
        "artifacts": [],
        "summary": {"value": math.inf},
        "warnings": [],
        "write_outputs": True,
    },
    "failure whose ErrorInfo detail does not decode": {
        "kind": "failure",
        **ASSIGNED_LEASE,
        "code": 3,
        "message": "the input does not decode",
        "details": [
            {
                "type": "garbage",
                "type_url": "type.googleapis.com/google.rpc.ErrorInfo",
                "value": b"\x00",
            }
        ],
        "retryable": False,
    },
    "partial result nested past the parse limit": {
        "kind": "partial_result",
        **ASSIGNED_LEASE,
        "pipeline": "probe",
        "data": {"value": _nested(40)},
    },
    # A valid StorageKey (up to 1,024 bytes) whose one segment is longer than
    # a file name may be, in a directory that exists (the storage root).
    "completion naming a key with a 256-byte segment": {
        "kind": "completion",
        **ASSIGNED_LEASE,
        "output_key": "a" * 256,
        "artifacts": [],
        "summary": {},
        "warnings": [],
        "write_outputs": False,
    },
}


@pytest.mark.parametrize("report", sorted(MALFORMED_REPORTS))
def test_found_worker_report_ends_the_stream_ok(server: FuzzServer, report: str) -> None:
    """Each of these reports raised in the dispatch servicer's reader task; the
    exception was swallowed (logged at INFO as "stream of worker ... broke"),
    the stream ended OK instead of INVALID_ARGUMENT, the report was dropped and
    the job requeued as if the worker had died. Found: ValueError in
    convert.struct_to_dict (NaN, Infinity), DecodeError in _failure_error
    (ErrorInfo), DecodeError parsing the ConnectRequest (nesting), OSError
    ENAMETOOLONG in LocalBlobStore.stat (a valid StorageKey whose segment is
    longer than the filesystem allows, checked before the key's prefix)."""
    mark = server.log.mark()
    _report_was_handled(server, MALFORMED_REPORTS[report])
    server.check_log(mark, f"a {report}")


def test_found_completed_event_unreadable_by_clients(server: FuzzServer) -> None:
    """A completion summary nested 32 objects deep parses in the worker's
    report, so the job SUCCEEDS, but the `completed` event that carries it is
    one message level deeper and past protobuf's parse limit: no client can
    read the job's terminal event (grpc.aio yields None, the sync API fails
    INTERNAL). Every event a job records must stay readable."""
    completion = {
        "kind": "completion",
        **ASSIGNED_LEASE,
        "output_key": Ref("assigned_key", suffix="results.json"),
        "artifacts": [],
        "summary": {"value": _nested(32)},
        "warnings": [],
        "write_outputs": True,
    }
    _, job = _report_was_handled(server, completion)
    mark = server.log.mark()
    events = server.run(
        call_server_stream(
            "StreamResults",
            server.jobs.StreamResults,
            js.StreamResultsRequest(job_id=job.job_id),
            grace=0,
            caught_up=lambda seen: (
                job.state not in TERMINAL
                and bool(seen)
                and seen[-1].event.sequence >= job.last_event_sequence
            ),
        )
    )
    server.check(events, "", mark)


def test_found_worker_stage_shows_host_paths(server: FuzzServer) -> None:
    """A worker's progress stage reaches clients as sent (the job's progress
    and every progress event), host paths included; warnings and failure
    messages have them replaced. Design brief section 2: no API response or
    event carries a host path."""
    report = {
        "kind": "progress",
        **ASSIGNED_LEASE,
        "fraction": 0.25,
        "stage": f"reading {server.storage_root}/jobs/{'0' * 32}/input/source.mp4",
    }
    _, job = _report_was_handled(server, report)
    events = server.run(
        call_server_stream(
            "StreamResults",
            server.jobs.StreamResults,
            js.StreamResultsRequest(job_id=job.job_id),
            grace=0,
            caught_up=lambda seen: (
                job.state not in TERMINAL
                and bool(seen)
                and seen[-1].event.sequence >= job.last_event_sequence
            ),
        )
    )
    leaks = worker_text_leaks(server, job, events.responses)
    assert not leaks, "\n".join(leaks)
