"""`videojobs-server`: runs job-service until SIGTERM or SIGINT.

Subcommands, each with the server's flags for where its data lives:

- `videojobs-server import-legacy FILE ...` imports the finished jobs of the
  system videojobs replaces (see `legacy_import`);
- `videojobs-server retention [--dry-run]` runs one pass of the retention
  policy now, or prints what it would delete;
- `videojobs-server tokens add|list|revoke` edits the auth file;
- `videojobs-server migrate` brings the database schema to the newest
  revision (`alembic upgrade head`) and exits: what a deployment runs once
  before rolling out replicas (each replica also migrates at start, under a
  lock, so running it is optional).
"""

from __future__ import annotations

import asyncio
import sys

from videojobs.common.auth import AuthFileError
from videojobs.common.config import run_until_signalled, setup_logging
from videojobs.common.grpc_server import ListenError
from videojobs.common.security import SecurityConfigError
from videojobs.common.tracing import setup_tracing
from videojobs.jobservice.server import serve
from videojobs.jobservice.settings import parse_settings
from videojobs.jobservice.store.database import SingleReplicaError

IMPORT_LEGACY = "import-legacy"
RETENTION = "retention"
TOKENS = "tokens"
MIGRATE = "migrate"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `videojobs-server` command."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == [IMPORT_LEGACY]:
        # Imported here: the server itself never loads the importer.
        from videojobs.jobservice.legacy_import import main as import_legacy

        return import_legacy(list(arguments[1:]))
    if arguments[:1] == [RETENTION]:
        return retention_command(list(arguments[1:]))
    if arguments[:1] == [MIGRATE]:
        return migrate_command(list(arguments[1:]))
    if arguments[:1] == [TOKENS]:
        from videojobs.jobservice.tokens_command import main as tokens

        return tokens(list(arguments[1:]))
    settings = parse_settings(argv)
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing("videojobs-server", settings.tracing)
    try:
        return run_until_signalled(lambda stop: serve(settings, stop))
    except (SecurityConfigError, AuthFileError, SingleReplicaError, ListenError) as exc:
        print(f"videojobs-server: error: {exc}", file=sys.stderr)
        return 2


def migrate_command(arguments: list[str]) -> int:
    """`videojobs-server migrate [server flags]`: `alembic upgrade head` on the
    configured database, then exit 0 (1 with a message when it fails)."""
    settings = parse_settings(arguments, prog="videojobs-server migrate")
    setup_logging("WARNING")
    return asyncio.run(_migrate(settings))


async def _migrate(settings) -> int:
    from videojobs.jobservice.store import Database

    database = Database(settings.database_url)
    try:
        await database.migrate()
    except Exception as exc:  # noqa: BLE001 - a command-line error, not a traceback
        print(f"videojobs-server migrate: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await database.dispose()
    print(f"videojobs-server migrate: {database.url.render_as_string()} is at the newest revision")
    return 0


def retention_command(arguments: list[str]) -> int:
    """`videojobs-server retention [--dry-run] [server flags]`: one pass of the
    retention policy (the server's --retention-days and
    --failed-input-retention-days), or with --dry-run the list of what it
    would delete. Exit status 0."""
    dry_run = "--dry-run" in arguments
    settings = parse_settings(
        [a for a in arguments if a != "--dry-run"], prog="videojobs-server retention"
    )
    setup_logging("WARNING")
    return asyncio.run(_retention_pass(settings, dry_run))


async def _retention_pass(settings, dry_run: bool) -> int:
    from videojobs.jobservice.retention import JobDeletion
    from videojobs.jobservice.store import Database
    from videojobs.storage import open_blob_store

    database = Database(settings.database_url)
    try:
        await database.migrate()
        deletion = JobDeletion(
            database, open_blob_store(settings.storage_url), settings.retention_policy
        )
        report = await deletion.apply(dry_run=dry_run)
    finally:
        await database.dispose()
    verb = "would delete" if dry_run else "deleted"
    for job_id, state, since in report.jobs:
        print(f"{verb} job {job_id} ({state}, ended {since:%Y-%m-%d %H:%M:%S} UTC)")
    verb = "would remove" if dry_run else "removed"
    for job_id, state, since in report.inputs:
        print(f"{verb} the input of job {job_id} ({state}, ended {since:%Y-%m-%d %H:%M:%S} UTC)")
    prefix = "dry run, nothing changed: would remove" if dry_run else "removed"
    print(f"{prefix} {report.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
