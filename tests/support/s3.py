"""A real S3-protocol server for the storage tests: `moto_server` from moto[server],
started as a subprocess on a free loopback port.

Credentials and the endpoint are handed to the store under test explicitly
(`S3Server.store_arguments`); nothing here touches os.environ.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
# moto accepts any credentials; these only have to be present and consistent.
ACCESS_KEY_ID = "videojobs-test"
SECRET_ACCESS_KEY = "videojobs-test-secret"
REGION = "us-east-1"
_LISTENING = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")


@dataclass
class S3Server:
    """A running moto_server."""

    endpoint_url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    _client: Any = None

    def store_arguments(self) -> dict[str, str]:
        """Keyword arguments for S3BlobStore that point it at this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "region": REGION,
        }

    def client(self) -> Any:
        """A plain boto3 client on this server, to look behind a store's back
        (one, made on first use; boto3 clients are thread-safe)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_ACCESS_KEY,
                region_name=REGION,
            )
        return self._client

    def create_bucket(self) -> str:
        """Creates a bucket with a fresh name and returns the name."""
        name = f"test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


def start_moto_server(timeout: float = 30.0) -> S3Server:
    """Starts moto_server on 127.0.0.1 with a port the kernel picks, and returns
    once it answers HTTP; fails with its output after `timeout` seconds."""
    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()
    endpoint: list[str] = []

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = _LISTENING.search(line)
            if match and not endpoint:
                endpoint.append(match.group(1))
                found.set()

    threading.Thread(target=read_output, daemon=True).start()
    deadline = time.monotonic() + timeout
    if not found.wait(timeout):
        stop_moto_server(process)
        raise AssertionError(f"moto_server did not start in {timeout}s:\n{''.join(output)}")
    server = S3Server(endpoint[0], process, output)
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop_moto_server(process)
                raise AssertionError(
                    f"moto_server does not answer on port {port}:\n{''.join(output)}"
                ) from None
            time.sleep(0.02)


def stop_moto_server(process: subprocess.Popen[str]) -> None:
    """Terminates the server (kill after 10 s) and reaps it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto_server for the session, stopped at teardown."""
    server = start_moto_server()
    try:
        yield server
    finally:
        stop_moto_server(server.process)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket for one test."""
    return s3_server.create_bucket()
