"""Per-cluster TLS: a CA of the cluster's own and certificates for scheduler, workers, client."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from distributed.security import Security

CERT_LIFETIME_DAYS = 30
_CLOCK_SKEW = datetime.timedelta(minutes=5)
COMMON_NAME_MAX_CHARS = 64
"""X.509's upper bound on a common name (RFC 5280, ub-common-name)."""
_HASH_CHARS = 10


def common_name(text: str) -> str:
    """Return ``text`` as a common name: unchanged when it fits, else cut with a hash suffix.

    A cut name ends in ``~`` and the first hex digits of the SHA-256 of the whole text, so two
    long names that share their beginning still get different common names.
    """
    if len(text) <= COMMON_NAME_MAX_CHARS:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]
    return f"{text[: COMMON_NAME_MAX_CHARS - _HASH_CHARS - 1]}~{digest}"


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert: str
    key: str = field(repr=False)


@dataclass(frozen=True)
class ClusterCredentials:
    """The TLS material of one cluster. Workers receive ``ca`` and ``worker`` only."""

    ca: str
    scheduler: KeyPair = field(repr=False)
    worker: KeyPair = field(repr=False)
    client: KeyPair = field(repr=False)

    def client_common_name(self) -> str:
        """Return the common name of the caller's client certificate."""
        cert = x509.load_pem_x509_certificate(self.client.cert.encode())
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def worker_payload(self) -> dict[str, str]:
        """Return what a worker needs: the CA certificate and the worker key pair."""
        return {"ca": self.ca, "cert": self.worker.cert, "key": self.worker.key}

    def security(self) -> Security:
        """Return a ``distributed.Security`` for the caller side (scheduler and client)."""
        from distributed.security import Security

        return Security(
            tls_ca_file=self.ca,
            tls_scheduler_cert=self.scheduler.cert,
            tls_scheduler_key=self.scheduler.key,
            tls_client_cert=self.client.cert,
            tls_client_key=self.client.key,
            require_encryption=True,
        )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _issue(
    subject: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    hosts: list[str],
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> KeyPair:
    """Issue a certificate for the common name ``subject`` signed by ``ca_key`` (self-signed
    when ``key`` is ``ca_key``)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=CERT_LIFETIME_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert=cert.public_bytes(serialization.Encoding.PEM).decode(), key=_key_pem(key))


def make_cluster_credentials(cluster: str, hosts: list[str] | None = None) -> ClusterCredentials:
    """Create a fresh CA for ``cluster`` and the three key pairs it signs."""
    hosts = hosts or ["127.0.0.1", "localhost"]
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name(f"azmanagers CA {cluster}"))]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=CERT_LIFETIME_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
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
        .sign(ca_key, hashes.SHA256())
    )
    return ClusterCredentials(
        ca=ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        scheduler=_issue(common_name(f"{cluster} scheduler"), ca_key, ca_name, hosts),
        worker=_issue(common_name(f"{cluster} worker"), ca_key, ca_name, hosts),
        client=_issue(common_name(f"{cluster} client"), ca_key, ca_name, hosts),
    )


def make_self_signed(name: str, hosts: list[str] | None = None) -> KeyPair:
    """Create a self-signed server key pair (a detached VM's): clients pin its fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = common_name(name)
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return _issue(subject, key, issuer, hosts or ["127.0.0.1", "localhost"], key=key)


def fingerprint(cert_pem: str) -> str:
    """Return the SHA-256 fingerprint of a PEM certificate, as lower-case hex."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.fingerprint(hashes.SHA256()).hex()


def load_pair(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load a PEM key pair (texts) into ``context``: through files readable by their owner
    only, in a private temporary folder removed at once (``ssl`` reads pairs from files)."""
    with tempfile.TemporaryDirectory(prefix="azm-pair-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for path, text in ((cert_file, cert), (key_file, key)):
            path.touch(mode=0o600)
            path.write_text(text)
        context.load_cert_chain(str(cert_file), str(key_file))
