"""A peer's speed, calibrated online from the work it serves.

A peer bids with its profile: a few seconds of convolutions timed at start, scaled by
the CPU quota it reads. What it really does under load drifts from that: a CFS quota
shared with its own event loop, caches refilled after every throttled period, other
work on the board. The auctioneer plans with the bids, so a peer that computes 1.4x
slower than it bids becomes everyone's straggler, and every prediction made with its
bid is short by as much.

So each peer compares the time every piece of work it computes took with what its
profile predicted for it, and bids with its profile scaled by the smoothed ratio. The
ratio moves the bids only when it leaves a band around the one in force: a new bid
means a new plan, and planning costs more than a few percent of error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PieceOverhead", "SpeedCalibration", "own_seconds", "strip_factor"]


@dataclass
class SpeedCalibration:
    """``slowdown``: measured / profiled time of this peer's work, as its bids use it.

    ``observe(predicted_s, measured_s)`` takes one piece of work (a tile, a strip
    piece, a head) and returns the new slowdown when the bids must change, else None.

    Single pieces are far too noisy to judge by: under a 10 ms CFS period a 3 ms piece
    runs in one burst or straddles a throttled gap (measured on the emulated cluster:
    0.8x to 1.8x the profile, piece to piece). So pieces are summed into windows of
    ``window_s`` predicted seconds, each window gives one ratio (total measured over
    total predicted), and windows are averaged (in logs, exponentially). The factor in
    force changes only when that average leaves a band around it, and then to a point
    of a geometric grid: a peer whose estimate wanders between two grid points bids
    one of two figures, whose plans the auctioneer has cached, instead of a new one
    (a new plan) each time.
    """

    window_s: float = 0.5
    """Predicted seconds of work per window."""
    weight: float = 0.3
    """Weight of each window in the running mean of log(measured / predicted)."""
    skip_windows: int = 1
    """Windows left out at first: a peer's first requests also pay for allocating its
    buffers and warming its caches (the emulated peers' first windows ran 1.3x where
    later ones ran 1.1x)."""
    min_windows: int = 2
    """Windows (after those skipped) before the first change: one slow burst is not a
    slow peer."""
    band: float = 0.3
    """The bids change when the running ratio differs from the one in force by more.
    Every change is a new plan for every auctioneer (0.3-1.6 s on four emulated peers,
    on a request's critical path); a 20% band still changed each peer's bids twice in
    a minute there."""
    grid: float = 1.1
    """The factor in force is a power of this."""
    min_predicted_s: float = 0.001
    """Pieces predicted shorter are not counted: their time is mostly the clock."""
    lowest: float = 0.5
    highest: float = 4.0
    """Bounds on the slowdown: beyond them something other than speed is wrong (a
    stalled machine, a bad profile) and the estimate should not chase it."""

    windows: int = 0
    mean_log: float = 0.0
    slowdown: float = 1.0
    """The factor in force: bids use the profile's times multiplied by it."""
    predicted: float = 0.0
    measured: float = 0.0
    """The window being filled."""

    def __post_init__(self) -> None:
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"calibration weight {self.weight} is not in (0, 1]")
        if not 0.0 < self.lowest <= 1.0 <= self.highest:
            raise ValueError(f"calibration bounds [{self.lowest}, {self.highest}] exclude 1")
        if self.grid <= 1.0 or self.window_s <= 0.0:
            raise ValueError(f"calibration grid {self.grid} / window {self.window_s} too small")

    @property
    def estimate(self) -> float:
        """The running ratio (not necessarily in force yet)."""
        return math.exp(self.mean_log)

    def observe(self, predicted_s: float, measured_s: float) -> float | None:
        if predicted_s < self.min_predicted_s or measured_s <= 0.0:
            return None
        self.predicted += predicted_s
        self.measured += measured_s
        if self.predicted < self.window_s:
            return None
        ratio = min(self.highest, max(self.lowest, self.measured / self.predicted))
        self.predicted = self.measured = 0.0
        if self.skip_windows > 0:
            self.skip_windows -= 1
            return None
        # The first windows are averaged plainly, then exponentially: an early outlier
        # must not keep a fixed share of the estimate for ever after.
        self.windows += 1
        w = max(self.weight, 1.0 / self.windows)
        self.mean_log += w * (math.log(ratio) - self.mean_log)
        if self.windows < self.min_windows:
            return None
        if abs(self.mean_log - math.log(self.slowdown)) <= math.log1p(self.band):
            return None
        step = math.log(self.grid)
        snapped = self.grid ** round(self.mean_log / step)
        self.slowdown = min(self.highest, max(self.lowest, snapped))
        return self.slowdown


STRIP_FACTOR_BOUNDS = (0.5, 2.0)
"""What :func:`strip_factor` says at most either way: a peer whose strips run more than
twice as slow (or fast) as its tiles has something other than strips wrong."""


def strip_factor(strips: SpeedCalibration, tiles: SpeedCalibration) -> float:
    """How many times its tiles' slowdown a peer's strip pieces run (its bids'
    ``strip_factor``): 1 until the strips' calibration has its first estimate (a peer
    that has served only strips then bids its profile for tiles, the strips' slowdown
    for strips)."""
    if strips.windows < strips.min_windows:
        return 1.0
    lo, hi = STRIP_FACTOR_BOUNDS
    return min(max(strips.slowdown / tiles.slowdown, lo), hi)


def own_seconds(seconds: float, others_cpu_s: float, cores: float | None) -> float:
    """A piece's seconds less what the daemon's other threads took from it.

    Where the daemon's threads share one CPU, or a quota of at most one core
    (``cores``), each CPU-second its other threads ran while the piece computed (the
    event loop decoding, encrypting and stitching another request's maps) is
    ``1 / cores`` seconds the piece waited. Charged to the piece, that traffic reads as
    a slower CPU: in the default benchmark, where the baselines move 10-40 MB through
    the auctioneer per request, its calibration went to 1.77-2.59x while its own
    requests ran at 1.0-1.3x, and every plan after that gave it too little. None (more
    cores): the other threads ran beside the piece, not in its time.

    Only an auctioneer's own pieces are corrected so. A piece served for another peer's
    request keeps that time: the loop's work there is the peer's own share of the
    exchange (a strip's halo rows in and out), which grows with its work, not with
    other strategies' traffic. Left out, it made the helpers' bids too fast for halo
    plans: on the emulated cluster the middle strip's peer ran 30-40% over its plan
    (its loop took a third of its 0.2-core quota) while its neighbours waited for its
    rows (docs/cluster-benchmark.md, fifteenth session).
    """
    if cores is None or cores > 1.0 or others_cpu_s <= 0.0:
        return seconds
    return max(seconds - others_cpu_s / cores, 0.5 * seconds)


@dataclass
class PieceOverhead:
    """``piece_s``: the seconds each piece of work costs this peer beyond what its size
    predicts (:attr:`edgeci_p2p.core.cost.ComputeModel.piece_s`), as its bids use it.

    One slowdown factor cannot describe a peer whose short pieces run 2x their profile
    and its long ones 1.0x: on the emulated cluster the 0.13-core peer's strip pieces
    fitted ``measured = 0.8 x predicted + 24 ms`` and the others' +5-15 ms (a 10 ms CFS
    period: a piece that finds the quota spent waits for the next one). A single factor
    fitted to such a mix is too slow for whole maps and too fast for thin strips, so the
    auctioneer both mispredicts and misplans. ``observe(predicted_s, measured_s)`` fits
    ``measured = s * predicted + o`` over the recent pieces (least squares, each piece's
    weight decaying by ``decay`` per newer piece) and returns a new ``o`` when the one
    in force must change, else None; the slope is :class:`SpeedCalibration`'s to set.

    ``o`` is only estimated from pieces of different sizes (the predicted times' spread
    at least ``min_spread`` of their mean): a peer that only ever runs whole models has
    nothing to separate a fixed cost from a slow speed with, and keeps what it has.
    Like the slowdown it moves only past a band (a new bid is a new plan), to a grid.
    """

    decay: float = 0.985
    """Weight kept by each piece per newer piece (~67 pieces' memory: a few requests)."""
    skip_pieces: int = 10
    """Pieces left out at first: a peer's first pieces are cold (2-3x their profile on
    the emulated cluster), and would read as a huge fixed cost."""
    min_pieces: int = 20
    """Pieces (after those skipped) before the first estimate."""
    min_spread: float = 0.3
    """Least coefficient of variation of the pieces' predicted times to fit a fixed cost."""
    band_s: float = 0.003
    band: float = 0.3
    """``o`` changes when the estimate differs from the one in force by more than the
    larger of ``band_s`` and ``band`` times it. With 2 ms, peers' estimates swung
    across it in the default benchmark (all strategies interleaved, their pieces of
    every shape): one peer's bids went 3.0 -> 1.0 ms and back ten times in a run, each
    a new plan for every auctioneer."""
    grid_s: float = 0.0005
    """``o`` in force is a multiple of this."""
    highest: float = 0.005
    """The most it is taken to be. What a piece costs beyond its size is partly a fixed
    hop (to the worker and back, the event loop's share of the quota) and partly the
    CFS period's quantisation, which is not fixed: a piece that starts after a wait
    finds its quota refilled. Charged on every stage, the fitted 6-16 ms (20-50 ms on
    an auctioneer that scatters) made the planner fuse VGG-16 into 4 stages of heavy
    halo recompute, which ran 537-559 ms against 453-470 for the 7-9 stage plans
    without it (docs/cluster-benchmark.md, thirteenth session)."""
    min_predicted_s: float = 0.0005

    piece_s: float = 0.0
    """The fixed seconds per piece in force."""
    pieces: int = 0
    _w: float = 0.0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"piece overhead decay {self.decay} is not in (0, 1)")

    @property
    def estimate(self) -> float | None:
        """The fitted fixed seconds per piece (None: too few pieces, or too alike)."""
        if self.pieces < self.min_pieces or self._w <= 0.0:
            return None
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        if mx <= 0.0 or var < (self.min_spread * mx) ** 2:
            return None
        slope = (self._xy / self._w - mx * my) / var
        if slope <= 0.0:
            return None
        return min(self.highest, max(0.0, my - slope * mx))

    def observe(self, predicted_s: float, measured_s: float) -> float | None:
        if predicted_s < self.min_predicted_s or measured_s <= 0.0:
            return None
        if self.skip_pieces > 0:
            self.skip_pieces -= 1
            return None
        d = self.decay
        self._w = self._w * d + 1.0
        self._x = self._x * d + predicted_s
        self._y = self._y * d + measured_s
        self._xx = self._xx * d + predicted_s * predicted_s
        self._xy = self._xy * d + predicted_s * measured_s
        self.pieces += 1
        got = self.estimate
        if got is None or abs(got - self.piece_s) <= max(self.band_s, self.band * self.piece_s):
            return None
        self.piece_s = round(got / self.grid_s) * self.grid_s
        return self.piece_s
