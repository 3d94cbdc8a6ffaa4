"""The storage key rules (`videojobs.storage.keys`): hostile keys are refused,
ordinary keys pass unchanged, and the helpers treat keys segment-wise."""

from __future__ import annotations

import pytest

from videojobs.storage.keys import (
    MAX_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    InvalidStorageKey,
    StorageKey,
    is_valid_key,
)


def long_key(total_bytes: int, char: str = "a") -> str:
    """A key of exactly `total_bytes` bytes of UTF-8: whole `char`s in segments
    of at most MAX_SEGMENT_BYTES bytes, padded with ASCII to the exact size."""
    width = len(char.encode("utf-8"))
    count = -(-(total_bytes + 1) // (MAX_SEGMENT_BYTES + 1))  # segments needed
    content = total_bytes - (count - 1)  # bytes left after the separators
    sizes = [content // count + (1 if i < content % count else 0) for i in range(count)]
    return "/".join(char * (size // width) + "x" * (size % width) for size in sizes)


# (id, key): every one of these must be refused.
HOSTILE_KEYS: list[tuple[str, str]] = [
    # absolute paths, drives, UNC
    ("absolute-etc-passwd", "/etc/passwd"),
    ("absolute-single-segment", "/x"),
    ("drive-forward-slash", "C:/x"),
    ("drive-relative-lowercase", "c:x"),
    ("drive-backslash", "C:\\x"),
    ("drive-alone", "C:"),
    ("unc-backslashes", "\\\\server\\share\\x"),
    ("unc-forward-slashes", "//server/share"),
    # dot-dot in every position, and dot segments
    ("dotdot-alone", ".."),
    ("dotdot-first", "../x"),
    ("dotdot-middle", "a/../b"),
    ("dotdot-last", "a/b/.."),
    ("dotdot-repeated", "../../../etc/passwd"),
    ("dot-alone", "."),
    ("dot-first", "./x"),
    ("dot-middle", "a/./b"),
    ("dot-last", "a/."),
    # percent-encoding
    ("percent-dotdot", "%2e%2e/x"),
    ("percent-dotdot-upper", "%2E%2E/x"),
    ("percent-slash", "a/%2F/b"),
    ("percent-double-encoded", "%252e"),
    ("percent-nul", "a%00b"),
    # NUL and control characters
    ("nul", "a\x00b"),
    ("nul-trailing", "jobs/x.mp4\x00.txt"),
    ("newline", "a\nb"),
    ("carriage-return", "a\rb"),
    ("tab", "a\tb"),
    ("escape", "a\x1b[31mb"),
    ("delete", "a\x7fb"),
    ("c1-control", "a\x85b"),
    ("line-separator", "a\u2028b"),
    ("paragraph-separator", "a\u2029b"),
    # length
    ("over-long-ascii", long_key(MAX_KEY_BYTES + 1)),
    # Three-byte characters: far fewer than 1024 characters, but 1025 bytes.
    ("over-long-multibyte", long_key(MAX_KEY_BYTES + 1, "\u30d5")),
    ("over-long-segment", "s" * (MAX_SEGMENT_BYTES + 1)),
    # look-alikes of the separators and of the dot
    ("division-slash", "a\u2215b"),
    ("fraction-slash", "a\u2044b"),
    ("fullwidth-solidus-leading", "\uff0f\uff0fetc"),
    ("fullwidth-solidus-inside-segment", "a\uff0fb"),
    ("fullwidth-solidus-in-file-name", "jobs/evil\uff0f..\uff0fx.mp4"),
    ("fullwidth-solidus-splitting-segment", "jobs/a\uff0fb.mp4"),
    ("big-solidus", "a\u29f8b"),
    ("set-minus-backslash", "a\u2216b"),
    ("fullwidth-reverse-solidus", "a\uff3cb"),
    ("small-reverse-solidus", "a\ufe68b"),
    ("fullwidth-dots-as-dotdot", "\uff0e\uff0e/x"),
    ("fullwidth-dot-as-dot-segment", "a/\uff0e/b"),
    ("one-dot-leader-dotdot", "\u2024\u2024/x"),
    ("two-dot-leader", "a/\u2025"),
    ("fullwidth-dot-in-file-name", "clip\uff0emp4"),
    ("fullwidth-colon-drive", "C\uff1a/x"),
    # schemes
    ("file-url", "file:///x"),
    ("file-relative", "file:x"),
    ("s3-url", "s3://b/k"),
    ("http-url", "http://h/x"),
    ("https-url", "https://h/x"),
    ("data-url", "data:text/plain,x"),
    # empty, empty segments, trailing slash
    ("empty", ""),
    ("double-slash", "a//b"),
    ("trailing-slash", "a/b/"),
    ("slash-alone", "/"),
    # backslash anywhere
    ("backslash-middle", "a\\b"),
    ("backslash-leading", "\\a"),
    ("backslash-trailing", "a\\"),
    ("backslash-dotdot", "..\\x"),
    # invisible format characters
    ("zero-width-joiner", "a\u200db"),
    ("zero-width-space", "a\u200bb"),
    ("right-to-left-override", "jobs/\u202egpj.exe"),
    ("byte-order-mark", "\ufeffa"),
    ("soft-hyphen", "a\u00adb"),
    ("tag-character", "a\U000e0041"),
    ("private-use", "a\ue000b"),
    ("unassigned", "a\U000e0fffb"),
    # not UTF-8
    ("lone-surrogate", "a\ud800b"),
    # segments with leading/trailing spaces or trailing dot
    ("trailing-space-segment", "a /b"),
    ("leading-space-segment", "a/ b"),
    ("space-only-segment", "a/ /b"),
    ("trailing-dot-segment", "a./b"),
    ("trailing-dot-last", "a/b."),
    ("triple-dot", "a/..."),
    ("ideographic-space-trailing", "a/b\u3000"),
    ("no-break-space-leading", "\u00a0a"),
]

VALID_KEYS: list[str] = [
    "a",
    "jobs/0123456789abcdef0123456789abcdef/input/source.mp4",
    "jobs/\u00fc/\u30d5\u30a1\u30a4\u30eb.mp4",
    "a/.hidden/b.mp4",
    "a/b..c",
    "..a",
    long_key(MAX_KEY_BYTES),
    # Three-byte characters (and ASCII padding): exactly 1024 bytes.
    long_key(MAX_KEY_BYTES, "\u30d5"),
    "s" * MAX_SEGMENT_BYTES,
    "my file (1).mp4",
    "a/b-c.d/e",
    "100%/x",
    "x-y_z~1/+plus=eq,comma@at",
    "\u00e9t\u00e9/caf\u00e9.mov",
    "emoji/\U0001f3ac.mkv",
]


def _ids(table: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in table]


@pytest.mark.parametrize("key", [k for _, k in HOSTILE_KEYS], ids=_ids(HOSTILE_KEYS))
def test_hostile_key_is_refused(key: str) -> None:
    """A hostile key raises InvalidStorageKey with a reason, and is_valid_key says False."""
    with pytest.raises(InvalidStorageKey) as caught:
        StorageKey(key)
    assert caught.value.reason
    assert str(caught.value) == caught.value.reason
    assert is_valid_key(key) is False


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_key_is_accepted_unchanged(key: str) -> None:
    """A valid key is accepted, and its value, str() and segments are the text given."""
    storage_key = StorageKey(key)
    assert is_valid_key(key) is True
    assert storage_key.value == key
    assert str(storage_key) == key
    assert storage_key.segments == tuple(key.split("/"))


def test_length_limit_counts_utf8_bytes_not_characters() -> None:
    """The limit is on UTF-8 bytes: the boundary lies at MAX_KEY_BYTES bytes for
    one-, two-, three- and four-byte characters alike."""
    for char in ("a", "\u00fc", "\u30d5", "\U0001f3ac"):
        width = len(char.encode("utf-8"))
        fitting = long_key(MAX_KEY_BYTES, char)
        assert len(fitting.encode("utf-8")) == MAX_KEY_BYTES
        assert is_valid_key(fitting), f"{width}-byte characters: {MAX_KEY_BYTES} bytes refused"
        too_long = fitting + "x"
        assert len(too_long) <= MAX_KEY_BYTES or width == 1
        assert not is_valid_key(too_long), f"{width}-byte characters: over-long key accepted"
        segment = char * (MAX_SEGMENT_BYTES // width)
        assert is_valid_key(segment) and not is_valid_key(segment + char)


def test_non_string_is_refused() -> None:
    """Bytes and None are not keys."""
    for value in (b"jobs/x", None, 42):
        with pytest.raises(InvalidStorageKey):
            StorageKey(value)  # type: ignore[arg-type]
        assert is_valid_key(value) is False  # type: ignore[arg-type]


def test_reason_never_echoes_the_key() -> None:
    """Messages name the rule broken, never the offending text, even for a long key."""
    marker = "SECRETMARKER"
    hostile = [
        marker * 100,  # over-long
        f"/{marker}/" + "q" * 900,
        f"{marker}/../" + "q" * 900,
        f"{marker}\x00" + "q" * 900,
        f"%2e%2e/{marker}" + "q" * 900,
        f"{marker}\\" + "q" * 900,
        f"s3://{marker}/" + "q" * 900,
        f"{marker}\u2215" + "q" * 900,
        f"{marker}\ud800" + "q" * 900,
    ]
    for key in hostile:
        with pytest.raises(InvalidStorageKey) as caught:
            StorageKey(key)
        assert marker not in caught.value.reason
        assert marker not in str(caught.value)
        assert "q" * 20 not in caught.value.reason


def test_join_builds_and_validates_the_whole_key() -> None:
    """join() puts '/' between the parts and validates the result as one key."""
    parts = ("jobs", "abc", "input", "source.mp4")
    assert StorageKey.join(*parts) == StorageKey("/".join(parts))
    assert StorageKey.join(*parts).segments == parts
    for bad_parts in (("jobs", ".."), ("jobs", ""), ("a/", "b"), ("", "x"), ("jobs", "a\\b")):
        with pytest.raises(InvalidStorageKey):
            StorageKey.join(*bad_parts)


def test_join_rejects_a_part_that_smuggles_extra_segments_only_if_invalid() -> None:
    """A part holding '/' becomes several segments; with '..' inside it is refused."""
    assert StorageKey.join("a", "b/c").segments == ("a", "b", "c")
    with pytest.raises(InvalidStorageKey):
        StorageKey.join("a", "b/../c")


def test_child_appends_below_the_key() -> None:
    """child() is the key of the parts under this key as a prefix."""
    base = StorageKey("jobs/abc")
    child = base.child("attempts", "1", "out.json")
    assert child.value == f"{base.value}/attempts/1/out.json"
    assert child.is_within(base)
    assert child.segments[: len(base.segments)] == base.segments
    with pytest.raises(InvalidStorageKey):
        base.child("..", "escape")
    with pytest.raises(InvalidStorageKey):
        base.child("")


def test_is_within_is_segment_wise() -> None:
    """`jobs/ab` shares a string prefix with `jobs/a` but is not within it;
    a key is not within itself; deeper keys are within every ancestor."""
    prefix = StorageKey("jobs/a")
    assert StorageKey("jobs/a/x").is_within(prefix)
    assert StorageKey("jobs/a/x/y/z").is_within(prefix)
    assert StorageKey("jobs/a/x/y/z").is_within(StorageKey("jobs"))
    assert not StorageKey("jobs/ab").is_within(prefix)
    assert not StorageKey("jobs/ab/x").is_within(prefix)
    assert not StorageKey("jobs/a").is_within(prefix)
    assert not StorageKey("jobs").is_within(prefix)
    assert not StorageKey("other/jobs/a/x").is_within(prefix)


def test_name_is_the_last_segment() -> None:
    """name is the last segment, whatever the depth."""
    for key in ("source.mp4", "jobs/abc/input/source.mp4", "a/.hidden", "jobs/\u00fc/\u30d5.mp4"):
        assert StorageKey(key).name == key.split("/")[-1]


def test_keys_are_values() -> None:
    """Equal text makes equal, hashable keys; keys are immutable."""
    a = StorageKey("jobs/x")
    b = StorageKey.join("jobs", "x")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, StorageKey("jobs/y")}) == 2
    with pytest.raises(AttributeError):
        a.value = "/etc/passwd"  # type: ignore[misc]
