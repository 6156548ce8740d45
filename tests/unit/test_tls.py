"""The fleet's CA and Redis's server certificate (fleet.drivers.tls): the SANs asked for, 0600
files in a 0700 folder, reused across restarts, a new server certificate when the addresses
change or its end nears, and a certificate a strict TLS client accepts."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from fleet.drivers import tls
from fleet.drivers.redis_server import TlsFiles


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_certificate_names_each_address_and_is_signed_by_the_fleets_ca(tmp_path: Path) -> None:
    files = tls.ensure(tmp_path / "tls", ["127.0.0.1", "10.251.0.1"], ["host1.example"])
    cert, ca = _cert(files.cert), _cert(files.ca)
    assert tls.sans_of(cert) == {("ip", "127.0.0.1"), ("ip", "10.251.0.1"),
                                 ("dns", "host1.example")}
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - datetime.now(timezone.utc) > tls.SERVER_VALID - timedelta(1)


def test_every_file_is_0600_in_a_0700_folder(tmp_path: Path) -> None:
    directory = tmp_path / "home" / "tls"
    tls.ensure(directory, ["127.0.0.1"])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert modes == {"ca.pem": 0o600, "ca.key": 0o600, "server.pem": 0o600, "server.key": 0o600}


def test_a_restart_with_the_same_addresses_reuses_both(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    tls.ensure(directory, ["127.0.0.1", "10.0.0.5"], ["a.example"])
    before = _files(directory)
    tls.ensure(directory, ["10.0.0.5", "127.0.0.1"], ["A.example"])  # order and case: the same
    assert _files(directory) == before


def test_other_addresses_get_a_new_server_certificate_from_the_same_ca(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    tls.ensure(directory, ["127.0.0.1", "10.0.0.5"])
    before = _files(directory)
    files = tls.ensure(directory, ["127.0.0.1", "10.0.0.6"])
    after = _files(directory)
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert after["server.pem"] != before["server.pem"]
    assert after["server.key"] != before["server.key"]
    assert tls.sans_of(_cert(files.cert)) == {("ip", "127.0.0.1"), ("ip", "10.0.0.6")}


def test_a_certificate_near_its_end_is_made_again(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    tls.ensure(directory, ["127.0.0.1"])
    before = _files(directory)
    later = datetime.now(timezone.utc) + tls.SERVER_VALID - tls.RENEW_BEFORE + timedelta(days=1)
    tls.ensure(directory, ["127.0.0.1"], now=later)
    after = _files(directory)
    assert after["ca.pem"] == before["ca.pem"] and after["server.pem"] != before["server.pem"]


def test_a_certificate_not_of_its_key_or_of_another_ca_is_made_again(tmp_path: Path) -> None:
    directory, other = tmp_path / "tls", tmp_path / "other"
    tls.ensure(directory, ["127.0.0.1"])
    tls.ensure(other, ["127.0.0.1"])
    (directory / "server.key").write_bytes((other / "server.key").read_bytes())  # half a write
    files = tls.ensure(directory, ["127.0.0.1"])
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))
    (directory / "server.pem").write_bytes((other / "server.pem").read_bytes())  # another CA's
    (directory / "server.key").write_bytes((other / "server.key").read_bytes())
    files = tls.ensure(directory, ["127.0.0.1"])
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))
    (directory / "ca.key").write_text("not a key")  # a lost CA key: a new CA, a new certificate
    ca_before = (directory / "ca.pem").read_bytes()
    files = tls.ensure(directory, ["127.0.0.1"])
    assert files.ca.read_bytes() != ca_before
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))


def _handshake(files: TlsFiles, server_hostname: str) -> bytes:
    """A TLS connection to a server on 127.0.0.1 serving `files`, verified as a strict client
    (Python 3.13's default flags) that asked for `server_hostname`; what the server sent."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass  # the client refused us: its side says why

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=server_hostname) as conn:
                return conn.recv(2)
        finally:
            thread.join(10)


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_a_strict_client_verifies_the_server_by_address_or_name(tmp_path: Path,
                                                                hostname: str) -> None:
    files = tls.ensure(tmp_path / "tls", ["127.0.0.1"], ["localhost"])
    assert _handshake(files, hostname) == b"ok"


def test_a_client_refuses_an_address_the_certificate_does_not_name(tmp_path: Path) -> None:
    files = tls.ensure(tmp_path / "tls", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(files, "10.0.0.9")
