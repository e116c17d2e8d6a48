"""A request's measured timeline: spans on every node, on the auctioneer's clock (pure).

When a request asks for it (``infer_request.trace``), every step of it is recorded
as a :class:`Span`: the auction, decoding, and per tile the cut, the send, the
peer's queue wait and compute (reported by the peer on its own clock), the wait
for the result and the stitch; halo segments' strip jobs; the head. Peers share no
clock: a peer's times are moved onto the auctioneer's with an offset estimated
from heartbeat round trips, as NTP does (:class:`ClockSync`), and each node's
offset carries its error bound (half the best round trip).

Times are seconds since the request arrived on the auctioneer. Each span may carry
the plan's prediction for the same step (the simulator's interval for that device,
stage and lane), so that a measured timeline can be read against its plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

LANES = ("compute", "send", "recv", "wait", "control")
"""Where a span sits on its node: its CPU, its link out or in, waiting, or bookkeeping."""


@dataclass(frozen=True)
class Span:
    """One step of a request on one node."""

    node: str
    name: str
    """What ran: ``auction``, ``decode``, ``cut``, ``send``, ``queue``, ``compute``,
    ``wait``, ``stitch``, ``strip``, ``halo-wait``, ``head``, ``result``..."""
    start: float
    stop: float
    lane: str = "compute"
    stage: int | None = None
    """The plan stage it belongs to (the head is stage ``len(plan.stages)``)."""
    tile: int | None = None
    """The tile (gather tile base id, or strip job id) it belongs to."""
    predicted: tuple[float, float] | None = None
    """The plan's predicted (start, stop) for this step, when the plan has one."""

    @property
    def seconds(self) -> float:
        return self.stop - self.start

    def to_list(self) -> list[Any]:
        pred = list(self.predicted) if self.predicted is not None else None
        return [self.node, self.name, self.start, self.stop, self.lane, self.stage, self.tile, pred]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> Span:
        if len(v) != 8:
            raise ValueError(f"a span is 8 values, not {len(v)}")
        pred = v[7]
        return cls(
            str(v[0]),
            str(v[1]),
            float(v[2]),
            float(v[3]),
            str(v[4]),
            None if v[5] is None else int(v[5]),
            None if v[6] is None else int(v[6]),
            None if pred is None else (float(pred[0]), float(pred[1])),
        )


@dataclass(frozen=True)
class Offset:
    """How a node's clock relates to this one: ``local = remote - offset``, to within
    ``error`` seconds."""

    offset: float
    error: float


class ClockSync:
    """A peer's clock offset from ping/pong round trips (NTP's estimate): the sample
    with the shortest round trip among the last ``keep`` is the most exact."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._samples: list[tuple[float, float]] = []
        """(round trip, offset) per exchange."""

    def sample(self, sent: float, remote: float, received: float) -> None:
        """One exchange: our clock when the ping left, the peer's when it answered, ours
        when the pong came back."""
        rtt = max(0.0, received - sent)
        self._samples.append((rtt, remote - (sent + received) / 2))
        del self._samples[: -self.keep]

    @property
    def estimate(self) -> Offset | None:
        if not self._samples:
            return None
        rtt, off = min(self._samples)
        return Offset(off, rtt / 2)


@dataclass
class Timeline:
    """The spans of one request, on the auctioneer's clock (``t0`` = its arrival)."""

    t0: float
    """The auctioneer's clock (``time.monotonic``) when the request arrived."""
    spans: list[Span] = field(default_factory=list)
    offsets: dict[str, Offset] = field(default_factory=dict)
    """Per node other than the auctioneer, the clock offset its spans were moved by."""

    def add(
        self,
        node: str,
        name: str,
        start: float,
        stop: float,
        lane: str = "compute",
        stage: int | None = None,
        tile: int | None = None,
    ) -> Span:
        """A span measured on the auctioneer's clock (absolute ``time.monotonic`` values)."""
        span = Span(node, name, start - self.t0, stop - self.t0, lane, stage, tile)
        self.spans.append(span)
        return span

    def add_remote(
        self,
        node: str,
        name: str,
        start: float,
        stop: float,
        offset: Offset | None,
        lane: str = "compute",
        stage: int | None = None,
        tile: int | None = None,
    ) -> Span | None:
        """A span a peer measured on its own clock; dropped without an offset for it."""
        if offset is None:
            return None
        self.offsets[node] = offset
        return self.add(node, name, start - offset.offset, stop - offset.offset, lane, stage, tile)

    @property
    def end(self) -> float:
        return max((s.stop for s in self.spans), default=0.0)

    def on(self, node: str) -> list[Span]:
        return [s for s in self.spans if s.node == node]

    def covered(self, node: str, lanes: Iterable[str] = LANES) -> float:
        """Seconds of ``[0, end]`` during which ``node`` has some span in ``lanes``."""
        want = set(lanes)
        ivs = sorted((s.start, s.stop) for s in self.spans if s.node == node and s.lane in want)
        total, at = 0.0, float("-inf")
        for a, b in ivs:
            if b <= at:
                continue
            total += b - max(a, at)
            at = b
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "t0": self.t0,
            "spans": [s.to_list() for s in self.spans],
            "offsets": {n: [o.offset, o.error] for n, o in self.offsets.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timeline:
        return cls(
            float(d["t0"]),
            [Span.from_list(s) for s in d.get("spans", [])],
            {n: Offset(float(o[0]), float(o[1])) for n, o in d.get("offsets", {}).items()},
        )

    # ---- reading it -----------------------------------------------------------------------------

    def chrome(self, names: dict[str, str] | None = None) -> dict[str, Any]:
        """Chrome trace-event JSON (opens in Perfetto): a process per node, a thread per
        lane, measured spans as complete events; predictions as a second thread."""
        names = names or {}
        nodes = sorted({s.node for s in self.spans})
        pid = {n: i + 1 for i, n in enumerate(nodes)}
        tid = {lane: i + 1 for i, lane in enumerate(LANES)}
        events: list[dict[str, Any]] = []
        for n in nodes:
            label = names.get(n, n)
            if n in self.offsets:
                o = self.offsets[n]
                label += f" (clock offset {o.offset * 1e3:+.2f} ms, +/- {o.error * 1e3:.2f} ms)"
            events.append({"ph": "M", "name": "process_name", "pid": pid[n],
                           "args": {"name": label}})  # fmt: skip
            for lane, t in tid.items():
                events.append({"ph": "M", "name": "thread_name", "pid": pid[n], "tid": t,
                               "args": {"name": lane}})  # fmt: skip
            events.append({"ph": "M", "name": "thread_name", "pid": pid[n], "tid": 99,
                           "args": {"name": "predicted"}})  # fmt: skip
        for s in self.spans:
            args: dict[str, Any] = {"stage": s.stage, "tile": s.tile}
            if s.predicted is not None:
                args["predicted_ms"] = [round(s.predicted[0] * 1e3, 3),
                                        round(s.predicted[1] * 1e3, 3)]  # fmt: skip
            events.append({"ph": "X", "name": s.name, "pid": pid[s.node],
                           "tid": tid.get(s.lane, len(LANES) + 1), "ts": s.start * 1e6,
                           "dur": max(0.0, s.seconds) * 1e6, "args": args})  # fmt: skip
            if s.predicted is not None:
                a, b = s.predicted
                events.append({"ph": "X", "name": f"{s.name} (plan)", "pid": pid[s.node],
                               "tid": 99, "ts": a * 1e6, "dur": max(0.0, b - a) * 1e6})  # fmt: skip
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def critical_path(self) -> list[Span]:
        """The chain of spans that ends last: from the last span back, each time the
        span (on any node) that ended latest before the current one started."""
        spans = sorted(self.spans, key=lambda s: (s.stop, s.start))
        if not spans:
            return []
        path = [spans[-1]]
        while True:
            cur = path[-1]
            before = [s for s in spans if s.stop <= cur.start + 1e-6 and s is not cur]
            if not before:
                break
            path.append(max(before, key=lambda s: (s.stop, s.seconds)))
        return path[::-1]
