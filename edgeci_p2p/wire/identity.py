"""A node's identity: an Ed25519 key pair and a self-signed certificate (pure, no I/O).

The node id is derived from the public key (:func:`node_id_of`), so a peer cannot
present another's id: the certificate it presents in TLS (the listening side) or
proves with a signature in the handshake (the dialling side, whose certificate the
stdlib ``ssl`` module cannot request without a CA) carries the key the id is made of.
Certificates are only containers for the key: nobody checks their names or dates;
what they are worth comes from the channel binding in :mod:`edgeci_p2p.wire.auth`.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

NODE_ID_HEX: Final = 16
"""Hex digits of a node id (64 bits of the public key's SHA-256)."""
SIGNATURE_BYTES: Final = 64
MAX_CERT_BYTES: Final = 4096


class IdentityError(ValueError):
    """A certificate that is not an Ed25519 certificate this protocol can use."""


def fingerprint(cert_der: bytes) -> bytes:
    """SHA-256 of a certificate's DER bytes: what the channel binding covers."""
    return hashlib.sha256(cert_der).digest()


def _public_key(cert_der: bytes) -> ed25519.Ed25519PublicKey:
    try:
        key = x509.load_der_x509_certificate(cert_der).public_key()
    except ValueError as e:
        raise IdentityError(f"not a DER certificate: {e}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise IdentityError("the certificate's key is not Ed25519")
    return key


def _id_of_key(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(b"edgeci-p2p node id" + raw).hexdigest()[:NODE_ID_HEX]


def node_id_of(cert_der: bytes) -> str:
    """The node id a certificate's public key stands for."""
    return _id_of_key(_public_key(cert_der))


def verify(cert_der: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is the certificate key's signature of ``message``."""
    try:
        _public_key(cert_der).verify(signature, message)
    except (InvalidSignature, IdentityError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """This node's private key and the certificate that carries its public key."""

    key: ed25519.Ed25519PrivateKey
    cert_der: bytes

    @property
    def node_id(self) -> str:
        return _id_of_key(self.key.public_key())

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.cert_der)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    @classmethod
    def generate(cls, name: str = "edgeci-p2p node") -> Identity:
        """A fresh key pair and a self-signed certificate valid for 100 years."""
        key = ed25519.Ed25519PrivateKey.generate()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "edgeci")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=36500))
            .sign(key, None)
        )
        return cls(key, cert.public_bytes(serialization.Encoding.DER))

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cert_pem(self) -> bytes:
        cert = x509.load_der_x509_certificate(self.cert_der)
        return cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> Identity:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise IdentityError("the private key is not Ed25519")
        cert = x509.load_pem_x509_certificate(cert_pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        if node_id_of(der) != _id_of_key(key.public_key()):
            raise IdentityError("the certificate does not carry this private key")
        return cls(key, der)


__all__ = [
    "Identity",
    "IdentityError",
    "fingerprint",
    "node_id_of",
    "verify",
]
