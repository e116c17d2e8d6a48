"""Protocol errors that say who broke what, each carrying its wire code.

Two kinds of fault, after h11 and anyio:

* :class:`RemoteProtocolError` -- the *peer* broke the protocol (a malformed
  frame, a field of the wrong type, a message out of turn, a bad proof). The
  session answers it with an ``error`` frame carrying :attr:`ProtocolError.code`
  and closes; the connection cannot be trusted any more.
* :class:`LocalProtocolError` -- *this* process misused the API (sending before
  the handshake finished, building a message with an invalid field). Nothing is
  sent; it is a bug to fix here, not something the peer did.

Codes below 200 are connection-fatal: whoever sends one closes the connection
right after. Codes from 200 up are request-scoped application errors that leave
the connection open (``docs/protocol.md`` lists them all).
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Wire error codes (the ``code`` field of an ``error`` message)."""

    # Connection-fatal protocol violations (1xx): the sender closes after sending.
    MALFORMED_FRAME = 100
    """Bytes that are not one valid, strict CBOR item in a well-formed frame."""
    FRAME_TOO_LARGE = 101
    """A frame (or a chunked tensor) announced more bytes than the receiver accepts."""
    INVALID_MESSAGE = 102
    """A well-formed item that is not a valid message: unknown type, missing or
    mistyped field, a tensor whose dtype/shape/length disagree."""
    UNEXPECTED_MESSAGE = 103
    """A valid message that is not allowed in the session's current state."""
    UNSUPPORTED_VERSION = 104
    """The peer's hello names a protocol version this peer does not speak."""
    AUTH_REQUIRED = 105
    """A cluster key is configured here and the peer did not authenticate."""
    AUTH_FAILED = 106
    """The peer's proof is wrong (wrong key, replayed or reflected nonce)."""
    TLS_REQUIRED = 107
    """A plaintext connection to a peer that accepts only TLS (an older protocol
    version, or ``--plaintext`` given to one end only)."""
    PEER_NOT_ALLOWED = 108
    """The peer proved its node id, and that id is not on this peer's allow-list."""
    INTERNAL = 150
    """The sender failed in a way that is not the receiver's fault; it closes."""

    # Request-scoped application errors (2xx): the connection stays open.
    BAD_REQUEST = 200
    """A request that is valid on the wire but cannot be served as asked."""
    UNKNOWN_MODEL = 201
    """The model name is not served here."""
    FINGERPRINT_MISMATCH = 202
    """The model is served here with different weights."""
    BUSY = 203
    """The receiver refuses more work now (backlog or memory)."""
    CANCELLED = 204
    """The request was cancelled."""
    DEADLINE_EXCEEDED = 205
    """The work could not finish before its deadline or lease."""
    REQUEST_FAILED = 206
    """Serving the request failed here (an exception while computing)."""

    @property
    def fatal(self) -> bool:
        """Whether the connection must be closed after this error is sent."""
        return is_fatal(self.value)


def is_fatal(code: int) -> bool:
    """Codes below 200 (including unknown ones) close the connection."""
    return code < 200


class ProtocolError(Exception):
    """Base of every error this package raises about the protocol."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{message} [{code.name} {code.value}]")
        self.code = code
        """The wire code that describes this fault."""
        self.message = message
        """Human-readable detail, sent to the peer in the ``error`` frame."""


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol; answer with an error frame and close."""


class LocalProtocolError(ProtocolError):
    """This process misused the protocol API; nothing was sent."""


class MessageError(ValueError):
    """A message field failed validation.

    Raised by the message layer, which cannot know who built the message; the
    session turns it into :class:`RemoteProtocolError` for received messages and
    :class:`LocalProtocolError` for messages being sent.
    """
