"""Device, link and testbed models: the cost model's data (pure).

A device computes a unit of kind K over F FLOPs in ``a_K * F + b_K`` seconds,
with (a_K, b_K) fitted by least squares from measurements (the profiler on a
real device, or published figures for a testbed). A transfer of B bytes over a
link takes ``B / bandwidth + rtt / 2``. Whether the auctioneer's radio is a
shared medium (its sends and receives serialise) is a property of the testbed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeci_p2p.core.geometry import Trace

COST_KINDS: tuple[str, ...] = ("conv", "pool", "block", "dw", "head")

DW_SLOWDOWN = 4.0
"""Seconds per FLOP of a unit with a depthwise conv over a dense conv's, for compute
models measured before the ``dw`` kind existed (published testbeds, old profiles).
Depthwise convs do ~1/C of a dense conv's FLOPs per value they read, so they run at
the memory's speed, not the multipliers': MobileNetV2's depthwise units fitted 3.96x
the conv units' slope with ``edgeci profile --threads 1`` on this project's 2-core VM
(4 Dec 2026, a loaded machine; the ratio, not the speeds, is what is used)."""


@dataclass(frozen=True)
class LinearFit:
    """``seconds = a * flops + b``."""

    a: float
    """Seconds per FLOP."""
    b: float
    """Fixed seconds per call (dispatch overhead)."""
    rel_error: float = 0.0
    """Root-mean-square relative error of the fit over its measured points."""

    def seconds(self, flops: float) -> float:
        return self.a * flops + self.b if flops > 0 else 0.0

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> LinearFit:
        """Least-squares fit of (flops, seconds) points; needs two distinct FLOP counts.

        A negative intercept (noise) is clamped to zero and the slope refitted
        through the origin, so that tiny tiles never get negative times.
        """
        if len({f for f, _ in points}) < 2:
            raise ValueError("a linear fit needs points at two or more distinct FLOP counts")
        n = len(points)
        mx = sum(f for f, _ in points) / n
        my = sum(s for _, s in points) / n
        sxx = sum((f - mx) ** 2 for f, _ in points)
        sxy = sum((f - mx) * (s - my) for f, s in points)
        a = sxy / sxx
        b = my - a * mx
        if b < 0 or a <= 0:
            a = sum(f * s for f, s in points) / sum(f * f for f, _ in points)
            b = 0.0
        errs = [((a * f + b) - s) / s for f, s in points if s > 0]
        rel = (sum(e * e for e in errs) / len(errs)) ** 0.5 if errs else 0.0
        return cls(a, b, rel)

    @property
    def gflops(self) -> float:
        """Asymptotic speed in GFLOP/s."""
        return 1e-9 / self.a if self.a > 0 else float("inf")


@dataclass(frozen=True)
class ComputeModel:
    """Per unit kind fits of one device. A model without a ``dw`` fit gets one derived
    from its ``conv`` fit (:data:`DW_SLOWDOWN`).

    ``piece_s``: seconds every *piece* of work costs on top of its units (a tile, a
    strip job's piece, the head: one call of the worker), whatever its size. The
    profile cannot see it (it times units back to back); a peer learns it from the
    work it serves (``policy/calibration.py``, at most 5 ms): the hop to its worker and
    back, and the event loop's share of a CPU quota. A plan of many short stages pays it
    on every peer at every stage."""

    fits: Mapping[str, LinearFit]
    piece_s: float = 0.0

    def __post_init__(self) -> None:
        conv = self.fits.get("conv")
        if "dw" not in self.fits and conv is not None:
            derived = LinearFit(conv.a * DW_SLOWDOWN, conv.b, conv.rel_error)
            object.__setattr__(self, "fits", {**self.fits, "dw": derived})
            object.__setattr__(self, "_derived_dw", derived)

    def seconds(self, kind: str, flops: float) -> float:
        fit = self.fits.get(kind) or self.fits.get("conv")
        if fit is None:
            raise KeyError(f"compute model has no fit for {kind!r} (nor 'conv')")
        return fit.seconds(flops)

    def piece(self, kind_flops: Iterable[tuple[str, float]]) -> float:
        """Predicted time of one piece of work made of these (kind, FLOPs) unit calls:
        its units and the fixed :attr:`piece_s` (nothing for an empty piece)."""
        units = sum(self.seconds(k, f) for k, f in kind_flops)
        return units + self.piece_s if units > 0 else 0.0

    def trace_seconds(self, tr: Trace) -> float:
        """Predicted time to run a traced unit range on this device (one piece)."""
        return self.piece(flops_by_kind(tr).items())

    def scaled(self, factor: float) -> ComputeModel:
        """The same device running ``factor`` times as fast (factor 0.5 = half speed);
        the fixed seconds per piece stay as they are (they are learnt, not profiled)."""
        return ComputeModel(
            {k: LinearFit(f.a / factor, f.b / factor, f.rel_error) for k, f in self.fits.items()},
            self.piece_s,
        )

    def _measured(self) -> dict[str, LinearFit]:
        """The fits but a derived ``dw`` one (it is derived again from ``conv``)."""
        derived = getattr(self, "_derived_dw", None)
        return {k: f for k, f in self.fits.items() if f is not derived}

    def with_piece(self, piece_s: float) -> ComputeModel:
        """The same fits with ``piece_s`` seconds per piece."""
        return ComputeModel(self._measured(), piece_s)

    def to_dict(self) -> dict[str, Any]:
        """The measured fits (a derived ``dw`` fit is left out: it is derived again), and
        ``piece_s`` where it is not zero."""
        out: dict[str, Any] = {
            k: {"a": f.a, "b": f.b, "rel_error": f.rel_error} for k, f in self._measured().items()
        }
        if self.piece_s:
            out["piece_s"] = self.piece_s
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ComputeModel:
        return cls(
            {
                k: LinearFit(float(v["a"]), float(v["b"]), float(v.get("rel_error", 0.0)))
                for k, v in d.items()
                if k != "piece_s"
            },
            float(d.get("piece_s", 0.0)),
        )


def flops_by_kind(tr: Trace) -> dict[str, int]:
    out: dict[str, int] = {}
    for ut in tr.units:
        out[ut.unit.kind] = out.get(ut.unit.kind, 0) + ut.flops
    return out


@dataclass(frozen=True)
class DeviceModel:
    name: str
    compute: ComputeModel
    memory_bytes: int = 1 << 30
    """Bytes it can give to work (from a bid: its budget less the weights it holds)."""
    head_load: int = 0
    """Bytes of weights it must load to run the head (0: it holds the head)."""
    features_load: int = 0
    """Bytes of weights it must load to run feature units (0: it holds them)."""
    hop_s: float = 0.0
    """Seconds its event loop takes, while its worker computes, to pick up what arrives
    (a neighbour's halo rows) or what its worker hands back (rows to send on): charged
    at both ends of every halo row move, and (:meth:`Testbed.back_s`) before a peer's
    strip or tile goes back to the auctioneer. On a peer whose loop shares a capped
    core with its convolutions it is the wait for the quota; with a core to spare,
    next to nothing (learnt online: ``policy/hops.py``)."""

    def fits_head(self) -> bool:
        """Whether it may run the head without going over its memory."""
        return self.head_load <= max(self.memory_bytes, 0) or self.head_load == 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "compute": self.compute.to_dict(),
            "memory_bytes": self.memory_bytes,
        }
        if self.head_load or self.features_load:
            d.update(head_load=self.head_load, features_load=self.features_load)
        if self.hop_s:
            d["hop_s"] = self.hop_s
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceModel:
        return cls(
            str(d["name"]),
            ComputeModel.from_dict(d["compute"]),
            int(d.get("memory_bytes", 1 << 30)),
            int(d.get("head_load", 0)),
            int(d.get("features_load", 0)),
            float(d.get("hop_s", 0.0)),
        )


@dataclass(frozen=True)
class LinkModel:
    """The link between a device and the auctioneer."""

    bandwidth: float
    """Bytes per second."""
    rtt: float = 0.001
    """Round-trip time in seconds."""

    def seconds(self, nbytes: float) -> float:
        return nbytes / self.bandwidth + self.rtt / 2 if nbytes > 0 else 0.0

    @classmethod
    def from_mbps(cls, mbps: float, rtt_ms: float = 1.0) -> LinkModel:
        return cls(mbps * 1e6 / 8, rtt_ms / 1000)


LOCAL_LINK = LinkModel(bandwidth=float("inf"), rtt=0.0)
"""The auctioneer's link to itself: transfers cost nothing."""


@dataclass(frozen=True)
class Testbed:
    """Devices plus each one's link to the auctioneer (``devices[auctioneer]``)."""

    name: str
    devices: tuple[DeviceModel, ...]
    links: tuple[LinkModel, ...]
    """``links[i]`` joins ``devices[i]`` to the auctioneer; the auctioneer's own is free."""
    auctioneer: int = 0
    shared_medium: bool = True
    """True: one radio cell, every transfer serialises (Wi-Fi). False: each link is its own."""
    source: str = ""
    """Where the numbers come from (a publication, or our profiler on named hardware)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.devices) != len(self.links):
            raise ValueError(
                f"testbed {self.name}: {len(self.devices)} devices, {len(self.links)} links"
            )
        if not 0 <= self.auctioneer < len(self.devices):
            raise ValueError(
                f"testbed {self.name}: auctioneer index {self.auctioneer} out of range"
            )

    def link(self, i: int) -> LinkModel:
        return LOCAL_LINK if i == self.auctioneer else self.links[i]

    def back_s(self, i: int) -> float:
        """Seconds from device ``i``'s worker finishing a part to its loop sending the
        result to the auctioneer (its :attr:`DeviceModel.hop_s`; nothing for the
        auctioneer's own parts). Neither the link fit (the auctioneer times a tile from
        send to answer less the peer's own time from receipt to reply, which holds the
        hop) nor the compute fit (the worker's time) sees it: on the emulated cluster
        tile results came back 5-14 ms later than the plans said."""
        return 0.0 if i == self.auctioneer else self.devices[i].hop_s

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "auctioneer": self.auctioneer,
            "shared_medium": self.shared_medium,
            "devices": [d.to_dict() for d in self.devices],
            "links": [{"bandwidth": ln.bandwidth, "rtt": ln.rtt} for ln in self.links],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Testbed:
        known = {"name", "source", "auctioneer", "shared_medium", "devices", "links"}
        return cls(
            name=str(d["name"]),
            devices=tuple(DeviceModel.from_dict(x) for x in d["devices"]),
            links=tuple(_link_from_dict(x) for x in d["links"]),
            auctioneer=int(d.get("auctioneer", 0)),
            shared_medium=bool(d.get("shared_medium", True)),
            source=str(d.get("source", "")),
            extra={k: v for k, v in d.items() if k not in known},
        )


def _link_from_dict(d: Mapping[str, Any]) -> LinkModel:
    if "mbps" in d:
        return LinkModel.from_mbps(float(d["mbps"]), float(d.get("rtt_ms", 1.0)))
    return LinkModel(float(d["bandwidth"]), float(d.get("rtt", 0.001)))
