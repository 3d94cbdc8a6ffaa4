"""Throwaway certificate authorities for the TLS tests, made with `cryptography`.

    authority = CertificateAuthority.create(tmp_path, "test-ca")
    server = authority.server_certificate()            # 127.0.0.1 and localhost
    client = authority.client_certificate("worker-1")  # subject CN=worker-1
    other = CertificateAuthority.create(tmp_path, "other-ca")  # trusted by nobody

Everything is written as PEM files into the directory (`<name>.pem` for a
certificate, `<name>.key` for its unencrypted private key). Keys are ECDSA
P-256: fast to make, and what gRPC's TLS stack handles everywhere.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path
    subject: str  # RFC 4514, e.g. "CN=worker-1"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + VALIDITY
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    directory: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def cert(self) -> Path:
        """The CA certificate (what a peer trusts), `<name>.pem`."""
        return self.directory / f"{self.name}.pem"

    @classmethod
    def create(cls, directory: Path, name: str = "test-ca") -> CertificateAuthority:
        """A new CA, its certificate written to `directory/<name>.pem`."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"videojobs {name}")
        certificate = (
            _validity(x509.CertificateBuilder())
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        authority = cls(directory, name, key, certificate)
        _write_certificate(authority.cert, certificate)
        return authority

    def _issue(
        self,
        file_stem: str,
        common_name: str,
        usage: x509.ObjectIdentifier,
        hosts: Sequence[str] = (),
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        pair = KeyPair(
            self.directory / f"{file_stem}.pem",
            self.directory / f"{file_stem}.key",
            f"CN={common_name}",
        )
        _write_certificate(pair.cert, certificate)
        _write_key(pair.key, key)
        return pair

    def server_certificate(
        self, name: str = "server", hosts: Sequence[str] = LOOPBACK_HOSTS
    ) -> KeyPair:
        """A server certificate for `hosts` (IP addresses and DNS names, as
        subject alternative names), written as `<ca>-<name>.pem/.key`."""
        return self._issue(f"{self.name}-{name}", hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, hosts)

    def client_certificate(self, common_name: str) -> KeyPair:
        """A client certificate whose subject is `CN=<common_name>`, written as
        `<ca>-client-<common_name>.pem/.key`."""
        return self._issue(
            f"{self.name}-client-{common_name}", common_name, ExtendedKeyUsageOID.CLIENT_AUTH
        )


@dataclass(frozen=True)
class CertificateSet:
    """A CA with a loopback server certificate, and a second, unrelated CA."""

    ca: CertificateAuthority
    server: KeyPair
    other_ca: CertificateAuthority

    def client(self, common_name: str) -> KeyPair:
        """A client certificate from the trusted CA."""
        return self.ca.client_certificate(common_name)

    def foreign_client(self, common_name: str) -> KeyPair:
        """A client certificate from the unrelated CA (no server trusts it)."""
        return self.other_ca.client_certificate(common_name)


def make_certificates(directory: Path) -> CertificateSet:
    """The usual set: `ca.pem`, a server certificate for 127.0.0.1/localhost
    signed by it, and `other-ca.pem`, which signed nothing the server knows."""
    ca = CertificateAuthority.create(directory, "ca")
    return CertificateSet(
        ca=ca,
        server=ca.server_certificate(),
        other_ca=CertificateAuthority.create(directory, "other-ca"),
    )
