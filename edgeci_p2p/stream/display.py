"""Terminal output of a stream: one stdout line per frame and a live progress line on stderr."""

from __future__ import annotations

from typing import TextIO

from edgeci_p2p.stream.pipeline import FrameResult
from edgeci_p2p.stream.stats import StreamStats, percentile


def frame_line(frame: FrameResult) -> str:
    top = "  ".join(f"{t.label} {t.prob:.3f}" for t in frame.result.top_k)
    return f"frame {frame.index:5d}  {1000 * frame.latency_s:7.1f} ms  {top}"


def annotation_lines(frame: FrameResult, stats: StreamStats) -> list[str]:
    head = f"#{frame.index}  {1000 * frame.latency_s:.0f} ms  {stats.live_fps():.1f} fps"
    return [head, *(f"{t.prob:.3f} {t.label}" for t in frame.result.top_k)]


def progress_text(stats: StreamStats, total: int, in_flight: int) -> str:
    of = f"/{total}" if total else ""
    if not stats.latencies:
        return f"[{stats.frames}{of}] waiting for the first frame"
    p50 = 1000 * percentile(stats.latencies, 50)
    p95 = 1000 * percentile(stats.latencies, 95)
    return (
        f"[{stats.frames}{of}] {stats.live_fps():5.2f} fps  p50 {p50:6.1f} ms  "
        f"p95 {p95:6.1f} ms  ({in_flight} in flight)"
    )


class Progress:
    """A single updating line on a terminal; nothing when the stream is not a terminal (logs
    should not fill with carriage returns)."""

    def __init__(self, stream: TextIO, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.shown = False

    def update(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        """Erase the line, before other output goes to the same terminal."""
        if self.enabled and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
