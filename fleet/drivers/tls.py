"""The fleet's own certificate authority, and the certificate its Redis serves other machines with.

`fleet up --listen` (fleet.listen) needs a server certificate that nodes on other machines can
verify without trusting anything else: the fleet makes a CA once, in FLEET_HOME/tls (a 0700
folder, every file 0600), and signs with it a certificate for exactly the addresses it serves
(IP SANs, plus a DNS SAN for each name given). Nodes verify against the CA (the join kit holds
its certificate). Both are kept across restarts, so a kit copied earlier still verifies: the
CA for ten years, the server certificate while its addresses are the same and it has more than
RENEW_BEFORE left; a new one is made when the addresses change (the CA stays).

ECDSA P-256 keys (fast to make, served by every OpenSSL Redis is built with); extensions as a
strict verifier (Python 3.13's VERIFY_X509_STRICT) expects: a critical CA basic constraint and
key usage on the CA, key identifiers, serverAuth on the server certificate.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.drivers.redis_server import TlsFiles
from fleet.drivers.secret_files import write_secret
from fleet.private import private_dir

CA_VALID = timedelta(days=3650)
SERVER_VALID = timedelta(days=825)
RENEW_BEFORE = timedelta(days=30)
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca.key", "server.pem", "server.key"

SanSet = frozenset[tuple[str, str]]  # ("ip", "10.0.0.1") / ("dns", "host.example")


def wanted_sans(ips: Sequence[str], names: Sequence[str]) -> SanSet:
    """The SANs a server certificate for these addresses holds. Pure."""
    return frozenset([("ip", str(ipaddress.ip_address(ip))) for ip in ips]
                     + [("dns", name.lower()) for name in names])


def sans_of(cert: x509.Certificate) -> SanSet:
    """The IP and DNS SANs `cert` holds (empty without the extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset([("ip", str(ip)) for ip in san.get_values_for_type(x509.IPAddress)]
                     + [("dns", name.lower()) for name in san.get_values_for_type(x509.DNSName)])


def still_good(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate,
               sans: SanSet | None, now: datetime) -> bool:
    """Whether `cert` may be served again: made for `key`, signed by `issuer`, holding exactly
    `sans` (None: no check, for the CA itself) and not near its end. Pure."""
    if cert.public_key() != key.public_key():
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if sans is not None and sans_of(cert) != sans:
        return False
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > RENEW_BEFORE


def ensure(directory: Path, ips: Sequence[str], names: Sequence[str] = (),
           now: datetime | None = None) -> TlsFiles:
    """The CA and a server certificate for `ips` and `names` in `directory`: the ones there
    when still good (`still_good`), else new ones. A new CA means a new server certificate."""
    now = now or datetime.now(timezone.utc)
    private_dir(directory, tighten=[directory])
    ca = _load(directory / CA_CERT, directory / CA_KEY)
    if ca is None or not still_good(ca[0], ca[1], ca[0], None, now):
        ca = _write(directory, CA_CERT, CA_KEY, *new_ca(now))
    sans = wanted_sans(ips, names)
    server = _load(directory / SERVER_CERT, directory / SERVER_KEY)
    if server is None or not still_good(server[0], server[1], ca[0], sans, now):
        _write(directory, SERVER_CERT, SERVER_KEY, *new_server_cert(ca[0], ca[1], ips, names, now))
    return TlsFiles(cert=directory / SERVER_CERT, key=directory / SERVER_KEY,
                    ca=directory / CA_CERT)


def new_ca(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA, named after this machine and a random tag (two fleets' CAs differ)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, f"fleet CA {socket.gethostname()[:40]} {secrets.token_hex(4)}")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key, now, CA_VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def new_server_cert(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, ips: Sequence[str],
    names: Sequence[str], now: datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for `ips` and `names`, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    first = (list(names) or list(ips))[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first[:64])])
    alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    alt += [x509.DNSName(name) for name in names]
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(subject, ca.subject, key, now, SERVER_VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             now: datetime, valid: timedelta) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))  # a node's clock a little behind
            .not_valid_after(now + valid))


def _load(cert_path: Path, key_path: Path
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key as stored, or None when either is missing or unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return (cert, key) if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _write(directory: Path, cert_name: str, key_name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Key first, then certificate, each 0600 and atomic: a crash between the two leaves a
    certificate that is not the key's, which `still_good` refuses, so both are made again."""
    write_secret(directory / key_name, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    write_secret(directory / cert_name, cert.public_bytes(serialization.Encoding.PEM).decode())
    return cert, key
