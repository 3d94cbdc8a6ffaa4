"""`videojobs-server`: runs job-service until SIGTERM or SIGINT."""

from __future__ import annotations

from videojobs.common.config import run_until_signalled, setup_logging
from videojobs.jobservice.server import serve
from videojobs.jobservice.settings import parse_settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `videojobs-server` command."""
    settings = parse_settings(argv)
    setup_logging(settings.log_level)

    return run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    raise SystemExit(main())
