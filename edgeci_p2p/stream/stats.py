"""Stream statistics: latency percentiles and throughput (pure; times come in as arguments)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks
    (numpy's default), so p50 of an even count is the mean of the middle two."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """What a finished stream achieved; ``to_dict`` is the example's ``--json`` line."""

    frames: int
    fps: float
    p50_ms: float
    p95_ms: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "frames": self.frames,
            "fps": round(self.fps, 3),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
        }


@dataclass
class StreamStats:
    """Per-frame latencies and completion times of one stream.

    Throughput is completed frames over the time from the first frame's start to
    the last frame's end: a stream that keeps K frames in flight is credited for
    the overlap, and the idle time before the first frame is not counted.
    ``window`` frames give the live fps shown while the stream runs.
    """

    window: int = 10
    latencies: list[float] = field(default_factory=list)
    first_start: float | None = None
    last_end: float | None = None
    _recent_ends: deque[float] = field(default_factory=deque)

    def record(self, started: float, ended: float) -> None:
        if ended < started:
            raise ValueError(f"frame ended at {ended} before it started at {started}")
        self.latencies.append(ended - started)
        self.first_start = started if self.first_start is None else min(self.first_start, started)
        self.last_end = ended if self.last_end is None else max(self.last_end, ended)
        self._recent_ends.append(ended)
        while len(self._recent_ends) > self.window + 1:
            self._recent_ends.popleft()

    @property
    def frames(self) -> int:
        return len(self.latencies)

    def fps(self) -> float:
        if self.first_start is None or self.last_end is None or self.last_end <= self.first_start:
            return 0.0
        return self.frames / (self.last_end - self.first_start)

    def live_fps(self) -> float:
        """Frames per second over the last ``window`` completions (whole-stream fps until
        there are enough of them)."""
        ends = sorted(self._recent_ends)
        if len(ends) <= self.window or ends[-1] <= ends[0]:
            return self.fps()
        return (len(ends) - 1) / (ends[-1] - ends[0])

    def summary(self) -> Summary:
        if not self.latencies:
            return Summary(0, 0.0, 0.0, 0.0)
        return Summary(
            self.frames,
            self.fps(),
            1000.0 * percentile(self.latencies, 50),
            1000.0 * percentile(self.latencies, 95),
        )
