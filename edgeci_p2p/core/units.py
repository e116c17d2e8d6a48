"""Pure description of a CNN as a chain of *units*: the places where a cut is allowed.

A unit is what lies between two cut points of the network's graph (single-tensor
boundaries every path crosses): a conv with its BN/ReLU, a pool, or a whole
residual block (a main branch and a shortcut merged by an add, then a post chain).
Each unit lists its inner ops with their window geometry, so that the geometry
module can compute receptive fields and FLOPs without importing torch. The torch
adapter (``edgeci_p2p.nn.graph``) builds these descriptions from a model's traced
graph; everything here is plain data that also round-trips through dicts (CBOR).

Ops without a window are element-wise over pixels (BN, activations, per-pixel
LayerNorm and Linear over channels, channel-axis permutes, layer scales, identities),
except ``se``: a squeeze-and-excitation, whose every output pixel depends on the
mean of its whole input map (a global reduction inside a block).

Shapes are ``(channels, height, width)``; a description is made for one input
size, because the planner and the cost model need concrete shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OpKind = Literal[
    "conv",
    "maxpool",
    "bn",
    "relu",
    "act",
    "norm",
    "linear",
    "scale",
    "permute",
    "identity",
    "slice",
    "se",
    "sescale",
]
UnitKind = Literal["conv", "pool", "block", "dw"]
"""``dw``: a unit with a depthwise conv (its FLOPs are cheap, its memory traffic is not:
the cost model fits it separately)."""

WINDOWED: frozenset[str] = frozenset({"conv", "maxpool"})
POINTWISE: frozenset[str] = frozenset(
    {"bn", "relu", "act", "norm", "linear", "scale", "permute", "identity", "slice"}
)
"""Ops that compute each output pixel from the same input pixel only."""
GLOBAL: frozenset[str] = frozenset({"se"})
"""Ops whose output at any pixel depends on the whole input map."""
SCALED: frozenset[str] = frozenset({"sescale"})
"""A squeeze-and-excitation cut at its input (a synchronisation point): the
channel-wise multiply by a scale vector made from the whole map at the unit's input
boundary. As the first unit of a range the vector comes with the work (whoever
gathered that map made it) and the op is pointwise; deeper in a range a tile makes
it itself, reading the whole map as ``se`` does."""
Merge = Literal["add", "cat"]


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry of a conv or pool, as ``(rows, cols)`` pairs."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    """Pools only: PyTorch's ceil_mode (an extra, partially padded output row)."""


@dataclass(frozen=True)
class Op:
    """One layer inside a unit."""

    kind: OpKind
    in_channels: int
    out_channels: int
    window: Window | None = None
    """None for pointwise and global ops."""
    groups: int = 1
    bias: bool = False
    """Convs only: whether the conv adds a bias (counted in FLOPs)."""
    module: str = ""
    """Dotted name of the torch module this op came from (for the executor); for
    ``scale``, the dotted name of the per-channel parameter it multiplies by."""
    hidden: int = 0
    """``se``/``sescale`` only: the channels of its squeeze (the width of its two 1x1
    convs)."""
    offset: int = 0
    """``slice`` only: the first input channel it keeps (``out_channels`` of them)."""

    def __post_init__(self) -> None:
        if (self.kind in WINDOWED) != (self.window is not None):
            raise ValueError(f"op {self.kind!r}: window must be given exactly for conv/maxpool")

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels


@dataclass(frozen=True)
class Unit:
    """A cut-point-delimited piece of the feature extractor.

    ``main`` runs in sequence. For a residual block ``shortcut`` is the branch
    added to ``main``'s output (``()`` is the identity), and ``post`` runs on the
    sum; for other units ``shortcut`` is None and ``post`` is empty. With ``merge``
    ``"cat"`` the branches ``main``, ``shortcut``, ``*more`` (any may be ``()``, the
    identity) are concatenated along channels in that order, each map at the same
    rows and columns (a spatially windowless join, like the add).
    """

    index: int
    name: str
    kind: UnitKind
    main: tuple[Op, ...]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    shortcut: tuple[Op, ...] | None = None
    post: tuple[Op, ...] = ()
    merge: Merge = "add"
    more: tuple[tuple[Op, ...], ...] = ()
    """``cat`` only: the branches after ``main`` and ``shortcut``."""

    def __post_init__(self) -> None:
        if self.merge == "cat" and self.shortcut is None:
            raise ValueError(f"unit {self.name}: a concatenation needs two branches or more")
        if self.more and self.merge != "cat":
            raise ValueError(f"unit {self.name}: only a concatenation has more than 2 branches")

    @property
    def is_block(self) -> bool:
        return self.shortcut is not None

    @property
    def branches(self) -> tuple[tuple[Op, ...], ...]:
        """The merged branches in order (a block's); ``()`` for other units."""
        if self.shortcut is None:
            return ()
        return (self.main, self.shortcut, *self.more)

    @property
    def ops(self) -> tuple[Op, ...]:
        more = tuple(op for b in self.more for op in b)
        return self.main + (self.shortcut or ()) + more + self.post

    @property
    def needs_scale(self) -> bool:
        """Whether the unit multiplies by a squeeze-and-excitation scale vector made from
        the whole map at its input boundary (a synchronisation point: see ``SCALED``)."""
        return any(op.kind in SCALED for op in self.ops)

    @property
    def is_global(self) -> bool:
        """Whether an output pixel of this unit depends on its whole input map (a
        squeeze-and-excitation inside): a tile of it reads the whole input."""
        return any(op.kind in GLOBAL for op in self.ops)


@dataclass(frozen=True)
class Head:
    """The part that needs the whole feature map: global pool and classifier."""

    kind: Literal["vgg", "resnet", "graph"]
    """How the executor runs it: VGG's classifier, ResNet's fc, or the rest of the
    traced graph after the last unit (other models)."""
    in_shape: tuple[int, int, int]
    pool_size: tuple[int, int]
    """Output size of the adaptive average pool ((7, 7) for VGG, (1, 1) for ResNet)."""
    linear: tuple[tuple[int, int], ...]
    """(in_features, out_features) of each linear layer, in order."""
    num_classes: int


@dataclass(frozen=True)
class ModelSpec:
    """A whole network at one input size: units then head."""

    name: str
    input_shape: tuple[int, int, int]
    units: tuple[Unit, ...]
    head: Head
    fingerprint: str = ""
    """sha256 of the weights this spec was extracted with ('' when unknown)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    input_itemsize: int = 4
    """Bytes per value of the network input on the wire: 4 (float32), or 1 when the
    request is an image and its pixels travel (``pixels`` in docs/protocol.md). A
    property of the request, not of the model: left out of the dict form."""
    wire_fraction: tuple[float, ...] = ()
    """Per boundary 0..n, the share of its float32 bytes a map sends: maps after a
    ReLU travel zero-suppressed (docs/protocol.md 5.4), about half their bytes with
    seeded weights and less with trained ones. Measured on the maps this node sees
    (:mod:`edgeci_p2p.core.density`); empty means every map travels whole. A property
    of the weights and the inputs, not of the model: left out of the dict form."""

    def __post_init__(self) -> None:
        for i, u in enumerate(self.units):
            if u.index != i:
                raise ValueError(f"unit {u.name!r} has index {u.index}, expected {i}")
            if i and self.units[i - 1].out_shape != u.in_shape:
                raise ValueError(
                    f"unit {u.name!r} expects input {u.in_shape} but unit "
                    f"{self.units[i - 1].name!r} produces {self.units[i - 1].out_shape}"
                )

    @property
    def n_units(self) -> int:
        return len(self.units)

    def itemsize_at(self, boundary: int) -> int:
        """Bytes per value of the map at ``boundary`` as an array."""
        return self.input_itemsize if boundary == 0 else 4

    def wire_itemsize(self, boundary: int) -> float:
        """Bytes per value the map at ``boundary`` costs on the wire (zero suppression
        counted: see ``wire_fraction``)."""
        frac = self.wire_fraction[boundary] if boundary < len(self.wire_fraction) else 1.0
        return self.itemsize_at(boundary) * (1.0 if boundary == 0 else frac)

    def wire_bytes(self, boundary: int, values: int) -> int:
        """Bytes that ``values`` values of the map at ``boundary`` cost on the wire."""
        return round(values * self.wire_itemsize(boundary))

    def shape_at(self, boundary: int) -> tuple[int, int, int]:
        """Shape of the map at cut point ``boundary`` (0 = network input, k = after unit k-1)."""
        if not 0 <= boundary <= len(self.units):
            raise IndexError(f"boundary {boundary} outside 0..{len(self.units)}")
        return self.input_shape if boundary == 0 else self.units[boundary - 1].out_shape

    # ---- plain-dict form (for CBOR / JSON) -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "fingerprint": self.fingerprint,
            "units": [_unit_to_dict(u) for u in self.units],
            "head": {
                "kind": self.head.kind,
                "in_shape": list(self.head.in_shape),
                "pool_size": list(self.head.pool_size),
                "linear": [list(x) for x in self.head.linear],
                "num_classes": self.head.num_classes,
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        h = d["head"]
        return cls(
            name=d["name"],
            input_shape=_shape3(d["input_shape"]),
            fingerprint=d.get("fingerprint", ""),
            units=tuple(_unit_from_dict(u) for u in d["units"]),
            head=Head(
                kind=h["kind"],
                in_shape=_shape3(h["in_shape"]),
                pool_size=(int(h["pool_size"][0]), int(h["pool_size"][1])),
                linear=tuple((int(a), int(b)) for a, b in h["linear"]),
                num_classes=int(h["num_classes"]),
            ),
        )


def _shape3(v: Any) -> tuple[int, int, int]:
    c, h, w = (int(x) for x in v)
    return (c, h, w)


def _pair(v: Any) -> tuple[int, int]:
    a, b = (int(x) for x in v)
    return (a, b)


def _op_to_dict(op: Op) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": op.kind,
        "in": op.in_channels,
        "out": op.out_channels,
        "groups": op.groups,
        "bias": op.bias,
        "module": op.module,
    }
    if op.hidden:
        d["hidden"] = op.hidden
    if op.offset:
        d["offset"] = op.offset
    if op.window is not None:
        w = op.window
        d["window"] = {
            "k": list(w.kernel),
            "s": list(w.stride),
            "p": list(w.padding),
            "d": list(w.dilation),
            "ceil": w.ceil_mode,
        }
    return d


def _op_from_dict(d: dict[str, Any]) -> Op:
    w = d.get("window")
    window = (
        Window(_pair(w["k"]), _pair(w["s"]), _pair(w["p"]), _pair(w["d"]), bool(w["ceil"]))
        if w is not None
        else None
    )
    return Op(
        kind=d["kind"],
        in_channels=int(d["in"]),
        out_channels=int(d["out"]),
        window=window,
        groups=int(d["groups"]),
        bias=bool(d["bias"]),
        module=str(d["module"]),
        hidden=int(d.get("hidden", 0)),
        offset=int(d.get("offset", 0)),
    )


def _unit_to_dict(u: Unit) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": u.index,
        "name": u.name,
        "kind": u.kind,
        "in_shape": list(u.in_shape),
        "out_shape": list(u.out_shape),
        "main": [_op_to_dict(o) for o in u.main],
        "shortcut": None if u.shortcut is None else [_op_to_dict(o) for o in u.shortcut],
        "post": [_op_to_dict(o) for o in u.post],
    }
    if u.merge != "add":
        d["merge"] = u.merge
    if u.more:
        d["more"] = [[_op_to_dict(o) for o in b] for b in u.more]
    return d


def _unit_from_dict(d: dict[str, Any]) -> Unit:
    sc = d["shortcut"]
    return Unit(
        index=int(d["index"]),
        name=str(d["name"]),
        kind=d["kind"],
        in_shape=_shape3(d["in_shape"]),
        out_shape=_shape3(d["out_shape"]),
        main=tuple(_op_from_dict(o) for o in d["main"]),
        shortcut=None if sc is None else tuple(_op_from_dict(o) for o in sc),
        post=tuple(_op_from_dict(o) for o in d["post"]),
        merge=d.get("merge", "add"),
        more=tuple(tuple(_op_from_dict(o) for o in b) for b in d.get("more", ())),
    )
