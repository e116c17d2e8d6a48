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
    key: bytes, prover_id: str, verifier_id: str, verifier_nonce: bytes, prover_nonce: bytes
) -> bytes:
    """The 32-byte proof ``prover_id`` sends to ``verifier_id``."""
    msg = b"".join(
        [
            LABEL,
            _lp(prover_id.encode("utf-8")),
            _lp(verifier_id.encode("utf-8")),
            _lp(verifier_nonce),
            _lp(prover_nonce),
        ]
    )
    return hmac.new(key, msg, hashlib.sha256).digest()


def verify(
    key: bytes,
    candidate: bytes,
    prover_id: str,
    verifier_id: str,
    verifier_nonce: bytes,
    prover_nonce: bytes,
) -> bool:
    """Whether ``candidate`` is the right proof (constant-time comparison)."""
    expected = proof(key, prover_id, verifier_id, verifier_nonce, prover_nonce)
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
