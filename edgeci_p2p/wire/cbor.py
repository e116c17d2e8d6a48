"""A strict CBOR (RFC 8949) codec for the subset this protocol uses.

Why not ``cbor2.loads``: it accepts trailing bytes (``loads(b"\\x01\\x02") == 1``),
resolves shared and string references and a dozen semantic tags, and in cbor2
6.3 materialises a 12.8 MB byte string at about a third of memcpy speed, which
alone misses the wire benchmark's target. This decoder is small enough to read
in one sitting, each rule below is one check, and it hands byte strings out as
``memoryview`` slices of the frame so tensors are never copied. The tests decode
every accepted input with cbor2 as well and compare (differential fuzzing), and
check that cbor2 reads what the encoder writes.

Accepted: unsigned/negative integers (64-bit), byte and text strings (UTF-8,
strict), arrays, maps with text keys and no duplicates, false/true/null,
half/single/double floats, and tag 40 over tag 84/85 (tensors, see
:mod:`edgeci_p2p.wire.tensors`). Refused: indefinite lengths, every other tag
(shared references 28/29, string references 25/256, dates, bignums, ...),
undefined and other simple values, reserved additional-information values,
nesting deeper than ``max_depth``, any length that runs past the end of the
item, and bytes after the item. Every refusal is a
:class:`~edgeci_p2p.wire.errors.RemoteProtocolError` with code
``MALFORMED_FRAME`` (or ``INVALID_MESSAGE`` for a tensor whose description and
bytes disagree); nothing is allocated for a length before it is checked against
the bytes actually present.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np

from edgeci_p2p.wire import tensors
from edgeci_p2p.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

DEFAULT_MAX_DEPTH: Final = 32
"""Deepest nesting of arrays/maps/tags accepted (a message needs about 8)."""

_HALF = struct.Struct(">e")
_SINGLE = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")
_UINT = {w: struct.Struct(f">{c}") for w, c in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}

Buffer = bytes | bytearray | memoryview


def _malformed(message: str, pos: int) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"{message} at byte {pos}")


class _Decoder:
    def __init__(self, buf: memoryview, max_depth: int) -> None:
        self.buf = buf
        self.end = buf.nbytes
        self.pos = 0
        self.max_depth = max_depth

    def head(self) -> tuple[int, int, int]:
        """(major, additional info, argument) of the next head; refuses 28..31."""
        pos = self.pos
        if pos >= self.end:
            raise _malformed("item truncated", pos)
        initial = self.buf[pos]
        major, ai = initial >> 5, initial & 0x1F
        if ai < 24:
            self.pos = pos + 1
            return major, ai, ai
        if ai <= 27:
            width = 1 << (ai - 24)
            if pos + 1 + width > self.end:
                raise _malformed("head truncated", pos)
            (arg,) = _UINT[width].unpack_from(self.buf, pos + 1)
            self.pos = pos + 1 + width
            return major, ai, int(arg)
        if ai == 31:
            raise _malformed("indefinite-length items and break codes are refused", pos)
        raise _malformed(f"reserved additional information {ai}", pos)

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes as a view; the length is checked before slicing."""
        if n > self.end - self.pos:
            raise _malformed(f"length {n} runs past the end of the item", self.pos)
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def item(self, depth: int) -> Any:
        start = self.pos
        if start < self.end and self.buf[start] & 0x1F < 24:
            # The argument is in the initial byte (most heads of a message): no call.
            initial = self.buf[start]
            major = initial >> 5
            ai = arg = initial & 0x1F
            self.pos = start + 1
        else:
            major, ai, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            try:
                return str(self.take(arg), "utf-8", "strict")
            except UnicodeDecodeError:
                raise _malformed("text string is not valid UTF-8", start) from None
        if major == 7:
            return self.simple(ai, arg, start)
        if depth >= self.max_depth:
            raise _malformed(f"nesting deeper than {self.max_depth}", start)
        if major == 4:
            # Every item is at least one byte: a count beyond the bytes left is
            # a lie, refused before the list is built.
            if arg > self.end - self.pos:
                raise _malformed(f"array of {arg} items runs past the end", start)
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            if arg > (self.end - self.pos) // 2:
                raise _malformed(f"map of {arg} pairs runs past the end", start)
            out: dict[str, Any] = {}
            for _ in range(arg):
                key_pos = self.pos
                key = self.item(depth + 1)
                if not isinstance(key, str):
                    raise _malformed("map keys must be text strings", key_pos)
                if key in out:
                    raise _malformed(f"duplicate map key {key!r}", key_pos)
                out[key] = self.item(depth + 1)
            return out
        # major == 6: a tag
        if arg != tensors.TAG_NDARRAY:
            raise _malformed(f"tag {arg} is not accepted (only 40 over 84/85)", start)
        return self.tensor(start)

    def simple(self, ai: int, arg: int, start: int) -> Any:
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 25:
            return float(_HALF.unpack(struct.pack(">H", arg))[0])
        if ai == 26:
            return float(_SINGLE.unpack(struct.pack(">I", arg))[0])
        if ai == 27:
            return float(_DOUBLE.unpack(struct.pack(">Q", arg))[0])
        raise _malformed(f"simple value {arg} is not accepted", start)

    def tensor(self, start: int) -> tensors.Tensor:
        major, _, arg = self.head()
        if major != 4 or arg != 2:
            raise _malformed("tag 40 must hold a two-element array [dims, typed array]", start)
        dims_pos = self.pos
        major, _, rank = self.head()
        if major != 4:
            raise _malformed("tensor dims must be an array", dims_pos)
        if not 1 <= rank <= tensors.MAX_RANK:
            raise _malformed(f"tensor rank {rank} outside 1..{tensors.MAX_RANK}", dims_pos)
        shape = []
        for _ in range(rank):
            major, _, d = self.head()
            if major != 0 or d > tensors.MAX_DIM:
                raise _malformed("tensor dimensions must be unsigned integers < 2**31", dims_pos)
            shape.append(d)
        tag_pos = self.pos
        major, _, tag = self.head()
        if major != 6 or tag not in tensors.DTYPE_BY_TAG:
            raise _malformed(
                "tensor data must be tag 85 (float32-LE), 84 (float16-LE) or 64 (uint8)", tag_pos
            )
        major, _, n = self.head()
        if major != 2:
            raise _malformed("a typed array must hold a byte string", tag_pos)
        need = math.prod(shape) * tensors.DTYPE_BY_TAG[tag].itemsize
        if n != need:
            raise RemoteProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"tensor at byte {start}: shape {shape} as {tensors.DTYPE_BY_TAG[tag].name} "
                f"needs {need} bytes, the item holds {n}",
            )
        return tensors.build(tuple(shape), tag, self.take(n))


def decode(data: Buffer, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Exactly one strict CBOR item from ``data``; byte strings come out as views."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    dec = _Decoder(view, max_depth)
    value = dec.item(0)
    if dec.pos != dec.end:
        raise _malformed(f"{dec.end - dec.pos} bytes after the item", dec.pos)
    return value


_TEXT: dict[str, bytes] = {}
"""Encoded short text strings (map keys, message types, ids repeat frame after frame)."""
_TEXT_MAX: Final = 4096
_SMALL_BYTES: Final = 512
"""Byte strings shorter than this are copied into the frame's head buffer; longer ones
go out as views of the caller's buffer (no copy until the frame is joined)."""


def _text(obj: str) -> bytes:
    got = _TEXT.get(obj)
    if got is None:
        raw = obj.encode("utf-8")
        got = tensors.head(3, len(raw)) + raw
        if len(obj) <= 64:
            if len(_TEXT) >= _TEXT_MAX:
                _TEXT.clear()
            _TEXT[obj] = got
    return got


class _Encoder:
    """Small items are written into one buffer; tensors and long byte strings are
    appended as parts of their own (views, not copies). A message's heads, keys and
    numbers were one part each, and the parts' bookkeeping was most of an encode."""

    def __init__(self, offset: int, max_depth: int) -> None:
        self.parts: list[bytes | memoryview] = []
        self.buf = bytearray()
        self.base = offset
        """Where ``buf`` starts in the frame."""
        self.max_depth = max_depth

    @property
    def pos(self) -> int:
        return self.base + len(self.buf)

    def flush(self) -> None:
        if self.buf:
            self.parts.append(bytes(self.buf))
            self.base += len(self.buf)
            self.buf = bytearray()

    def put(self, b: bytes | memoryview) -> None:
        """A part of its own (after what the buffer holds)."""
        self.flush()
        self.parts.append(b)
        self.base += len(b) if isinstance(b, bytes) else b.nbytes

    def item(self, obj: object, depth: int) -> None:
        buf = self.buf
        # bool before int: bool is an int subclass in Python, not in CBOR.
        if obj is None:
            buf += b"\xf6"
        elif obj is True:
            buf += b"\xf5"
        elif obj is False:
            buf += b"\xf4"
        elif type(obj) is str:
            buf += _text(obj)
        elif isinstance(obj, int):
            if 0 <= obj < 24:
                buf.append(obj)
            elif 0 <= obj < 2**64:
                buf += tensors.head(0, obj)
            elif -(2**64) <= obj < 0:
                buf += tensors.head(1, -1 - obj)
            else:
                raise self.refuse(f"integer {obj} does not fit in 64 bits")
        elif isinstance(obj, float):
            buf += b"\xfb"
            buf += _DOUBLE.pack(obj)
        elif isinstance(obj, str):
            buf += _text(obj)
        elif isinstance(obj, bytes | bytearray | memoryview):
            view = memoryview(obj).cast("B") if isinstance(obj, memoryview) else obj
            n = view.nbytes if isinstance(view, memoryview) else len(view)
            buf += tensors.head(2, n)
            if n < _SMALL_BYTES or isinstance(view, bytearray):
                buf += view
            else:
                self.put(view)
        elif isinstance(obj, np.ndarray):
            if depth >= self.max_depth:
                raise self.refuse(f"nesting deeper than {self.max_depth}")
            try:
                parts = tensors.encode_parts(obj, self.pos)
            except tensors.TensorError as e:
                raise self.refuse(str(e)) from None
            for part in parts:
                self.put(part)
        elif isinstance(obj, list | tuple | dict):
            if depth >= self.max_depth:
                raise self.refuse(f"nesting deeper than {self.max_depth}")
            if isinstance(obj, dict):
                n = len(obj)
                if n < 24:
                    buf.append(0xA0 | n)
                else:
                    buf += tensors.head(5, n)
                for k, v in obj.items():
                    if not isinstance(k, str):
                        raise self.refuse(f"map key {k!r} is not a text string")
                    self.buf += _text(k)
                    self.item(v, depth + 1)
            else:
                n = len(obj)
                if n < 24:
                    buf.append(0x80 | n)
                else:
                    buf += tensors.head(4, n)
                for v in obj:
                    self.item(v, depth + 1)
        else:
            raise self.refuse(f"{type(obj).__name__} has no wire encoding")

    @staticmethod
    def refuse(message: str) -> LocalProtocolError:
        return LocalProtocolError(ErrorCode.INVALID_MESSAGE, message)


def encode_parts(
    obj: object, *, offset: int = 0, max_depth: int = DEFAULT_MAX_DEPTH
) -> list[bytes | memoryview]:
    """``obj`` as CBOR parts (tensor data as zero-copy views); ``offset`` is the
    position of the first byte in the frame, used to align tensor data."""
    enc = _Encoder(offset, max_depth)
    enc.item(obj, 0)
    enc.flush()
    return enc.parts


def encode(obj: object, *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """``obj`` as one CBOR item."""
    return b"".join(encode_parts(obj, max_depth=max_depth))
