"""Tensors on the wire: RFC 8746 typed arrays, zero-copy decode, chunking.

A tensor is ``tag 40 [dims, tag 85 bytes]`` (float32, little-endian),
``tag 40 [dims, tag 84 bytes]`` (float16, little-endian) or, for image pixels
only, ``tag 40 [dims, tag 64 bytes]`` (uint8): a row-major multi-dimensional
array (RFC 8746 section 3.1.1) over a typed array (section 2).
Nothing else is accepted under tag 40 here: no plain-array contents, no other
element types, no column-major tag 1040.

Decoding checks the element tag, the rank, every dimension and that the byte
string is exactly ``prod(dims) * itemsize`` long *before* building the array,
and then builds it with :func:`numpy.frombuffer` over the received buffer: the
tensor bytes are never copied (unless misaligned, see below). Arrays decoded
from a ``bytes`` buffer are read-only; copy them before writing in place.

Alignment: the encoder chooses the argument width of the two tag heads (CBOR
allows any width; decoders must accept it) so that the tensor data starts at an
offset from the frame start that is a multiple of the element size. A receiver
that keeps the frame in an aligned buffer then gets an aligned array; a
misaligned one is copied once into aligned memory rather than handed out slow.

Chunking: a tensor bigger than the sender's chunk limit travels after its
message as ``chunk`` frames (``docs/protocol.md``); :func:`split_chunks` cuts
the bytes and :class:`TensorAssembler` puts them back together, refusing any
size it did not announce.

Zero suppression: a chunked float tensor may travel as ``zero-bitmask``: one bit
per value (1 = non-zero, numpy ``packbits`` order, most significant bit first)
followed by the non-zero values in row-major order. Maps after a ReLU are about
half zeros (far more with trained weights), so this is lossless and about half
the bytes. "Zero" means all bits zero: a ``-0.0`` travels as a value, so the
decoded array is bit for bit the sent one.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

TAG_NDARRAY: Final = 40
"""RFC 8746 multi-dimensional array, row-major."""
TAG_UINT8: Final = 64
"""RFC 8746 uint8 typed array: only image pixels travel so (``pixels`` messages)."""
TAG_FLOAT16_LE: Final = 84
TAG_FLOAT32_LE: Final = 85

MAX_RANK: Final = 8
"""Highest tensor rank accepted (NCHW needs 4)."""
MAX_DIM: Final = 2**31 - 1
"""Largest single dimension accepted."""

DTYPE_BY_TAG: Final[dict[int, np.dtype[Any]]] = {
    TAG_FLOAT32_LE: np.dtype("<f4"),
    TAG_FLOAT16_LE: np.dtype("<f2"),
    TAG_UINT8: np.dtype("u1"),
}
DTYPE_NAMES: Final[dict[str, int]] = {
    "float32": TAG_FLOAT32_LE,
    "float16": TAG_FLOAT16_LE,
    "uint8": TAG_UINT8,
}
"""Dtype names used where a tensor is described without its bytes (chunk refs)."""

Tensor = npt.NDArray[np.floating]


class TensorError(ValueError):
    """A tensor cannot be encoded or its description is inconsistent."""


def tag_for(array: npt.NDArray[np.generic]) -> int:
    """The typed-array tag for ``array``'s dtype; only float32/float16 (and uint8
    pixels) travel."""
    if array.dtype.kind == "f" and array.dtype.itemsize == 4:
        return TAG_FLOAT32_LE
    if array.dtype.kind == "f" and array.dtype.itemsize == 2:
        return TAG_FLOAT16_LE
    if array.dtype == np.uint8:
        return TAG_UINT8
    raise TensorError(f"tensors travel as float32, float16 or uint8, not {array.dtype}")


def check_shape(dims: object) -> tuple[int, ...]:
    """Validate a dims list from the wire: 1..MAX_RANK non-negative ints."""
    if not isinstance(dims, list | tuple):
        raise TensorError("tensor dims must be an array of unsigned integers")
    if not 1 <= len(dims) <= MAX_RANK:
        raise TensorError(f"tensor rank {len(dims)} outside 1..{MAX_RANK}")
    for d in dims:
        if type(d) is not int or not 0 <= d <= MAX_DIM:
            raise TensorError(f"tensor dimension {d!r} is not an integer in 0..{MAX_DIM}")
    return tuple(dims)


def expected_nbytes(shape: tuple[int, ...], tag: int) -> int:
    """Bytes a tensor of ``shape`` with element tag ``tag`` must carry."""
    return math.prod(shape) * DTYPE_BY_TAG[tag].itemsize


def build(shape: tuple[int, ...], tag: int, data: memoryview) -> Tensor:
    """An array over ``data`` (no copy), after checking tag and byte length."""
    dtype = DTYPE_BY_TAG.get(tag)
    if dtype is None:
        raise TensorError(
            f"typed-array tag {tag} is not float32-LE (85), float16-LE (84) or uint8 (64)"
        )
    need = math.prod(shape) * dtype.itemsize
    if data.nbytes != need:
        raise TensorError(
            f"tensor of shape {list(shape)} and dtype {dtype.name} needs {need} bytes, "
            f"got {data.nbytes}"
        )
    array: Tensor = np.frombuffer(data, dtype=dtype).reshape(shape)
    if not array.flags.aligned:
        array = array.copy()
    return array


def contiguous_le(array: Tensor) -> Tensor:
    """``array`` as C-contiguous little-endian data (a copy only when needed)."""
    out: Tensor = np.ascontiguousarray(array, dtype=DTYPE_BY_TAG[tag_for(array)])
    if out.ndim == 0 or out.ndim > MAX_RANK:
        raise TensorError(f"tensor rank {out.ndim} outside 1..{MAX_RANK}")
    return out


def head(major: int, value: int, width: int = 0) -> bytes:
    """A CBOR head with argument ``value``, at least ``width`` bytes wide (0/1/2/4/8)."""
    if value < 24 and width == 0:
        return bytes([major << 5 | value])
    for w, ai, fmt in ((1, 24, ">B"), (2, 25, ">H"), (4, 26, ">I"), (8, 27, ">Q")):
        if w >= width and value < 1 << (8 * w):
            return bytes([major << 5 | ai]) + struct.pack(fmt, value)
    raise TensorError(f"CBOR argument {value} does not fit in 64 bits")


# Extra head bytes (tag 40 width, tag 84/85 width) that shift the data start by
# 0..3 bytes: widening a one-byte-argument tag head to 2/4/8 bytes adds 1/3/7.
_ALIGN_WIDTHS: Final = {0: (1, 1), 1: (2, 1), 2: (2, 2), 3: (4, 1)}


def encode_parts(array: Tensor, offset: int) -> list[bytes | memoryview]:
    """CBOR for ``array`` as parts, its data aligned relative to the frame start.

    ``offset`` is where the tensor's first byte lands in the frame. The data is
    a zero-copy view of ``array`` (made contiguous little-endian first if it was
    not); joining the parts is the one copy an encode makes.
    """
    data = contiguous_le(array)
    tag = tag_for(data)
    dims = b"".join([head(4, len(data.shape))] + [head(0, d) for d in data.shape])
    body = _bytes_view(data)
    bstr = head(2, body.nbytes)
    base = offset + 2 + 1 + len(dims) + 2 + len(bstr)
    w40, w85 = _ALIGN_WIDTHS[(-base) % data.itemsize]
    return [head(6, TAG_NDARRAY, w40) + b"\x82" + dims + head(6, tag, w85) + bstr, body]


def _bytes_view(array: Tensor) -> memoryview:
    """The bytes of a C-contiguous array as a flat view (works for empty arrays too)."""
    return array.reshape(-1).view(np.uint8).data


def split_chunks(array: Tensor, chunk_bytes: int) -> list[memoryview]:
    """The tensor's bytes cut into consecutive views of at most ``chunk_bytes``."""
    return split_bytes(_bytes_view(contiguous_le(array)), chunk_bytes)


def split_bytes(body: memoryview, chunk_bytes: int) -> list[memoryview]:
    """``body`` cut into consecutive views of at most ``chunk_bytes`` (one, if empty)."""
    if chunk_bytes <= 0:
        raise TensorError("chunk size must be positive")
    return [body[i : i + chunk_bytes] for i in range(0, max(body.nbytes, 1), chunk_bytes)]


ZERO_BITMASK: Final = "zero-bitmask"
"""The one chunk encoding besides plain bytes (see the module docstring)."""
ZERO_BITMASK_MAX_FRACTION: Final = 0.9
"""Zero suppression is used only when it takes at most this share of the plain bytes:
below that, the encoding's CPU (a pass to find zeros, a copy of the values) buys
too little link time."""


ZERO_SUPPRESS_MIN_BYTES: Final = 16 * 1024
"""The reference sender's default: below this a tensor's link time is too short to be
worth a pass over it."""


@dataclass(frozen=True)
class ZeroSuppressed:
    """A float tensor as its non-zero mask and values (the ``zero-bitmask`` bytes)."""

    nnz: int
    body: memoryview


def _nonzero(flat: Tensor) -> npt.NDArray[np.bool_]:
    """Which values are not all-zero bits (so ``-0.0`` counts as a value)."""
    ints = np.uint32 if flat.dtype.itemsize == 4 else np.uint16
    mask: npt.NDArray[np.bool_] = flat.view(ints) != 0
    return mask


SAMPLE_VALUES: Final = 4096
"""Values looked at before a whole pass: a dense map (an input image, a map before any
ReLU) is sent plain after a glance, not after counting all of its zeros."""


def _mostly_nonzero(flat: Tensor) -> bool:
    """An evenly spread sample of ``flat`` has under 10% zeros: suppression cannot
    save a tenth of the bytes (its mask alone is 1/32 of them)."""
    sample = flat[:: max(1, flat.size // SAMPLE_VALUES)]
    return int(np.count_nonzero(_nonzero(sample))) > 0.9 * sample.size


def _suppression(flat: Tensor) -> tuple[npt.NDArray[np.bool_], int, int] | None:
    """``(mask, nnz, bytes)`` of ``flat`` zero-suppressed, or None when that would not
    take at most ZERO_BITMASK_MAX_FRACTION of its bytes (the one rule for both the
    sender and :func:`payload_nbytes`)."""
    if flat.dtype.kind != "f" or flat.size == 0 or _mostly_nonzero(flat):
        return None
    mask = _nonzero(flat)
    nnz = int(np.count_nonzero(mask))
    size = (flat.size + 7) // 8 + nnz * flat.itemsize
    return (mask, nnz, size) if size <= ZERO_BITMASK_MAX_FRACTION * flat.nbytes else None


def zero_suppress(array: Tensor) -> ZeroSuppressed | None:
    """``array`` as ``zero-bitmask`` bytes, or None when that would not save enough.

    Only float32/float16 tensors qualify (pixels are small and dense).
    """
    flat = contiguous_le(array).reshape(-1)
    found = _suppression(flat)
    if found is None:
        return None
    mask, nnz, size = found
    mask_bytes = (flat.size + 7) // 8
    out = np.empty(size, dtype=np.uint8)
    out[:mask_bytes] = np.packbits(mask)
    out[mask_bytes:].view(flat.dtype)[:] = flat[mask]
    return ZeroSuppressed(nnz, out.data)


def payload_nbytes(array: Tensor, zero_suppress_from: int | None = ZERO_SUPPRESS_MIN_BYTES) -> int:
    """The tensor bytes a session sends for ``array`` (its frame heads aside): the
    zero-suppressed size when the session would suppress it, else its plain size."""
    if zero_suppress_from is None or array.nbytes < zero_suppress_from:
        return int(array.nbytes)
    found = _suppression(np.ascontiguousarray(array).reshape(-1))
    return int(array.nbytes) if found is None else found[2]


def zero_restore(shape: tuple[int, ...], tag: int, nnz: int, body: memoryview) -> Tensor:
    """The dense tensor from ``zero-bitmask`` bytes, after checking them exactly."""
    dtype = DTYPE_BY_TAG[tag]
    n = math.prod(shape)
    mask_bytes = (n + 7) // 8
    if body.nbytes != mask_bytes + nnz * dtype.itemsize:
        raise TensorError(
            f"zero-bitmask tensor of shape {list(shape)} with {nnz} values needs "
            f"{mask_bytes + nnz * dtype.itemsize} bytes, got {body.nbytes}"
        )
    raw = np.frombuffer(body, dtype=np.uint8)
    bits = np.unpackbits(raw[:mask_bytes], count=n).view(np.bool_)
    if n % 8 and int(raw[mask_bytes - 1]) & ((1 << (8 - n % 8)) - 1):
        raise TensorError("zero-bitmask: padding bits after the last value are set")
    if int(np.count_nonzero(bits)) != nnz:
        raise TensorError(
            f"zero-bitmask: the mask marks {np.count_nonzero(bits)} values, not {nnz}"
        )
    values = np.frombuffer(body, dtype=dtype, offset=mask_bytes, count=nnz)
    out: Tensor = np.zeros(n, dtype=dtype)
    out[bits] = values
    return out.reshape(shape)


@dataclass(frozen=True)
class ChunkRef:
    """Stands in a message for a tensor that follows in ``chunk`` frames."""

    stream: int
    """Sender-chosen id, unique among the sender's unfinished streams."""
    dtype: str
    """``"float32"`` or ``"float16"`` (little-endian)."""
    shape: tuple[int, ...]
    """Dimensions, row-major."""
    chunks: int
    """How many chunk frames follow (at least 1)."""
    nnz: int | None = None
    """Set when the chunks hold ``zero-bitmask`` bytes: how many values are non-zero."""

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the tensor once decoded."""
        return expected_nbytes(self.shape, DTYPE_NAMES[self.dtype])

    @property
    def nbytes(self) -> int:
        """Bytes the chunks carry."""
        if self.nnz is None:
            return self.dense_nbytes
        mask_bytes = (math.prod(self.shape) + 7) // 8
        return mask_bytes + self.nnz * DTYPE_BY_TAG[DTYPE_NAMES[self.dtype]].itemsize

    @property
    def held_bytes(self) -> int:
        """Memory the receiver holds for it: the chunks' buffer, plus the decoded
        tensor when zero-suppressed (so a small mask cannot make a huge tensor
        behind the receiver's limit)."""
        return self.nbytes + (0 if self.nnz is None else self.dense_nbytes)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "chunked": self.stream,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "chunks": self.chunks,
        }
        if self.nnz is not None:
            d["encoding"] = ZERO_BITMASK
            d["nnz"] = self.nnz
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ChunkRef:
        plain = {"chunked", "dtype", "shape", "chunks"}
        if set(d) != plain and set(d) != plain | {"encoding", "nnz"}:
            raise TensorError(f"a chunked-tensor reference has keys {sorted(d)}")
        stream, dtype, chunks = d["chunked"], d["dtype"], d["chunks"]
        if type(stream) is not int or not 0 <= stream < 2**32:
            raise TensorError("chunked-tensor stream id must be an integer in 0..2**32-1")
        if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
            raise TensorError(f"chunked-tensor dtype {dtype!r} is not float32 or float16")
        if type(chunks) is not int or chunks < 1:
            raise TensorError("chunked-tensor chunk count must be a positive integer")
        shape = check_shape(d["shape"])
        if "encoding" not in d:
            return cls(stream, dtype, shape, chunks)
        if d["encoding"] != ZERO_BITMASK:
            raise TensorError(f"chunked-tensor encoding {d['encoding']!r} is not {ZERO_BITMASK}")
        if dtype == "uint8":
            raise TensorError("pixels are not zero-suppressed")
        nnz = d["nnz"]
        if type(nnz) is not int or not 0 <= nnz <= math.prod(shape):
            raise TensorError(
                f"chunked-tensor nnz {nnz!r} is not an integer in 0..{math.prod(shape)}"
            )
        return cls(stream, dtype, shape, chunks, nnz)


class TensorAssembler:
    """Collects the chunks of one announced tensor into one buffer.

    The size comes from the reference (checked against the caller's limit
    *before* this is built); chunks must arrive in order and add up exactly.
    """

    def __init__(self, ref: ChunkRef) -> None:
        self.ref = ref
        self._buf = bytearray(ref.nbytes)
        self._filled = 0
        self._next = 0

    @property
    def complete(self) -> bool:
        return self._next == self.ref.chunks

    def add(self, index: int, data: memoryview) -> None:
        if index != self._next:
            raise TensorError(f"stream {self.ref.stream}: chunk {index} where {self._next} was due")
        end = self._filled + data.nbytes
        if end > len(self._buf):
            raise TensorError(
                f"stream {self.ref.stream}: chunks exceed the announced {len(self._buf)} bytes"
            )
        last = index == self.ref.chunks - 1
        if last and end != len(self._buf):
            raise TensorError(
                f"stream {self.ref.stream}: chunks total {end} of {len(self._buf)} bytes"
            )
        self._buf[self._filled : end] = data
        self._filled = end
        self._next += 1

    def array(self) -> Tensor:
        if not self.complete:
            raise TensorError(f"stream {self.ref.stream} is incomplete")
        tag = DTYPE_NAMES[self.ref.dtype]
        if self.ref.nnz is not None:
            return zero_restore(self.ref.shape, tag, self.ref.nnz, memoryview(self._buf))
        return build(self.ref.shape, tag, memoryview(self._buf))
