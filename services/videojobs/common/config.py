"""Configuration: command-line flags whose defaults come from VIDEOJOBS_*
environment variables, so every setting can be given either way (flags win)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from videojobs.common import logs
from videojobs.common import tracing as tracing_module

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_WORKER_LISTEN = "127.0.0.1:50052"
DEFAULT_DATA_DIR = "./var"


def env_default(name: str, default: Any, parse: Callable[[str], Any] = str) -> Any:
    """The parsed value of environment variable `name`, or `default` when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SystemExit(f"invalid value for {name}: {raw!r} ({exc})") from None


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    env: str,
    default: Any,
    help_text: str,
    parse: Callable[[str], Any] = str,
) -> None:
    """Adds `--flag` with its default taken from `env` (documented in --help)."""
    parser.add_argument(
        flag,
        default=env_default(env, default, parse),
        type=parse,
        help=f"{help_text} [env {env}; default {default}]",
    )


def env_flag(name: str) -> bool:
    """Whether environment variable `name` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def add_flag(parser: argparse.ArgumentParser, flag: str, env: str, help_text: str) -> None:
    """Adds an on/off `--flag`, also switched on by `env` (1, true, yes, on)."""
    parser.add_argument(
        flag,
        action="store_true",
        default=env_flag(env),
        help=f"{help_text} [env {env}=1]",
    )


def storage_dirs(
    data_dir: str, database_url: str | None, storage_url: str | None
) -> tuple[str, str]:
    """The database URL and storage URL, defaulting to places inside `data_dir`."""
    base = Path(data_dir).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    database = database_url or f"sqlite+aiosqlite:///{base / 'videojobs.db'}"
    storage = storage_url or str(base / "storage")
    return database, storage


def setup_logging(level: str, log_format: str = "text") -> None:
    """Timestamped log lines on stderr, plain or JSON (see `common/logs.py`)."""
    logs.setup_logging(level, log_format)


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Runs `serve(stop)` in a new event loop; SIGTERM and SIGINT set `stop`,
    and `serve` shuts down gracefully when it is set. Returns exit code 0."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(stop)

    asyncio.run(run())
    return 0


def check_observability_options(
    parser: argparse.ArgumentParser, log_format: str, tracing: str
) -> None:
    """Usage error (exit 2) for a log format or tracing destination that
    does not exist."""
    if log_format not in logs.LOG_FORMATS:
        parser.error(f"--log-format must be one of: {', '.join(logs.LOG_FORMATS)}")
    try:
        tracing_module.check_tracing_mode(tracing)
    except tracing_module.TracingConfigError as error:
        parser.error(str(error))
