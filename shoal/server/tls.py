"""The certificates `shoal up --tls` serves https with: a certificate authority of Shoal's own,
kept in the data directory, and a server certificate for this machine's loopback names that it
signs. Clients trust the CA (its path goes to SSL_CERT_FILE / REQUESTS_CA_BUNDLE, or to the SDK's
`connection_verify`); agents of local nodes are given it with `--ca-file`.

The CA is made once and kept (clients that trusted it keep working across restarts); the server
certificate is made again at every start, so a new host name or an expiry never needs a hand.
Private keys are 0600 from their first byte."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "tls"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
CA_LIFETIME_DAYS = 3650
SERVER_CERT_LIFETIME_DAYS = 365
# The names every local client uses; the host the server binds is added when it is another.
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerCertificate:
    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_certificates(data_dir: Path, host: str) -> ServerCertificate:
    """The CA (made on first use) and a fresh server certificate for ``host`` and loopback."""
    folder = data_dir / TLS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    ca_cert_path, ca_key_path = folder / CA_CERT_FILE, folder / CA_KEY_FILE
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key, ca_cert = _new_ca()
        _write_private(ca_key_path, _key_pem(ca_key))
        _write_public(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
    server_key, server_cert = _new_server_cert(ca_key, ca_cert, host)
    cert_path, key_path = folder / SERVER_CERT_FILE, folder / SERVER_KEY_FILE
    _write_private(key_path, _key_pem(server_key))
    _write_public(cert_path, server_cert.public_bytes(serialization.Encoding.PEM))
    return ServerCertificate(ca_cert_path, cert_path, key_path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shoal"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Shoal local CA")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_LIFETIME_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def subject_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in LOOPBACK_NAMES]
    names.extend(x509.IPAddress(ipaddress.ip_address(address)) for address in LOOPBACK_ADDRESSES)
    bare = host.strip("[]")
    if bare and bare not in (*LOOPBACK_NAMES, *LOOPBACK_ADDRESSES) and bare not in ("0.0.0.0", "::"):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(bare)))
        except ValueError:
            names.append(x509.DNSName(bare))
    return names


def _new_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     host: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host.strip("[]") or "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_CERT_LIFETIME_DAYS))
            .add_extension(x509.SubjectAlternativeName(subject_names(host)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """0600 from creation: the key is never readable by others, not even for an instant."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    """Certificates are public: readable by everyone who can reach the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
