"""The one place that decides what a valid storage key is.

A storage key names an object relative to the storage root: `jobs/{id}/input/source.mp4`.
Keys cross process and machine boundaries (requests, worker messages, database
rows), so they must mean the same thing in every environment: never a host
path, URL, drive or anything a backend could resolve outside its root.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_KEY_BYTES = 1024
# A segment becomes a file name in the local store, where common filesystems
# allow 255 bytes: the same key must be storable in every backend.
MAX_SEGMENT_BYTES = 255

# `file:`, `s3:`, `C:`... anything that looks like a scheme or drive prefix in
# the first segment. Keys are relative, so a colon there is always a mistake.
_SCHEME_OR_DRIVE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
# Percent-encoding would let a key change meaning when some layer decodes it
# (`%2e%2e` becomes `..` behind an HTTP gateway or in an S3 console link).
_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
# ASCII characters with meaning in a key or a path; a non-ASCII character that
# NFKC folds into one of them (U+FF0F FULLWIDTH SOLIDUS, U+FF0E FULLWIDTH FULL
# STOP, U+FF1A FULLWIDTH COLON...) is a look-alike and refused.
_MEANINGFUL_ASCII = frozenset("/\\.:%")
# Slash and backslash look-alikes that NFKC folding leaves alone.
_SEPARATOR_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u2571\u29f5\u2216\u29f9\u2572")


class InvalidStorageKey(ValueError):
    """Raised for a string that is not a valid relative storage key.

    `reason` says what is wrong in words fit for an API error message; it never
    echoes anything but the rule that was broken.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check(value: str) -> None:
    if not isinstance(value, str):
        raise InvalidStorageKey("must be a string")
    if value == "":
        raise InvalidStorageKey("must not be empty")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidStorageKey("must be valid UTF-8") from exc
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidStorageKey(f"must be at most {MAX_KEY_BYTES} bytes of UTF-8")
    for char in value:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise InvalidStorageKey("must not contain control or invisible characters")
        if char in _SEPARATOR_LOOKALIKES or (
            not char.isascii() and _MEANINGFUL_ASCII & set(unicodedata.normalize("NFKC", char))
        ):
            raise InvalidStorageKey("must not contain look-alikes of '/', '\\', '.', ':' or '%'")
    # Structural rules are checked on the key as given and on its NFKC folding,
    # which maps look-alikes (U+2215 DIVISION SLASH, U+FF0F FULLWIDTH SOLIDUS,
    # U+FF0E FULLWIDTH FULL STOP, U+FF1A FULLWIDTH COLON...) to the ASCII they
    # imitate: a key that would change meaning once some layer folds it is refused.
    for form in (value, unicodedata.normalize("NFKC", value)):
        _check_structure(form)


def _check_structure(value: str) -> None:
    if "\\" in value:
        raise InvalidStorageKey("must use '/' as separator, never a backslash")
    if value.startswith("/"):
        raise InvalidStorageKey("must be relative (no leading '/')")
    if value.endswith("/"):
        raise InvalidStorageKey("must not end with '/'")
    if _SCHEME_OR_DRIVE.match(value):
        raise InvalidStorageKey("must not start with a scheme or drive prefix")
    if _PERCENT_ENCODED.search(value):
        raise InvalidStorageKey("must not contain percent-encoded characters")
    for segment in value.split("/"):
        if segment == "":
            raise InvalidStorageKey("must not contain an empty segment")
        if segment in (".", ".."):
            raise InvalidStorageKey("must not contain a '.' or '..' segment")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidStorageKey(f"segments must be at most {MAX_SEGMENT_BYTES} bytes")
        if segment != segment.strip() or segment.endswith("."):
            # Trailing spaces and dots are silently dropped by some filesystems,
            # which would make two different keys name one object.
            raise InvalidStorageKey("segments must not start or end with a space or end with '.'")


@dataclass(frozen=True, slots=True)
class StorageKey:
    """A validated, relative storage key. Construct with `StorageKey(text)`.

    Every key that enters the system from outside (a request, a worker message,
    a database row written by an older version) goes through this type.
    """

    value: str

    def __post_init__(self) -> None:
        _check(self.value)

    @classmethod
    def join(cls, *parts: str) -> StorageKey:
        """Builds a key from segments, validating the result as a whole."""
        return cls("/".join(parts))

    def child(self, *parts: str) -> StorageKey:
        """The key of `parts` below this key used as a prefix."""
        return StorageKey.join(self.value, *parts)

    def is_within(self, prefix: StorageKey) -> bool:
        """Whether this key lies below `prefix` (segment-wise, not by string prefix)."""
        return self.value.startswith(prefix.value + "/")

    @property
    def name(self) -> str:
        """The last segment."""
        return self.value.rsplit("/", 1)[-1]

    @property
    def segments(self) -> tuple[str, ...]:
        """The segments, in order."""
        return tuple(self.value.split("/"))

    def __str__(self) -> str:
        return self.value


def is_valid_key(value: str) -> bool:
    """Whether `value` is a valid storage key."""
    try:
        _check(value)
    except InvalidStorageKey:
        return False
    return True
