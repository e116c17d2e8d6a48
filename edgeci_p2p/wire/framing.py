"""Frames: a 4-byte big-endian length, then exactly that many bytes of one CBOR item.

:class:`FrameReader` is the receive side. It keeps the bytes handed to it as a
list of chunks and cuts frames out of them; the length prefix is checked against
the limit as soon as its four bytes are in, before anything is allocated for the
frame, and a frame that lies inside one received chunk is handed out as a view
of that chunk (no copy). A frame split across chunks is assembled once into a
buffer of exactly its size.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from edgeci_p2p.wire import cbor
from edgeci_p2p.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
"""Largest frame payload accepted by default (64 MiB)."""


def encode_frame(obj: object, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame holding ``obj``: one join, so tensor bytes are copied exactly once."""
    parts = cbor.encode_parts(obj, offset=HEADER_SIZE)
    size = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)
    if size > max_frame:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes exceeds the limit {max_frame}"
        )
    return b"".join([HEADER.pack(size), *parts])


class FrameReader:
    """Cuts frames out of a byte stream. Feed with :meth:`feed`, drain with :meth:`next_frame`."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._need: int | None = None  # payload size of the frame being read

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as frames."""
        return self._buffered

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        # Only immutable bytes are kept by reference: a caller may reuse a
        # bytearray/memoryview receive buffer after this returns.
        owned = data if isinstance(data, bytes) else bytes(data)
        if owned:
            self._chunks.append(memoryview(owned))
            self._buffered += len(owned)

    def _take(self, n: int) -> memoryview:
        """The next ``n`` buffered bytes, a view when they lie in one chunk."""
        first = self._chunks[0]
        if first.nbytes >= n:
            out = first[:n]
            if first.nbytes == n:
                self._chunks.popleft()
            else:
                self._chunks[0] = first[n:]
            self._buffered -= n
            return out
        buf = bytearray(n)
        filled = 0
        while filled < n:
            chunk = self._chunks[0]
            k = min(chunk.nbytes, n - filled)
            buf[filled : filled + k] = chunk[:k]
            filled += k
            if k == chunk.nbytes:
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[k:]
        self._buffered -= n
        return memoryview(buf)

    def next_frame(self) -> memoryview | None:
        """The next complete frame payload, or None if more bytes are needed.

        Raises RemoteProtocolError(FRAME_TOO_LARGE) for a length over the limit.
        """
        if self._need is None:
            if self._buffered < HEADER_SIZE:
                return None
            (size,) = HEADER.unpack(self._take(HEADER_SIZE))
            if size > self.max_frame:
                raise RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame announces {size} bytes, the limit is {self.max_frame}",
                )
            if size == 0:
                raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "empty frame")
            self._need = size
        if self._buffered < self._need:
            return None
        payload = self._take(self._need)
        self._need = None
        return payload


def decode_payload(payload: memoryview, *, max_depth: int = cbor.DEFAULT_MAX_DEPTH) -> object:
    """The one strict CBOR item of a frame payload (see :mod:`edgeci_p2p.wire.cbor`)."""
    return cbor.decode(payload, max_depth=max_depth)
