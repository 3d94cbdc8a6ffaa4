"""`videojobs-server`: runs job-service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from videojobs.common.config import setup_logging
from videojobs.jobservice.server import serve
from videojobs.jobservice.settings import parse_settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `videojobs-server` command."""
    settings = parse_settings(argv)
    setup_logging(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
