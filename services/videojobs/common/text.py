"""Text that crosses a trust boundary: what may be stored, shown or echoed.

A string from a client or a worker is an allocation and, once printed, a
program for the reader's terminal. These helpers decide in one place which
characters are unsafe (controls, bidirectional overrides, invisible format
characters), how such text is cleaned before a client sees it, and how much
of a refused value an error message may echo.
"""

from __future__ import annotations

import re
import unicodedata

# Cc: C0 controls, DEL, C1 controls. Cf: format characters (U+202E RIGHT-TO-LEFT
# OVERRIDE, U+200B ZERO WIDTH SPACE, U+FEFF...). Zl/Zp: line and paragraph
# separators. Cs: lone surrogates. Co/Cn: private-use and unassigned.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
ELLIPSIS = "…"
# Absolute host paths (`/srv/app/...`, `C:\\data\\...`) inside free text.
_HOST_PATH = re.compile(r"(?:[A-Za-z]:\\|(?<![\w.])/)(?:[\w.@+-]+[/\\])+[\w.@+-]*")
_WHITESPACE_RUN = re.compile(r"\s+")


def is_unsafe_char(char: str) -> bool:
    """Whether `char` must never reach a client's screen as it is."""
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def has_unsafe_chars(value: str) -> bool:
    """Whether `value` holds any control, format or unassigned character."""
    return any(is_unsafe_char(char) for char in value)


def truncate(value: str, max_chars: int) -> str:
    """`value` cut to at most `max_chars` characters, ending in an ellipsis when cut."""
    if len(value) <= max_chars:
        return value
    return value[: max(0, max_chars - 1)] + ELLIPSIS


def clean_text(value: str, max_chars: int) -> str:
    """One line of displayable text: unsafe characters removed (line breaks
    and tabs become spaces), runs of whitespace collapsed, cut to `max_chars`."""
    kept = "".join(
        " " if char in "\t\n\r\x0b\x0c\u2028\u2029" else char
        for char in value
        if char in "\t\n\r\x0b\x0c\u2028\u2029" or not is_unsafe_char(char)
    )
    return truncate(_WHITESPACE_RUN.sub(" ", kept).strip(), max_chars)


def redact_host_paths(value: str) -> str:
    """`value` with anything that looks like an absolute host path replaced by
    `<path>`: a path names a place on one machine and must not leave it."""
    return _HOST_PATH.sub("<path>", value)


def echo(value: str, max_chars: int = 32) -> str:
    """A short, safe, quoted prefix of a refused value for an error message:
    enough to recognise it, never enough to amplify it."""
    return repr(truncate(clean_text(value, max_chars + 1), max_chars))
