"""Tests of per-cluster TLS: each cluster has its own CA; workers get only the CA and their pair."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from azmanagers.tls import CERT_LIFETIME_DAYS, ClusterCredentials, KeyPair, make_cluster_credentials

HANDSHAKE_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def alpha() -> ClusterCredentials:
    return make_cluster_credentials("alpha")


@pytest.fixture(scope="module")
def beta() -> ClusterCredentials:
    return make_cluster_credentials("beta")


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def pairs(creds: ClusterCredentials) -> dict[str, KeyPair]:
    return {"scheduler": creds.scheduler, "worker": creds.worker, "client": creds.client}


# -- the certificates -------------------------------------------------------------------


def test_the_ca_is_a_self_signed_ca_for_its_cluster(alpha: ClusterCredentials) -> None:
    ca = cert(alpha.ca)
    assert ca.subject == ca.issuer
    assert "alpha" in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    ca.verify_directly_issued_by(ca)


@pytest.mark.parametrize("role", ["scheduler", "worker", "client"])
def test_each_certificate_chains_to_its_cluster_ca(alpha: ClusterCredentials, role: str) -> None:
    leaf = cert(pairs(alpha)[role].cert)
    leaf.verify_directly_issued_by(cert(alpha.ca))
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    key = serialization.load_pem_private_key(pairs(alpha)[role].key.encode(), password=None)
    assert key.public_key() == leaf.public_key()


@pytest.mark.parametrize("role", ["scheduler", "worker", "client"])
def test_no_certificate_chains_to_another_clusters_ca(
    alpha: ClusterCredentials, beta: ClusterCredentials, role: str
) -> None:
    leaf = cert(pairs(alpha)[role].cert)
    with pytest.raises((ValueError, InvalidSignature)):
        leaf.verify_directly_issued_by(cert(beta.ca))


def test_two_clusters_with_the_same_name_have_different_cas() -> None:
    one, two = make_cluster_credentials("same"), make_cluster_credentials("same")
    assert one.ca != two.ca
    assert cert(one.ca).subject == cert(two.ca).subject
    # same issuer name, so only the signature can tell them apart: it must
    with pytest.raises(InvalidSignature):
        cert(one.worker.cert).verify_directly_issued_by(cert(two.ca))


def test_every_private_key_is_distinct(alpha: ClusterCredentials, beta: ClusterCredentials) -> None:
    keys = [p.key for c in (alpha, beta) for p in pairs(c).values()]
    assert len(set(keys)) == len(keys)


def test_validity_window(alpha: ClusterCredentials) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    for pem in [alpha.ca, *(p.cert for p in pairs(alpha).values())]:
        certificate = cert(pem)
        assert certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc
        lifetime = certificate.not_valid_after_utc - now
        assert datetime.timedelta(days=CERT_LIFETIME_DAYS - 1) < lifetime
        assert lifetime <= datetime.timedelta(days=CERT_LIFETIME_DAYS)


def test_default_hosts_are_loopback(alpha: ClusterCredentials) -> None:
    san = cert(alpha.scheduler.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ipaddress.ip_address("127.0.0.1") in san.value.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.value.get_values_for_type(x509.DNSName)


def test_given_hosts_become_ip_and_dns_names() -> None:
    creds = make_cluster_credentials("gamma", hosts=["10.1.2.3", "::1", "head.internal"])
    san = cert(creds.worker.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(san.value.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    }
    assert san.value.get_values_for_type(x509.DNSName) == ["head.internal"]


# -- what a worker receives -------------------------------------------------------------


def test_worker_payload_holds_only_the_ca_and_the_worker_pair(alpha: ClusterCredentials) -> None:
    payload = alpha.worker_payload()
    assert payload == {"ca": alpha.ca, "cert": alpha.worker.cert, "key": alpha.worker.key}
    text = "".join(payload.values())
    for secret in (alpha.scheduler.key, alpha.client.key):
        assert secret not in text
    assert "CA" not in cert(payload["cert"]).subject.rfc4514_string()
    # the CA part is a certificate only: no CA private key ships
    assert text.count("PRIVATE KEY-----") == 2  # BEGIN and END of the worker key


def test_security_requires_encryption(alpha: ClusterCredentials) -> None:
    from distributed.security import Security

    security = alpha.security()
    assert isinstance(security, Security)
    assert security.require_encryption
    context = security.get_connection_args("client")["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED


# -- a real handshake over a loopback socket pair ---------------------------------------


def _context(server: bool, pair: KeyPair, ca: str, folder: Path, strict: bool) -> ssl.SSLContext:
    name = "server" if server else "client"
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    cert_file.write_text(pair.cert)
    key_file.write_text(pair.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cadata=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    if strict:
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def handshake(
    tmp_path: Path,
    *,
    server_pair: KeyPair,
    server_ca: str,
    client_pair: KeyPair,
    client_ca: str,
    strict: bool = False,
) -> tuple[object, object]:
    """Run a mutual-TLS handshake; return (server outcome, client outcome): a CN or an error."""
    server_ctx = _context(True, server_pair, server_ca, tmp_path, strict)
    client_ctx = _context(False, client_pair, client_ca, tmp_path, strict)
    left, right = socket.socketpair()
    left.settimeout(HANDSHAKE_TIMEOUT_S)
    right.settimeout(HANDSHAKE_TIMEOUT_S)
    outcome: dict[str, object] = {}

    def peer_name(sock: ssl.SSLSocket) -> object:
        peer = sock.getpeercert()
        assert peer is not None
        return dict(item[0] for item in peer["subject"])["commonName"]

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                outcome["server"] = peer_name(tls)
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            outcome["server"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname="127.0.0.1") as tls:
            outcome["client"] = peer_name(tls)
            assert tls.recv(2) == b"ok"
    except (ssl.SSLError, OSError) as exc:
        outcome["client"] = exc
    finally:
        right.close()
        thread.join(HANDSHAKE_TIMEOUT_S)
        left.close()
    assert not thread.is_alive()
    return outcome["server"], outcome["client"]


def test_worker_and_scheduler_of_one_cluster_complete_a_tls_handshake(
    tmp_path: Path, alpha: ClusterCredentials
) -> None:
    payload = alpha.worker_payload()
    server, client = handshake(
        tmp_path,
        server_pair=alpha.scheduler,
        server_ca=alpha.ca,
        client_pair=KeyPair(payload["cert"], payload["key"]),
        client_ca=payload["ca"],
    )
    assert server == "alpha worker"
    assert client == "alpha scheduler"


def test_a_worker_of_another_cluster_is_rejected_by_the_scheduler(
    tmp_path: Path, alpha: ClusterCredentials, beta: ClusterCredentials
) -> None:
    # the intruder even trusts alpha's CA; its own certificate is beta's
    server, _ = handshake(
        tmp_path,
        server_pair=alpha.scheduler,
        server_ca=alpha.ca,
        client_pair=beta.worker,
        client_ca=alpha.ca,
    )
    assert isinstance(server, ssl.SSLError)
    assert "certificate verify failed" in str(server)


def test_a_scheduler_of_another_cluster_is_rejected_by_the_worker(
    tmp_path: Path, alpha: ClusterCredentials, beta: ClusterCredentials
) -> None:
    _, client = handshake(
        tmp_path,
        server_pair=beta.scheduler,
        server_ca=alpha.ca,
        client_pair=alpha.worker,
        client_ca=alpha.ca,
    )
    assert isinstance(client, ssl.SSLCertVerificationError)


def test_handshake_passes_strict_x509_verification(
    tmp_path: Path, alpha: ClusterCredentials
) -> None:
    server, client = handshake(
        tmp_path,
        server_pair=alpha.scheduler,
        server_ca=alpha.ca,
        client_pair=alpha.worker,
        client_ca=alpha.ca,
        strict=True,
    )
    assert (server, client) == ("alpha worker", "alpha scheduler")


def _common_name(pem: str) -> str:
    return str(cert(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize("length", [44, 64, 300])
def test_long_cluster_names_get_common_names_that_fit_and_stay_unique(length: int) -> None:
    """X.509 allows 64 characters in a common name: long names are shortened with a hash."""
    from azmanagers.tls import make_self_signed

    first = make_cluster_credentials("a" * (length - 1) + "1")
    second = make_cluster_credentials("a" * (length - 1) + "2")
    names = []
    for creds in (first, second):
        for pem in (creds.ca, creds.scheduler.cert, creds.worker.cert, creds.client.cert):
            assert len(_common_name(pem)) <= 64
            names.append(_common_name(pem))
        assert creds.client_common_name() == _common_name(creds.client.cert)
    assert len(set(names)) == len(names)  # every role and cluster keeps a name of its own
    server = make_self_signed("v" * length)
    assert len(_common_name(server.cert)) <= 64
    assert _common_name(server.cert) != _common_name(make_self_signed("v" * (length + 1)).cert)


def test_short_names_keep_their_readable_common_names() -> None:
    creds = make_cluster_credentials("local-ab12cd")
    assert _common_name(creds.ca) == "azmanagers CA local-ab12cd"
    assert _common_name(creds.client.cert) == "local-ab12cd client"
