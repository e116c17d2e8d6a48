"""Mutual HMAC-SHA256 challenge-response over fresh nonces.

Each side's ``hello`` carries a fresh random nonce: it is that side's challenge.
Each side then proves it holds the cluster key by sending::

    proof = HMAC-SHA256(key, "edgeci-p2p auth v1" || lp(prover node_id) || lp(verifier node_id)
                             || lp(verifier nonce) || lp(prover nonce))

where ``lp(x)`` is ``x`` prefixed by its length as a 2-byte big-endian integer
and node ids are UTF-8. The key never travels. A recorded proof is useless on a
new connection because the verifier's nonce is new (replay), and a proof cannot
be reflected back to its maker because the prover/verifier order is part of
what is signed. :class:`ReplayGuard` additionally refuses a peer nonce already
seen by this process (a peer that reuses nonces is broken or replaying).

Channel binding (protocol 2, over TLS): the signed message then ends with
``lp(channel)``, where ``channel`` is :func:`channel` of the SHA-256 fingerprints of
the listening side's certificate and of the dialling side's, *as the verifying or
proving side knows them* (its own, the one TLS showed it, the one proven by the
peer's signature). A man in the middle who terminates TLS shows each side its own
certificate, so the two sides compute different channels and every proof fails,
even if it relays every byte. The same bytes are what each side signs with its
certificate key (:func:`signed_message`), which proves the node id it claims.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from typing import Final

LABEL: Final = b"edgeci-p2p auth v1"
MIN_KEY_BYTES: Final = 16
NONCE_BYTES: Final = 32
"""Nonce length this implementation sends (peers accept 16..64)."""


def _lp(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError("authenticated field longer than 65535 bytes")
    return struct.pack(">H", len(b)) + b


def proof(
    key: bytes,
    prover_id: str,
    verifier_id: str,
    verifier_nonce: bytes,
    prover_nonce: bytes,
    channel_binding: bytes = b"",
) -> bytes:
    """The 32-byte proof ``prover_id`` sends to ``verifier_id``."""
    msg = transcript(prover_id, verifier_id, verifier_nonce, prover_nonce, channel_binding)
    return hmac.new(key, msg, hashlib.sha256).digest()


def transcript(
    prover_id: str,
    verifier_id: str,
    verifier_nonce: bytes,
    prover_nonce: bytes,
    channel_binding: bytes = b"",
) -> bytes:
    """What the proof signs (``channel_binding`` appended only when not empty)."""
    parts = [
        LABEL,
        _lp(prover_id.encode("utf-8")),
        _lp(verifier_id.encode("utf-8")),
        _lp(verifier_nonce),
        _lp(prover_nonce),
    ]
    if channel_binding:
        parts.append(_lp(channel_binding))
    return b"".join(parts)


def channel(listener_fingerprint: bytes, dialer_fingerprint: bytes) -> bytes:
    """The channel binding of a TLS connection: both certificates' fingerprints."""
    return b"edgeci-p2p tls v2" + _lp(listener_fingerprint) + _lp(dialer_fingerprint)


def signed_message(
    prover_id: str,
    verifier_id: str,
    verifier_nonce: bytes,
    prover_nonce: bytes,
    channel_binding: bytes,
) -> bytes:
    """What a side signs with its certificate key in ``auth.signature``."""
    return b"edgeci-p2p signature v2" + transcript(
        prover_id, verifier_id, verifier_nonce, prover_nonce, channel_binding
    )


def verify(
    key: bytes,
    candidate: bytes,
    prover_id: str,
    verifier_id: str,
    verifier_nonce: bytes,
    prover_nonce: bytes,
    channel_binding: bytes = b"",
) -> bool:
    """Whether ``candidate`` is the right proof (constant-time comparison)."""
    expected = proof(key, prover_id, verifier_id, verifier_nonce, prover_nonce, channel_binding)
    return hmac.compare_digest(expected, candidate)


def check_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a cluster key needs at least {MIN_KEY_BYTES} bytes")
    return key


class ReplayGuard:
    """Remembers the last ``capacity`` peer nonces; share one across sessions."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def first_use(self, nonce: bytes) -> bool:
        """Record ``nonce``; False if it was already seen."""
        if nonce in self._seen:
            return False
        self._seen[nonce] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True
