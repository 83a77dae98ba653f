"""Each Dask cluster's own secrets: its TLS certificate and key, and its scheduler's token.

The certificate is self-signed and is its own certificate authority, as
``distributed.Security.temporary()`` makes one: the cluster's scheduler, its workers and its
owner's clients all present it and trust only it, so a client holding another cluster's (or no)
certificate is refused at the TLS handshake. It is made here, by the service, so that the
scheduler's command line never carries it and only its owner is ever given it.

The token is what the cluster's scheduler authenticates its reports with. The cluster's row
holds only its SHA-256, like an admin token's; the token itself, like the key, travels in the
environment of the scheduler's workload (stored with it, as a session's hub token is, because a
restarted service must be able to start it again), and both are erased from every row once the
cluster has ended (``db.dask_control.to_ended``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from allotment.api.auth import token_sha256

__all__ = [
    "CERT_NAME",
    "DASK_TOKEN_PREFIX",
    "ClusterSecrets",
    "new_cluster_secrets",
    "new_cluster_token",
]

#: The certificate's common name and DNS name: Dask's own name for its internal certificates.
CERT_NAME = "dask-internal"
#: What a cluster's token starts with: tells it apart from a hub token in a log or a leak scan.
DASK_TOKEN_PREFIX = "allot_dask_"
#: How long a certificate is valid. A cluster lives hours or days; a year is Dask's own.
VALIDITY = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class ClusterSecrets:
    """A new cluster's secrets. ``token`` is handed to its scheduler (in its environment) and
    forgotten: only ``token_sha256`` is stored."""

    tls_cert: str
    tls_key: str
    token: str
    token_sha256: str

    def __repr__(self) -> str:  # never a secret in a log or a traceback
        return f"ClusterSecrets(token_sha256={self.token_sha256[:12]}…)"


def new_cluster_token() -> str:
    return DASK_TOKEN_PREFIX + secrets.token_urlsafe(32)


def _certificate(now: datetime) -> tuple[str, str]:
    """PEM of a new self-signed certificate (its own CA) and its key.

    An elliptic-curve key (P-256): as strong for TLS as RSA-2048 and made in a millisecond
    rather than a tenth of a second, on the API's path. The certificate says it is a CA and
    may sign (Python 3.13's strict verification refuses a CA that does not say so), and serves
    both ends of a connection (schedulers, workers and clients all present it).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAME)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # a little clock skew between nodes
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CERT_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def new_cluster_secrets(now: datetime | None = None) -> ClusterSecrets:
    """A new cluster's certificate, key and token."""
    cert, key = _certificate(now or datetime.now(UTC))
    token = new_cluster_token()
    return ClusterSecrets(cert, key, token, token_sha256(token))
