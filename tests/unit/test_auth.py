"""The auth file and its registry, without a server: what a token proves,
what a rotation or revocation takes away, and how a bad file is handled."""

from __future__ import annotations

import json
import os

import pytest

from videojobs.common import auth
from videojobs.common.auth import (
    AuthEntry,
    AuthFile,
    AuthFileError,
    AuthRegistry,
    Credential,
    Principal,
    Role,
    hash_token,
    new_token,
)


def entry(name: str, role: str = "worker", token: str | None = None, **extra) -> AuthEntry:
    return AuthEntry(name, role, token_sha256=hash_token(token or new_token()), **extra)


@pytest.fixture
def no_reload_delay(monkeypatch):
    """The registry looks at the file on every question."""
    monkeypatch.setattr(auth, "RELOAD_CHECK_SECONDS", 0.0)


def write(path, document: AuthFile) -> None:
    document.save(path)
    # A second write within one mtime tick must still be noticed: bump it.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize(
    "name", ["w1:gpu", "", "a" * 129, "white space", "slash/y", "semi;colon", "ünï"]
)
def test_principal_names_are_plain(name):
    with pytest.raises(AuthFileError):
        entry(name).check()


def test_an_entry_needs_a_real_role_tenant_and_credential():
    with pytest.raises(AuthFileError, match="unknown role"):
        entry("x", role="root").check()
    with pytest.raises(AuthFileError, match="tenant"):
        entry("x", role="client", tenant="Acme Corp").check()
    with pytest.raises(AuthFileError, match="token_sha256 or a subject"):
        AuthEntry("x", "client").check()
    with pytest.raises(AuthFileError, match="not a SHA-256"):
        AuthEntry("x", "client", token_sha256="abc").check()


def test_the_file_round_trips_and_stores_no_clear_token(tmp_path):
    path = tmp_path / "auth.json"
    token = new_token()
    document = AuthFile()
    document.add(entry("app", "client", token, tenant="acme"))
    document.add(AuthEntry("edge", "worker", subject="CN=edge-1"))
    document.save(path)
    assert token not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = AuthFile.load(path)
    assert [(e.name, e.role, e.tenant) for e in loaded.entries] == [
        ("app", "client", "acme"),
        ("edge", "worker", "default"),
    ]


def test_a_name_is_added_once_until_revoked(tmp_path):
    document = AuthFile()
    document.add(entry("w1"))
    with pytest.raises(AuthFileError, match="revoke it first"):
        document.add(entry("w1"))
    document.revoke("w1")
    document.add(entry("w1"))
    assert len(document.entries) == 1 and not document.entries[0].revoked_at
    with pytest.raises(AuthFileError, match="no principal"):
        document.revoke("nobody")


def test_a_file_listing_a_name_twice_is_refused(tmp_path):
    path = tmp_path / "auth.json"
    twice = [vars(entry("w1")), vars(entry("w1"))]
    path.write_text(json.dumps({"version": 1, "principals": twice}))
    with pytest.raises(AuthFileError, match="listed twice"):
        AuthFile.load(path)


def test_tokens_identify_their_principal_only_while_unrevoked(tmp_path, no_reload_delay):
    path = tmp_path / "auth.json"
    token = new_token()
    document = AuthFile()
    document.add(entry("app", "client", token, tenant="acme"))
    write(path, document)
    registry = AuthRegistry(path)
    app = Principal("app", Role.CLIENT, "acme")
    assert registry.by_token(token) == app
    assert registry.by_token(new_token()) is None
    assert registry.by_token("x" * 10_000) is None
    assert registry.still_admits(Credential(token_sha256=hash_token(token)), app)

    document.revoke("app")
    write(path, document)
    assert registry.by_token(token) is None
    assert not registry.still_admits(Credential(token_sha256=hash_token(token)), app)


def test_a_rotated_token_no_longer_admits_even_though_the_principal_is_back(
    tmp_path, no_reload_delay
):
    path = tmp_path / "auth.json"
    old, new = new_token(), new_token()
    document = AuthFile()
    document.add(entry("w1", token=old))
    write(path, document)
    registry = AuthRegistry(path)
    w1 = registry.by_token(old)
    document.revoke("w1")
    document.add(entry("w1", token=new))
    write(path, document)
    assert registry.by_token(new) == w1  # the same name, role and tenant...
    assert not registry.still_admits(Credential(token_sha256=hash_token(old)), w1)  # ...not token
    assert registry.still_admits(Credential(token_sha256=hash_token(new)), w1)


def test_a_subject_moved_to_another_principal_no_longer_admits_the_first(tmp_path, no_reload_delay):
    path = tmp_path / "auth.json"
    document = AuthFile([AuthEntry("edge", "worker", subject="CN=edge-1")])
    write(path, document)
    registry = AuthRegistry(path)
    edge = registry.by_subject("CN=edge-1")
    assert edge == Principal("edge", Role.WORKER)
    write(path, AuthFile([AuthEntry("ops", "admin", subject="CN=edge-1")]))
    assert not registry.still_admits(Credential(subject="CN=edge-1"), edge)
    assert not registry.still_admits(Credential(), edge)


def test_a_broken_file_keeps_the_last_good_principals_and_a_missing_one_none(
    tmp_path, no_reload_delay
):
    path = tmp_path / "auth.json"
    token = new_token()
    write(path, AuthFile([entry("w1", token=token)]))
    registry = AuthRegistry(path)
    path.write_text("{ half written")
    assert registry.by_token(token) is not None
    path.unlink()
    assert registry.by_token(token) is None


def test_a_broken_file_at_start_is_an_error(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text('{"principals": [{"name": "x"}]}')
    with pytest.raises(AuthFileError):
        AuthRegistry(path)
