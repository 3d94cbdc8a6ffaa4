"""Notices between job-service replicas and their JSON codec for PostgreSQL
NOTIFY (`videojobs.jobservice.notices`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from videojobs.jobservice import notices
from videojobs.jobservice.notices import (
    MAX_MESSAGE_BYTES,
    EventsAppended,
    JobsQueued,
    LeaseGranted,
    Resync,
    StopLease,
    StopReason,
    WorkerConnected,
    decode,
    encode,
    merge,
)

ORIGIN = "9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d"  # as notifier.py names a replica


def job_id(n: int) -> str:
    return f"{n:032x}"


T1 = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T2 = datetime(2030, 1, 2, 3, 5, 0, tzinfo=UTC)

EVERY_KIND = [
    JobsQueued(),
    JobsQueued(T1, T2),
    LeaseGranted(),
    LeaseGranted(T2),
    EventsAppended(frozenset({job_id(1), job_id(2)})),
    *(StopLease(job_id(3), f"token-{reason.value}", reason) for reason in StopReason),
    WorkerConnected("worker-a", "session-1"),
    Resync(),
]


def decode_all(messages: list[str]) -> tuple[set[str], list[notices.Notice]]:
    origins: set[str] = set()
    decoded: list[notices.Notice] = []
    for message in messages:
        origin, items = decode(message)
        origins.add(origin)
        decoded.extend(items)
    return origins, decoded


@pytest.mark.parametrize("notice", EVERY_KIND, ids=lambda n: type(n).__name__)
def test_each_kind_survives_a_round_trip(notice: notices.Notice) -> None:
    messages = encode(ORIGIN, [notice])
    assert len(messages) == 1
    assert decode(messages[0]) == (ORIGIN, [notice])


def test_a_mix_of_kinds_survives_a_round_trip() -> None:
    messages = encode(ORIGIN, EVERY_KIND)
    origins, decoded = decode_all(messages)
    assert origins == {ORIGIN}
    # Decoding gathers the job ids of a message into one EventsAppended (last).
    assert sorted(decoded, key=repr) == sorted(merge(EVERY_KIND), key=repr)
    assert len(decoded) == len(merge(EVERY_KIND))


def test_merge_drops_repeats() -> None:
    stop = StopLease(job_id(9), "t", StopReason.CANCELLED)
    merged = merge(
        [
            EventsAppended(frozenset({job_id(1)})),
            JobsQueued(),
            stop,
            WorkerConnected("w", "s1"),
            JobsQueued(),
            EventsAppended(frozenset({job_id(2), job_id(1)})),
            stop,
            Resync(),
            WorkerConnected("w", "s2"),
            Resync(),
        ]
    )
    assert merged == [
        JobsQueued(),
        EventsAppended(frozenset({job_id(1), job_id(2)})),
        stop,
        WorkerConnected("w", "s1"),
        Resync(),
        WorkerConnected("w", "s2"),
    ]


def test_merge_adds_nothing() -> None:
    assert merge([]) == []
    assert merge([EventsAppended(frozenset())]) == []
    assert merge([Resync()]) == [Resync()]
    assert encode(ORIGIN, []) == []


def thousands_of_notices() -> tuple[frozenset[str], list[notices.Notice]]:
    ids = frozenset(job_id(n) for n in range(5000))
    stops = [StopLease(job_id(n), f"token-{n:08d}", StopReason.LEASE_LOST) for n in range(300)]
    return ids, [JobsQueued(), EventsAppended(ids), *stops, Resync()]


def test_thousands_of_job_ids_are_split_and_all_come_back() -> None:
    ids, sent = thousands_of_notices()
    messages = encode(ORIGIN, sent)
    assert len(messages) > 1
    origins, decoded = decode_all(messages)
    assert origins == {ORIGIN}  # every message names its origin
    received_ids: set[str] = set()
    for notice in decoded:
        if isinstance(notice, EventsAppended):
            received_ids |= notice.job_ids
    assert received_ids == ids
    assert merge(decoded) == merge(sent)


def test_no_message_exceeds_the_limit() -> None:
    _, sent = thousands_of_notices()
    messages = encode(ORIGIN, sent)
    sizes = [len(message.encode("utf-8")) for message in messages]
    assert max(sizes) <= MAX_MESSAGE_BYTES, sizes


def test_small_batches_stay_in_one_message() -> None:
    sent = [EventsAppended(frozenset(job_id(n) for n in range(20))), JobsQueued()]
    (message,) = encode(ORIGIN, sent)
    assert json.loads(message)["o"] == ORIGIN
    assert decode(message) == (ORIGIN, merge(sent))


def test_unknown_and_malformed_items_are_skipped() -> None:
    message = json.dumps(
        {
            "o": "replica-new",
            "v": 2,
            "n": [
                ["q"],
                ["x", "a kind from a newer version"],
                ["e", 5],
                ["e", job_id(1)],
                ["s", job_id(2), "token", "no-such-reason"],
                ["s", job_id(2)],
                ["w", "worker-a", "session-1"],
                ["w", "worker-b"],
                ["q", "extra"],
                ["Q", "not a time", None],
                ["L", True],
                ["r", 1],
                "junk",
                None,
                7,
                {"e": job_id(3)},
                [],
                ["s", job_id(4), "token-4", "cancelled"],
            ],
        }
    )
    assert decode(message) == (
        "replica-new",
        [
            # A bare "q" (an older replica) says nothing about times.
            JobsQueued(known=False),
            WorkerConnected("worker-a", "session-1"),
            StopLease(job_id(4), "token-4", StopReason.CANCELLED),
            EventsAppended(frozenset({job_id(1)})),
        ],
    )


def test_a_message_without_origin_or_items_decodes_to_nothing() -> None:
    assert decode("{}") == ("", [])
    assert decode(json.dumps({"o": ORIGIN, "n": []})) == (ORIGIN, [])


def test_times_of_several_notices_merge_to_the_earliest() -> None:
    merged = merge(
        [
            JobsQueued(None, T2),
            LeaseGranted(T2),
            JobsQueued(T1, None),
            LeaseGranted(T1),
            JobsQueued(T2, T1),
        ]
    )
    assert merged == [JobsQueued(T1, T1), LeaseGranted(T1)]
    (message,) = encode(ORIGIN, merged)
    assert decode(message) == (ORIGIN, merged)


def test_a_notice_without_times_from_an_older_replica_makes_the_merge_unknown() -> None:
    assert merge([JobsQueued(T1, T2), JobsQueued(known=False)]) == [JobsQueued(T1, T2, known=False)]
    older = json.dumps({"o": "replica-old", "n": [["l"], ["q"]]})
    assert decode(older) == (
        "replica-old",
        [LeaseGranted(known=False), JobsQueued(known=False)],
    )


def test_an_older_replica_still_finds_its_kinds_in_a_newer_message() -> None:
    """A newer replica sends "q" and "l" as before, with the times in items
    of their own, which an older decoder skips as unknown."""
    (message,) = encode(ORIGIN, [JobsQueued(T1, T2), LeaseGranted(T2)])
    items = json.loads(message)["n"]
    assert ["q"] in items and ["l"] in items
    assert ["Q", T1.timestamp(), T2.timestamp()] in items and ["L", T2.timestamp()] in items
