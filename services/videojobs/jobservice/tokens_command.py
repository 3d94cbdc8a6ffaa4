"""`videojobs-server tokens add|list|revoke`: edits the auth file.

`add` makes a principal with a fresh token and prints the token once, on
stdout (the file keeps only its SHA-256); `--subject` makes a principal known
by its client certificate (mutual TLS) instead. `revoke` disables a principal
at once: running servers re-read the file, and its open streams end. `list`
shows principals, never tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from videojobs.common.auth import (
    DEFAULT_TENANT,
    AuthEntry,
    AuthFile,
    AuthFileError,
    Role,
    hash_token,
    new_token,
    utc_stamp,
)
from videojobs.common.config import env_default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videojobs-server tokens",
        description="Add, list and revoke the principals of the auth file.",
    )
    parser.add_argument(
        "--auth-file",
        default=env_default("VIDEOJOBS_AUTH_FILE", ""),
        help="the auth file [env VIDEOJOBS_AUTH_FILE]",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a principal; prints its token once")
    add.add_argument("name", help="principal name (a worker's id), 1-128 of [A-Za-z0-9._-]")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        help=f"the tenant of a client's jobs (default: {DEFAULT_TENANT})",
    )
    add.add_argument(
        "--subject",
        default="",
        help="identify it by its client certificate's subject (e.g. CN=worker-1) instead "
        "of a token (mutual TLS)",
    )
    commands.add_parser("list", help="list principals (never their tokens)")
    revoke = commands.add_parser("revoke", help="revoke a principal (takes effect at once)")
    revoke.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the subcommand; exit status 0, or 2 for a usage or file error."""
    args = _parser().parse_args(argv)
    if not args.auth_file:
        print(
            "videojobs-server tokens: error: name the auth file (--auth-file or "
            "VIDEOJOBS_AUTH_FILE)",
            file=sys.stderr,
        )
        return 2
    path = Path(args.auth_file)
    try:
        document = AuthFile.load(path)
        if args.command == "list":
            _list(document)
            return 0
        if args.command == "add":
            token = "" if args.subject else new_token()
            document.add(
                AuthEntry(
                    name=args.name,
                    role=args.role,
                    tenant=args.tenant,
                    token_sha256=hash_token(token) if token else "",
                    subject=args.subject,
                    created_at=utc_stamp(),
                )
            )
            document.save(path)
            if token:
                print(token)
                print(
                    f"principal {args.name} ({args.role}, tenant {args.tenant}) added; the "
                    "token above is shown once only",
                    file=sys.stderr,
                )
            else:
                print(f"principal {args.name} ({args.role}) added for {args.subject}")
            return 0
        entry = document.revoke(args.name)
        document.save(path)
        print(f"principal {entry.name} revoked at {entry.revoked_at}")
        return 0
    except AuthFileError as exc:
        print(f"videojobs-server tokens: error: {exc}", file=sys.stderr)
        return 2


def _list(document: AuthFile) -> None:
    print(f"{'NAME':<24} {'ROLE':<7} {'TENANT':<16} {'KNOWN BY':<10} {'CREATED':<26} REVOKED")
    for entry in document.entries:
        known_by = "subject" if entry.subject else "token"
        print(
            f"{entry.name:<24} {entry.role:<7} {entry.tenant:<16} {known_by:<10} "
            f"{entry.created_at:<26} {entry.revoked_at or '-'}"
        )
