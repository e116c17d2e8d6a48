"""Protocol messages: frozen dataclasses with strict field validation.

On the wire every message is one CBOR map: ``{"type": <name>, <field>: <value>, ...}``
with the field names of the dataclasses below (``docs/protocol.md`` is the
reference). Optional fields may be absent or null; unknown fields are refused,
as are wrong types (no bool for an int, no string for a number; an integer is
accepted where a float is expected). All floats must be finite. Tensors are
numpy float32/float16 arrays (RFC 8746 on the wire).

Validation runs in ``__post_init__``, so a message built locally is checked by
the same code as one received; failures raise :class:`MessageError`, which the
session turns into a remote or local protocol error depending on direction.

The validator reads each field's annotation. A tensor field says so explicitly
(:data:`TensorField`, ``Annotated[Tensor, TENSOR]``): what ``numpy.typing.NDArray``
is made of changes between numpy versions (numpy 2.5 makes it a PEP 695 type
alias, whose ``typing.get_origin`` is the alias, not ``np.ndarray``), so it is
never looked into.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, TypeAlias, Union

import numpy as np

from edgeci_p2p.wire.errors import MessageError
from edgeci_p2p.wire.tensors import MAX_RANK, Tensor

PROTOCOL_VERSION: Final = 2
ROLES: Final = ("peer", "client")
SIZES: Final = ("224", "native")
MAX_PLAIN_DEPTH: Final = 24
STRIP_FACTOR_RANGE: Final = (0.25, 4.0)
"""What a bid's ``strip_factor`` may say on the wire (the auction's own
``auction.messages.STRIP_FACTOR_RANGE``, which a test keeps equal)."""


@dataclass(frozen=True)
class TensorMarker:
    """Annotation metadata: the field holds a tensor (``docs/protocol.md`` section 5)."""


TENSOR: Final = TensorMarker()
TensorField: TypeAlias = Annotated[Tensor, TENSOR]
"""The annotation of every tensor field. The validator finds tensor fields by the
:data:`TENSOR` marker alone, whatever numpy's ``NDArray`` is made of."""


# --- field coercion ----------------------------------------------------------


def _plain(value: object, path: str, depth: int = 0) -> object:
    """Opaque plain data: null/bool/int/float/str/bytes, lists, text-keyed maps."""
    if depth > MAX_PLAIN_DEPTH:
        raise MessageError(f"{path}: nested deeper than {MAX_PLAIN_DEPTH}")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            raise MessageError(f"{path}: {value} is not a finite number")
        return value
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise MessageError(f"{path}: map key {k!r} is not a string")
            out[k] = _plain(v, f"{path}.{k}", depth + 1)
        return out
    raise MessageError(f"{path}: {type(value).__name__} is not plain data")


def _tensor(value: object, path: str) -> Any:
    if not isinstance(value, np.ndarray):
        raise MessageError(f"{path}: expected a tensor, got {type(value).__name__}")
    if value.dtype not in (np.float32, np.float16, np.uint8) or not 1 <= value.ndim <= MAX_RANK:
        raise MessageError(
            f"{path}: tensors are float32/float16 (uint8 for pixels) of rank "
            f"1..{MAX_RANK}, got {value.dtype} rank {value.ndim}"
        )
    return value


def is_tensor_annotation(tp: Any) -> bool:
    """Whether ``tp`` (an ``Optional`` of it included) is marked :data:`TENSOR`."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(is_tensor_annotation(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) is Annotated and TENSOR in tp.__metadata__


Checker: TypeAlias = Callable[[object, str], Any]
"""Checks (and lightly converts) a value against one annotation; ``path`` names it."""

_CHECKERS: dict[Any, Checker] = {}


def _coerce(value: object, tp: Any, path: str) -> Any:
    """``value`` checked against the annotation ``tp`` (and lightly converted)."""
    return _checker(tp)(value, path)


def _checker(tp: Any) -> Checker:
    """The checker of annotation ``tp``, made once per annotation: reading annotations
    (``typing.get_origin``/``get_args``) for every field of every message was a fifth of
    the codec's CPU, on event loops that share a core's quota with the peer's work."""
    try:
        return _CHECKERS[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable annotation: made every time
        return _make_checker(tp)
    made = _CHECKERS[tp] = _make_checker(tp)
    return made


def _make_checker(tp: Any) -> Checker:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        if TENSOR in tp.__metadata__:
            return _tensor
        raise TypeError(f"unsupported field annotation {tp!r}")  # a bug in this module
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        nullable = type(None) in args
        options = [_checker(a) for a in args if a is not type(None)]

        def union(value: object, path: str) -> Any:
            if value is None:
                if nullable:
                    return None
                raise MessageError(f"{path}: required")
            errors = []
            for option in options:
                try:
                    return option(value, path)
                except MessageError as e:
                    errors.append(str(e))
            raise MessageError("; ".join(errors))

        return union
    if tp is Any:
        return _plain
    simple = _SIMPLE.get(tp)
    if simple is not None:
        return simple
    if origin is tuple:
        items = [_checker(a) for a in typing.get_args(tp)]

        def fixed(value: object, path: str) -> Any:
            if not isinstance(value, list | tuple) or len(value) != len(items):
                raise MessageError(f"{path}: expected an array of {len(items)} items")
            pairs = enumerate(zip(value, items, strict=True))
            return tuple(c(v, f"{path}[{i}]") for i, (v, c) in pairs)

        return fixed
    if origin is list:
        (item,) = (_checker(a) for a in typing.get_args(tp))

        def array(value: object, path: str) -> Any:
            if not isinstance(value, list | tuple):
                raise MessageError(f"{path}: expected an array, got {type(value).__name__}")
            return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return array
    if origin is dict:
        entry = _checker(typing.get_args(tp)[1])

        def mapping(value: object, path: str) -> Any:
            if not isinstance(value, dict):
                raise MessageError(f"{path}: expected a map, got {type(value).__name__}")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise MessageError(f"{path}: map key {k!r} is not a string")
                out[k] = entry(v, f"{path}.{k}")
            return out

        return mapping
    if isinstance(tp, type) and issubclass(tp, Record):
        record = tp

        def nested(value: object, path: str) -> Any:
            if isinstance(value, record):
                return value
            if not isinstance(value, dict):
                raise MessageError(f"{path}: expected a map, got {type(value).__name__}")
            return record.from_dict(value, path)

        return nested
    raise TypeError(f"unsupported field annotation {tp!r}")  # a bug in this module


def _str(value: object, path: str) -> Any:
    if not isinstance(value, str):
        raise MessageError(f"{path}: expected a text string, got {type(value).__name__}")
    return value


def _bool(value: object, path: str) -> Any:
    if not isinstance(value, bool):
        raise MessageError(f"{path}: expected a boolean, got {type(value).__name__}")
    return value


def _int(value: object, path: str) -> Any:
    if isinstance(value, np.integer):  # local convenience; the wire only yields int
        value = int(value)
    if type(value) is not int:
        raise MessageError(f"{path}: expected an integer, got {type(value).__name__}")
    return value


def _float(value: object, path: str) -> Any:
    if type(value) is int or isinstance(value, np.integer | np.floating):
        value = float(value)
    if type(value) is not float:
        raise MessageError(f"{path}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise MessageError(f"{path}: {value} is not a finite number")
    return value


def _bytes(value: object, path: str) -> Any:
    if isinstance(value, memoryview):
        return bytes(value)
    if not isinstance(value, bytes):
        raise MessageError(f"{path}: expected a byte string, got {type(value).__name__}")
    return value


_SIMPLE: Final[dict[Any, Checker]] = {
    str: _str,
    bool: _bool,
    int: _int,
    float: _float,
    bytes: _bytes,
}


def _to_wire(value: object) -> object:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


class Record:
    """A dataclass whose fields are validated against their annotations."""

    _hints: ClassVar[dict[str, Any]]
    _checks: ClassVar[tuple[tuple[str, str, Checker], ...]]
    """Per field: its name, its path in errors and its checker."""
    _required: ClassVar[tuple[str, ...]]
    """The fields without a default."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._hints = {}  # filled lazily: annotations may refer to later classes

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        if not cls._hints:
            hints = typing.get_type_hints(cls, include_extras=True)
            declared = dataclasses.fields(cls)  # type: ignore[arg-type]
            fields = {f.name: hints[f.name] for f in declared}
            # The session chunks exactly TENSOR_FIELDS; no other field may hold a tensor.
            marked = tuple(n for n, tp in fields.items() if is_tensor_annotation(tp))
            if marked != getattr(cls, "TENSOR_FIELDS", ()):
                raise TypeError(f"{cls.__name__}: tensor fields {marked} are not TENSOR_FIELDS")
            cls._checks = tuple(
                (n, f"{cls.__name__}.{n}", _checker(tp)) for n, tp in fields.items()
            )
            cls._required = tuple(
                f.name
                for f in declared
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            cls._hints = fields
        return cls._hints

    def __post_init__(self) -> None:
        if not self._hints:
            self._fields()
        for fname, path, check in self._checks:
            value = check(getattr(self, fname), path)
            if (
                isinstance(value, np.ndarray)
                and value.dtype == np.uint8
                and not self._pixels(fname)
            ):
                raise MessageError(f"{path}: uint8 tensors travel only as pixels")
            object.__setattr__(self, fname, value)
        self.check()

    def _pixels(self, fname: str) -> bool:
        """Whether field ``fname`` holds uint8 pixels (messages with a ``pixels`` flag)."""
        return fname == "input" and bool(getattr(self, "pixels", None))

    def check(self) -> None:
        """Cross-field and range checks; raise MessageError."""

    def to_dict(self) -> dict[str, object]:
        """Plain data (tensors stay numpy arrays); None-valued fields are left out."""
        out: dict[str, object] = {}
        for fname in self._fields():
            value = getattr(self, fname)
            if value is not None:
                out[fname] = _to_wire(value)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "") -> Any:
        path = path or cls.__name__
        fields = cls._fields()
        unknown = set(d) - set(fields)
        if unknown:
            raise MessageError(f"{path}: unknown fields {sorted(unknown)}")
        kwargs = {k: v for k, v in d.items() if v is not None}
        missing = [name for name in cls._required if name not in kwargs]
        if missing:
            raise MessageError(f"{path}: missing fields {missing}")
        return cls(**kwargs)


def _nonneg(owner: str, **values: float) -> None:
    for k, v in values.items():
        if v < 0:
            raise MessageError(f"{owner}.{k}: {v} is negative")


def _span(owner: str, name: str, span: tuple[int, int]) -> None:
    if not 0 <= span[0] <= span[1]:
        raise MessageError(f"{owner}.{name}: {list(span)} is not a range 0 <= start <= stop")


class Message(Record):
    """A top-level message; ``TYPE`` is its ``type`` string on the wire."""

    TYPE: ClassVar[str]
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Fields that may hold a tensor (and so may travel chunked)."""

    def to_wire(self) -> dict[str, object]:
        return {"type": self.TYPE, **self.to_dict()}


# --- handshake and liveness ----------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """First frame each side sends on a new connection."""

    TYPE: ClassVar[str] = "hello"
    version: int
    """Protocol version; 2 (TLS with channel binding; docs/protocol.md section 6)."""
    node_id: str
    """Stable unique id of the sending node (peers) or a fresh id (clients)."""
    name: str
    """Human-readable node name."""
    port: int
    """TCP port the sender listens on (0 for a client)."""
    models: dict[str, str]
    """Model name -> weights fingerprint, for every model the sender serves."""
    nonce: bytes
    """Fresh random challenge (16..64 bytes) for this connection."""
    role: str = "peer"
    """``"peer"`` (a daemon) or ``"client"`` (a CLI or application)."""
    auth: bool = False
    """The sender has a cluster key and will send an ``auth`` frame."""
    cert: bytes | None = None
    """The sender's certificate (DER; its Ed25519 key makes the node id). Sent over
    TLS, where ``auth.signature`` proves it; absent on a ``--plaintext`` connection."""

    def check(self) -> None:
        if self.cert is not None and not 0 < len(self.cert) <= 4096:
            raise MessageError(f"hello.cert: {len(self.cert)} bytes, need 1..4096")
        if not 0 <= self.port <= 65535:
            raise MessageError(f"hello.port: {self.port} is not a TCP port")
        if not 16 <= len(self.nonce) <= 64:
            raise MessageError(f"hello.nonce: {len(self.nonce)} bytes, need 16..64")
        if self.role not in ROLES:
            raise MessageError(f"hello.role: {self.role!r} is not one of {ROLES}")
        if not self.node_id:
            raise MessageError("hello.node_id: empty")


@dataclass(frozen=True)
class Auth(Message):
    """Proof that the sender holds the cluster key (see :mod:`edgeci_p2p.wire.auth`)."""

    TYPE: ClassVar[str] = "auth"
    proof: bytes | None = None
    """HMAC-SHA256 over the receiver's challenge (and the channel); 32 bytes. Absent
    when the sender has no cluster key (a TLS connection without one)."""
    signature: bytes | None = None
    """Over TLS: the sender's Ed25519 signature of the same transcript with the key of
    the certificate in its hello; 64 bytes."""

    def check(self) -> None:
        if self.proof is not None and len(self.proof) != 32:
            raise MessageError(f"auth.proof: {len(self.proof)} bytes, need 32")
        if self.signature is not None and len(self.signature) != 64:
            raise MessageError(f"auth.signature: {len(self.signature)} bytes, need 64")
        if self.proof is None and self.signature is None:
            raise MessageError("auth: neither proof nor signature")


MAX_PING_PAD = 1 << 20
"""Largest link-probe padding a ping may carry."""


@dataclass(frozen=True)
class Ping(Message):
    """Heartbeat; the receiver answers with a pong echoing ``seq`` and ``time``."""

    TYPE: ClassVar[str] = "ping"
    seq: int
    """Sender's counter."""
    time: float
    """Sender's monotonic clock, seconds."""
    pad: bytes | None = None
    """Ignored bytes: a *link probe* (the pong comes back when they have crossed the
    link, so the RTT shows the link's rate). At most MAX_PING_PAD."""

    def check(self) -> None:
        if self.pad is not None and len(self.pad) > MAX_PING_PAD:
            raise MessageError(f"ping.pad: {len(self.pad)} bytes, at most {MAX_PING_PAD}")


@dataclass(frozen=True)
class Pong(Message):
    """Answer to a ping; the pinger's RTT is ``now - echo``."""

    TYPE: ClassVar[str] = "pong"
    seq: int
    """The ping's ``seq``."""
    echo: float
    """The ping's ``time``, returned unchanged."""
    time: float
    """Responder's monotonic clock, seconds (its own clock, not comparable)."""


# --- the auction -------------------------------------------------------------------
# These carry exactly the AWAS messages of edgeci_p2p.auction.messages: each wire
# message's to_dict() is the auction message's to_dict() (call_for_bids adds an
# optional ``model``), so the daemon converts with ``Auction.from_dict(m.to_dict())``
# and ``message_from_wire({"type": ..., **auction.to_dict()})``. This layer does not
# import the auction package; tests/test_wire_auction_compat.py keeps them in step.


def _distinct(owner: str, items: list[WorkItem]) -> None:
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise MessageError(f"{owner}.items: duplicate item ids {dup}")


@dataclass(frozen=True)
class WorkItem(Record):
    """One workload partition, as the auctioneer offers (and later awards) it."""

    id: str
    """Id, unique within the auction."""
    flops: dict[str, int]
    """Unit kind (``conv``/``pool``/``block``/``head``) -> FLOPs of that kind."""
    bytes_in: int
    """Bytes the winner receives (input slab, halo included)."""
    bytes_out: int
    """Bytes the winner sends back (output strip)."""
    memory: int
    """Peak bytes the winner must hold while running the item."""
    calls: dict[str, int]
    """Unit kind -> unit calls (each pays the fit's fixed cost); absent kinds: one."""

    def check(self) -> None:
        _nonneg("item", bytes_in=self.bytes_in, bytes_out=self.bytes_out, memory=self.memory)
        _nonneg("item.flops", **self.flops)
        _nonneg("item.calls", **self.calls)


@dataclass(frozen=True)
class CallForBids(Message):
    """Auctioneer -> peers: price these items."""

    TYPE: ClassVar[str] = "call_for_bids"
    auction: str
    """Id of this auction, chosen by the auctioneer."""
    auctioneer: str
    """The auctioneer's node id (where the work comes from and results go)."""
    fingerprint: str
    """Weights fingerprint: a peer without these weights declines."""
    items: list[WorkItem]
    window: float
    """Seconds the auctioneer waits for bids; later bids are ignored."""
    model: str | None = None
    """Model name (not part of the AWAS message; the daemon needs it)."""

    def check(self) -> None:
        _nonneg("call_for_bids", window=self.window)
        _distinct("call_for_bids", self.items)


@dataclass(frozen=True)
class Bid(Message):
    """Peer -> auctioneer: sealed bid, or a decline."""

    TYPE: ClassVar[str] = "bid"
    auction: str
    bidder: str
    """Bidder's node id."""
    backlog: float
    """Seconds of accepted or reserved work queued ahead of anything new."""
    duration: dict[str, float]
    """Item id -> seconds for transfer in + compute + transfer out; items the
    bidder cannot take are absent. Winning item i alone finishes at backlog + duration[i]."""
    free_memory: int
    """Bytes of memory the bidder can give to new work."""
    bandwidth: float
    """Bidder's estimate of its link to the auctioneer, bytes/s."""
    rtt: float
    """... and of its round-trip time, s."""
    valid_for: float
    """Seconds after arrival after which the bid is stale."""
    declined: str
    """Empty when bidding; otherwise the bidder takes nothing, and this says why."""
    host: str | None = None
    """An id of the bidder's machine (peers on one machine share its cores)."""
    cpus: float | None = None
    """Cores the bidder's tile work can use."""
    host_cpus: float | None = None
    """Cores of the bidder's machine."""
    held: list[str] | None = None
    """Parts of the called model's weights the bidder holds (``features``, ``head``)."""
    load: dict[str, int] | None = None
    """Part -> bytes that loading it would add, for each part the bidder does not hold."""
    rss: int | None = None
    """The bidder's resident memory, bytes."""
    piece_s: float | None = None
    """Seconds each piece of work costs the bidder beyond its units (learnt online)."""
    strip_factor: float | None = None
    """How many times ``duration`` the bidder's pieces of strip jobs take (learnt
    online; absent: 1)."""
    hop_s: float | None = None
    """Seconds the bidder's event loop takes to pick up what its busy worker hands
    back, and what arrives (learnt online; absent: 0)."""

    def check(self) -> None:
        _nonneg("bid.load", **(self.load or {}))
        _nonneg("bid", rss=self.rss or 0, piece_s=self.piece_s or 0.0, hop_s=self.hop_s or 0.0)
        lo, hi = STRIP_FACTOR_RANGE
        if self.strip_factor is not None and not lo <= self.strip_factor <= hi:
            raise MessageError(f"bid.strip_factor: {self.strip_factor} is outside [{lo}, {hi}]")
        _nonneg(
            "bid",
            backlog=self.backlog,
            free_memory=self.free_memory,
            bandwidth=self.bandwidth,
            rtt=self.rtt,
            valid_for=self.valid_for,
        )
        _nonneg("bid.duration", **self.duration)


@dataclass(frozen=True)
class Award(Message):
    """Auctioneer -> winner: reserve capacity for these items; answered by award_reply."""

    TYPE: ClassVar[str] = "award"
    auction: str
    bidder: str
    """The winner's node id."""
    items: list[WorkItem]
    """The awarded work, in full (the bidder prices it again before accepting)."""
    seq: int
    """Award generation within the auction: a re-plan sends a higher seq, which
    replaces the bidder's earlier hold; replies to older seqs are ignored."""
    lease: float
    """Seconds the bidder holds the capacity for the work to arrive."""
    quoted_backlog: float
    """The backlog the winning bid quoted (lets the bidder notice it is since busier)."""

    def check(self) -> None:
        _nonneg("award", seq=self.seq, lease=self.lease, quoted_backlog=self.quoted_backlog)
        _distinct("award", self.items)


@dataclass(frozen=True)
class AwardReply(Message):
    """Winner -> auctioneer: capacity reserved, or the award declined with a reason."""

    TYPE: ClassVar[str] = "award_reply"
    auction: str
    bidder: str
    seq: int
    """The award's ``seq``."""
    accepted: bool
    reason: str
    """Why it declined (``capacity``, ``memory``, ``stale``, ``superseded``); else empty."""

    def check(self) -> None:
        _nonneg("award_reply", seq=self.seq)


@dataclass(frozen=True)
class Release(Message):
    """Auctioneer -> bidder: drop your reservation for this auction (no work will come)."""

    TYPE: ClassVar[str] = "release"
    auction: str
    bidder: str


# --- tile work -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect(Record):
    """A half-open region of a feature map: rows [r0, r1), cols [c0, c1)."""

    rows: tuple[int, int]
    cols: tuple[int, int]

    def check(self) -> None:
        _span("region", "rows", self.rows)
        _span("region", "cols", self.cols)

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]


def _check_pixels(owner: str, x: Tensor, pixels: bool | None, start: int) -> None:
    if not pixels:
        return
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise MessageError(
            f"{owner}.input: pixels are N x 3 x H x W uint8, got {x.dtype} {list(x.shape)}"
        )
    if start != 0:
        raise MessageError(f"{owner}: pixels are the network input, not unit {start}'s")


@dataclass(frozen=True)
class TileRequest(Message):
    """Run units [start, stop) of ``model`` over ``input`` to produce ``out``."""

    TYPE: ClassVar[str] = "tile_request"
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("input", "scale")
    request_id: str
    tile_id: int
    model: str
    fingerprint: str
    start: int
    """First unit to run."""
    stop: int
    """One past the last unit to run."""
    out: Rect
    """Output region at boundary ``stop`` to produce."""
    slab: Rect
    """Region at boundary ``start`` that ``input`` covers."""
    input: TensorField
    """Input slab, N x C x H x W, H and W equal to the slab's height and width."""
    input_hw: tuple[int, int] = (224, 224)
    """Height and width of the network input the unit range belongs to (the map
    shapes at every boundary depend on it; 'native'-size requests vary it)."""
    deadline_s: float | None = None
    """Result is useless after this many seconds from receipt."""
    pixels: bool | None = None
    """``input`` is uint8 RGB pixels of the network input (``start`` 0), to normalise
    as the entry peer did (``nn/images.normalise``): a quarter of the bytes."""
    trace: bool | None = None
    """Report this tile's steps in ``tile_result.spans``."""
    scale: TensorField | None = None
    """N x C x 1 x 1: the squeeze-and-excitation scale vectors unit ``start`` multiplies
    by (a synchronisation point), made by the auctioneer from the whole map at boundary
    ``start``; sent only for such a unit."""

    def check(self) -> None:
        if not 0 <= self.start < self.stop:
            raise MessageError(f"tile_request: unit range [{self.start}, {self.stop}) is empty")
        if self.scale is not None and (
            self.scale.ndim != 4
            or self.scale.shape[2:] != (1, 1)
            or self.scale.shape[0] != self.input.shape[0]
        ):
            raise MessageError(
                f"tile_request.scale: shape {list(self.scale.shape)}, need N x C x 1 x 1 "
                "with the input's N"
            )
        _check_pixels("tile_request", self.input, self.pixels, self.start)
        if self.input.ndim != 4:
            raise MessageError(f"tile_request.input: rank {self.input.ndim}, need N x C x H x W")
        if self.input.shape[2:] != (self.slab.height, self.slab.width):
            raise MessageError(
                f"tile_request.input: spatial shape {self.input.shape[2:]} "
                f"does not match slab {self.slab.height} x {self.slab.width}"
            )
        if min(self.input_hw) < 1:
            raise MessageError(f"tile_request.input_hw: {list(self.input_hw)} is not a size")
        if self.deadline_s is not None:
            _nonneg("tile_request", deadline_s=self.deadline_s)


@dataclass(frozen=True)
class TileResult(Message):
    """The output strip of a tile request."""

    TYPE: ClassVar[str] = "tile_result"
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("output",)
    request_id: str
    tile_id: int
    output: TensorField
    """N x C x H x W over the request's ``out`` region."""
    compute_s: float
    """Seconds spent computing (for the auctioneer's cost model)."""
    spans: list[list[Any]] | None = None
    """When the work was sent with ``trace``: its steps here, ``[name, start, stop,
    lane]`` on this peer's own clock (``time.monotonic``)."""

    def check(self) -> None:
        if self.output.ndim != 4:
            raise MessageError(f"tile_result.output: rank {self.output.ndim}, need 4")
        _nonneg("tile_result", compute_s=self.compute_s)


@dataclass(frozen=True)
class HeadJob(Message):
    """Auctioneer -> peer: run the head (global pool + classifier) on the whole last map.

    Answered with a ``tile_result`` of the same ids whose ``output`` is the logits,
    N x classes x 1 x 1, or an ``error``. The auctioneer sends it when the plan puts
    the head on that peer (``Plan.head_device``) and runs the head itself if the
    answer does not come."""

    TYPE: ClassVar[str] = "head_job"
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("input",)
    request_id: str
    tile_id: int
    model: str
    fingerprint: str
    input: TensorField
    """The last unit's whole output map, N x C x H x W float32."""
    input_hw: tuple[int, int] = (224, 224)
    """Height and width of the network input (the last map's shape depends on it)."""
    deadline_s: float | None = None
    trace: bool | None = None
    """Report this job's steps in ``tile_result.spans``."""

    def check(self) -> None:
        if self.input.ndim != 4:
            raise MessageError(f"head_job.input: rank {self.input.ndim}, need N x C x H x W")
        if self.input.dtype != np.float32:
            raise MessageError(f"head_job.input: {self.input.dtype}, need float32")
        if min(self.input_hw) < 1:
            raise MessageError(f"head_job.input_hw: {list(self.input_hw)} is not a size")
        if self.deadline_s is not None:
            _nonneg("head_job", deadline_s=self.deadline_s)


# --- strip-resident work (halo exchange) -----------------------------------------------------


@dataclass(frozen=True)
class RowsFrom(Record):
    """Rows ``rows`` (full width) of a map exchanged with peer ``node``."""

    node: str
    rows: tuple[int, int]

    def check(self) -> None:
        _span("rows_from", "rows", self.rows)


@dataclass(frozen=True)
class StripStage(Record):
    """One stage of a strip job as one peer runs it."""

    start: int
    stop: int
    rows: tuple[int, int]
    """Output rows (full width, at boundary ``stop``) this peer computes."""
    need: tuple[int, int]
    """Input rows (at boundary ``start``) the computation reads, halo included."""
    recv: list[RowsFrom]
    """Input rows that arrive from other peers (``halo_rows``) before this stage can run;
    with the rows this peer produced itself in the previous stage they make up ``need``."""
    send: list[RowsFrom]
    """Output rows to send to other peers when this stage is done."""

    def check(self) -> None:
        if not 0 <= self.start < self.stop:
            raise MessageError(f"strip_stage: unit range [{self.start}, {self.stop}) is empty")
        _span("strip_stage", "rows", self.rows)
        _span("strip_stage", "need", self.need)
        for r in [*self.recv, *self.send]:
            if r.rows[0] >= r.rows[1]:
                raise MessageError(f"strip_stage: empty row range {list(r.rows)} for {r.node}")


@dataclass(frozen=True)
class StripJob(Message):
    """Auctioneer -> peer: run a row strip through consecutive stages, exchanging halo
    rows directly with the neighbouring peers; answered by one ``tile_result`` holding
    the last stage's strip (or an ``error``)."""

    TYPE: ClassVar[str] = "strip_job"
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("input",)
    request_id: str
    job_id: int
    """Shared by every peer of this run (halo rows are addressed by it)."""
    tile_id: int
    """This peer's share; its ``tile_result`` carries it."""
    model: str
    fingerprint: str
    stages: list[StripStage]
    input: TensorField
    """The first stage's input rows (its ``need``), N x C x H x W, full width."""
    input_hw: tuple[int, int] = (224, 224)
    deadline_s: float | None = None
    """Give up (and say so) after this many seconds from receipt."""
    pixels: bool | None = None
    """``input`` is uint8 RGB pixels of the network input (first stage starts at unit
    0), to normalise as the entry peer did."""
    trace: bool | None = None
    """Report this job's steps in ``tile_result.spans``."""
    fold: bool | None = None
    """Answer with the last strip times the matching columns of the head's first
    linear layer (N x out x 1 x 1 partial sums, no bias) instead of the strip
    (``Plan.fold_head``; docs/protocol.md)."""

    def check(self) -> None:
        if not self.stages:
            raise MessageError("strip_job: no stages")
        _check_pixels("strip_job", self.input, self.pixels, self.stages[0].start)
        for a, b in zip(self.stages, self.stages[1:], strict=False):
            if a.stop != b.start:
                raise MessageError(
                    f"strip_job: stage [{a.start}, {a.stop}) is not followed by "
                    f"[{b.start}, {b.stop})"
                )
        if self.stages[0].recv:
            raise MessageError("strip_job: the first stage's input comes with the job")
        if self.input.ndim != 4:
            raise MessageError(f"strip_job.input: rank {self.input.ndim}, need N x C x H x W")
        need = self.stages[0].need
        if self.input.shape[2] != need[1] - need[0]:
            raise MessageError(
                f"strip_job.input: {self.input.shape[2]} rows, the first stage needs "
                f"{need[1] - need[0]}"
            )
        if min(self.input_hw) < 1:
            raise MessageError(f"strip_job.input_hw: {list(self.input_hw)} is not a size")
        if self.deadline_s is not None:
            _nonneg("strip_job", deadline_s=self.deadline_s)


@dataclass(frozen=True)
class HaloRows(Message):
    """Peer -> peer: rows of one strip job's map at ``boundary``, sent to the peer that
    needs them for its next stage."""

    TYPE: ClassVar[str] = "halo_rows"
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("data",)
    request_id: str
    job_id: int
    boundary: int
    rows: tuple[int, int]
    data: TensorField
    """N x C x (rows) x W."""

    def check(self) -> None:
        _span("halo_rows", "rows", self.rows)
        if self.data.ndim != 4 or self.data.shape[2] != self.rows[1] - self.rows[0]:
            raise MessageError(
                f"halo_rows.data: shape {list(self.data.shape)} does not hold rows "
                f"{list(self.rows)}"
            )


# --- client requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class InferRequest(Message):
    """Client -> any peer: classify one image (exactly one of image/tensor)."""

    TYPE: ClassVar[str] = "infer_request"
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("tensor",)
    request_id: str
    model: str
    image: bytes | None = None
    """Encoded image (JPEG or PNG)."""
    tensor: TensorField | None = None
    """Preprocessed input, 1 x 3 x H x W, float32 or float16 (widened to float32);
    run at its own H x W (``size`` is for images only)."""
    strategy: str = "edgeci"
    """Partitioning strategy (``edgeci``, ``local``, baselines)."""
    size: str = "224"
    """How an ``image`` is preprocessed: ``"224"`` (resize and centre-crop) or
    ``"native"``. Not used for a ``tensor``."""
    top_k: int = 5
    verify: bool = False
    """Also run the unsplit model on the same input and report the largest
    difference of the logits in ``infer_result.max_abs_diff``."""
    hops: int = 0
    """How many peers passed this request on (a busy entry peer forwards a stream's
    frame to an idle peer, which runs it and never forwards it again)."""
    trace: bool | None = None
    """Record the request's timeline on every node and answer it in
    ``infer_result.trace`` (peers must be of this protocol version or later)."""

    def check(self) -> None:
        if (self.image is None) == (self.tensor is None):
            raise MessageError("infer_request: exactly one of image and tensor is required")
        if self.size not in SIZES:
            raise MessageError(f"infer_request.size: {self.size!r} is not one of {SIZES}")
        if self.top_k < 1:
            raise MessageError("infer_request.top_k: must be at least 1")
        _nonneg("infer_request", hops=self.hops)


@dataclass(frozen=True)
class TopK(Record):
    index: int
    """Class index."""
    label: str
    prob: float
    """Softmax probability."""
    logit: float


@dataclass(frozen=True)
class InferResult(Message):
    """The answer to an infer request."""

    TYPE: ClassVar[str] = "infer_result"
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("logits",)
    request_id: str
    model: str
    strategy: str
    top_k: list[TopK]
    logits: TensorField
    """Raw classifier output, 1 x classes."""
    timing: dict[str, float | dict[str, float]]
    """Seconds: ``bid``, ``plan``, ``transfer``, ``head``, ``total`` and
    ``compute`` (a map node_id -> seconds)."""
    plan: dict[str, Any] = field(default_factory=dict)
    """The executed plan as plain data (opaque at this layer)."""
    max_abs_diff: float | None = None
    trace: dict[str, Any] | None = None
    """When the request had ``trace``: its timeline (``core/timeline.Timeline.to_dict``)."""
    """Only for a request with ``verify``: the largest absolute difference between
    ``logits`` and the unsplit model's logits for the same input."""

    def check(self) -> None:
        if self.max_abs_diff is not None:
            _nonneg("infer_result", max_abs_diff=self.max_abs_diff)


@dataclass(frozen=True)
class Cancel(Message):
    """Stop work on a request (or one of its tiles); no reply is due."""

    TYPE: ClassVar[str] = "cancel"
    request_id: str
    tile_id: int | None = None


@dataclass(frozen=True)
class Error(Message):
    """A failure; codes below 200 close the connection (see errors.ErrorCode)."""

    TYPE: ClassVar[str] = "error"
    code: int
    message: str
    request_id: str | None = None
    """The request this error answers, if any."""


@dataclass(frozen=True)
class Peers(Message):
    """Client -> peer: describe the cluster as you see it."""

    TYPE: ClassVar[str] = "peers"
    request_id: str
    body: dict[str, Any] = field(default_factory=dict)
    """No options are defined: empty (a non-empty body is refused, not ignored)."""

    def check(self) -> None:
        if self.body:
            raise MessageError(f"peers.body: no options are defined, got {sorted(self.body)}")


@dataclass(frozen=True)
class PeersResult(Message):
    TYPE: ClassVar[str] = "peers_result"
    request_id: str
    body: dict[str, Any] = field(default_factory=dict)
    """Cluster view, ``{"peers": [entry, ...]}`` (plain data; the entries' keys are
    listed in ``docs/protocol.md`` 4.4)."""


@dataclass(frozen=True)
class PlanRequest(Message):
    """Client -> peer: plan (dry run) without executing."""

    TYPE: ClassVar[str] = "plan"
    request_id: str
    body: dict[str, Any] = field(default_factory=dict)
    """The options, :class:`PlanOptions` as plain data (checked by the receiver, which
    answers a body that is not one with error 200, ``BAD_REQUEST``)."""


@dataclass(frozen=True)
class PlanOptions(Record):
    """What a ``plan`` request's ``body`` holds. ``PlanOptions.from_dict(body)`` checks
    it (MessageError, a ValueError, when it is not one); ``to_dict()`` makes a body."""

    model: str
    """Model name, as in ``infer_request``."""
    strategy: str = "edgeci"
    size: tuple[int, int] = (224, 224)
    """Height and width of the network input to plan for, ``[H, W]``."""

    def check(self) -> None:
        if min(self.size) < 1:
            raise MessageError(f"plan.body.size: {list(self.size)} is not a size [H, W]")


@dataclass(frozen=True)
class PlanResult(Message):
    TYPE: ClassVar[str] = "plan_result"
    request_id: str
    body: dict[str, Any] = field(default_factory=dict)
    """The plan and how it was made (plain data; keys in ``docs/protocol.md`` 4.4)."""


MAX_PLAN_JOB_CHARS: Final = 4 << 20
"""Longest ``plan_job.job`` or ``plan_job_result.answer`` (JSON text): a job carries a
model description and a few bids, an answer a plan and its work items (tens of KB)."""


@dataclass(frozen=True)
class PlanJob(Message):
    """Auctioneer -> peer: make this background plan on your CPU, not mine.

    ``job`` is what an auctioneer's own planning child takes (``auction/aside.py``'s
    job, JSON text): the call and bids of a round a stale plan answered. The peer plans it
    in its own planning child and answers ``plan_job_result``."""

    TYPE: ClassVar[str] = "plan_job"
    job_id: str
    job: str

    def check(self) -> None:
        if not self.job_id:
            raise MessageError("plan_job.job_id: empty")
        if len(self.job) > MAX_PLAN_JOB_CHARS:
            raise MessageError(
                f"plan_job.job: {len(self.job)} characters, over {MAX_PLAN_JOB_CHARS}"
            )


@dataclass(frozen=True)
class PlanJobResult(Message):
    """Peer -> auctioneer: the decision a ``plan_job`` asked for (the planning child's
    answer line, JSON text), or why there is none."""

    TYPE: ClassVar[str] = "plan_job_result"
    job_id: str
    answer: str | None = None
    error: str | None = None

    def check(self) -> None:
        if (self.answer is None) == (self.error is None):
            raise MessageError("plan_job_result: exactly one of answer and error is required")
        if self.answer is not None and len(self.answer) > MAX_PLAN_JOB_CHARS:
            raise MessageError(
                f"plan_job_result.answer: {len(self.answer)} characters, over {MAX_PLAN_JOB_CHARS}"
            )


@dataclass(frozen=True)
class Chunk(Message):
    """One piece of a tensor announced by a ``chunked`` reference (session-internal)."""

    TYPE: ClassVar[str] = "chunk"
    stream: int
    index: int
    data: bytes


MESSAGE_TYPES: Final[dict[str, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Auth, Ping, Pong, CallForBids, Bid, Award, AwardReply, Release,
        TileRequest, TileResult, HeadJob, StripJob, HaloRows,
        InferRequest, InferResult, Cancel, Error, Peers, PeersResult, PlanRequest, PlanResult,
        PlanJob, PlanJobResult, Chunk,
    )
}  # fmt: skip


def message_from_wire(d: object) -> Message:
    """The message a decoded frame holds; raises MessageError."""
    if not isinstance(d, dict):
        raise MessageError(f"a message is a map, got {type(d).__name__}")
    kind = d.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {kind!r}")
    body = {k: v for k, v in d.items() if k != "type"}
    msg: Message = cls.from_dict(body)
    return msg
