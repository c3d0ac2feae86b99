"""The dev control plane's certificates: a private CA, the certificates it signs, and SA keys.

Each control plane mints its own short-lived CA (30 days) so that nothing outside its directory
is trusted or needed: the apiserver's serving certificate (valid for 127.0.0.1, localhost and the
in-cluster names) and the service-account signing key pair. Keys are ECDSA P-256 except the
service-account key (RSA, what every Kubernetes version accepts). Files are written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

#: How long the dev certificates are valid.
VALIDITY = dt.timedelta(days=30)
#: The names the apiserver's serving certificate covers.
APISERVER_NAMES = ("localhost", "kubernetes.default.svc", "127.0.0.1", "10.0.0.1")


def _write_secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_alt_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    from cryptography import x509

    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA key and certificate that sign the control plane's other certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_file: Path

    @classmethod
    def create(
        cls, directory: Path, common_name: str = "enumwatch-devcluster-ca"
    ) -> CertificateAuthority:
        """Mint a new CA and write its certificate to ``directory/ca.crt``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        cert_file = _write_secret(
            directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM)
        )
        _write_secret(directory / "ca.key", _pem_key(key))
        return cls(key=key, cert=cert, cert_file=cert_file)

    def issue(
        self,
        directory: Path,
        stem: str,
        common_name: str,
        *,
        names: tuple[str, ...] = (),
        organizations: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[Path, Path]:
        """Sign a new key's certificate; write ``stem.crt`` and ``stem.key``; return both paths.

        ``names`` become subject alternative names (IP addresses or DNS names); ``organizations``
        are the Kubernetes groups of a client certificate.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_subject_alt_names(names)), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return (
            _write_secret(directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            _write_secret(directory / f"{stem}.key", _pem_key(key)),
        )


def write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """Write the service-account signing key pair ``sa.key`` / ``sa.pub``; return both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _write_secret(directory / "sa.key", private), _write_secret(directory / "sa.pub", public)


@dataclass(frozen=True)
class ControlPlanePki:
    """The files the apiserver needs: CA, serving certificate and key, service-account keys."""

    ca: CertificateAuthority
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def write_control_plane_pki(directory: Path, extra_names: tuple[str, ...] = ()) -> ControlPlanePki:
    """Mint a CA, the apiserver's serving certificate (also valid for ``extra_names``) and the
    service-account keys."""
    ca = CertificateAuthority.create(directory)
    serving_cert, serving_key = ca.issue(
        directory, "serving", "kube-apiserver", names=APISERVER_NAMES + extra_names, server=True
    )
    sa_key, sa_pub = write_service_account_keys(directory)
    return ControlPlanePki(
        ca=ca, serving_cert=serving_cert, serving_key=serving_key, sa_key=sa_key, sa_pub=sa_pub
    )
