"""How the client turns its credential arguments into a token and TLS: the
token's sources and checks, PEM files, and the stubs that add the token to
every call (no network: the stubs' methods are stand-ins that record)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from videojobs.client import (
    TOKEN_ENV_VAR,
    AsyncJobClient,
    ClientCredentials,
    CredentialsError,
    JobClient,
    read_token_file,
    tls_credentials,
)
from videojobs.client.credentials import bearer_metadata, with_call_metadata

TOKEN = "vj_" + "A" * 43


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)


def test_an_explicit_token_is_used_and_stripped() -> None:
    resolved = ClientCredentials.resolve(token=f"  {TOKEN}\n")
    assert resolved.token == TOKEN
    assert resolved.metadata() == (("authorization", f"Bearer {TOKEN}"),)
    assert not resolved.tls


def test_without_a_token_the_environment_supplies_it(monkeypatch) -> None:
    assert ClientCredentials.resolve().token is None
    assert ClientCredentials.resolve().metadata() == ()
    monkeypatch.setenv(TOKEN_ENV_VAR, f"{TOKEN}\n")
    assert ClientCredentials.resolve().token == TOKEN
    # An empty token means none at all, whatever the environment says.
    assert ClientCredentials.resolve(token="").token is None
    monkeypatch.setenv(TOKEN_ENV_VAR, "  ")
    assert ClientCredentials.resolve().token is None


def test_a_channel_of_the_caller_takes_only_an_explicit_token(monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV_VAR, TOKEN)
    assert ClientCredentials.resolve(channel_given=True).token is None
    assert ClientCredentials.resolve(token="t", channel_given=True).token == "t"
    with pytest.raises(CredentialsError, match="used as it is"):
        ClientCredentials.resolve(tls_ca="ca.pem", channel_given=True)
    with pytest.raises(CredentialsError, match="used as it is"):
        ClientCredentials.resolve(credentials=grpc.ssl_channel_credentials(), channel_given=True)


@pytest.mark.parametrize("token", ["two\nlines", "tab\there", "caf\u00e9", "x" * 5000])
def test_a_token_a_header_cannot_carry_is_refused_without_echoing_it(token, monkeypatch) -> None:
    with pytest.raises(CredentialsError) as refused:
        ClientCredentials.resolve(token=token)
    assert token not in str(refused.value)
    monkeypatch.setenv(TOKEN_ENV_VAR, token)
    with pytest.raises(CredentialsError, match=r"\$VIDEOJOBS_TOKEN"):
        ClientCredentials.resolve()


def test_token_files(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    assert read_token_file(path) == TOKEN
    path.write_text("\n")
    with pytest.raises(CredentialsError, match="is empty"):
        read_token_file(path)
    with pytest.raises(CredentialsError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(CredentialsError, match="cannot read the token file"):
        read_token_file(path)


def test_tls_files_are_checked_before_any_call(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(CredentialsError, match="is not a PEM file"):
        tls_credentials(ca=not_pem)
    with pytest.raises(CredentialsError, match="cannot read the TLS CA"):
        JobClient("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")
    with pytest.raises(CredentialsError, match="needs its key"):
        AsyncJobClient("127.0.0.1:1", tls_cert=tmp_path / "cert.pem")
    with pytest.raises(CredentialsError, match="not both"):
        ClientCredentials.resolve(credentials=grpc.ssl_channel_credentials(), tls_ca="ca.pem")


def test_credentials_or_a_ca_make_the_channel_tls() -> None:
    made = ClientCredentials.resolve(credentials=grpc.ssl_channel_credentials())
    assert made.tls
    channel = made.sync_channel("127.0.0.1:1")  # no connection until a call
    channel.close()


class RecordingMethod:
    """Stands in for a gRPC multi-callable: records each call's keywords."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(("call", args, kwargs))
        return "answer"

    def future(self, *args, **kwargs):
        self.calls.append(("future", args, kwargs))
        return "future"

    def with_call(self, *args, **kwargs):
        self.calls.append(("with_call", args, kwargs))
        return "answer", "call"


class Stub:
    def __init__(self) -> None:
        self.GetStatus = RecordingMethod()
        self.Write = RecordingMethod()


def test_every_call_of_a_stub_carries_the_token() -> None:
    stub = Stub()
    get_status, write = stub.GetStatus, stub.Write
    wrapped = with_call_metadata(stub, bearer_metadata(TOKEN))
    assert wrapped.GetStatus("request", timeout=3) == "answer"
    assert wrapped.Write.future(iter(()), metadata=(("x-trace", "1"),)) == "future"
    assert wrapped.GetStatus.with_call("request") == ("answer", "call")
    authorization = ("authorization", f"Bearer {TOKEN}")
    assert get_status.calls[0] == (
        "call",
        ("request",),
        {"timeout": 3, "metadata": (authorization,)},
    )
    # The caller's own metadata comes first and is kept.
    assert write.calls[0][2]["metadata"] == (("x-trace", "1"), authorization)
    assert get_status.calls[1][2]["metadata"] == (authorization,)


def test_without_a_token_stubs_stay_as_they_are() -> None:
    stub = Stub()
    method = stub.GetStatus
    assert with_call_metadata(stub, ()) is stub
    assert stub.GetStatus is method
