"""The wire protocol (pure, sans-IO): frames, strict CBOR, tensors, messages, auth, session.

One code path from bytes to messages: the daemon and the client both feed a
:class:`~edgeci_p2p.wire.session.Session`. ``docs/protocol.md`` is the
specification.
"""

from edgeci_p2p.wire.errors import (
    ErrorCode,
    LocalProtocolError,
    MessageError,
    ProtocolError,
    RemoteProtocolError,
)
from edgeci_p2p.wire.session import (
    ConnectionClosed,
    Established,
    Event,
    Session,
    SessionConfig,
    State,
)

__all__ = [
    "ConnectionClosed",
    "ErrorCode",
    "Established",
    "Event",
    "LocalProtocolError",
    "MessageError",
    "ProtocolError",
    "RemoteProtocolError",
    "Session",
    "SessionConfig",
    "State",
]
