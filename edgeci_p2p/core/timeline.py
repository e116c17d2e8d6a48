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

    @property
    def origin(self) -> str | None:
        """The node that ran the request (the auctioneer): the one that answered it
        (its ``result`` span), else the first span's node."""
        for s in self.spans:
            if s.name == "result":
                return s.node
        return self.spans[0].node if self.spans else None

    @property
    def nodes(self) -> list[str]:
        """Every node with a span: the origin first, then in order of appearance."""
        seen = dict.fromkeys([self.origin] if self.origin is not None else [])
        seen.update(dict.fromkeys(s.node for s in self.spans))
        return [n for n in seen if n is not None]

    def predicted_spans(self) -> list[Span]:
        """The plan's timeline as spans: one per distinct predicted interval (several
        tiles of a node and stage share theirs), on the lane it was predicted for
        (:func:`predicted_lane`), named after the span that carries it."""
        out: dict[tuple[str, str, float, float], Span] = {}
        for s in self.spans:
            if s.predicted is None:
                continue
            a, b = s.predicted
            lane = predicted_lane(s)
            out.setdefault(
                (s.node, lane, a, b), Span(s.node, s.name, a, b, lane, s.stage, None, (a, b))
            )
        return sorted(out.values(), key=lambda s: (s.start, s.stop))

    def chrome(self, names: dict[str, str] | None = None) -> dict[str, Any]:
        """Chrome trace-event JSON (opens in Perfetto): a process per node (the origin
        first), a thread per lane, measured spans as complete events; the plan's
        predictions on threads of their own (``compute (plan)``...). Spans that overlap
        on one lane (waits for several peers at once) go to extra threads of that lane
        (``wait 2``...), since a trace viewer nests the events of one thread."""
        names = names or {}
        predicted = self.predicted_spans()
        events: list[dict[str, Any]] = []
        for pid, n in enumerate(self.nodes, 1):
            label = names.get(n, n)
            if n in self.offsets and n != self.origin:
                o = self.offsets[n]
                label += f" (clock offset {o.offset * 1e3:+.2f} ms, +/- {o.error * 1e3:.2f} ms)"
            events.append({"ph": "M", "name": "process_name", "pid": pid,
                           "args": {"name": label}})  # fmt: skip
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                           "args": {"sort_index": pid}})  # fmt: skip
            mine = [(s, False) for s in self.on(n)] + [(s, True) for s in predicted if s.node == n]
            for tid, (track, group) in enumerate(_tracks(mine), 1):
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                               "args": {"name": track}})  # fmt: skip
                events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                               "args": {"sort_index": tid}})  # fmt: skip
                for s, plan in group:
                    args: dict[str, Any] = {"stage": s.stage}
                    if not plan:
                        args["tile"] = s.tile
                    if s.predicted is not None and not plan:
                        a, b = s.predicted
                        args["predicted_ms"] = [round(a * 1e3, 3), round(b * 1e3, 3)]
                    events.append({
                        "ph": "X", "name": f"{s.name} (plan)" if plan else s.name,
                        "pid": pid, "tid": tid, "ts": s.start * 1e6,
                        "dur": max(0.0, s.seconds) * 1e6, "args": args,
                    })  # fmt: skip
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def critical_path(self) -> list[Span]:
        """The chain of spans that ends last (see :func:`critical_path`)."""
        return critical_path(self.spans, self.origin)


COMPUTE_NAMES = ("compute", "head", "strip")
"""Spans that run a part of the model: predicted on their node's compute lane."""


def _tracks(spans: Sequence[tuple[Span, bool]]) -> list[tuple[str, list[tuple[Span, bool]]]]:
    """One node's spans (each flagged True for a prediction) as named tracks in lane
    order, measured before predicted: a track per lane, and more where spans of a lane
    overlap (``wait 2``...), since a trace viewer nests the events of one track."""
    tracks: dict[tuple[bool, int, int], tuple[str, list[tuple[Span, bool]]]] = {}
    ends: dict[tuple[bool, int], list[float]] = {}
    for s, plan in sorted(spans, key=lambda sp: (sp[0].start, -sp[0].stop)):
        lane = s.lane if s.lane in LANES else "other"
        rank = LANES.index(lane) if lane in LANES else len(LANES)
        slots = ends.setdefault((plan, rank), [])
        slot = next((i for i, e in enumerate(slots) if e <= s.start + 1e-9), len(slots))
        if slot == len(slots):
            slots.append(s.stop)
        slots[slot] = s.stop
        name = f"{lane} (plan)" if plan else lane
        track = tracks.setdefault((plan, rank, slot), (f"{name} {slot + 1}" if slot else name, []))
        track[1].append((s, plan))
    return [tracks[k] for k in sorted(tracks)]


def predicted_lane(span: Span) -> str:
    """The lane of the plan's prediction a span carries (the simulator's: compute,
    send or recv)."""
    return "compute" if span.name in COMPUTE_NAMES else span.lane


def critical_path(
    spans: Sequence[Span], origin: str | None = None, causal: bool = True
) -> list[Span]:
    """The chain of spans that ends last, from the last span back.

    With ``causal`` (spans of a request, ``origin`` the node that ran it), each step's
    predecessor is the step its node did before it (what ended there last before it
    began), except where another node's work is what it waited for:

    - a node's first span of a tile (other than on ``origin``) follows the ``send``
      of that tile from another node, even when clock error or a busy sender's late
      return from its send makes the send seem to end after the receiver began;
    - a ``wait`` span of a tile whose other steps are on the timeline (the peer that
      ran it reported them) is not a step of its own: the chain goes through the
      step of that tile that ended last on another node instead, so that it shows
      what the wait was for. A ``wait`` with nothing reported stays a step.

    Without ``causal`` (a plan's predicted spans, which carry no tiles), each step's
    predecessor is the span on any node that ended latest before it began.

    Consecutive steps may leave gaps (a transfer between nodes, or the event loop).
    """
    spans = sorted(spans, key=lambda s: (s.stop, s.start))
    if not spans:
        return []
    by_tile: dict[int, list[Span]] = {}
    for s in spans:
        if s.tile is not None:
            by_tile.setdefault(s.tile, []).append(s)

    def nested(s: Span) -> list[Span]:
        """What another node reported doing for the tile ``s`` waited for."""
        if not causal or s.name != "wait" or s.tile is None:
            return []
        return [o for o in by_tile[s.tile] if o.node != s.node and o.lane != "send"]

    def sender(s: Span) -> Span | None:
        if s.node == origin or s.tile is None:
            return None
        mine = [o for o in by_tile[s.tile] if o.node == s.node]
        if min(mine, key=lambda o: o.start) is not s:
            return None
        sends = [o for o in by_tile[s.tile]
                 if o.node != s.node and o.lane == "send" and o.start <= s.start]  # fmt: skip
        return max(sends, key=lambda o: o.start, default=None)

    def latest(candidates: Iterable[Span]) -> Span | None:
        return max(candidates, key=lambda s: (s.stop, s.seconds), default=None)

    def before(cur: Span) -> Span | None:
        if causal and (prev := sender(cur)) is not None:
            return prev
        ended = [s for s in spans if s.stop <= cur.start + 1e-6 and s is not cur]
        prev = latest(s for s in ended if s.node == cur.node) if causal else None
        prev = prev or latest(ended)
        if prev is not None and (inside := nested(prev)):
            return latest(inside)
        return prev

    last = latest(s for s in spans if not nested(s)) or spans[-1]
    path = [last]
    while (prev := before(path[-1])) is not None and prev not in path:
        path.append(prev)
    return path[::-1]
