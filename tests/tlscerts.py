"""A certificate authority and TLS certificates for Dask's mutual TLS, made with ``cryptography``."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMELESS = "nameless"  # a certificate of this stem carries no common name (an organization only)


def _name(cn: str) -> x509.Name:
    if cn == NAMELESS:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kaas-test")])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert, key) -> tuple[str, str]:
    crt, pem = directory / f"{stem}.crt", directory / f"{stem}.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(crt), str(pem)


def make_pki(directory: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    """``{"ca": (ca.crt, ca.pem), name: (name.crt, name.pem), ...}``, each certificate's common name
    its name (``NAMELESS``: none), all signed by the CA; valid for a day from an hour ago."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("kaas-test-ca"))
        .issuer_name(_name("kaas-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": _write(directory, "ca", ca, ca_key)}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        out[name] = _write(directory, name, cert, key)
    return out
